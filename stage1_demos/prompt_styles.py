"""Week 2: the plan's prompt exercise, measured. "请详细描述" (describe in detail) against "用一句话描述"
(describe in one sentence), and the same two requests in English, on many test images: does the
answer change the way the prompt asks?

    python -m stage1_demos.prompt_styles [--n 200] [--out outputs/week2/prompt_styles.json] [--json]

For each prompt: how long the answers are (words), how many shapes they name, how often they say
where a shape is and how big it is, and how often the colour-shape pairs named are exactly the
image's; and how often the English and the Chinese prompt of one request get the very same answer.
The bundled tiny BLIP-2 never learned the one-sentence or Chinese prompts; the model fine-tuned
by `make tiny-blip2-prompts` did (curriculum/tiny_blip2_prompts.py). Both are measured.
"""

import re
from pathlib import Path

import numpy as np

from curriculum import MODELS_DIR, cli, provenance, shapesworld, viz, zoo
from curriculum.tiny_blip2_prompts import PROMPT_STYLES
from stage1_demos.blip2_caption import GREEDY, caption_images

FINE_TUNED = MODELS_DIR / "tiny-blip2-prompts"
PAIR = re.compile(rf"\b({'|'.join(shapesworld.COLORS)}) ({'|'.join(shapesworld.SHAPES)})\b")
POSITION = re.compile(rf"\b({'|'.join(shapesworld.POSITIONS)})\b")
SIZE = re.compile(rf"\b({'|'.join(shapesworld.SIZES)})\b")


def measure(answer, objects):
    """What one answer says: words, shapes named, whether it says where / how big, pairs right."""
    pairs = PAIR.findall(answer)
    return {
        "words": len(answer.split()),
        "shapes_named": len(pairs),
        "says_where": bool(POSITION.search(answer)),
        "says_size": bool(SIZE.search(answer)),
        "pairs_right": sorted(pairs) == sorted((o.color, o.shape) for o in objects),
    }


def same_answer(answers):
    """{asks: share of images whose answers are identical under every prompt asking for it} (the
    English and the Chinese prompt), from {prompt: answers}."""
    by_request = {}
    for prompt, asks in PROMPT_STYLES.items():
        by_request.setdefault(asks, []).append(answers[prompt])
    return {
        asks: round(float(np.mean([len(set(per_image)) == 1 for per_image in zip(*group)])), 4)
        for asks, group in by_request.items()
    }


def compare(models, n=200, seed=0):
    """The rows of the table, how often the two languages get the same answer, each prompt's answer
    for one image, and that image (test image 1, which holds two shapes; with n = 1 the only one)."""
    samples = shapesworld.generate("test", n, seed)
    images = [s.image for s in samples]
    shown = min(1, n - 1)
    rows, same, examples = [], {}, {}
    for label, name in models.items():
        model, processor = zoo.load_blip2(name, "cpu")
        answers = {}
        for prompt, asks in PROMPT_STYLES.items():
            answers[prompt] = caption_images(model, processor, images, [prompt] * n, GREEDY, batch_size=50)
            measured = [measure(a, s.objects) for a, s in zip(answers[prompt], samples)]
            rows.append(
                {"model": label, "prompt": prompt, "asks": asks}
                | {key: round(float(np.mean([m[key] for m in measured])), 4) for key in measured[0]}
            )
            examples[f"{label}: {prompt}"] = answers[prompt][shown]
        same[label] = same_answer(answers)
    # a model folder as the repository names it, not this machine's absolute path
    names = {label: provenance.shown(name) if Path(name).is_dir() else str(name) for label, name in models.items()}
    result = {"n": n, "seed": seed, "models": names, "rows": rows}
    return result | {"same_answer_across_languages": same}, examples, images[shown]


def print_result(result):
    print(f"{result['n']} test images, greedy decoding\n")
    print(f"{'model':<12}{'prompt':<38}{'words':>7}{'shapes':>8}{'where':>7}{'size':>6}{'pairs right':>12}")
    for r in result["rows"]:
        print(
            f"{r['model']:<12}{r['prompt']:<38}{r['words']:>7.1f}{r['shapes_named']:>8.2f}{r['says_where']:>7.2f}"
            f"{r['says_size']:>6.2f}{r['pairs_right']:>12.2f}"
        )
    print("\nthe same answer to the English and the Chinese prompt:")
    for label, shares in result["same_answer_across_languages"].items():
        print(f"  {label:<12}" + ", ".join(f"{asks} {share:.2f}" for asks, share in shares.items()))
    if "picture" in result:
        print(f"\npicture: {result['picture']}")


def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.prompt_styles", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument("--n", type=cli.Count(1, 5000), default=200, help="test images (default 200, up to 5,000)")
    parser.add_argument(
        "--model",
        type=cli.Model("blip2"),
        help="the fine-tuned BLIP-2 (default data/models/tiny-blip2-prompts, made by `make tiny-blip2-prompts`)",
    )
    parser.add_argument(
        "--out", type=cli.OutFile(".json"), help="write the result JSON here, and one image's answers beside it (.png)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.model is None and not zoo.is_saved(FINE_TUNED):
        raise cli.UserError(f"no fine-tuned model at {FINE_TUNED}: run `make tiny-blip2-prompts` first")
    result, examples, image = compare({"bundled": "tiny", "fine-tuned": args.model or str(FINE_TUNED)}, args.n)
    if args.out:
        picture = cli.beside(args.out, ".png")
        result["picture"] = str(picture)
        result["examples"] = examples
        lines = [f"{prompt} -> {answer}" for prompt, answer in examples.items()]
        with cli.atomic_paths(args.out, picture) as (json_temp, picture_temp):  # both or neither
            viz.captioned_image(image, lines, picture_temp, 640)
            cli.write_json(result, json_temp)
    cli.emit(result, args.json, print_result)


if __name__ == "__main__":
    cli.run(main)
