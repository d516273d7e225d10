"""docs/week10.md's tables: the service's liveness under load and under attack, from
results/bench/moderation_liveness.json and results/bench/liveness.json (`make bench`); and docs/ui.md's
time to answer of each tab of the web app, from results/ui/browser.json (its browser test, `make test`)."""

import json

from curriculum import cli
from curriculum.tables import Table, bench_table, value

LIVENESS = "bench/moderation_liveness.json"


def liveness(r):
    rows = [
        [name, m["p50"], m["p99"], m["max"], m["n"]]
        for name, m in (("idle", r["healthz_idle_ms"]), ("under load", r["healthz_loaded_ms"]))
    ]
    return Table(["/healthz", "p50 ms", "p99 ms", "max ms", "samples"], rows)


bench_table("week10.liveness", 10, "/healthz while the heaviest images the limits admit arrive", LIVENESS, liveness)


def attacks(r):
    """stage3_moderation.liveness: each attack, what the server answered, /healthz and the server's cost."""

    def answered(a):
        if "statuses" in a:
            return ", ".join(f"{n} × {status}" for status, n in sorted(a["statuses"].items()))
        return f"{a['closed_by_server']} of {a['connections']} closed" + (
            f" after {a['closed_after_s']} s" if a["closed_after_s"] is not None else ""
        )

    rows = [
        [a["what"], answered(a), a["healthz_ms"]["p99"], a["healthz_ms"]["max"], a["rss_peak_mb"] - a["rss_before_mb"]]
        + [a["server_cpu_s"], a["fds_peak"]]
        for a in r["attacks"]
    ]
    header = ["attack", "answered", "/healthz p99 ms", "max ms", "RSS + MiB", "server CPU s", "open files"]
    return Table(header, [["(idle)", "", r["healthz_idle_ms"]["p99"], r["healthz_idle_ms"]["max"], "", "", ""]] + rows)


bench_table("week10.attacks", 10, "/healthz and the server's cost under each attack", "bench/liveness.json", attacks)


@value("week10.liveness_run", [LIVENESS], "make bench")
def liveness_run(results):
    r = results(LIVENESS)
    return (
        f"attack statuses {r['attack_statuses']}; of the load, {r['load_statuses']} in {r['load_seconds']} s; "
        f"the server's memory went from {r['rss_before_mb']} to {r['rss_peak_mb']} MiB at its peak"
    )


EXAMPLE = "week10/example.json"  # `make week10` saves the answer to its second curl example


@value("week10.example", [EXAMPLE], "make week10")
def example_answer(results):
    """The multipart example's answer as the page shows it, its id elided (each request has its own)."""
    try:
        answer = results(EXAMPLE)
    except cli.UserError:  # results/ from before `make week10` saved it: the other pages still render
        return "\n(not in results/ yet: `make week10` records this answer)\n"
    r = answer["results"][0]

    def one_line(key):
        return f'"{key}": {json.dumps(r[key], ensure_ascii=False)}'

    lines = [
        f'{{"id": "modr-…", "model": {json.dumps(answer["model"])}, "results": [{{{one_line("flagged")},',
        *(
            f"  {one_line(key)},"
            for key in ("categories", "category_scores", "category_applied_input_types", "caption")
        ),
        f"  {one_line('image_text_similarity')}, {one_line('mismatch')}}}]}}",
    ]
    return "\n```json\n" + "\n".join(lines) + "\n```\n"


UI = "ui/browser.json"


@value("week10.ui_seconds", [UI], "make test")
def ui_seconds(results):
    """How long each tab of the web app took to answer in the browser test (tests/test_ui.py)."""
    r = results(UI)
    s, g = r["seconds_to_answer"], r["generate"]
    return (
        f"search {s['search']} s (top 5 of the gallery), caption {s['caption']} s, generate {s['generate']} s "
        f"({g['steps']} {g['scheduler']} steps and the cross-attention map of {g['word']!r}), moderate "
        f"{s['moderate']} s (an image and a text), in Chromium {r['chromium']}"
    )
