"""Training on Hugging Face Accelerate: what every trainer in this repository shares.

The same trainer runs as one process on a laptop's CPU, on several GPUs or on several machines,
unchanged: `accelerate launch` starts the processes, Accelerate places the tensors, wraps the
model in DistributedDataParallel, autocasts and accumulates. `--nproc N` checks the run first
(a mistake costs one line, not N tracebacks), then starts `accelerate launch` on the same command.

    global batch B  =  P processes  ×  K micro-batches (--grad-accum)  ×  B / (P·K) rows each

Every process draws the same global batch from the same seeded generator and computes only its
own rows of it. DDP averages the gradients over the P processes and Accelerate averages the K
micro-batches before each optimiser step, so the result does not depend on P or K as long as
each share's loss averages (over the P·K shares) to the loss of the global batch: a mean over
the share's rows does; a mean over tokens uses `share_of_mean`; a contrastive loss `gather`s the
global batch's embeddings first, because its negatives are the other rows.

Checkpoints (`--save-every N`) hold the model, optimiser, schedule, every random generator, the
data order and the loss so far (Accelerate's save_state). `--resume` continues the newest one and
ends with the same weights as a run never interrupted, with any number of processes.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, DataLoaderConfiguration
from tqdm import tqdm

from curriculum import REPO_ROOT, checkpoints, cli, provenance, runtime, viz
from curriculum.checkpoints import jsonable


@dataclasses.dataclass(frozen=True)
class Options:
    """How to run a training; none of it changes the weights it ends with."""

    device: str = "auto"
    nproc: int = 1  # processes to start with `accelerate launch` (1: train in this process)
    grad_accum: int = 1  # micro-batches per optimiser step
    save_every: int = 0  # steps between checkpoints (0: none)
    resume: bool = False  # continue the newest checkpoint in the output folder
    precision: str = "auto"  # auto: bf16 autocast where the hardware is fast at it; fp32: never
    time_comm: bool = False  # time every all-reduce and gather (synchronously: for the benchmark)
    progress: bool = True
    command: tuple = ()  # module and arguments that --nproc re-runs under accelerate launch

    @classmethod
    def from_args(cls, args, module, argv):
        """From the flags of `add_run_args`; `module` and `argv` are what --nproc re-runs."""
        argv = list(sys.argv[1:] if argv is None else argv)
        return cls(
            device=args.device,
            nproc=args.nproc,
            grad_accum=args.grad_accum,
            precision=args.precision,
            save_every=getattr(args, "save_every", 0),
            resume=getattr(args, "resume", False),
            time_comm=args.time_comm,
            command=(module, *without_option(argv, "--nproc")),
        )


MAX_STEPS = 100_000  # a few hours of the tiny models on a GPU; the defaults are 400 to 2,200
MAX_BATCH = 4096
MAX_POOL = 100_000  # ShapesWorld images held in memory: about 1.2 GB at 64 px


def add_run_args(parser, checkpoints=True):
    """--device, --nproc, --grad-accum, --time-comm and, for trainers that save, --save-every and --resume."""
    cli.add_device_arg(parser)
    parser.add_argument(
        "--nproc",
        type=cli.Count(1, 64),
        default=1,
        help="processes, up to 64: N > 1 starts `accelerate launch --num_processes N` on this command (default 1)",
    )
    parser.add_argument(
        "--grad-accum",
        type=cli.Count(1, MAX_BATCH),
        default=1,
        help="micro-batches per optimiser step, a divisor of the batch: the same result in less memory (default 1)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32"),
        default="auto",
        help="auto: bf16 autocast where it is fast (GPUs, some CPUs); fp32: never (default auto)",
    )
    parser.add_argument(
        "--time-comm",
        action="store_true",
        help="time the gradient all-reduce and gathers (blocking them): for `make bench`",
    )
    if checkpoints:
        parser.add_argument(
            "--save-every",
            type=cli.Count(1, MAX_STEPS),
            default=100,
            help=f"steps between checkpoints in OUT/checkpoints, up to {MAX_STEPS:,}, and one at the end (default 100)",
        )
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the newest checkpoint in OUT/checkpoints (the same settings, any number of processes)",
        )


def parser(doc, default_out, config, batch_help, prog=None, min_batch=1):
    """A model trainer's command line: --out, --steps, --batch-size, --pool, --seed (defaults from its
    Config) and the run flags. default_out: outputs/train/<model>, never a bundled checkpoint."""
    p = cli.Parser(prog=prog, description=doc, formatter_class=cli.RawHelp)
    shown = Path(default_out).relative_to(REPO_ROOT) if Path(default_out).is_relative_to(REPO_ROOT) else default_out
    p.add_argument(
        "--out",
        # its own: a finished run's folder, or a stopped run's checkpoints (to_resume checks whose)
        type=cli.OutFolder(replace=True, markers=("training.json", checkpoints.RECORDS)),
        default=str(default_out),
        help=f"the model folder to write (default {shown}); an earlier run's is replaced when this one ends. "
        "A bundled checkpoint (data/models/..., what every other command loads) or a folder of other files: "
        "only with --force",
    )
    cli.add_force_arg(p)
    p.add_argument(
        "--steps",
        type=cli.Count(1, MAX_STEPS),
        default=config.steps,
        help=f"optimiser steps, up to {MAX_STEPS:,} (default {config.steps})",
    )
    p.add_argument(
        "--batch-size",
        type=cli.Count(min_batch, MAX_BATCH),
        default=config.batch_size,
        help=f"{batch_help}, over all processes, {min_batch} to {MAX_BATCH:,} (default {config.batch_size})",
    )
    p.add_argument(
        "--pool",
        type=cli.Count(1, MAX_POOL),
        default=config.pool,
        help=f"ShapesWorld training images, at least the batch, up to {MAX_POOL:,} (default {config.pool})",
    )
    p.add_argument("--seed", type=cli.Seed(), default=0, help=f"random seed, 0 to {cli.SEED_MAX} (default 0)")
    add_run_args(p)
    return p


def without_option(argv, flag):
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def warmup_cosine(optimizer, steps, warmup=True):
    """Learning rate: linear warm-up over the first 5% of steps (unless warmup=False), then cosine
    decay to zero."""
    warmup = max(1, steps // 20) if warmup else 1
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )


def launched():
    """True inside processes started by accelerate launch / torchrun (they set WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process():
    """Rank 0 (or the only process): the one that evaluates, prints and writes results."""
    return int(os.environ.get("RANK", "0")) == 0


def plural(n, word):
    """2 processes, 1 micro-batch."""
    return f"{n} {word}" + ("es" if word.endswith(("s", "ch")) else "s") * (n != 1)


# ---------------------------------------------------------------- checks before any work
def check_split(config, num_processes, grad_accum, contrastive):
    """Every batch of the config (each *batch_size field) splits into equal shares, and is drawn
    from a pool of at least its size."""
    if contrastive and grad_accum > 1:
        raise cli.UserError(
            "--grad-accum would split a contrastive batch into micro-batches that never see each "
            "other's rows, which are their negatives: another loss. Spread the batch over "
            "processes instead (--nproc: their embeddings are gathered), or lower --batch-size"
        )
    settings = jsonable(config)
    for name, size in settings.items():
        if not name.endswith("batch_size"):
            continue
        if size % (num_processes * grad_accum):
            raise cli.UserError(
                f"a batch of {size} ({name}) does not split evenly into "
                f"{plural(num_processes, 'process')} × {plural(grad_accum, 'micro-batch')}: "
                f"choose --nproc and --grad-accum whose product divides {size}"
            )
        if size > settings.get("pool", size):
            raise cli.UserError(
                f"a batch of {size} ({name}) is drawn without repeats from --pool "
                f"{settings['pool']}: make the pool at least as large as the batch"
            )


def launch(options, trainer_name):
    """Start `accelerate launch` with N processes on this same command, wait, exit with its status."""
    flags = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # --multi_gpu is torchrun underneath: on a CPU-only machine the processes talk over gloo.
    # (`--cpu --num_processes N` would start one process only.)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(options.nproc),
        *flags,
        "-m",
        *options.command,
    ]
    print(
        f"{trainer_name}: starting {plural(options.nproc, 'process')}\n"
        f"$ accelerate launch --multi_gpu --num_processes {options.nproc} -m {' '.join(options.command)}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(subprocess.call(command))


def start(options, name, batch_sizes, contrastive=False):
    """For a driver that works before its first Trainer (a sweep, an experiment): with --nproc N > 1
    outside a launcher, check its batches and start `accelerate launch` now, before that work."""
    if options.nproc > 1 and not launched():
        for batch_size in batch_sizes:
            check_split({"batch_size": batch_size}, options.nproc, options.grad_accum, contrastive)
        launch(options, name)


def shares(batch_size, rank, num_processes, grad_accum):
    """Process `rank`'s micro-batches as slices of the global batch: process p takes the p-th
    contiguous block (so a gather puts the rows back in order), cut into grad_accum pieces."""
    n = batch_size // (num_processes * grad_accum)
    first = rank * n * grad_accum
    return [slice(first + k * n, first + (k + 1) * n) for k in range(grad_accum)]


# ---------------------------------------------------------------- the gather a contrastive loss needs
class GatherWithGrad(torch.autograd.Function):
    """All processes' rows, in process order; the gradient flows back to this process's own rows.

    Every process computes the same loss L over the gathered batch, so the gradient of its rows
    is summed over the P processes' backward passes, P·dL/dx, and DDP's average over processes
    then leaves exactly the single-process gradient dL/dθ (open_clip's gather_with_grad)."""

    @staticmethod
    def forward(ctx, rows):
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # Σ over processes of dL_p/d(all rows)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


# ---------------------------------------------------------------- the trainer
class Progress:
    """What a checkpoint adds to Accelerate's state: the step, the data-order generator, the losses."""

    def __init__(self, seed):
        self.step, self.rng, self.losses, self.seconds = 0, np.random.default_rng(seed), [], 0.0
        self.session_seconds, self.session_steps, self.comm_seconds = 0.0, 0, 0.0  # this process's own, not saved

    def state_dict(self):
        return {"step": self.step, "rng": self.rng.bit_generator.state, "losses": self.losses, "seconds": self.seconds}

    def load_state_dict(self, state):
        self.step, self.losses, self.seconds = state["step"], state["losses"], state["seconds"]
        self.rng.bit_generator.state = state["rng"]


class Trainer:
    """One training on Accelerate: data shares, DDP, autocast, accumulation, clipping, checkpoints.

        trainer = Trainer("tiny-clip", out, config, options)
        model, optimizer = trainer.prepare(model, optimizer, schedule)
        for _ in trainer.steps(config.steps):
            idx = trainer.rng.choice(...)                      # the global batch, the same everywhere
            for rows in trainer.micro_batches(len(idx)):       # this process's rows of it
                trainer.backward(loss_of(idx[rows]))
        trainer.save([model, processor], "loss curve title")

    config: the dataclass of what is learnt (recorded; a resumed checkpoint must match it; its
    seed seeds everything); out: the model folder (None: no checkpoints, nothing saved);
    batch_size: the global batch (default config.batch_size); contrastive: the loss needs the
    whole batch at once (gather, no micro-batches); bf16_on_cpu: autocast to bf16 on a CPU with
    fast bf16 (GPUs with bf16 always do).

    With options.nproc > 1 outside a launcher, the constructor only checks the run, starts
    `accelerate launch` on the same command and exits with its status: the N processes train.
    """

    def __init__(self, name, out, config, options=Options(), batch_size=None, contrastive=False, bf16_on_cpu=False):
        self.name, self.out, self.config, self.options = name, out and Path(out), config, options
        self.batch_size = batch_size or jsonable(config)["batch_size"]
        checkpointing = bool(self.out and options.save_every)
        if options.nproc > 1 and not launched():
            check_split(config, options.nproc, options.grad_accum, contrastive)
            if checkpointing:
                checkpoints.to_resume(self.out, name, config, options.resume)
            launch(options, name)
        check_split(config, world_size(), options.grad_accum, contrastive)
        self.resume_from = checkpointing and checkpoints.to_resume(self.out, name, config, options.resume)
        device = runtime.pick_device(options.device)
        fast = runtime.trains_in_bf16(device)
        bf16 = fast and options.precision == "auto" and (bf16_on_cpu or device.type != "cpu")
        # One mixed-precision setting per process (Accelerate's state is shared); a trainer whose
        # small matmuls run slower in bf16 on a CPU turns autocast off for its own models.
        self.accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision="bf16" if fast else "no",
            gradient_accumulation_steps=options.grad_accum,
            dataloader_config=DataLoaderConfiguration(split_batches=True),  # the schedule steps once per step
            kwargs_handlers=[AutocastKwargs(enabled=bf16)],
        )
        self.precision = "bf16" if bf16 else "fp32"
        self.num_processes, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main, self.device = self.accelerator.is_main_process, self.accelerator.device
        seed = jsonable(config)["seed"]
        runtime.seed_everything(seed)  # the same initial weights on every process
        self.progress = Progress(seed)
        self.accelerator.register_for_checkpointing(self.progress)
        self.model = None

    @property
    def rng(self):
        """The data-order generator: the same draws on every process, restored by --resume."""
        return self.progress.rng

    def prepare(self, model, optimizer, schedule):
        """Model, optimiser and schedule onto the device and into DDP; the checkpoint loaded if resuming."""
        self.model, optimizer, self.schedule = self.accelerator.prepare(model, optimizer, schedule)
        self.optimizer = optimizer
        if self.num_processes > 1 and self.options.time_comm:
            self.model.register_comm_hook(self, timed_allreduce)
        if self.resume_from:
            self.accelerator.load_state(self.resume_from)
            if self.is_main:
                print(f"{self.name}: resumed from {self.resume_from} (step {self.progress.step})")
        return self.model, optimizer

    def unwrap(self, model=None):
        return self.accelerator.unwrap_model(model or self.model)

    def micro_batches(self, batch_size):
        """This process's slices of the global batch, one per micro-batch, each inside Accelerate's
        accumulate() (gradients are averaged over processes only after the last one)."""
        for rows in shares(batch_size, self.rank, self.num_processes, self.options.grad_accum):
            with self.accelerator.accumulate(self.model):
                yield rows

    def gather(self, rows):
        """This process's rows -> the global batch's (a contrastive loss's negatives); see GatherWithGrad."""
        if self.num_processes == 1:
            return rows
        start = time.perf_counter()
        out = GatherWithGrad.apply(rows)
        self.progress.comm_seconds += time.perf_counter() - start
        return out

    def share_of_mean(self, mean, count, total):
        """A mean over this share's `count` items (tokens), as its part of the mean over all `total`
        items of the global batch: mean·count/total, times the P·K shares that DDP and accumulation average."""
        return mean * count / total * self.num_processes * self.options.grad_accum

    def backward(self, loss):
        self.accelerator.backward(loss)
        self.step_loss += loss.detach().float() / self.options.grad_accum

    def steps(self, total):
        """Step numbers from where the run stands (0, or the resumed checkpoint's) up to `total`.
        After each step: clip, optimiser and schedule step, the loss (averaged over processes),
        the progress bar, and a checkpoint every save_every steps and at the last."""
        bar = tqdm(
            total=total,
            initial=self.progress.step,
            desc=self.name,
            disable=not (self.options.progress and self.is_main),
        )
        if self.is_main and self.progress.step < total:
            share = self.batch_size // (self.num_processes * self.options.grad_accum)
            print(
                f"{self.name}: {plural(self.num_processes, 'process')} × "
                f"{plural(self.options.grad_accum, 'micro-batch')} of {share} = global batch {self.batch_size}, "
                f"{self.device}, {self.precision}",
                file=sys.stderr,
            )
        while self.progress.step < total:
            self.step_loss = torch.zeros((), device=self.device)
            start = time.perf_counter()
            yield self.progress.step
            self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.accelerator.reduce(self.step_loss, "mean").item()
            self.progress.seconds += time.perf_counter() - start
            self.progress.session_seconds += time.perf_counter() - start
            self.progress.session_steps += 1
            self.progress.losses.append(loss)
            self.progress.step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
            if (
                self.out
                and self.options.save_every
                and (self.progress.step % self.options.save_every == 0 or self.progress.step == total)
            ):
                checkpoints.save(self.accelerator, self.out, self.name, self.progress.step, self.config)
        bar.close()

    def record(self):
        """What training.json says about how the run ran."""
        p = self.progress
        seconds = p.session_seconds or float("nan")  # this session's steps: a resumed run's too
        return {
            "num_processes": self.num_processes,
            "grad_accum": self.options.grad_accum,
            "device": str(self.device),
            "precision": self.precision,
            "train_minutes": round(p.seconds / 60, 2),
            "samples_per_s": round(self.batch_size * p.session_steps / seconds, 1) if p.session_steps else None,
            "comm_share": round(p.comm_seconds / seconds, 3) if self.options.time_comm and p.session_steps else None,
        }

    def save(self, parts, title, curves=(), **extra):
        """save_pretrained each part (model, processor, pipeline) with loss.png, the `curves` (more
        pictures: (file name, losses, title)) and training.json into a new folder that takes the
        place of `out` when every file is written (cli.atomic_folder): the run's checkpoints go with
        the old folder, and a crash before that leaves them for --resume."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            final_loss = float(np.mean(self.progress.losses[-50:]))
            record = {**jsonable(self.config), **extra, "final_loss": final_loss, **self.record()}
            with cli.atomic_folder(self.out) as staging:
                for part in parts:
                    (self.unwrap(part) if isinstance(part, torch.nn.Module) else part).save_pretrained(staging)
                for name, losses, curve_title in [("loss.png", self.progress.losses, title), *curves]:
                    viz.curve(losses, staging / name, curve_title)
                record["provenance"] = {
                    "config": jsonable(self.config),
                    **provenance.record(self.options.command or (sys.argv[0],), staging),
                }
                (staging / "training.json").write_text(json.dumps(record, indent=2) + "\n")
            print(
                f"saved {self.out} ({record['train_minutes']:.1f} min on {plural(self.num_processes, 'process')}, "
                f"final loss {final_loss:.3f}); loss curve: {self.out / 'loss.png'}"
            )
        self.accelerator.wait_for_everyone()


def timed_allreduce(trainer, bucket):
    """DDP's gradient average, bucket by bucket, blocking so that its time can be measured:
    g ← (Σ_p g_p) / P."""
    start = time.perf_counter()
    grad = bucket.buffer()
    dist.all_reduce(grad)
    grad /= dist.get_world_size()
    trainer.progress.comm_seconds += time.perf_counter() - start
    future = torch.futures.Future()
    future.set_result(grad)
    return future
