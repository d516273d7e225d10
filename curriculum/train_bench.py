"""Training on 1 and 2 processes, measured in one run (`make bench`): the tiny CLIP trainer's samples/s,
their ratio, and the share of a step spent communicating (the gradient all-reduce and the gather of
the contrastive batch, timed by blocking them: `--time-comm`).

On one machine of 2 cores, 2 processes of 1 thread do the work of 1 process of 2 threads, plus the
communication and the per-process work that does not split (each process builds the whole batch's
captions and positives): expect a ratio at or below 1. On 2 GPUs each process has a device of its
own, and the ratio approaches 2 × (1 - communication share).

    python -m curriculum.train_bench [--steps 40] [--batch-size 256] [--out outputs/bench]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli

POOL = 4096  # training images of each run: the largest batch
RUNS = (("1 process", 1, False), ("2 processes", 2, False), ("2 processes, communication timed", 2, True))


def measure(nproc, time_comm, steps, batch_size, pool, folder):
    """One tiny CLIP training in its own processes; its training.json."""
    command = [
        sys.executable,
        "-m",
        "curriculum.tiny_clip",
        "--out",
        str(folder),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--pool",
        str(pool),
        "--save-every",
        str(steps),
        "--nproc",
        str(nproc),
    ]
    proc = subprocess.run(command + ["--time-comm"] * time_comm, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise cli.UserError(f"the training on {nproc} process(es) failed: {last}")
    return json.loads((Path(folder) / "training.json").read_text())


def bench(steps=40, batch_size=256, pool=POOL):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, nproc, time_comm) in enumerate(RUNS):
            record = measure(nproc, time_comm, steps, batch_size, pool, Path(tmp) / str(i))
            rows.append(
                {
                    "run": label,
                    "num_processes": record["num_processes"],
                    "samples_per_s": record["samples_per_s"],
                    "comm_share": record["comm_share"],
                }
            )
    return {
        "model": "tiny CLIP",
        "steps": steps,
        "batch_size": batch_size,
        "rows": rows,
        "speedup_2_vs_1": round(rows[1]["samples_per_s"] / rows[0]["samples_per_s"], 2),
        "comm_share_2": rows[2]["comm_share"],
    }


def markdown(result):
    lines = [
        f"Training the {result['model']}: {result['steps']} steps of a global batch of {result['batch_size']}",
        "",
        "| run | processes | samples/s | communication share of a step |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['run']} | {r['num_processes']} | {r['samples_per_s']} | "
        + (f"{r['comm_share']:.0%}" if r["comm_share"] is not None else "not timed")
        + " |"
        for r in result["rows"]
    ]
    lines += ["", f"2 processes vs 1: {result['speedup_2_vs_1']}× the samples/s"]
    return "\n".join(lines) + "\n"


def build_parser():
    p = cli.Parser(prog="python -m curriculum.train_bench", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument(
        "--steps",
        type=cli.Count(1, 10_000),
        default=40,
        help="steps of each of the 3 trainings, up to 10,000 (default 40)",
    )
    p.add_argument(
        "--batch-size",
        type=cli.Count(2, POOL),
        default=256,
        help=f"global batch, even (it splits over 2 processes), 2 to {POOL:,} (default 256)",
    )
    p.add_argument(
        "--out",
        type=cli.OutFolder(),
        default=str(OUTPUTS_DIR / "bench"),
        help="folder to write training.json and training.md into (default outputs/bench)",
    )
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size % 2:
        raise cli.UserError(f"--batch-size {args.batch_size} does not split over 2 processes: make it even")
    result = bench(args.steps, args.batch_size, POOL)
    with cli.atomic_paths(args.out / "training.json", args.out / "training.md") as (as_json, as_markdown):
        cli.write_json(result, as_json)
        as_markdown.write_text(markdown(result), encoding="utf-8")
    cli.emit(result, args.json, lambda r: print(markdown(r)))


if __name__ == "__main__":
    cli.run(main)
