"""Week 7: what CLIP's projection heads are for, measured (the plan's verification exercise).

Each tower ends in its own feature space: the ViT's pooled [CLS] vector and the text encoder's
pooled end-of-text vector. A linear projection per tower (W_v, W_t) maps both into one shared
space, where the contrastive loss makes matching pairs close:

    v = W_v · ViT(image),  t = W_t · TextEncoder(caption),  score = cos(v, t)

Two experiments on ShapesWorld:
  - inference on the bundled model: the heads removed (compare the towers' features directly),
    replaced by random matrices, or swapped; how far retrieval drops.
  - training from scratch, same budget and seed, with heads vs without (infonce_lab.py's loop).

Without heads the towers must have the same width to be compared at all: the tiny CLIP's are
both 64-d, so it trains; openai/clip-vit-base-patch32's are 768-d (vision) and 512-d (text), and
a dot product between them is not even defined.

    python -m stage2_fundamentals.projection [--steps 400] [--json]
"""

import torch
from torch import nn
from transformers import CLIPConfig

from curriculum import cli, shapesworld, training, zoo
from stage2_fundamentals import infonce_lab

OUT = "outputs/week7"
BATCH = 256  # the training ablation's contrastive batch


def with_heads(model, visual, text):
    """A copy of the model's forward with other heads: the towers stay, the projections change."""
    model.visual_projection, model.text_projection = visual, text
    return model


def random_head(layer, seed):
    head = nn.Linear(layer.in_features, layer.out_features, bias=False)
    nn.init.normal_(head.weight, std=layer.in_features**-0.5, generator=torch.Generator().manual_seed(seed))
    return head


def inference_ablation(n=1000):
    samples = shapesworld.generate("test", n)
    variants = {
        "bundled model (trained heads)": lambda v, t: (v, t),
        "heads removed (towers' features compared directly)": lambda v, t: (nn.Identity(), nn.Identity()),
        "heads replaced by random matrices": lambda v, t: (random_head(v, 1), random_head(t, 2)),
        "heads swapped (vision's on text, text's on vision)": lambda v, t: (t, v),
    }
    rows = []
    for name, heads in variants.items():
        model, processor = zoo.load_clip("tiny", "cpu")
        with_heads(model, *heads(model.visual_projection, model.text_projection))
        rows.append({"variant": name} | infonce_lab.evaluate(model, processor, samples=samples))
    return rows


def training_ablation(steps, batch_size=BATCH, options=training.Options()):
    rows = []
    for projection in (True, False):
        run = infonce_lab.Run(steps, batch_size, projection=projection)
        model, processor, losses, seconds = infonce_lab.train(run, options=options)
        if training.is_main_process():
            variant = "trained with projection heads" if projection else "trained without projection heads"
            final_loss = round(sum(losses[-20:]) / len(losses[-20:]), 4)
            rows.append(
                {
                    "variant": variant,
                    "steps": steps,
                    "batch_size": batch_size,
                    "seconds": round(seconds, 1),
                    "final_loss": final_loss,
                }
                | infonce_lab.evaluate(model, processor)
            )
    return rows


def vit_b32_shapes():
    """The real checkpoint's widths, from its config alone (CLIPConfig's defaults are ViT-B/32's)."""
    c = CLIPConfig()
    return {
        "vision_hidden": c.vision_config.hidden_size,
        "text_hidden": c.text_config.hidden_size,
        "projection_dim": c.projection_dim,
    }


def run(steps=400, out=OUT, options=training.Options()):
    """Both ablations; with several processes they train together and the main one measures and writes."""
    training.start(options, "projection ablation", [BATCH], contrastive=True)
    trained = training_ablation(steps, options=options)
    if not training.is_main_process():
        return None
    result = {"inference": inference_ablation(), "training": trained, "vit_b32": vit_b32_shapes()}
    cli.write_json(result, f"{out}/projection.json")
    return result


def print_result(result):
    print("At inference, on the bundled tiny CLIP (1000 test images):")
    print(f"{'':<54}{'t->i R@1':>10}{'i->t R@1':>10}")
    for r in result["inference"]:
        print(f"{r['variant']:<54}{r['text_to_image_R@1']:>10.3f}{r['image_to_text_R@1']:>10.3f}")
    print("\nTrained from scratch, same steps, batch and seed:")
    for r in result["training"]:
        print(
            f"{r['variant']:<54}{r['text_to_image_R@1']:>10.3f}{r['image_to_text_R@1']:>10.3f}"
            f"   loss {r['final_loss']:.3f}, {r['seconds']:.0f} s"
        )
    v = result["vit_b32"]
    print(
        f"\nopenai/clip-vit-base-patch32: vision features {v['vision_hidden']}-d, text features {v['text_hidden']}-d, "
        f"both projected to {v['projection_dim']}-d. Without the heads a {v['vision_hidden']}-d image vector and a "
        f"{v['text_hidden']}-d text vector cannot be compared at all; the heads are what makes one shared space."
    )


def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.projection", description=__doc__, formatter_class=cli.RawHelp
    )
    parser.add_argument(
        "--steps",
        type=infonce_lab.STEPS,
        default=400,
        help=f"training steps per run, {infonce_lab.STEPS_RANGE} (default 400)",
    )
    parser.add_argument("--out", type=cli.OutFolder(), default=OUT, help=f"folder for projection.json (default {OUT})")
    parser.add_argument("--json", action="store_true")
    training.add_run_args(parser, checkpoints=False)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = run(args.steps, args.out, training.Options.from_args(args, __spec__.name, argv))
    if result is not None:  # the main process's
        cli.emit(result, args.json, print_result)


if __name__ == "__main__":
    cli.run(main)
