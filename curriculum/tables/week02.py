"""docs/week02.md's tables: BLIP-2 captions, prompts and the LAVIS parity, from results/week2/."""

from curriculum.tables import Table, f3, table, value


@table("week2.prompts", 2, "One image under every trained prompt", ["week2/prompts.json"], "make week2")
def prompts(results):
    rows = [
        [f"`{r['prompt']}`" if r["prompt"] else "(none)", r["caption"]]
        for r in results("week2/prompts.json")["results"]
    ]
    return Table(
        ["prompt", "caption of `test_00001.png` (a small green cross top right, a small red circle bottom right)"], rows
    )


@value("week2.untrained", ["week2/untrained_prompts.json"], "make week2")
def untrained_prompts(results):
    one, weather = results("week2/untrained_prompts.json")["results"]
    return f'`{one["prompt"]}` gives "{one["caption"]}", and `{weather["prompt"]}` gives "{weather["caption"]}"'


@table("week2.accuracy", 2, "Caption and QA accuracy on the test split", ["week2/eval.json"], "make week2")
def caption_accuracy(results):
    groups = results("week2/eval.json")["groups"]
    keys = ("color", "shape", "size", "position", "exact", "qa")
    rows = [
        [label, *(f3(groups[g][k]) for k in keys), groups[g]["n"]]
        for label, g in (("seen colour-shape pairs", "seen"), ("a held-out pair in the image", "heldout"))
    ]
    return Table(["test images", "colour", "shape", "size", "position", "all four", "QA", "n"], rows)


ATTRIBUTE_NAMES = {"color": "colour", "shape": "shape", "size": "size"}


@value("week2.heldout_drop", ["week2/eval.json"], "make week2")
def heldout_drop(results):
    """Of colour, shape and size (each scored on its own; position is bound to colour and shape),
    the one that falls most from seen pairs to held-out ones."""
    groups = results("week2/eval.json")["groups"]
    seen, heldout = groups["seen"], groups["heldout"]
    worst = max(ATTRIBUTE_NAMES, key=lambda a: seen[a] - heldout[a])
    others = ", ".join(
        f"{ATTRIBUTE_NAMES[a]} {f3(seen[a])} and {f3(heldout[a])}" for a in ATTRIBUTE_NAMES if a != worst
    )
    return (
        f"{ATTRIBUTE_NAMES[worst]} falls the most, from {f3(seen[worst])} on images of seen pairs to "
        f"{f3(heldout[worst])} on images with a held-out pair ({others})"
    )


@table("week2.qa_forms", 2, "Questions answered exactly, by the question's form", ["week2/eval.json"], "make week2")
def qa_forms(results):
    rows = [[f"`{r['question']}`", r["n"], f3(r["right"])] for r in results("week2/eval.json")["qa_by_question"]]
    return Table(["question", "asked", "answered exactly"], rows)


@table(
    "week2.prompt_styles",
    2,
    "The plan's prompt exercise, before and after teaching it",
    ["week2/prompt_styles.json"],
    "make week2",
)
def prompt_styles(results):
    rows = [
        [
            row["model"],
            f"`{row['prompt']}`",
            row["asks"],
            f"{row['words']:.1f}",
            f"{row['shapes_named']:.2f}",
            f3(row["says_where"]),
            f3(row["says_size"]),
            f3(row["pairs_right"]),
        ]
        for row in results("week2/prompt_styles.json")["rows"]
    ]
    header = ["model", "prompt", "asks for", "words", "shapes named", "says where", "says how big"]
    return Table(header + ["colour-shape pairs right"], rows)


@value("week2.prompt_styles_n", ["week2/prompt_styles.json"], "make week2")
def prompt_styles_n(results):
    return f"{results('week2/prompt_styles.json')['n']:,} test images, greedy decoding"


@value("week2.same_answer", ["week2/prompt_styles.json"], "make week2")
def same_answer(results):
    """How often the English and the Chinese prompt of one request get the very same answer."""
    r = results("week2/prompt_styles.json")
    return "; ".join(
        f"the {model} model on {', '.join(f'{f3(share)} of them asked for {asks}' for asks, share in shares.items())}"
        for model, shares in r["same_answer_across_languages"].items()
    )


@table(
    "week2.fine_tuned_accuracy",
    2,
    "The fine-tuned model against week 2's thresholds",
    ["week2/eval_prompts.json"],
    "make tiny-blip2-prompts",
)
def fine_tuned_accuracy(results):
    return caption_accuracy(lambda _: results("week2/eval_prompts.json"))


@value("week2.n", ["week2/eval.json"], "make week2")
def caption_n(results):
    return f"{results('week2/eval.json')['n']:,}"


@table("week2.lavis", 2, "transformers vs LAVIS on the same weights", ["week2/lavis_parity.json"], "make week2-lavis")
def lavis_parity(results):
    r = results("week2/lavis_parity.json")
    same_ids = r["prompt_ids"]["transformers"] == r["prompt_ids"]["lavis"]
    stages = " / ".join(c["name"] for c in r["checks"])
    diffs = " / ".join("0" if c["max_abs_diff"] == 0 else f"{c['max_abs_diff']:.1e}" for c in r["checks"])
    return Table(
        ["compared on the same weights", "transformers vs LAVIS"],
        [
            [f"one image + its question, max |difference|: {stages}", diffs],
            ["prompt token ids (`</s> Question: … Answer:`)", "identical" if same_ids else "different"],
            [f"greedy captions of {r['n']} test images", f"{r['captions_equal']} of {r['n']} equal"],
            ["the week-2 question of each image, answered greedily", f"{r['answers_equal']} of {r['n']} equal"],
        ],
    )


@table(
    "week2.backends", 2, "The same images captioned by both libraries", ["week2/lavis_parity.json"], "make week2-lavis"
)
def backends(results):
    rows = [
        [
            f"`test_{e['index']:05d}.png`",
            e["transformers"][0],
            e["lavis"][0],
            e["question"],
            f"{e['transformers'][1]} / {e['lavis'][1]}",
        ]
        for e in results("week2/lavis_parity.json")["examples"]
    ]
    return Table(["image", "transformers", "LAVIS", "question", "answers (transformers / LAVIS)"], rows)
