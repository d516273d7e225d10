"""Week 12: STAR write-ups (Situation, Task, Action, Result) of this repository's projects.

Situation, task and action are prose. Every number in a result is read from the JSON the weeks'
`make` targets wrote under outputs/; none is typed here. A result that has not been measured
yet names the target that measures it, and the write-up still comes out (exit 0).

    python -m interview.star [--outputs outputs] [--out outputs/week12/star.md]
"""

import json
from dataclasses import dataclass
from pathlib import Path

from curriculum import cli


class Results:
    """Numbers from outputs/, and the make targets that would produce the missing ones."""

    def __init__(self, root):
        self.root = Path(root)

    def get(self, file, *keys):
        """The value at keys in root/file, or None when the file is not there yet."""
        path = self.root / file
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise cli.UserError(f"{path} is not readable JSON ({e}): delete it, or run its make target again") from None
        for key in keys:
            value = value[key]
        return value


@dataclass(frozen=True)
class Project:
    title: str
    situation: str
    task: str
    action: str
    results: tuple  # (file under outputs/, make target, function(data) -> sentence)


def rows_by(data, key, field):
    return {r[key]: r[field] for r in data}


def passed(data):
    ok, worst = sum(c["ok"] for c in data["checks"]), max(c["max_abs_diff"] for c in data["checks"])
    return f"{ok} of {len(data['checks'])} checks within tolerance, worst difference {worst:.1e}"


def fixed(p):
    """How one problem of week 5's repetition measurement was fixed, in numbers."""
    rows = {r["setting"]: r for r in p["rows"]}
    problem, free = p["rows"][0], rows[p["free"]]
    said = (
        f"{p['checkpoint']}, {p['problem']}: {problem['repeating']:.2f} of captions repeat "
        f"(3-gram rate {problem['repeated_ngram_rate']:.3f}, exact captions {problem['exact']:.2f})"
    )
    if not p["repeats"]:
        return said + ", no more than right captions do"
    fix = rows.get(p["fix"]["setting"])
    if fix is None:
        return said + "; no remedy removes the repetition"
    kept = "keeping" if p["fix"]["keeps_caption"] else "without keeping"
    return said + (
        f"; the fix chosen by measurement, {fix['setting']}, leaves {fix['repeating']:.2f} repeating "
        f"{kept} the caption right (exact {fix['exact']:.2f}, free decoding {free['exact']:.2f})"
    )


def repetition_story(d):
    """The repetition search and its fixes, from week 5's `decoding_lab repetition`."""
    by = {}
    for row in d["natural"]:
        by[row["checkpoint"]] = by.get(row["checkpoint"], 0) + 1
    where = ", ".join(f"{k} on {checkpoint}" for checkpoint, k in by.items())
    found = f"{len(d['natural'])} of {len(d['search'])} everyday settings (</s> allowed) repeat by themselves"
    found += f" ({where})" if where else ""
    forced = d["problems"]["forced"]
    ngram = {r["setting"]: r for r in forced["rows"]}.get("+ no_repeat_ngram_size 3")
    story = f"over {d['n']} test scenes {found}; " + "; ".join(fixed(p) for p in d["problems"].values())
    if ngram:
        story += (
            f"; with a forced length, no-repeat-3-gram removes the repetition (rate "
            f"{ngram['repeated_ngram_rate']:.3f}) but exact captions fall to {ngram['exact']:.2f}"
        )
    return story


