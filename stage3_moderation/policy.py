"""Week 10: a moderation policy is data (a YAML file), and deciding is a pure function of scores.

A policy names categories. Each category has
    input_types  which inputs it judges: text, image, or both
    concepts     prompts CLIP scores against the image: score = max over concepts of cos(image, prompt),
                 the way diffusers' safety checker compares an image with its concept embeddings
    threshold    the image is flagged for the category when that score >= threshold
    terms        words or phrases (whole words, any case, words joined by spaces, - or _) ...
    patterns     ... and regular expressions, checked on the user's text and on the image's caption,
                 as a reader sees them: normalised by normalize.py (NFKC, no invisible characters,
                 look-alike letters), so that ｒｅｄ ｃｒｏｓｓ or a Cyrillic р is caught too
    question     a yes/no question BLIP-2 is asked about the image (week 9's visual-question rule):
    question_threshold   the image is flagged when p(yes) >= it, p(yes) = p_yes / (p_yes + p_no)
plus `mismatch_threshold`: an image and the text sent with it whose CLIP cosine is below it are
flagged as a `mismatch` (a caption that does not describe its image: a classic spam trick), and
`question_model`: the BLIP-2 the questions' thresholds were read for (the service must run it).

A text rule that matches scores 1.0; otherwise a category scores its highest image evidence, the
concept cosine or p(yes). The result has OpenAI's moderation shape, plus `caption`,
`image_text_similarity` and `mismatch`.

    python -m stage3_moderation.policy evaluate                 # decisions on generated ShapesWorld cases
    python -m stage3_moderation.policy show data/policies/real-world.yaml
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from curriculum import REPO_ROOT, cli, shapesworld
from curriculum.cli import UserError
from curriculum.provenance import shown
from stage3_moderation import normalize

POLICIES_DIR = REPO_ROOT / "data" / "policies"
DEFAULT_POLICY = POLICIES_DIR / "shapesworld.yaml"
DEMOS = ("shapesworld-demo", "shapesworld-vqa")  # the policies whose truth `evaluate` knows
INPUT_TYPES = ("text", "image")


def not_blank(text):
    # a blank term compiles to \b\b, a blank pattern matches everywhere; the rules read the text without
    # its invisible characters, so a term of zero-width spaces is blank too
    if not normalize.readings(text)[0].strip():
        raise ValueError("is blank, so it would match every text")
    return text


Words = Annotated[str, AfterValidator(not_blank)]
Cosine = Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)]
Probability = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


# The file's schema: types and ranges (strict: YAML's 5 is no text, its "abc" no number). What
# depends on several fields (a threshold needed by concepts, ...) is checked by `_category`.
class CategorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    description: str = ""
    input_types: list[Literal[INPUT_TYPES]] = Field(list(INPUT_TYPES), min_length=1)
    concepts: list[Words] = []
    threshold: Optional[Cosine] = None
    terms: list[Words] = []
    patterns: list[Words] = []
    question: Optional[Words] = None
    question_threshold: Optional[Probability] = None


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Optional[Words] = None
    description: str = ""
    model: Words = "tiny"
    question_model: Optional[Words] = None
    mismatch_threshold: Cosine = -1.0
    categories: dict[Words, CategorySpec]


# what to write instead, by the field's name
FIXES = {
    "name": "a short name, e.g. my-policy",
    "description": "one line of text",
    "model": "the CLIP its thresholds were calibrated for: tiny or a hub id",
    "mismatch_threshold": "a number from -1 to 1 (a CLIP cosine), e.g. 0.45",
    "threshold": "a number from -1 to 1 (a CLIP cosine), e.g. 0.6",
    "input_types": f"a list drawn from {list(INPUT_TYPES)}, e.g. [image, text]",
    "concepts": "a list of prompts, e.g. ['a red cross']",
    "terms": "a list of words or phrases, e.g. ['buy now', 'click here']",
    "patterns": "a list of quoted regular expressions, e.g. ['https?://\\S+']",
    "question": "a yes/no question about the image, e.g. 'is there a red cross?'",
    "question_threshold": "a probability above 0, at most 1 (p(yes)), e.g. 0.5",
    "question_model": "the BLIP-2 that answers: a hub id or a folder, e.g. data/models/tiny-blip2-compliance",
    "category": f"a mapping of {', '.join(CategorySpec.model_fields)}",
}


def schema_error(path, error):
    """pydantic's first complaint as one line: the file, the field, what is wrong and what to write."""
    e, more = error.errors()[0], error.error_count() - 1
    loc = [str(part) for part in e["loc"] if part != "[key]"]
    field = ".".join(loc)
    names = [part for part in loc if part in FIXES]
    is_category = len(loc) == 2 and loc[0] == "categories"
    if e["type"] == "extra_forbidden":
        allowed = CategorySpec.model_fields if len(loc) > 1 else PolicySpec.model_fields
        where = f" in {'.'.join(loc[:-1])}" if len(loc) > 1 else ""
        message = f"unknown keys [{loc[-1]!r}]{where}; allowed: {sorted(allowed)}"
        if len(loc) == 1 and loc[0] in CategorySpec.model_fields:  # e.g. a question with no category
            message += f"; {loc[0]} belongs to the category it flags: categories.<name>.{loc[0]}"
    else:
        fix = FIXES["category" if is_category else names[-1]] if names or is_category else None
        problem = re.sub(r" or instance of \w+", "", e["msg"].removeprefix("Value error, "))
        message = f"{field} = {e['input']!r}: {problem}" + (f"; write {fix}" if fix else "")
    return UserError(f"{path}: {message}" + (f" (and {more} more)" if more else ""))


