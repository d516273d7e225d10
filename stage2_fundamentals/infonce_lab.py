"""Week 6's lab: info_nce (infonce.py) proved equal to CLIP's loss, a tiny CLIP trained with it in a
loop of its own, and what the negatives (the batch) and the temperature do.

    python -m stage2_fundamentals.infonce_lab check [--json]
    python -m stage2_fundamentals.infonce_lab train [--steps 1200] [--batch-size 256] [--nproc 2]
    python -m stage2_fundamentals.infonce_lab negatives [--steps 300]
    python -m stage2_fundamentals.infonce_lab lr [--steps 150]
    python -m stage2_fundamentals.infonce_lab towers [--steps 300]
"""

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from curriculum import checks, cli, shapesworld, training, viz, zoo
from curriculum.tiny_clip import build_config, contrastive_loss, pixels
from stage1_demos.clip_retrieval import embed_images, embed_texts, recall_table
from stage2_fundamentals.cnn_tower import ConvTower
from stage2_fundamentals.infonce import info_nce, positives_only

OUT = Path("outputs/week6")
STEPS = cli.Count(1, training.MAX_STEPS)  # a lab's training steps, per run
STEPS_RANGE = f"up to {training.MAX_STEPS:,}"


# ---------------------------------------------------------------- check
@torch.no_grad()
def run_checks():
    model, processor = zoo.load_clip("tiny", "cpu")
    samples = shapesworld.generate("train", 64)
    inputs = processor(
        text=[s.caption_en for s in samples], images=[s.image for s in samples], padding=True, return_tensors="pt"
    )
    out = model(**inputs, return_loss=True)
    ours = info_nce(out.image_embeds, out.text_embeds, model.logit_scale)
    gen = torch.Generator().manual_seed(0)
    image, text, scale = torch.randn(32, 16, generator=gen), torch.randn(32, 16, generator=gen), torch.tensor(2.3)
    theirs = image_text_contrastive_loss(scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T)
    week1 = contrastive_loss(out.logits_per_text, torch.eye(len(samples)))
    return {
        "checks": [
            checks.record(
                "info_nce vs CLIPModel(return_loss=True).loss, tiny CLIP, 64 real ShapesWorld pairs",
                ours,
                out.loss,
                atol=1e-6,
            ),
            checks.record(
                "info_nce vs transformers image_text_contrastive_loss, random 32 x 16 embeddings, log(1/τ) = 2.3",
                info_nce(image, text, scale),
                theirs,
                atol=1e-6,
            ),
            checks.record("week 1's multi-positive loss with one positive each vs info_nce", week1, ours, atol=1e-6),
        ]
    }


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class Run:
    """One training of a tiny CLIP from scratch (the bundled one's architecture and tokenizer)."""

    steps: int = 1200
    batch_size: int = 256
    temperature: float = None  # None: learned, as in CLIP; a number: fixed τ
    negatives: bool = True  # False: positives_only, no denominator
    projection: bool = True  # False: compare the towers' features directly (both are 64-d here)
    lr: float = 1e-3
    warmup: bool = True  # False: the full learning rate from the first step (then the same cosine decay)
    tower: str = "vit"  # the image tower: "vit" (CLIP's) or "cnn" (cnn_tower.ConvTower)
    seed: int = 0

    def label(self):
        if not self.negatives:
            return f"no negatives, batch {self.batch_size}"
        tau = "learned τ" if self.temperature is None else f"τ = {self.temperature:g}"
        label = f"batch {self.batch_size}, {tau}" + ("" if self.projection else ", no projection heads")
        if self.lr != Run.lr or not self.warmup:
            label += f", lr {self.lr:g}" + ("" if self.warmup else ", no warm-up")
        return label + (", CNN image tower" if self.tower == "cnn" else "")