PROJECTS = (
    Project(
        "Image-text retrieval with CLIP",
        "A self-directed learning project: search images by description and by example, offline on a "
        "CPU, on a synthetic world of coloured shapes (ShapesWorld) with tiny models trained for it.",
        "Index images with CLIP, search them by text or by image, measure retrieval honestly, and "
        "let Chinese queries use the same index.",
        "Trained a small CLIPModel on a synthetic world with a contrastive loss that allows several "
        "matching images per caption; indexed with FAISS; re-derived InfoNCE and measured the "
        "projection heads; distilled a Chinese text encoder into the frozen English text space.",
        (
            (
                "week1/eval.json",
                "week1",
                lambda d: (
                    f"text-to-image R@1 {d['text_to_image']['R@1']:.3f}, image-to-text "
                    f"R@1 {d['image_to_text']['R@1']:.3f}, on never-seen colour-shape pairs "
                    f"{d['heldout_combinations']['R@1']:.3f}"
                ),
            ),
            (
                "week7/crosslingual.json",
                "week7",
                lambda d: (
                    f"Chinese queries R@1 {d['zh']['R@1']:.3f} against English {d['en']['R@1']:.3f} on the same index"
                ),
            ),
            (
                "week7/projection.json",
                "week7",
                lambda d: (
                    "removing the trained projection heads drops R@1 from "
                    f"{d['inference'][0]['text_to_image_R@1']:.3f} to {d['inference'][1]['text_to_image_R@1']:.3f}"
                ),
            ),
        ),
    ),
    Project(
        "Captioning with BLIP-2, and its repeated-text problem",
        "A self-directed learning project on ShapesWorld (synthetic shapes, tiny models): a captioning "
        "model wrote fluent captions, but an early checkpoint copied one object's phrase onto the next, "
        "and asked for longer captions the trained model looped.",
        "Caption images with controllable prompts, find out when the model repeats itself and fix it "
        "by measurement, and make decoding fast.",
        "Trained a small BLIP-2 (frozen ViT, Q-Former, OPT decoder); rewrote attention, the decoder and "
        "every decoding loop from scratch, token-identical to generate(); searched for settings where "
        "it repeats by itself (beams, length penalty, low-temperature sampling, long outputs, the detail "
        "prompts, an early checkpoint); measured the repeated 3-gram rate and the attribute scores of "
        "each remedy over test scenes; added a KV cache.",
        (
            (
                "week2/eval.json",
                "week2",
                lambda d: (
                    f"captions name every attribute right for {d['groups']['seen']['exact']:.3f} of test images "
                    f"({d['groups']['heldout']['exact']:.3f} with a held-out pair); questions answered exactly "
                    f"{d['groups']['seen']['qa']:.3f}"
                ),
            ),
            ("week5/repetition.json", "week5", repetition_story),
            (
                "bench/kv_cache.json",
                "bench",
                lambda d: "KV cache speed-up " + ", ".join(f"{r['speedup']:.2f}x ({r['case']})" for r in d["rows"]),
            ),
        ),
    ),
    Project(
        "Text-to-image with Stable Diffusion, and its samplers from scratch",
        "A self-directed learning project on ShapesWorld (synthetic shapes, a tiny pipeline): generated "
        "images had to match their prompts, and the sampler settings were a black box.",
        "Generate from text with a latent diffusion pipeline, measure prompt fidelity, and explain what "
        "schedulers and step counts change.",
        "Trained a small VAE and cross-attention UNet as a diffusers pipeline; judged fidelity with CLIP; "
        "re-derived the DDPM and DDIM samplers and checked them against diffusers step by step.",
        (
            (
                "week3/eval.json",
                "week3",
                lambda d: (
                    f"colour right for {d['fidelity']['color']:.3f} and shape for "
                    f"{d['fidelity']['shape']:.3f} of generated objects"
                ),
            ),
            ("week8/check.json", "week8", lambda d: "from-scratch samplers: " + passed(d)),
            (
                "week8/compare.json",
                "week8",
                lambda d: (
                    "same seed, different noise draws: DDIM (eta 0) pixel difference "
                    f"{d['determinism']['max_pixel_diff']['ddim eta=0']}, DDPM "
                    f"{d['determinism']['max_pixel_diff']['ddpm']}"
                ),
            ),
        ),
    ),
    Project(
        "Transformer internals, re-derived and proved",
        "A self-directed learning project: libraries hid how attention and decoding work, and "
        "interviews ask for both; checked on tiny models trained on synthetic shapes.",
        "Write attention, a decoder and decoding loops plainly, and prove them equal to the libraries on real models.",
        "Copied weights from the library layers into the from-scratch modules and compared outputs on "
        "real inputs, with tests that a wrong variant fails the comparison.",
        (
            ("week4/check.json", "week4", lambda d: "attention and decoder: " + passed(d)),
            (
                "week5/check.json",
                "week5",
                lambda d: (
                    f"decoding: {sum(c['ok'] for c in d['checks'])} of "
                    f"{len(d['checks'])} checks passed, searches token-identical to generate()"
                ),
            ),
        ),
    ),
    Project(
        "Teaching a model a new concept with LoRA",
        "A self-directed experiment on a tiny captioning model of a synthetic world: teach it a colour "
        "it had never seen, cheaply and without forgetting.",
        "Compare full fine-tuning, LoRA and prefix tuning on the same data and budget.",
        "Implemented LoRA and prefix tuning from scratch, equal to PEFT; taught the new word with LoRA on the "
        "attention's q and v, with the word's tied embedding rows trainable too, and on every linear layer.",
        (
            (
                "week7/new_concept.json",
                "lora",
                lambda d: "; ".join(
                    f"{r['method']}: {r['trainable']:,} trainable, new colour {r['new_color']:.2f}, old colours "
                    f"{r['old_color']:.2f}"
                    for r in d["rows"]
                ),
            ),
            (
                "week7/lora_all_layers/new_concept.json",
                "lora",
                lambda d: (
                    "on every linear layer: "
                    + "; ".join(
                        f"{r['method']}: {r['trainable']:,} trainable, new colour {r['new_color']:.2f}, old colours "
                        f"{r['old_color']:.2f}"
                        for r in d["rows"]
                        if r["method"].startswith("LoRA")
                    )
                ),
            ),
        ),
    ),
    Project(
        "A multimodal moderation service",
        "A self-directed project with no real users: a moderation service for images with text, on "
        "CPUs, under generated load, with tiny models and stand-in categories of a synthetic world.",
        "Serve CLIP and BLIP-2 behind an API with production techniques: ONNX, batching, caching, "
        "and prove each one with a measurement.",
        "Exported CLIP and BLIP-2 (with a KV-cached decoder) to ONNX and checked parity; wrote the policy "
        "as data: CLIP concept prompts, thresholds and text rules on the user's text and the caption; served "
        "it with FastAPI behind a dynamic batcher per model stage and a content-hash cache; load-tested it "
        "and benchmarked every engine beside the best rate the same run measured at its precision.",
        (
            (
                "onnx/tiny/manifest.json",
                "export",
                lambda d: "ONNX parity: min cosine to PyTorch {cos:.6f}, greedy captions identical {same}/{n}".format(
                    cos=min(d["parity"][0][k] for k in ("clip_image_cosine", "clip_text_cosine", "blip2_image_cosine")),
                    same=d["parity"][0]["captions_identical"],
                    n=d["parity"][0]["n"],
                ),
            ),
            (
                "week9/policy.json",
                "week9",
                lambda d: (
                    "demo policy on generated scenes: "
                    + ", ".join(
                        f"{name} accuracy {r['accuracy']:.3f} (recall {r['recall']:.3f})"
                        for name, r in d["categories"].items()
                    )
                ),
            ),
            (
                "bench/moderation_service.json",
                "bench",
                lambda d: (
                    "dynamic batching at 32 concurrent clients: {on} "
                    "requests/s against {off} without ({ratio:.1f}x), p99 {p99_on} ms against {p99_off} ms; "
                    "the service reaches {share:.0%} of the engines alone".format(
                        on=service_row(d, "batching on, cache off")["requests_per_s"],
                        off=service_row(d, "batching off, cache off")["requests_per_s"],
                        ratio=service_row(d, "batching on, cache off")["requests_per_s"]
                        / service_row(d, "batching off, cache off")["requests_per_s"],
                        p99_on=service_row(d, "batching on, cache off")["p99_ms"],
                        p99_off=service_row(d, "batching off, cache off")["p99_ms"],
                        share=service_row(d, "batching on, cache off")["requests_per_s"] / d["engines_alone_per_s"],
                    )
                ),
            ),
            (
                "bench/moderation_engines.json",
                "bench",
                lambda d: (
                    "CLIP ViT-B/32 image tower, batch 16: "
                    + ", ".join(
                        f"{r['engine']} {r['images_per_s']} images/s" for r in d["towers"] if "ViT" in r["model"]
                    )
                ),
            ),
            (
                "week11/load.json",
                "week11",
                lambda d: (
                    f"{d['n']} requests at concurrency {d['concurrency']}: "
                    f"{d['errors']} errors, {d['unique_ids']} distinct responses"
                ),
            ),
        ),
    ),
)


