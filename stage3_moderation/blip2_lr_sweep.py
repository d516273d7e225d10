"""Week 6's learning-rate lesson on a fine-tune: BLIP-2 taught compliance questions at each rate.

The same fine-tune as the bundled compliance model (curriculum/tiny_blip2_compliance.py: from the
bundled tiny BLIP-2, its vision tower frozen, half the bundled model's mix and half balanced yes/no
questions such as "is there a red cross?"), on a small budget, at each learning rate, with the
usual linear warm-up over the first 5% of the steps and without it (the peak rate from step one),
the same cosine decay after. Each run records

    training loss     the captioning loss of each step's mixed batch, as the trainer logs it
    held-out loss     every PROBE_EVERY steps: -log p(right answer) on one fixed set of compliance
                      questions about test scenes (ln 2 ≈ 0.69 would be a coin flip between the answers)
    final quality     week 9's questions (vqa_rule.QUESTIONS) on its test scenes: precision and recall
                      at p(yes) ≥ 0.5, and the AUC of p(yes) (vqa_rule.separation)

and draws every run's two loss curves on one picture.

    python -m stage3_moderation.blip2_lr_sweep [--steps 600] [--rates 1e-5 1e-3] [--warmup both] [--out FILE.json]
"""

import math
import time
from dataclasses import replace

import numpy as np
import torch

from curriculum import OUTPUTS_DIR, cli, shapesworld, training, viz, zoo
from curriculum import tiny_blip2_compliance as compliance
from curriculum.provenance import shown
from curriculum.tiny_blip2 import IMAGE_SIZE, batch_tokens, fit_captions, pixels, qa_prompt
from stage3_moderation import policy as policies
from stage3_moderation.vqa_rule import QUESTIONS, separation, yes_probability

RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
STEPS, BATCH_SIZE, POOL = 600, 32, 2_000  # the bundled fine-tune: 4,000 steps × 64 from a pool of 10,000
PROBE_QUESTIONS, PROBE_SEED, PROBE_EVERY = 128, 2, 25
TEST_SCENES, TEST_SEED = 600, 1  # week 9's scenes (`policy evaluate`'s)
THRESHOLD = 0.5
OUT = OUTPUTS_DIR / "week6" / "blip2_lr.json"


# ---------------------------------------------------------------- the held-out loss
def probe_set(n=PROBE_QUESTIONS, seed=PROBE_SEED):
    """n compliance questions about n test scenes, drawn as in training (half 'yes', the 'no's mostly
    near misses): (pixel arrays, prompts, answers)."""
    rng = np.random.default_rng(seed)
    scenes = shapesworld.generate("test", n, seed=seed, size=IMAGE_SIZE)
    questions = [compliance.compliance_question(s.objects, rng) for s in scenes]
    return (
        np.stack([np.asarray(s.image) for s in scenes]),
        [qa_prompt(q) for q, _ in questions],
        [a for _, a in questions],
    )


@torch.no_grad()
def answer_loss(model, processor, probe, batch_size=64):
    """Mean -log p(answer) over the probe's questions: the cross-entropy of the answer's token, read
    where the training loss reads it (batch_tokens' labels), in eval mode."""
    images, prompts, answers = probe
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    total = 0.0
    for i in range(0, len(prompts), batch_size):
        input_ids, attention_mask, labels = batch_tokens(
            processor, prompts[i : i + batch_size], answers[i : i + batch_size]
        )
        logits = model(
            pixel_values=pixels(images[i : i + batch_size], processor.image_processor).to(device),
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
        ).logits.float()
        first = (labels != -100).int().argmax(dim=1)  # the answer's position; logits one before predict it
        rows = torch.arange(len(first))
        log_p = logits[rows, first - 1].log_softmax(dim=-1).cpu()
        total -= log_p[rows, labels[rows, first]].sum().item()
    model.train(was_training)
    return total / len(prompts)


