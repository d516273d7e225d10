"""Week 9: "text compliance" with BLIP-2, two ways, measured on the same labelled scenes.

The demo policy (data/policies/shapesworld.yaml) judges an image by CLIP concept scores and by
rules on BLIP-2's caption: a caption that names "red cross" flags the image. A caption names what
the model chose to say, so the rule misses what it left out. A visual-question rule asks instead,
once per category, and reads the answer's probability rather than its text:

    p(yes) = P("yes" | image, "Question: is there a red cross? Answer:")
             normalised over the two answers: p_yes / (p_yes + p_no)     flag when p(yes) ≥ threshold

The question is one forward pass (the answer's first token), the format the tiny BLIP-2 was
trained on. This compares, per category and on the scenes `policy evaluate` uses: CLIP concepts
alone, the caption rule alone, the visual question to each BLIP-2 asked (the bundled one, and by
default the prompt fine-tune and the compliance fine-tune), and the demo policy as deployed
(concepts or caption); every rule's precision and recall also on the scenes of seen colour-shape
pairs alone and of held-out pairs alone. The policy kind that serves the question is
data/policies/shapesworld-vqa.yaml (engines.read_images).

    python -m stage3_moderation.vqa_rule [--n 600] [--ask MODEL ...] [--out outputs/week9/vqa_rule.json] [--json]
"""

from pathlib import Path

import numpy as np
import torch

from curriculum import MODELS_DIR, REPO_ROOT, cli, shapesworld, viz, zoo
from curriculum.provenance import shown
from curriculum.tiny_blip2 import qa_prompt
from stage1_demos.blip2_caption import caption_images
from stage1_demos.clip_retrieval import embed_images, embed_texts
from stage3_moderation import policy as policies
from stage3_moderation.engines import yes_no_ids

# One yes/no question per category of the demo policy, in the trained question format.
QUESTIONS = {"red_cross": "is there a red cross?", "purple_cross": "is there a purple cross?"}
FINE_TUNED = MODELS_DIR / "tiny-blip2-prompts"  # taught prompts and questions, its answers mostly "no"
COMPLIANCE = MODELS_DIR / "tiny-blip2-compliance"  # taught balanced yes/no compliance questions


@torch.no_grad()
def yes_probability(model, processor, images, question, batch_size=64):
    """p(yes) = p_yes / (p_yes + p_no) for the answer's first token, one forward pass per image."""
    yes, no = yes_no_ids(processor.tokenizer)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        inputs = processor(images=chunk, text=[qa_prompt(question)] * len(chunk), padding=True, return_tensors="pt")
        logits = model(**inputs.to(model.device, model.dtype)).logits[:, -1].float()  # left padding: last = next
        two = logits[:, [yes, no]].softmax(dim=-1)  # p_yes / (p_yes + p_no): the shared softmax cancels
        out.append(two[:, 0].cpu())
    return torch.cat(out).numpy()


def separation(scores, expected):
    """The probability that a random scene with the symbol scores above a random one without (ties
    count half): the area under the ROC curve. 0.5 is a score that does not tell them apart."""
    with_, without = scores[expected], scores[~expected]
    if not len(with_) or not len(without):
        return None
    above = (with_[:, None] > without[None, :]).mean() + 0.5 * (with_[:, None] == without[None, :]).mean()
    return round(float(above), 4)


def as_named(model):
    """A model folder as the repository names it, so that a result reads the same on every checkout;
    'tiny' or a hub id as given."""
    return shown(model) if model != "tiny" and Path(model).is_dir() else model