def service_row(data, config, concurrency=32):
    return next(r for r in data["rows"] if r["config"] == config and r["concurrency"] == concurrency)


def write_up(results, projects=PROJECTS):
    """Markdown, and the make targets still to run."""
    lines, todo = ["# STAR write-ups, from this repository's measured results", ""], []
    for p in projects:
        lines += [
            f"## {p.title}",
            "",
            f"- **Situation**: {p.situation}",
            f"- **Task**: {p.task}",
            f"- **Action**: {p.action}",
            "- **Result**:",
        ]
        if not p.results:
            lines.append("  - nothing to measure yet")
        for file, target, sentence in p.results:
            data = results.get(file)
            if data is None:
                lines.append(f"  - not measured yet: run `make {target}` (it writes outputs/{file})")
                todo.append(target)
            else:
                lines.append(f"  - {sentence(data)} (outputs/{file})")
        lines.append("")
    return "\n".join(lines), sorted(set(todo))


def build_parser():
    parser = cli.Parser(prog="python -m interview.star", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument(
        "--outputs",
        type=cli.InFolder(hint="pass the folder the weeks' make targets wrote, e.g. outputs"),
        # a Path, which argparse does not check: no outputs/ yet is a learner who has measured nothing yet
        default=Path("outputs"),
        help="where the weeks wrote their results (default outputs)",
    )
    parser.add_argument(
        "--out",
        type=cli.OutFile(".md"),
        default="outputs/week12/star.md",
        help="also write the write-ups here (default outputs/week12/star.md)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    text, todo = write_up(Results(args.outputs))
    cli.write_text(text + "\n", args.out)
    print(text)
    if todo:
        print(f"missing results: run `make {' '.join(todo)}` and write again")
    print(f"written: {args.out}")


if __name__ == "__main__":
    cli.run(main)