class ProbedTrainer(training.Trainer):
    """The repository's trainer, measuring the held-out loss every `every` steps (before the first
    and after the last too). The probe draws no random numbers and runs in eval mode, so the run's
    steps are those of tiny_blip2_compliance.train with the same Config."""

    def __init__(self, *args, every=PROBE_EVERY, **kwargs):
        super().__init__(*args, **kwargs)
        self.every, self.probe, self.probed = every, None, []

    def steps(self, total):
        for step in super().steps(total):  # `step` steps are done when the next one starts
            if self.probe and self.is_main and step % self.every == 0:
                self.probed.append([step, round(self.probe(self.unwrap()), 4)])
            yield step
        if self.probe and self.is_main:
            self.probed.append([total, round(self.probe(self.unwrap()), 4)])


def fine_tune(config, probe=None, every=PROBE_EVERY, options=training.Options()):
    """tiny_blip2_compliance.train's fine-tune, with the held-out loss measured on the way and
    nothing saved. Returns (model in eval mode, processor, trainer)."""
    name = f"blip2 lr {config.lr:g}" + ("" if config.warmup else ", no warm-up")
    trainer = ProbedTrainer(name, None, config, options, every=every)
    model, processor = zoo.load_blip2(config.base, "cpu")
    model = model.float().train()
    model.vision_model.requires_grad_(False)
    if probe is not None:
        trainer.probe = lambda m: answer_loss(m, processor, probe)
    model = fit_captions(
        trainer,
        model,
        processor,
        config,
        compliance.example,
        lambda optimizer: training.warmup_cosine(optimizer, config.steps, warmup=config.warmup),
        options,
    )
    return trainer.unwrap(model).eval(), processor, trainer


# ---------------------------------------------------------------- final quality
def week9_scenes(n=TEST_SCENES, seed=TEST_SEED):
    """Week 9's test scenes, what each should be flagged for, and which hold a held-out pair."""
    samples = shapesworld.generate("test", n, seed)
    policy = policies.load(policies.DEFAULT_POLICY)
    expected = {c: np.array([policies.truth(policy.name, s.objects)[c] for s in samples]) for c in QUESTIONS}
    return [s.image for s in samples], expected, np.array([s.heldout for s in samples])


def median(values):
    return round(float(np.median(values)), 4) if len(values) else None


def quality(model, processor, scenes, threshold=THRESHOLD):
    """Per category of week 9: precision and recall at p(yes) ≥ threshold, the AUC of p(yes), and
    the median p(yes) with and without the symbol."""
    images, expected, heldout = scenes
    out = {}
    for category, question in QUESTIONS.items():
        p_yes = yes_probability(model, processor, images, question)
        counts = policies.confusion(p_yes >= threshold, expected[category], heldout)
        out[category] = {k: counts[k] for k in ("precision", "recall", "tp", "fp", "fn")} | {
            "auc": separation(p_yes, expected[category]),
            "median_p_yes_with": median(p_yes[expected[category]]),
            "median_p_yes_without": median(p_yes[~expected[category]]),
        }
    return out


def window_means(losses, every):
    """The training loss averaged over each `every` steps (what the JSON keeps; the picture draws all)."""
    return [round(float(np.mean(losses[i : i + every])), 4) for i in range(0, len(losses), every)]


