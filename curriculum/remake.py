"""Remake a bundled checkpoint from scratch and compare it with the bundled one, weight by weight.

    python -m curriculum.remake tiny-clip-zh        # ~4 minutes on 2 cores; make remake

Runs the very command `make tiny-models` runs for it (Makefile), into outputs/train/remake/<name>
instead of data/models, then compares every tensor: the claim "the same weights" measured, not
assumed. Floats are only reproducible on the same library versions and the same kind of CPU: the
result records both runs' versions.
"""

import subprocess
import sys
import time

from curriculum import MODELS_DIR, OUTPUTS_DIR, REPO_ROOT, cli, provenance


def remake(name, folder):
    """Train `name` again into `folder` with its `make tiny-models` command; compare with the bundled one."""
    made_by = provenance.make_commands()[name]
    command = list(made_by)
    command[command.index("--out") + 1] = str(folder)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *command, "--force"], cwd=REPO_ROOT)  # replaces an earlier remake
    if proc.returncode:
        raise cli.UserError(f"the remake of {name} failed (exit code {proc.returncode}); its output is above")
    bundled = provenance.read_json(MODELS_DIR / name / "training.json")
    return {
        "checkpoint": name,
        "command": " ".join(["python", "-m", *made_by]),
        **provenance.compare(MODELS_DIR / name, folder),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "same_versions": bundled["provenance"]["versions"] == provenance.versions(),
    }


def build_parser():
    p = cli.Parser(prog="python -m curriculum.remake", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("checkpoint", choices=sorted(provenance.make_commands()), help="the bundled checkpoint to remake")
    p.add_argument(
        "--out",
        type=cli.OutFile(".json"),
        default=str(OUTPUTS_DIR / "provenance" / "remake.json"),
        help="the comparison, as JSON (default outputs/provenance/remake.json)",
    )
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = remake(args.checkpoint, OUTPUTS_DIR / "train" / "remake" / args.checkpoint)
    cli.write_json(result, args.out)
    cli.emit(
        result,
        args.json,
        lambda r: print(
            f"{r['checkpoint']} remade: "
            + ("identical to the bundled one, bit for bit" if r["identical"] else "different from the bundled one")
            + f" ({r['tensors']} tensors, largest difference {r['max_abs_diff']:.3g})"
        ),
    )
    raise SystemExit(0 if result["identical"] else 1)


if __name__ == "__main__":
    cli.run(main)