def compare(n=600, seed=1, threshold=0.5, askers=None, policy_path=policies.DEFAULT_POLICY):
    """askers: {label: BLIP-2 name or folder} asked the questions; the captions are the bundled model's,
    as the service's."""
    askers = askers or {"bundled": "tiny"}
    policy = policies.load(policy_path)
    samples = shapesworld.generate("test", n, seed)  # the scenes of `policy evaluate`
    images = [s.image for s in samples]
    clip, clip_processor = zoo.load_clip(policy.model, "cpu")
    blip2, blip2_processor = zoo.load_blip2("tiny", "cpu")
    vectors = embed_images(clip, clip_processor, images)
    concepts = dict(zip(policy.concepts, embed_texts(clip, clip_processor, policy.concepts)))
    captions = caption_images(blip2, blip2_processor, images, [""] * n, batch_size=64, progress=True)
    asked = {name: {} for name in QUESTIONS}
    for label, name in askers.items():
        model, processor = zoo.load_blip2(name, "cpu")
        for category, question in QUESTIONS.items():
            asked[category][label] = yes_probability(model, processor, images, question)
    heldout = np.array([s.heldout for s in samples])
    rows, curves, p_yes_seen = [], {}, {}
    for category in policy.categories:
        if category.name not in QUESTIONS:
            continue
        expected = np.array([policies.truth(policy.name, s.objects)[category.name] for s in samples])
        by_concepts = policies.concept_score(category, vectors, concepts) >= category.threshold
        by_caption = np.array([bool(category.text_hits(c)) for c in captions])
        rules = {
            "CLIP concepts": by_concepts,
            "caption rule": by_caption,
            "deployed policy (concepts or caption)": by_concepts | by_caption,
        }
        curves[category.name], p_yes_seen[category.name] = {}, {}
        for label, p_yes in asked[category.name].items():
            rules[f"visual question to the {label} BLIP-2, p(yes) ≥ {threshold:g}"] = p_yes >= threshold
            sweep = [policies.confusion(p_yes >= t, expected) for t in np.linspace(0.05, 0.95, 19)]
            curves[category.name][f"{label}: p(yes) at every threshold"] = [
                (c["recall"], c["precision"]) for c in sweep
            ]
            p_yes_seen[category.name][label] = {
                "with": policies.summary(p_yes[expected]),
                "without": policies.summary(p_yes[~expected]),
                "separation": separation(p_yes, expected),
            }
        for rule, predicted in rules.items():
            rows.append({"category": category.name, "rule": rule} | policies.confusion(predicted, expected, heldout))
            if not rule.startswith("visual question"):
                curves[category.name][rule] = (rows[-1]["recall"], rows[-1]["precision"])
    return {
        "n": n,
        "seed": seed,
        "threshold": threshold,
        "questions": QUESTIONS,
        "askers": {label: as_named(name) for label, name in askers.items()},
        "positives": {c: int(sum(policies.truth(policy.name, s.objects)[c] for s in samples)) for c in QUESTIONS},
        "scenes_with_a_held_out_pair": int(heldout.sum()),
        "rows": rows,
        "p_yes": p_yes_seen,
        "curves": curves,
    }


def print_result(result):
    print(f"{result['n']} test scenes (seed {result['seed']}); positives: {result['positives']}\n")
    print(f"{'category':<14}{'rule':<60}{'precision':>10}{'recall':>8}{'tp':>5}{'fp':>5}{'fn':>5}")
    for r in result["rows"]:
        print(
            f"{r['category']:<14}{r['rule']:<60}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['tp']:>5}{r['fp']:>5}"
            f"{r['fn']:>5}"
        )
    if "picture" in result:
        print(f"\npicture: {result['picture']}")


def build_parser():
    parser = cli.Parser(prog="python -m stage3_moderation.vqa_rule", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument(
        "--n", type=cli.Count(1, 10_000), default=600, help="generated test scenes, up to 10,000 (default 600)"
    )
    parser.add_argument("--seed", type=cli.Seed(), default=1, help="ShapesWorld seed (default 1, as `policy evaluate`)")
    parser.add_argument(
        "--threshold",
        type=cli.Number(above=0, below=1),
        default=0.5,
        help="flag when p(yes) >= this, between 0 and 1 (default 0.5)",
    )
    parser.add_argument(
        "--out",
        type=cli.OutFile(".json"),
        help="write the result JSON here, and the precision-recall picture beside it",
    )
    parser.add_argument(
        "--ask",
        type=cli.Model("blip2", none=True),
        action="append",
        help="a fine-tuned BLIP-2 asked the questions besides the bundled one (repeat for several; none: the "
        f"bundled one alone; default: {', '.join(str(m.relative_to(REPO_ROOT)) for m in (FINE_TUNED, COMPLIANCE))}, "
        "those their make targets made)",
    )
    parser.add_argument("--json", action="store_true")
    return parser


def label(model):
    """How a table names an asker: the two fine-tunes by what they were taught, others by folder or id."""
    named = {FINE_TUNED.resolve(): "prompt-tuned", COMPLIANCE.resolve(): "compliance"}
    return named.get(Path(model).resolve(), Path(model).name) if Path(model).is_dir() else model


def main(argv=None):
    args = build_parser().parse_args(argv)
    asked = args.ask or [str(m) for m in (FINE_TUNED, COMPLIANCE) if zoo.is_saved(m)]
    askers = {"bundled": "tiny"} | {label(m): m for m in asked if m != "none"}
    result = compare(args.n, args.seed, args.threshold, askers)
    if args.out:
        picture = cli.beside(args.out, ".png")
        result["picture"] = shown(picture)
        with cli.atomic_paths(args.out, picture) as (json_path, png_path):  # both or neither
            viz.precision_recall(
                result["curves"],
                png_path,
                f"{result['n']} test scenes: the visual question at every threshold vs the fixed rules",
            )
            cli.write_json(result, json_path)
    cli.emit(result, args.json, print_result)


if __name__ == "__main__":
    cli.run(main)