@dataclass
class Category:
    name: str
    description: str
    input_types: tuple
    concepts: tuple
    threshold: float
    rules: tuple  # compiled regexes: terms become \bword[\s_-]+word\b
    question: Optional[str] = None
    question_threshold: float = 1.0

    def hits(self, readings):
        """The rules that a text breaks, given its `normalize.readings`: each rule reads each (an ASCII
        rule catches look-alikes in the skeleton, a Russian one reads Russian as written)."""
        return [r.pattern for r in self.rules if any(map(r.search, readings))]

    def text_hits(self, text):
        return self.hits(normalize.readings(text)) if text else []


@dataclass
class Policy:
    name: str
    description: str
    model: str
    mismatch_threshold: float
    categories: tuple
    question_model: Optional[str] = None

    @property
    def concepts(self):
        """Every concept prompt once, in a fixed order: embedded once at start-up."""
        return list(dict.fromkeys(c for cat in self.categories for c in cat.concepts))

    @property
    def questions(self):
        """Every question once, in a fixed order: what BLIP-2 is asked about each image."""
        return tuple(dict.fromkeys(cat.question for cat in self.categories if cat.question))


def _category(name, spec, where):
    types = tuple(spec.input_types)
    if spec.concepts and "image" not in types:
        raise UserError(f"{where}: category {name!r} has concepts but does not judge images (add image to input_types)")
    if spec.concepts and spec.threshold is None:
        raise UserError(f"{where}: category {name!r} needs a threshold between -1 and 1 (a CLIP cosine)")
    if spec.question and "image" not in types:
        raise UserError(f"{where}: category {name!r} asks a question but judges no images (add image to input_types)")
    if spec.question and spec.question_threshold is None:
        raise UserError(f"{where}: category {name!r} needs a question_threshold above 0, at most 1 (p(yes))")
    if spec.question_threshold is not None and not spec.question:
        raise UserError(f"{where}: category {name!r} has a question_threshold but no question to ask")
    threshold = 1.0 if spec.threshold is None else spec.threshold  # text rules alone: a hit scores 1.0
    # a term matches as whole words, with any run of spaces, hyphens or underscores between them
    # (red cross, red-cross, red_cross); a term with look-alike letters also as its skeleton
    terms = dict.fromkeys(form for t in spec.terms for form in normalize.readings(t))
    rules = [re.compile(r"\b" + r"[\s_-]+".join(map(re.escape, t.split())) + r"\b", re.IGNORECASE) for t in terms]
    for pattern in spec.patterns:
        try:
            rule = re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise UserError(f"{where}: category {name!r} has a bad regular expression {pattern!r}: {e}") from None
        if any((m := rule.search(text)) and not m.group() for text in ("", "any text at all")):
            raise UserError(
                f"{where}: category {name!r} has the pattern {pattern!r}, which matches an empty string and so "
                "would flag every text: make it match at least one character"
            )
        rules.append(rule)
    if not spec.concepts and not rules and not spec.question:
        raise UserError(f"{where}: category {name!r} has no concepts, terms, patterns or question: it can never flag")
    return Category(
        name,
        spec.description,
        types,
        tuple(spec.concepts),
        float(threshold),
        tuple(rules),
        spec.question,
        spec.question_threshold or 1.0,
    )


