"""Training on 1 and 2 processes, measured in one run (`make bench`): the tiny CLIP trainer's samples/s,
their ratio, and the share of a step spent communicating (the gradient all-reduce and the gather of
the contrastive batch, timed by blocking them: `--time-comm`); then how far apart the weights of the
same training on 1 and on 2 processes end, for runs of a few to a few hundred steps.

On one machine of 2 cores, 2 processes of 1 thread do the work of 1 process of 2 threads, plus the
communication and the per-process work that does not split (each process builds the whole batch's
captions and positives): expect a ratio at or below 1. On 2 GPUs each process has a device of its
own, and the ratio approaches 2 × (1 - communication share).

    python -m curriculum.train_bench [--steps 40] [--batch-size 256] [--out outputs/bench]

The sums of a batch split over 2 processes are added in another order than on 1, so the two runs
are the same in exact arithmetic, not in float32: the difference starts at the rounding of the
first step and grows as training amplifies it.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, tables

POOL = 4096  # training images of each run: the largest batch
RUNS = (("1 process", 1, False), ("2 processes", 2, False), ("2 processes, communication timed", 2, True))
DIVERGENCE_STEPS = (4, 30, 200)  # run lengths whose 1- and 2-process weights are compared
DIVERGENCE_BATCH = 32
# A key bias adds q·b to every score of a query's row, which softmax ignores: its exact gradient is
# zero, and the float rounding noise left in its place (different when the batch is summed in two
# halves) is what Adam normalises into steps of ±lr. Those weights are left out of the comparison.
SOFTMAX_INVARIANT = re.compile(r"(k_proj|\.key)\.bias$")


def max_weight_diff(first, second):
    """The largest difference between two tiny CLIP folders' weights (softmax-invariant key biases left out)."""
    a, b = load_file(Path(first) / "model.safetensors"), load_file(Path(second) / "model.safetensors")
    return max(float((a[k] - b[k]).abs().max()) for k in a if not SOFTMAX_INVARIANT.search(k))


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
        divergence = []
        for run_steps in DIVERGENCE_STEPS:
            runs = [Path(tmp) / f"{run_steps}-{nproc}" for nproc in (1, 2)]
            records = [measure(n, False, run_steps, DIVERGENCE_BATCH, pool, f) for n, f in zip((1, 2), runs)]
            divergence.append(
                {
                    "steps": run_steps,
                    "max_weight_diff": max_weight_diff(*runs),
                    "final_loss_1": round(records[0]["final_loss"], 4),
                    "final_loss_2": round(records[1]["final_loss"], 4),
                }
            )
    return {
        "model": "tiny CLIP",
        "steps": steps,
        "batch_size": batch_size,
        "rows": rows,
        "speedup_2_vs_1": round(rows[1]["samples_per_s"] / rows[0]["samples_per_s"], 2),
        "comm_share_2": rows[2]["comm_share"],
        "divergence_batch_size": DIVERGENCE_BATCH,
        "divergence": divergence,
    }


def markdown(result):
    """The tables docs/training.md shows (curriculum/tables/models.py), for this run."""
    results = {"bench/training.json": result}.__getitem__
    return (
        "\n\n".join(
            [
                f"Training the {result['model']}: {result['steps']} steps of a global batch of {result['batch_size']}",
                tables.models.training_scaling(results).markdown(),
                f"2 processes vs 1: {tables.models.training_ratio(results)}",
                tables.models.training_divergence(results).markdown(),
            ]
        )
        + "\n"
    )


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
