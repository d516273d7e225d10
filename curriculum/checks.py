"""The `check` subcommands' shared format: {"checks": [{"name", "max_abs_diff", "ok"}, ...]}.

Every from-scratch module of stage 2 proves itself against the library it re-derives; a record
says how far apart the two came out and whether that is within tolerance.
"""

import sys

from curriculum import cli


def record(name, ours, theirs, atol=1e-5, where=None):
    """One check: max |ours - theirs| over all elements (or only where `where` is True)."""
    diff = (ours - theirs).abs()
    worst = float((diff[where] if where is not None else diff).max())
    return {"name": name, "max_abs_diff": worst, "ok": worst <= atol}


def print_checks(result):
    width = max(len(c["name"]) for c in result["checks"])
    for c in result["checks"]:
        detail = c.get("detail") or f"max |diff| {c['max_abs_diff']:.1e}"
        print(f"{'ok ' if c['ok'] else 'FAIL'} {c['name']:<{width}}  {detail}")
    failed = sum(not c["ok"] for c in result["checks"])
    print(f"\n{len(result['checks']) - failed}/{len(result['checks'])} checks passed")


def emit(result, as_json):
    """Print the checks (JSON or a table); exit 1 if any failed, so scripts and make notice."""
    cli.emit(result, as_json, print_checks)
    if not all(c["ok"] for c in result["checks"]):
        sys.exit(1)