def question_model(name, path, asked):
    """The BLIP-2 that answers the policy's questions, checked as far as a file can be: a folder
    (relative to the repository, like the bundled models) must hold a BLIP-2."""
    if name is None:
        if asked:
            raise UserError(
                f"{path}: categories {', '.join(asked)} ask questions but no question_model names the BLIP-2 "
                "that answers them; write e.g. question_model: data/models/tiny-blip2-compliance"
            )
        return None
    folder = REPO_ROOT / name
    if name != "tiny" and folder.is_dir():
        kind = cli.saved_model_kind(folder)
        if kind not in cli.FAMILIES["blip2"][1]:
            what = f"a {cli.family_of(kind)} model" if kind else "not a saved model"
            raise UserError(
                f"{path}: question_model {name} is {what}: it cannot answer a question; name a BLIP-2 taught "
                "yes/no questions, e.g. data/models/tiny-blip2-compliance"
            )
        return str(folder.resolve())
    return name


def load(path=DEFAULT_POLICY):
    """Read and validate a policy file (the schema above, then `_category`); every mistake is a
    one-line UserError naming the file, the field and the fix. The service loads its policy here too."""
    path = Path(path)
    if not path.is_file():
        choices = ", ".join(str(p.relative_to(REPO_ROOT)) for p in sorted(POLICIES_DIR.glob("*.yaml")))
        raise UserError(f"no policy file {path}: choose one of {choices}")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file: a policy is YAML (see {DEFAULT_POLICY.name})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("categories"), dict) or not spec["categories"]:
        raise UserError(f"{path}: a policy is a mapping with a non-empty `categories` mapping")
    try:
        spec = PolicySpec.model_validate(spec)
    except ValidationError as e:
        raise schema_error(path, e) from None
    categories = tuple(_category(n, c, path) for n, c in spec.categories.items())
    asked = [c.name for c in categories if c.question]
    return Policy(
        spec.name or path.stem,
        spec.description,
        spec.model,
        spec.mismatch_threshold,
        categories,
        question_model(spec.question_model, path, asked),
    )


def decide(policy, text=None, concept_scores=None, caption=None, similarity=None, answers=None):
    """One moderation result from scores.

    text: the user's text or None; concept_scores: {concept: cos(image, concept)} or None when there
    is no image; caption: the image's caption or None; similarity: cos(image, text) when both came;
    answers: {question: p(yes)} for the image (the policy's questions).
    """
    has = {"text": bool(text), "image": concept_scores is not None}
    # each text normalised once, for every category's rules
    read = {"text": text and normalize.readings(text), "caption": caption and normalize.readings(caption)}
    result = {"flagged": False, "categories": {}, "category_scores": {}, "category_applied_input_types": {}}
    for cat in policy.categories:
        applied = [t for t in cat.input_types if has[t]]
        judges_image = "image" in applied
        image_score = max((concept_scores[c] for c in cat.concepts), default=0.0) if judges_image else 0.0
        p_yes = answers[cat.question] if judges_image and cat.question else 0.0
        hits = (cat.hits(read["text"]) if "text" in applied else []) + (
            cat.hits(read["caption"]) if judges_image and caption else []
        )
        flagged = (
            bool(hits)
            or (judges_image and bool(cat.concepts) and image_score >= cat.threshold)
            or (judges_image and bool(cat.question) and p_yes >= cat.question_threshold)
        )
        image_score = max(image_score, p_yes)
        score = 1.0 if hits else max(image_score, 0.0)  # the caption speaks for the image
        result["categories"][cat.name] = flagged
        result["category_scores"][cat.name] = round(float(score), 6)
        result["category_applied_input_types"][cat.name] = applied
    result["caption"] = caption
    result["image_text_similarity"] = None if similarity is None else round(float(similarity), 6)
    result["mismatch"] = similarity is not None and similarity < policy.mismatch_threshold
    result["flagged"] = any(result["categories"].values()) or result["mismatch"]
    return result