def new_model(run):
    processor = zoo.load_clip("tiny", "cpu")[1]
    torch.manual_seed(run.seed)
    model = CLIPModel(build_config(processor.tokenizer))
    if run.tower == "cnn":  # same width out (64), so the same projection head follows
        model.vision_model = ConvTower(hidden=model.config.vision_config.hidden_size)
    if not run.projection:  # v and t compared as the towers give them: only possible when widths match
        model.visual_projection, model.text_projection = nn.Identity(), nn.Identity()
    if run.temperature is not None:
        model.logit_scale.data.fill_(math.log(1 / run.temperature))
        model.logit_scale.requires_grad_(False)
    return model, processor


@functools.lru_cache(maxsize=2)
def training_pool(size, seed):
    """ShapesWorld train samples and their pixels, drawn once per process for all the runs of a sweep."""
    data = shapesworld.generate("train", size, seed=seed, progress=training.is_main_process())
    return data, np.stack([np.asarray(s.image) for s in data])


def train(run, pool=30_000, options=training.Options()):
    """Own loop: a fresh full caption (random template) each time an image is drawn.
    Returns (model, processor, losses, seconds)."""
    trainer = training.Trainer(run.label(), None, run, options, contrastive=run.negatives)
    model, processor = new_model(run)
    data, images = training_pool(pool, run.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=0.1, betas=(0.9, 0.98))
    model, optimizer = trainer.prepare(model, optimizer, training.warmup_cosine(optimizer, run.steps, run.warmup))
    for _ in trainer.steps(run.steps):
        idx = trainer.rng.choice(pool, run.batch_size, replace=False)
        captions = [
            shapesworld.caption_en(data[i].objects, int(trainer.rng.integers(len(shapesworld.EN_TEMPLATES))))
            for i in idx
        ]
        for rows in trainer.micro_batches(run.batch_size):
            text = processor.tokenizer(captions[rows], padding=True, return_tensors="pt").to(trainer.device)
            out = model(**text, pixel_values=pixels(images[idx[rows]], processor.image_processor).to(trainer.device))
            if run.negatives:  # the negatives are the whole global batch: every process's rows
                loss = info_nce(
                    trainer.gather(out.image_embeds), trainer.gather(out.text_embeds), trainer.unwrap().logit_scale
                )
            else:
                loss = positives_only(out.image_embeds, out.text_embeds)
            trainer.backward(loss)
    return trainer.unwrap().eval().cpu(), processor, trainer.progress.losses, trainer.progress.seconds


def evaluate(model, processor, n=1000, samples=None):
    """Recall on n test-split samples (or the given ones), and how spread out the image embeddings
    are: the mean cosine between different images (near 1: everything collapsed onto one direction)."""
    samples = samples or shapesworld.generate("test", n)
    n = len(samples)
    image_vectors = embed_images(model, processor, [s.image for s in samples])
    text_vectors = embed_texts(model, processor, [s.caption_en for s in samples])
    cos = image_vectors @ image_vectors.T
    off_diagonal = (cos.sum() - np.trace(cos)) / (n * (n - 1))
    table = recall_table(samples, image_vectors, text_vectors)
    return {
        "text_to_image_R@1": table["text_to_image"]["R@1"],
        "heldout_text_to_image_R@1": table["heldout_combinations"]["R@1"],
        "image_to_text_R@1": table["image_to_text"]["R@1"],
        "mean_cos_between_images": round(float(off_diagonal), 4),
    }


def save_result(result, out, name, plot, data, *args, picture=None, key="plot", **kwargs):
    """out/name.json and its picture, plot(data, path, *args, **kwargs) (out/name.png unless named),
    written together: both appear, or neither (cli.atomic_paths). The picture's path goes in the
    result under `key`."""
    json_path, picture = Path(out) / f"{name}.json", Path(out) / (picture or f"{name}.png")
    result[key] = str(picture)
    with cli.atomic_paths(picture, json_path) as (picture_file, json_file):
        plot(data, picture_file, *args, **kwargs)
        cli.write_json(result, json_file)
    return result


