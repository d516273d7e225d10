"""transformers and LAVIS on the same weights: the same model, checked the way back.

Hugging Face checked its port of BLIP-2 against LAVIS on one image's logits. Here the bundled
tiny BLIP-2, trained in transformers and converted to LAVIS's names (stage1_demos/lavis_convert.py),
runs in both libraries (LAVIS in .venv-lavis, `make lavis-venv`), and three things are compared:

  - one image and its week-2 question, stage by stage: pixel values (each library's image
    processor), ViT output (after post_layernorm / ln_vision), Q-Former output, projected
    queries, the decoder's logits (max |difference|), and the prompt's token ids;
  - greedy captions of n ShapesWorld test images;
  - each image's week-2 question, "Question: ... Answer:", answered greedily.

    python -m stage1_demos.lavis_parity --n 100 --out outputs/week2/backends.png
"""

import tempfile
from pathlib import Path

import torch

from curriculum import cli, shapesworld, viz, zoo
from curriculum.tiny_blip2 import qa_prompt
from stage1_demos import lavis_backend
from stage1_demos.blip2_caption import GREEDY, QA, caption_images, qa_set, trace

STAGES = {
    "pixel_values": "pixel values",
    "image_embeds": "ViT output (after ln_vision)",
    "query_output": "Q-Former output",
    "projected": "projected queries",
    "logits": "decoder logits",
}
TOLERANCE = 1e-4
SHOWN = 16  # rows in the picture


def max_abs_diff(ours, theirs):
    theirs = torch.tensor(theirs)
    return float((ours - theirs).abs().max()) if ours.shape == theirs.shape else float("inf")


def compare(n=100, split="test", seed=0, model_name="tiny", batch_size=16, out=None):
    samples = shapesworld.generate(split, n, seed)
    images = [s.image for s in samples]
    questions, _ = qa_set(samples, seed)
    prompts = [qa_prompt(q) for q in questions]
    model, processor = zoo.load_blip2(model_name, "cpu")
    captions = caption_images(model, processor, images, [""] * n, GREEDY, batch_size)
    answers = caption_images(model, processor, images, prompts, QA, batch_size)
    prompt_ids, stages = trace(model, processor, images[0], prompts[0])
    with tempfile.TemporaryDirectory() as tmp:  # LAVIS reads image files
        paths = [Path(tmp) / f"{split}_{i:05d}.png" for i in range(n)]
        for image, path in zip(images, paths):
            image.save(path)
        lavis_captions, lavis_answers, lavis_trace = lavis_backend.run(
            model_name,
            [
                lavis_backend.caption_job(paths, [""] * n, GREEDY, batch_size),
                lavis_backend.caption_job(paths, prompts, QA, batch_size),
                lavis_backend.trace_job(paths[0], prompts[0]),
            ],
        )
    lavis_captions, lavis_answers = lavis_captions["captions"], lavis_answers["captions"]
    checks = [
        {"name": label, "max_abs_diff": (d := max_abs_diff(stages[key][0], lavis_trace[key])), "ok": d <= TOLERANCE}
        for key, label in STAGES.items()
    ]
    rows = [
        {
            "index": i,
            "question": questions[i],
            "transformers": [captions[i], answers[i]],
            "lavis": [lavis_captions[i], lavis_answers[i]],
        }
        for i in range(n)
    ]
    if out:
        cell = "{}\nQ: {}  A: {}".format
        viz.compare_rows(
            images[:SHOWN],
            {
                "transformers: Blip2ForConditionalGeneration": list(map(cell, captions, questions, answers)),
                "LAVIS: Blip2OPT": list(map(cell, lavis_captions, questions, lavis_answers)),
            },
            out,
        )
    return {
        "model": model_name,
        "split": split,
        "n": n,
        "checks": checks,
        "prompt": prompts[0],
        "prompt_ids": {"transformers": prompt_ids.tolist(), "lavis": lavis_trace["input_ids"]},
        "captions_equal": sum(a == b for a, b in zip(captions, lavis_captions)),
        "answers_equal": sum(a == b for a, b in zip(answers, lavis_answers)),
        "differences": [r for r in rows if r["transformers"] != r["lavis"]],
        "examples": rows[:4],
    }


def print_result(result, out=None):
    n = result["n"]
    same_ids = result["prompt_ids"]["transformers"] == result["prompt_ids"]["lavis"]
    print(
        f"transformers vs LAVIS on the same weights ({result['model']}), ShapesWorld {result['split']}, n={n}, greedy\n"
    )
    print(
        f"one image, prompt {result['prompt']!r}: token ids {'the same' if same_ids else 'DIFFER'} "
        f"({len(result['prompt_ids']['transformers'])} tokens)"
    )
    print(f"{'stage':<30} {'max |diff|':>11}")
    for c in result["checks"]:
        print(f"{c['name']:<30} {c['max_abs_diff']:>11.2e}  {'ok' if c['ok'] else f'ABOVE {TOLERANCE:g}'}")
    print(f"\ngreedy captions equal:  {result['captions_equal']} of {n}")
    print(f"week-2 answers equal:   {result['answers_equal']} of {n}")
    for r in result["differences"][:5]:
        print(
            f"\n  image {r['index']:<4} transformers: {' | '.join(r['transformers'])}\n"
            f"  {'':<10} LAVIS:        {' | '.join(r['lavis'])}"
        )
    if out:
        print(f"\npicture: {out}")


def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.lavis_parity", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument(
        "--n", type=cli.Count(1, 2000), default=100, help="ShapesWorld images (default 100, up to 2,000)"
    )
    parser.add_argument("--split", choices=["val", "test"], default="test", help="split (default test)")
    parser.add_argument("--seed", type=cli.Seed(), default=0, help="ShapesWorld and question seed (default 0)")
    parser.add_argument(
        "--model",
        type=cli.Model("blip2"),
        default="tiny",
        help="'tiny' (bundled, default) or a transformers BLIP-2 folder",
    )
    parser.add_argument(
        "--out", type=cli.OutFile(".png"), help=f"write a PNG of the first {SHOWN} images with both libraries' outputs"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = compare(args.n, args.split, args.seed, args.model, out=args.out)
    cli.emit(result, args.json, lambda r: print_result(r, args.out))


if __name__ == "__main__":
    cli.run(main)