def worst(results):
    """One result for an image judged frame by frame (an animation): each flag and score is its
    worst over the frames, so one harmful frame flags the whole image; the caption is that of the
    frame with the highest category score, the similarity the lowest."""
    if len(results) == 1:
        return results[0]
    deciding = max(results, key=lambda r: (r["flagged"], max(r["category_scores"].values(), default=0.0)))
    similarities = [r["image_text_similarity"] for r in results if r["image_text_similarity"] is not None]
    merged = dict(
        deciding,
        mismatch=any(r["mismatch"] for r in results),
        image_text_similarity=min(similarities) if similarities else None,
    )
    merged["categories"] = {c: any(r["categories"][c] for r in results) for c in deciding["categories"]}
    merged["category_scores"] = {c: max(r["category_scores"][c] for r in results) for c in deciding["categories"]}
    merged["flagged"] = any(merged["categories"].values()) or merged["mismatch"]
    return merged


# ---------------------------------------------------------------- the ShapesWorld demo, measured
def truth(policy_name, objects):
    """What the ShapesWorld demo policies should decide for a scene: the categories it contains."""
    if policy_name not in DEMOS:
        raise UserError(f"`evaluate` knows the truth only for the ShapesWorld demo policies ({', '.join(DEMOS)})")
    return {
        "red_cross": any(o.color == "red" and o.shape == "cross" for o in objects),
        "purple_cross": any(o.color == "purple" and o.shape == "cross" for o in objects),
    }


def confusion(predicted, expected, heldout=None):
    """Counts and rates of a yes/no rule against the truth, one boolean per scene; with `heldout` (does
    the scene hold a colour-shape pair never rendered in training?), where the mistakes fall and the
    rates on the scenes of seen pairs only and of held-out pairs only."""
    predicted, expected = np.asarray(predicted, bool), np.asarray(expected, bool)
    tp, fp = int((predicted & expected).sum()), int((predicted & ~expected).sum())
    fn, tn = int((~predicted & expected).sum()), int((~predicted & ~expected).sum())
    counts = {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "accuracy": round((tp + tn) / max(1, len(expected)), 4),
        "precision": round(tp / max(1, tp + fp), 4),
        "recall": round(tp / max(1, tp + fn), 4),
    }
    if heldout is None:
        return counts
    heldout = np.asarray(heldout, bool)

    def by_pair(mistakes):
        return {"held_out": int((mistakes & heldout).sum()), "seen": int((mistakes & ~heldout).sum())}

    def rates(scenes):  # precision and recall on those scenes alone
        tp = int((predicted & expected & scenes).sum())
        return {
            "precision": round(tp / max(1, int((predicted & scenes).sum())), 4),
            "recall": round(tp / max(1, int((expected & scenes).sum())), 4),
            "positives": int((expected & scenes).sum()),
        }

    return counts | {
        "fp_by_pair": by_pair(predicted & ~expected),
        "fn_by_pair": by_pair(~predicted & expected),
        "seen_scenes": rates(~heldout),
        "held_out_scenes": rates(heldout),
    }


def summary(scores):
    """The lowest, median and highest of some scores (None where there are none)."""
    if not len(scores):
        return None
    return {k: round(float(f(scores)), 4) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}


def threshold_check(scores, should_flag, flagged):
    """What a threshold does on labelled scores: the scores of what it should flag and of what it
    should pass, and how many of each it flags."""
    return {
        "should_flag": summary(scores[should_flag]),
        "should_pass": summary(scores[~should_flag]),
        "flagged_of_should_flag": [int((flagged & should_flag).sum()), int(should_flag.sum())],
        "flagged_of_should_pass": [int((flagged & ~should_flag).sum()), int((~should_flag).sum())],
    }


def concept_score(category, vectors, concepts):
    """Each image's score for a category: its highest cosine to any of the category's concepts
    (`concepts`: {prompt: unit vector}), as `decide` reads it."""
    return np.max(vectors @ np.stack([concepts[c] for c in category.concepts]).T, axis=1)