def sweep(
    steps=STEPS,
    rates=RATES,
    batch_size=BATCH_SIZE,
    pool=POOL,
    n=TEST_SCENES,
    warmups=(True, False),
    questions=PROBE_QUESTIONS,
    options=training.Options(),
):
    """Every rate with and without warm-up, from the same bundled model, seed, data and probe.
    Returns (result, {(lr, warm-up): training losses}), or None in a --nproc run's other processes."""
    training.start(options, "blip2 lr sweep", [batch_size])
    every = max(1, min(PROBE_EVERY, steps // 4))
    probe = probe_set(questions)
    scenes = week9_scenes(n) if training.is_main_process() else None
    base = compliance.Config(steps=steps, batch_size=batch_size, pool=pool)
    rows, curves = [], {}
    for warmup in warmups:
        for lr in sorted(rates):
            config = replace(base, lr=lr, warmup=warmup)
            start = time.perf_counter()
            model, processor, trainer = fine_tune(config, probe, every, options)
            if not training.is_main_process():
                continue
            losses = trainer.progress.losses
            curves[(lr, warmup)] = losses
            rows.append(
                {
                    "lr": lr,
                    "warmup": warmup,
                    "first_loss": round(losses[0], 4),
                    "final_loss": round(float(np.mean(losses[-max(1, steps // 10) :])), 4),
                    "max_loss": round(float(np.nanmax(losses)), 4),
                    "heldout_first": trainer.probed[0][1],
                    "heldout_final": trainer.probed[-1][1],
                    "heldout_min": min(loss for _, loss in trainer.probed),
                    "categories": quality(model, processor, scenes),
                    "train_seconds": round(trainer.progress.seconds, 1),
                    "seconds": round(time.perf_counter() - start, 1),
                    "train_loss_by_window": window_means(losses, every),
                    "heldout_loss": trainer.probed,
                }
            )
    if not training.is_main_process():
        return None
    images, expected, heldout = scenes
    return {
        "base": "tiny",
        "steps": steps,
        "batch_size": batch_size,
        "pool": pool,
        "warmup_steps": max(1, steps // 20),
        "final_loss_over": max(1, steps // 10),
        "probe": {"questions": len(probe[1]), "every": every, "scenes": f"test split, seed {PROBE_SEED}"},
        "test": {
            "n": len(images),
            "seed": TEST_SEED,
            "threshold": THRESHOLD,
            "questions": QUESTIONS,
            "positives": {c: int(e.sum()) for c, e in expected.items()},
            "scenes_with_a_held_out_pair": int(heldout.sum()),
        },
        "rows": rows,
    }, curves


# ---------------------------------------------------------------- the picture
def smooth(losses, width):
    """A trailing mean over `width` steps (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(losses, float), 0, 0.0))
    ends = np.arange(1, len(losses) + 1)
    starts = np.maximum(0, ends - width)
    return (c[ends] - c[starts]) / (ends - starts)


def plot(result, curves, out):
    """One picture: columns with / without warm-up (those run); rows the training loss (smoothed) and the held-out
    answer loss; one colour per rate, the same in every panel; log y (a diverging run spans decades)."""
    plt = viz._pyplot()
    rates = sorted({row["lr"] for row in result["rows"]})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(rates)))
    warmups = [w for w in (True, False) if any(r["warmup"] == w for r in result["rows"])]
    fig, axes = plt.subplots(2, len(warmups), figsize=(5.5 * len(warmups), 7), sharex=True, sharey="row", squeeze=False)
    width = max(1, result["steps"] // 30)
    for column, warmup in enumerate(warmups):
        for row in (r for r in result["rows"] if r["warmup"] == warmup):
            colour = colours[rates.index(row["lr"])]
            losses = curves[(row["lr"], warmup)]
            axes[0][column].plot(range(1, len(losses) + 1), smooth(losses, width), color=colour, linewidth=1)
            steps, heldout = zip(*row["heldout_loss"])
            axes[1][column].plot(steps, heldout, color=colour, marker=".", label=f"lr {row['lr']:g}")
        ramp = training.plural(result["warmup_steps"], "step")
        what = f"linear warm-up over {ramp}" if warmup else "no warm-up: the peak rate at once"
        axes[0][column].set_title(f"{what}, then cosine", fontsize=9)
        axes[1][column].set_xlabel("step")
    axes[0][0].set_ylabel(f"training loss\n(mean of {width} steps)")
    axes[1][0].set_ylabel(f"held-out answer loss\n({result['probe']['questions']} questions)")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[1][-1].legend(fontsize=8)
    fig.suptitle(
        f"tiny BLIP-2 fine-tuned on compliance questions, {result['steps']} steps × {result['batch_size']}, AdamW",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- command line
def print_result(result):
    t = result["test"]
    print(
        f"{result['steps']} steps × {result['batch_size']} from the bundled tiny BLIP-2 each; held-out loss on "
        f"{result['probe']['questions']} questions (ln 2 = {math.log(2):.2f}: a coin flip); {t['n']} test scenes, "
        f"positives {t['positives']}\n"
    )
    header = f"{'lr':>8}{'warm-up':>9}{'train loss':>12}{'held-out':>10}"
    for category in t["questions"]:
        header += f"{category + ' P/R':>22}{'AUC':>7}"
    print(header)
    for r in result["rows"]:
        line = f"{r['lr']:>8g}{'yes' if r['warmup'] else 'no':>9}{r['final_loss']:>12.3f}{r['heldout_final']:>10.3f}"
        for c in r["categories"].values():
            auc = "-" if c["auc"] is None else f"{c['auc']:.3f}"
            line += f"{c['precision']:>14.3f} /{c['recall']:>6.3f}{auc:>7}"
        print(line)
    print(f"\npicture: {result['plot']}")


def build_parser():
    parser = cli.Parser(
        prog="python -m stage3_moderation.blip2_lr_sweep", description=__doc__, formatter_class=cli.RawHelp
    )
    parser.add_argument(
        "--steps",
        type=cli.Count(4, training.MAX_STEPS),
        default=STEPS,
        help=f"optimiser steps per run, 4 to {training.MAX_STEPS:,} (default {STEPS})",
    )
    parser.add_argument(
        "--rates",
        nargs="+",
        type=cli.Number(1e-7, 1.0),
        default=list(RATES),
        metavar="LR",
        help="peak learning rates, 1e-7 to 1, each with and without warm-up "
        f"(default {' '.join(map('{:g}'.format, RATES))})",
    )
    parser.add_argument(
        "--batch-size",
        type=cli.Count(1, training.MAX_BATCH),
        default=BATCH_SIZE,
        help=f"images per step, up to {training.MAX_BATCH:,} (default {BATCH_SIZE})",
    )
    parser.add_argument(
        "--pool",
        type=cli.Count(1, training.MAX_POOL),
        default=POOL,
        help=f"ShapesWorld training images, at least the batch, up to {training.MAX_POOL:,} (default {POOL:,})",
    )
    parser.add_argument(
        "--warmup",
        choices=("both", "on", "off"),
        default="both",
        help="run each rate with the warm-up, without it, or both (default both)",
    )
    parser.add_argument(
        "--n",
        type=cli.Count(2, 10_000),
        default=TEST_SCENES,
        help=f"test scenes the final quality is measured on, 2 to 10,000 (default {TEST_SCENES}, week 9's)",
    )
    parser.add_argument(
        "--out",
        type=cli.OutFile(".json"),
        default=str(OUT),
        help=f"the result JSON, and the loss curves beside it as .png (default {shown(OUT)})",
    )
    training.add_run_args(parser, checkpoints=False)
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.pool < args.batch_size:
        raise cli.UserError(
            f"a batch of {args.batch_size} is drawn without repeats from --pool {args.pool}: "
            "make the pool at least as large as the batch"
        )
    rates = sorted(set(args.rates))
    options = training.Options.from_args(args, __spec__.name, argv)
    warmups = {"both": (True, False), "on": (True,), "off": (False,)}[args.warmup]
    swept = sweep(args.steps, rates, args.batch_size, args.pool, args.n, warmups, options=options)
    if swept is None:  # another process's share of a --nproc run
        return
    result, curves = swept
    picture = cli.beside(args.out, ".png")
    result["plot"] = shown(picture)
    with cli.atomic_paths(args.out, picture) as (json_path, png_path):  # both or neither
        plot(result, curves, png_path)
        cli.write_json(result, json_path)
    cli.emit(result, args.json, print_result)


if __name__ == "__main__":
    cli.run(main)