def train_command(run, out, options):
    model, processor, losses, seconds = train(run, options=options)
    if not training.is_main_process():  # the other processes helped train; one evaluates and writes
        return None
    ours, bundled = evaluate(model, processor), evaluate(*zoo.load_clip("tiny", "cpu"))
    result = {
        "run": asdict(run),
        "seconds": round(seconds, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "ours": ours,
        "bundled": bundled,
        "gap_R@1": round(bundled["text_to_image_R@1"] - ours["text_to_image_R@1"], 4),
    }
    title = f"tiny CLIP with info_nce: {run.label()}"
    return save_result(result, out, "train", viz.curve, losses, title, picture="infonce_loss.png", key="loss_curve")


def print_train(result):
    print(
        f"trained {result['run']['steps']} steps x {result['run']['batch_size']} in {result['seconds']:.0f} s, "
        f"final loss {result['final_loss']:.3f}; loss curve {result['loss_curve']}"
    )
    print(f"{'':<10}{'text->image R@1':>17}{'image->text R@1':>17}")
    for name in ("ours", "bundled"):
        r = result[name]
        print(f"{name:<10}{r['text_to_image_R@1']:>17.3f}{r['image_to_text_R@1']:>17.3f}")
    print(f"gap to the bundled model (text->image R@1): {result['gap_R@1']:+.3f}")


# ---------------------------------------------------------------- the role of the denominator
def negatives(
    steps=300, out=OUT, batch_sizes=(16, 64, 256), temperatures=(0.01, 0.07, 0.5, 2.0), options=training.Options()
):
    """Same step budget each: R@1 and final loss against batch size (the number of negatives,
    N - 1), against fixed temperatures, and with no negatives at all. A bigger batch at the same
    steps also sees more images: this sweep does not separate the two."""
    runs = (
        [Run(steps, b) for b in batch_sizes]
        + [Run(steps, 64, temperature=t) for t in temperatures]
        + [Run(steps, 64, negatives=False)]
    )
    training.start(options, "infonce negatives", [run.batch_size for run in runs], contrastive=True)
    rows = []
    for run in runs:
        model, processor, losses, seconds = train(run, options=options)
        if training.is_main_process():
            rows.append(
                {
                    "label": run.label(),
                    "batch_size": run.batch_size,
                    "temperature": run.temperature,
                    "negatives": run.negatives,
                    "final_loss": round(float(np.mean(losses[-20:])), 4),
                    "seconds": round(seconds, 1),
                }
                | evaluate(model, processor)
            )
    if not training.is_main_process():
        return None
    by_batch = [r for r in rows if r["negatives"] and r["temperature"] is None]
    by_tau = [r for r in rows if r["temperature"] is not None]
    panels = [
        (
            "R@1 against batch size (N - 1 negatives), learned τ",
            [r["batch_size"] for r in by_batch],
            [r["text_to_image_R@1"] for r in by_batch],
            "batch size",
            "text->image R@1",
        ),
        (
            "R@1 against a fixed temperature τ, batch 64",
            [r["temperature"] for r in by_tau],
            [r["text_to_image_R@1"] for r in by_tau],
            "τ",
            "text->image R@1",
        ),
    ]
    title = f"tiny CLIP, {steps} steps each"
    return save_result({"steps": steps, "rows": rows}, out, "negatives", viz.panels, panels, title, logx=True)


def print_negatives(result):
    print(f"{result['steps']} training steps each; R@1 on 1000 test images; mean cos between images: 1 = collapsed\n")
    print(f"{'run':<32}{'loss':>8}{'t->i R@1':>10}{'i->t R@1':>10}{'mean cos':>10}{'seconds':>9}")
    for r in result["rows"]:
        print(
            f"{r['label']:<32}{r['final_loss']:>8.3f}{r['text_to_image_R@1']:>10.3f}{r['image_to_text_R@1']:>10.3f}"
            f"{r['mean_cos_between_images']:>10.3f}{r['seconds']:>9.1f}"
        )
    print(f"\nplot: {result['plot']}")


# ---------------------------------------------------------------- learning rate and warm-up
LEARNING_RATES = (1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def diverged(losses, batch_size):
    """No better than guessing at the end: the mean loss of the last 20 steps within 3% of log N,
    the loss of uniform scores over the N candidates, or above it (or not a number at all)."""
    end = float(np.mean(losses[-20:]))
    return not math.isfinite(end) or end > 0.97 * math.log(batch_size)


def learning_rates(steps=150, out=OUT, lrs=LEARNING_RATES, batch_size=16, pool=5_000, options=training.Options()):
    """The same tiny CLIP trained at each learning rate, with the 5% linear warm-up and without
    (the full rate from step one, the same cosine decay): loss curves, R@1, where it diverges."""
    runs = [Run(steps, batch_size, lr=lr, warmup=w) for w in (True, False) for lr in lrs]
    training.start(options, "infonce learning rates", [batch_size], contrastive=True)
    rows, curves = [], {True: {}, False: {}}
    for run in runs:
        model, processor, losses, seconds = train(run, pool, options)
        if training.is_main_process():
            curves[run.warmup][f"lr {run.lr:g}"] = losses
            rows.append(
                {
                    "lr": run.lr,
                    "warmup": run.warmup,
                    "first_loss": round(losses[0], 4),
                    "max_loss": round(float(np.nanmax(losses)), 4),
                    "final_loss": round(float(np.mean(losses[-20:])), 4),
                    "diverged": diverged(losses, batch_size),
                    "seconds": round(seconds, 1),
                }
                | evaluate(model, processor)
            )
    if not training.is_main_process():
        return None
    panels = [
        (f"linear warm-up over {max(1, steps // 20)} steps, then cosine", curves[True]),
        ("no warm-up: the full rate from step one, then cosine", curves[False]),
    ]
    title = f"tiny CLIP from scratch, batch {batch_size}, {steps} steps, AdamW: training loss at each learning rate"
    ylim = (0, 1.5 * math.log(batch_size))  # a diverged run's spikes would flatten the rest
    result = {"steps": steps, "batch_size": batch_size, "pool": pool, "chance_loss": round(math.log(batch_size), 4)}
    return save_result(result | {"rows": rows}, out, "learning_rates", viz.curve_panels, panels, title, ylim=ylim)


def print_learning_rates(result):
    print(f"{result['steps']} steps, batch {result['batch_size']}; diverged = final loss above log N = ")
    print(f"{result['chance_loss']:.2f} (guessing)\n")
    print(f"{'lr':>8}{'warm-up':>9}{'max loss':>10}{'final loss':>12}{'t->i R@1':>10}  diverged")
    for r in result["rows"]:
        print(
            f"{r['lr']:>8g}{'yes' if r['warmup'] else 'no':>9}{r['max_loss']:>10.3f}{r['final_loss']:>12.3f}"
            f"{r['text_to_image_R@1']:>10.3f}  {'yes' if r['diverged'] else ''}"
        )
    print(f"\nplot: {result['plot']}")


# ---------------------------------------------------------------- a CNN image tower vs the ViT
@torch.no_grad()
def tower_outputs(model):
    """What a language model could cross-attend to: the vision tower's last hidden state for one
    image (tokens × width), and the pooled vector CLIP's loss uses."""
    out = model.vision_model(pixel_values=torch.zeros(1, 3, 64, 64))
    return {"tokens": list(out.last_hidden_state.shape[1:]), "pooled": list(out.pooler_output.shape[1:])}


def towers(steps=300, batch_size=32, pool=5_000, out=OUT, options=training.Options()):
    """The same contrastive recipe (data, steps, batch, learning rate, text tower, projection
    heads) with CLIP's ViT and with a CNN of about as many parameters: R@1 on seen and held-out
    colour-shape pairs, and what each tower hands on."""
    training.start(options, "infonce towers", [batch_size], contrastive=True)
    rows = []
    for tower in ("vit", "cnn"):
        run = Run(steps, batch_size, tower=tower)
        model, processor, losses, seconds = train(run, pool, options)
        if training.is_main_process():
            rows.append(
                {
                    "tower": tower,
                    "parameters": sum(p.numel() for p in model.vision_model.parameters()),
                    "final_loss": round(float(np.mean(losses[-20:])), 4),
                    "seconds": round(seconds, 1),
                    "losses": [round(x, 4) for x in losses],
                }
                | tower_outputs(model)
                | evaluate(model, processor)
            )
    if not training.is_main_process():
        return None
    curves = {f"{r['tower'].upper()} image tower": r["losses"] for r in rows}
    title = f"tiny CLIP, ViT vs CNN image tower: {steps} steps × {batch_size}"
    result = {"steps": steps, "batch_size": batch_size, "pool": pool, "rows": rows}
    return save_result(result, out, "towers", viz.lines, curves, title, "step", "contrastive loss")


def print_towers(result):
    print(
        f"{result['steps']} steps × {result['batch_size']} each, the same recipe; R@1 text->image on 1000 test images"
    )
    print(f"{'tower':<6}{'params':>9}{'loss':>8}{'seen R@1':>10}{'held-out R@1':>14}  hands on")
    for r in result["rows"]:
        print(
            f"{r['tower']:<6}{r['parameters']:>9,}{r['final_loss']:>8.3f}{r['text_to_image_R@1']:>10.3f}"
            f"{r['heldout_text_to_image_R@1']:>14.3f}  {r['tokens'][0]} tokens × {r['tokens'][1]}"
        )
    print(f"\nplot: {result['plot']}")


# ---------------------------------------------------------------- command line
def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.infonce_lab", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove info_nce equal to CLIPModel's loss")
    fit = sub.add_parser("train", help="train a tiny CLIP with info_nce; R@1 against the bundled model")
    fit.add_argument("--steps", type=STEPS, default=1200, help=f"training steps, {STEPS_RANGE} (default 1200)")
    fit.add_argument(
        "--batch-size",
        type=cli.Count(2, training.MAX_BATCH),
        default=256,
        help=f"contrastive batch (each row's negatives are the others), 2 to {training.MAX_BATCH:,} (default 256)",
    )
    fit.add_argument("--seed", type=cli.Seed(), default=0, help="random seed (default 0)")
    sweep = sub.add_parser("negatives", help="R@1 against batch size, temperature, and no negatives")
    sweep.add_argument("--steps", type=STEPS, default=300, help=f"training steps per run, {STEPS_RANGE} (default 300)")
    lr = sub.add_parser("lr", help=f"loss and R@1 at {len(LEARNING_RATES)} learning rates, with and without warm-up")
    lr.add_argument("--steps", type=STEPS, default=150, help=f"training steps per run, {STEPS_RANGE} (default 150)")
    vs = sub.add_parser("towers", help="the same recipe with a CNN image tower vs the ViT: R@1, seen and held out")
    vs.add_argument("--steps", type=STEPS, default=300, help=f"training steps per tower, {STEPS_RANGE} (default 300)")
    for p in (fit, sweep, lr, vs):
        p.add_argument(
            "--out",
            type=cli.OutFolder(),
            default=str(OUT),
            help=f"folder for the JSON result and the plot (default {OUT})",
        )
        training.add_run_args(p, checkpoints=False)
    for p in (check, fit, sweep, lr, vs):
        p.add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return checks.emit(run_checks(), args.json)
    options = training.Options.from_args(args, __spec__.name, argv)
    if args.command == "train":
        result, show = train_command(Run(args.steps, args.batch_size, seed=args.seed), args.out, options), print_train
    elif args.command == "negatives":
        result, show = negatives(args.steps, args.out, options=options), print_negatives
    elif args.command == "lr":
        result, show = learning_rates(args.steps, args.out, options=options), print_learning_rates
    else:
        result, show = towers(args.steps, out=args.out, options=options), print_towers
    if result is not None:  # the main process's
        cli.emit(result, args.json, show)


if __name__ == "__main__":
    cli.run(main)