def caption_cosines(vectors, texts, samples):
    """cos(image, its own caption) for every scene, and cos(image, the previous scene's caption)
    wherever that caption differs from its own."""
    different = np.array([s.caption_en != samples[i - 1].caption_en for i, s in enumerate(samples)])
    return (vectors * texts).sum(-1), (vectors * np.roll(texts, 1, axis=0)).sum(-1)[different]


def calibration(engine, policy, n, seed):
    """The policy's thresholds on the val split, which `evaluate`'s test scenes never meet: each
    concept category's score, and each question's p(yes), on scenes with and without its symbol,
    and the image-text cosine of each image with its own caption and with another scene's."""
    samples = shapesworld.generate("val", n, seed)
    images = [s.image for s in samples]
    vectors = engine.embed_images(images)
    concepts = dict(zip(policy.concepts, engine.embed_texts(policy.concepts))) if policy.concepts else {}
    readings = engine.read_images(images, policy.questions, max_new_tokens=1) if policy.questions else []
    checks = {}
    for category in policy.categories:
        if category.concepts or category.question:
            expected = np.array([truth(policy.name, s.objects)[category.name] for s in samples])
        if category.concepts:
            score = concept_score(category, vectors, concepts)
            checks[category.name] = {"threshold": category.threshold} | threshold_check(
                score, expected, score >= category.threshold
            )
        if category.question:
            p_yes = np.array([r.answers[policy.questions.index(category.question)] for r in readings])
            checks[f"{category.name} (question)"] = {"threshold": category.question_threshold} | threshold_check(
                p_yes, expected, p_yes >= category.question_threshold
            )
    own, other = caption_cosines(vectors, engine.embed_texts([s.caption_en for s in samples]), samples)
    cosine, should_flag = np.concatenate([own, other]), np.arange(len(own) + len(other)) >= len(own)
    checks["mismatch"] = {"threshold": policy.mismatch_threshold} | threshold_check(
        cosine, should_flag, cosine < policy.mismatch_threshold
    )
    return {"split": "val", "n": n, "seed": seed, "checks": checks}


def evaluate(engine, policy, n=300, seed=1):
    """Decisions on n generated test scenes (image only), against the scene's truth, with where the
    mistakes fall (on scenes that hold a held-out colour-shape pair or not); the mismatch flag on
    each image with its own caption vs another scene's caption; and the thresholds on the val split."""
    samples = shapesworld.generate("test", n, seed)
    images = [s.image for s in samples]
    vectors = engine.embed_images(images)
    concepts = dict(zip(policy.concepts, engine.embed_texts(policy.concepts))) if policy.concepts else {}
    readings = engine.read_images(images, policy.questions)
    decided = [
        decide(
            policy,
            None,
            {c: float(vectors[i] @ v) for c, v in concepts.items()},
            readings[i].caption,
            answers=dict(zip(policy.questions, readings[i].answers)),
        )["categories"]
        for i in range(n)
    ]
    truths = [truth(policy.name, s.objects) for s in samples]
    heldout = [s.heldout for s in samples]
    rows = {
        c.name: confusion([d[c.name] for d in decided], [t[c.name] for t in truths], heldout)
        for c in policy.categories
        if c.concepts or c.question
    }
    own, other = caption_cosines(vectors, engine.embed_texts([s.caption_en for s in samples]), samples)
    return {
        "policy": policy.name,
        "engine": engine.name,
        "n": n,
        "seed": seed,
        "scenes_with_a_held_out_pair": sum(heldout),
        "categories": rows,
        "mismatch": {
            "threshold": policy.mismatch_threshold,
            "false_alarms_on_own_caption": int((own < policy.mismatch_threshold).sum()),
            "caught_other_caption": int((other < policy.mismatch_threshold).sum()),
            "other_captions": len(other),
        },
        "thresholds_on_val": calibration(engine, policy, n, seed),
    }


def print_evaluation(result):
    print(
        f"policy {result['policy']} on {result['n']} generated ShapesWorld test scenes "
        f"(seed {result['seed']}, engine {result['engine']})\n"
    )
    print(f"{'category':<16}{'accuracy':>10}{'precision':>11}{'recall':>8}{'tp':>5}{'fp':>5}{'fn':>5}")
    for name, r in result["categories"].items():
        print(
            f"{name:<16}{r['accuracy']:>10.3f}{r['precision']:>11.3f}{r['recall']:>8.3f}"
            f"{r['tp']:>5}{r['fp']:>5}{r['fn']:>5}"
        )
    held_out = result["scenes_with_a_held_out_pair"]
    print(f"\n{held_out} of the scenes hold a held-out colour-shape pair; where the mistakes fall:")
    for name, r in result["categories"].items():
        print(f"  {name}: false positives {r['fp_by_pair']}, false negatives {r['fn_by_pair']}")
    m = result["mismatch"]
    print(
        f"\nmismatch (cos < {m['threshold']}): {m['false_alarms_on_own_caption']} false alarms on an image's own "
        f"caption, {m['caught_other_caption']}/{m['other_captions']} other scenes' captions caught"
    )
    val = result["thresholds_on_val"]
    print(f"\nthe thresholds on the val split ({val['n']} scenes, seed {val['seed']}): min / median / max scores")
    for name, c in val["checks"].items():
        print(
            f"  {name} at {c['threshold']}: should flag {c['should_flag']}, flagged {c['flagged_of_should_flag']}; "
            f"should pass {c['should_pass']}, flagged {c['flagged_of_should_pass']}"
        )


def print_policy(policy):
    print(f"{policy.name} (for CLIP {policy.model}): {policy.description}")
    print(f"mismatch below cosine {policy.mismatch_threshold}")
    for c in policy.categories:
        print(f"\n  {c.name} [{', '.join(c.input_types)}] {c.description}")
        if c.concepts:
            print(f"    image: max cos to {list(c.concepts)} >= {c.threshold}")
        if c.question:
            model = shown(policy.question_model)
            print(f"    image: p(yes) to {c.question!r} >= {c.question_threshold} (BLIP-2 {model})")
        if c.rules:
            where = "text and caption" if "image" in c.input_types else "text"
            print(f"    {where}: {[r.pattern for r in c.rules]}")


def build_parser():
    from stage3_moderation import engines  # its engine names

    p = cli.Parser(prog="python -m stage3_moderation.policy", description=__doc__, formatter_class=cli.RawHelp)
    sub = p.add_subparsers(dest="command", required=True)
    policy_file = cli.InFile(".yaml", ".yml")
    s = sub.add_parser("show", help="print a policy after validating it")
    s.add_argument(
        "policy", nargs="?", type=policy_file, default=str(DEFAULT_POLICY), help="a policy YAML (default: the demo's)"
    )
    e = sub.add_parser("evaluate", help="decide on generated ShapesWorld scenes and count right / wrong")
    e.add_argument(
        "--policy", type=policy_file, default=str(DEFAULT_POLICY), help="a policy YAML (default: the demo's)"
    )
    e.add_argument(
        "--engine", choices=engines.ENGINES, default=engines.DEFAULT_ENGINE, help=f"default {engines.DEFAULT_ENGINE}"
    )
    e.add_argument(
        "--n", type=cli.Count(1, 10_000), default=300, help="generated test scenes, up to 10,000 (default 300)"
    )
    e.add_argument("--seed", type=cli.Seed(), default=1, help="ShapesWorld seed (default 1)")
    e.add_argument("--out", type=cli.OutFile(".json"), help="also write the JSON result here")
    e.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    policy = load(args.policy)
    if args.command == "show":
        return print_policy(policy)
    truth(policy.name, [])  # refuses another policy before the models load
    from stage3_moderation import engines, export_onnx

    blip2 = policy.question_model or "tiny"  # a policy's questions are asked of its own BLIP-2
    if args.engine.startswith("onnx"):
        export_onnx.ensure_exported(blip2_name=blip2)
    result = evaluate(engines.load(args.engine, blip2_name=blip2), policy, args.n, args.seed)
    if args.out:
        cli.write_json(result, args.out)
    cli.emit(result, args.json, print_evaluation)


if __name__ == "__main__":
    cli.run(main)
