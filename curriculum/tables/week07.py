"""docs/week07.md's tables: projection heads, Chinese queries, LoRA and the Q-Former, from results/week7/."""

from curriculum import shapesworld
from curriculum.tables import Table, checks, f3, table, value


@table(
    "week7.heads_inference",
    7,
    "Projection heads at inference, on the bundled tiny CLIP",
    ["week7/projection.json"],
    "make week7",
)
def heads_inference(results):
    rows = [
        [r["variant"], f3(r["text_to_image_R@1"]), f3(r["image_to_text_R@1"])]
        for r in results("week7/projection.json")["inference"]
    ]
    return Table(["variant", "text→image R@1", "image→text R@1"], rows)


@table(
    "week7.heads_training",
    7,
    "Trained from scratch with and without projection heads",
    ["week7/projection.json"],
    "make week7",
)
def heads_training(results):
    rows = [
        [
            f"{r['variant']} ({r['steps']} steps × {r['batch_size']})",
            f3(r["text_to_image_R@1"]),
            f3(r["image_to_text_R@1"]),
        ]
        for r in results("week7/projection.json")["training"]
    ]
    return Table(["variant", "text→image R@1", "image→text R@1"], rows)


@value("week7.heads_gap", ["week7/projection.json"], "make week7")
def heads_gap(results):
    runs = {r["variant"]: r for r in results("week7/projection.json")["training"]}
    with_heads, without = runs["trained with projection heads"], runs["trained without projection heads"]
    return ", ".join(
        f"{direction} R@1 {f3(without[key])} without heads against {f3(with_heads[key])} with them "
        f"({without[key] - with_heads[key]:+.3f})"
        for direction, key in (("text→image", "text_to_image_R@1"), ("image→text", "image_to_text_R@1"))
    )


@table(
    "week7.crosslingual",
    7,
    "Chinese queries on the English CLIP's image index",
    ["week7/crosslingual.json"],
    "make week7",
)
def crosslingual(results):
    r = results("week7/crosslingual.json")
    rows = [
        [label, f3(r[lang]["R@1"]), f3(r[lang]["R@5"]), f3(r[lang]["heldout_R@1"])]
        for label, lang in (("English, through the tiny CLIP", "en"), ("Chinese, through tiny-clip-zh", "zh"))
    ]
    return Table([f"query language, {r['n']:,} test images, one gallery", "R@1", "R@5", "held-out pairs R@1"], rows)


@value("week7.zh_vs_en", ["week7/crosslingual.json"], "make week7")
def chinese_vs_english(results):
    r = results("week7/crosslingual.json")
    zh, en = r["zh"]["R@1"], r["en"]["R@1"]
    return f"Chinese R@1 is {f3(zh)} against English {f3(en)} ({zh - en:+.3f})"


def red_circle_on_the_left(caption):
    return any(
        (o.color, o.shape) == ("red", "circle") and o.position.endswith("left")
        for o in shapesworld.parse_caption(caption)
    )


@value("week7.search_zh", ["week7/search_zh.json"], "make week7")
def chinese_search(results):
    """`make week7` asks 左边的红色圆形, "the red circle on the left": how many hits hold one."""
    hits = results("week7/search_zh.json")["results"]
    return f"{sum(red_circle_on_the_left(h['caption']) for h in hits)} of its {len(hits)} hits"


table("week7.finetuning_check", 7, "LoRA and prefix tuning vs PEFT", ["week7/finetuning_check.json"], "make lora")(
    checks("week7/finetuning_check.json")
)


@table(
    "week7.new_concept", 7, "Teaching the tiny BLIP-2 a new colour, three ways", ["week7/new_concept.json"], "make lora"
)
def new_concept(results):
    rows = [
        [
            r["method"],
            f"{r['trainable']:,}",
            f"{r['seconds']:.1f}" if r["seconds"] else "–",
            *(f3(r[k]) for k in ("new_color", "new_exact", "old_color", "old_exact")),
        ]
        for r in results("week7/new_concept.json")["rows"]
    ]
    return Table(["method", "trainable", "seconds", "pink: colours", "pink: exact", "old: colours", "old: exact"], rows)


@value("week7.new_concept_setup", ["week7/new_concept.json"], "make lora")
def new_concept_setup(results):
    r = results("week7/new_concept.json")
    rates = {k: f"{v:.0e}".replace("e-0", "e-") for k, v in r["learning_rates"].items()}
    return (
        f"{r['steps']} steps × {r['batch_size']} images, seed 0) at its usual learning rate: {rates['full']} "
        f"full, {rates['lora']} LoRA, {rates['prefix']} prefix. Each is scored on {r['n_new_test']} new pink "
        f"images and on {r['n_old_test']} images of the old test split"
    )


def methods(results, file="week7/new_concept.json"):
    return {r["method"]: r for r in results(file)["rows"]}


@value("week7.pink_never", ["week7/new_concept.json"], "make lora")
def pink_never(results):
    rows = methods(results)
    never = [name for name, r in rows.items() if r["trainable"] and r["new_color"] == 0]
    if not never:
        return "Every method named pink right at least once"
    names = ", ".join(f"“{name}”" for name in never)
    return f"{names}: not one caption of a pink image with every colour right (pink: colours 0)"


@value("week7.pink_rows", ["week7/new_concept.json"], "make lora")
def pink_rows(results):
    rows = methods(results)
    full = rows["full fine-tuning"]
    with_rows = next(r for name, r in rows.items() if name.endswith("embeddings"))
    share = with_rows["trainable"] / full["trainable"]
    return (
        f"“{with_rows['method']}” gets every colour right on {f3(with_rows['new_color'])} of pink images "
        f"(full fine-tuning {f3(full['new_color'])}) with {share:.0%} of full fine-tuning's trainable numbers, and "
        f"on {f3(with_rows['old_color'])} of old images (full fine-tuning {f3(full['old_color'])})"
    )


@value("week7.forgetting", ["week7/new_concept.json"], "make lora")
def forgetting(results):
    rows = methods(results)
    bundled = rows.pop("bundled model, untrained")["old_color"]
    kept = [name for name, r in rows.items() if r["old_color"] >= bundled]
    least = min(rows.values(), key=lambda r: r["old_color"])
    everyone = "every method ends below" if not kept else f"{', '.join(f'“{k}”' for k in kept)} did not fall below"
    return (
        f"on old colours, {everyone} the bundled model's {f3(bundled)}, and “{least['method']}” falls the lowest "
        f"({f3(least['old_color'])})"
    )


@value("week7.all_layers", ["week7/lora_all_layers/new_concept.json", "week7/new_concept.json"], "make lora")
def all_layers(results):
    every = methods(results, "week7/lora_all_layers/new_concept.json")
    qv = methods(results)
    lora, full = every["LoRA r=16"], qv["full fine-tuning"]
    return (
        f"on every linear layer, LoRA r=16 gets every colour right on {f3(lora['new_color'])} of pink images without "
        f"touching the embeddings (on q and v: {f3(qv['LoRA r=16']['new_color'])}; full fine-tuning: "
        f"{f3(full['new_color'])}), with {lora['trainable'] / full['trainable']:.0%} of full fine-tuning's "
        f"trainable numbers"
    )


@value("week7.all_layers_rows", ["week7/lora_all_layers/new_concept.json"], "make lora")
def all_layers_rows(results):
    every = methods(results, "week7/lora_all_layers/new_concept.json")
    plain, with_rows = every["LoRA r=16"], next(r for name, r in every.items() if name.endswith("embeddings"))
    return (
        f"pink {f3(with_rows['new_color'])} against {f3(plain['new_color'])}, old colours "
        f"{f3(with_rows['old_color'])} against {f3(plain['old_color'])}"
    )


@table("week7.qformer", 7, "Q-Former vs a projector of every patch, one recipe", ["week7/qformer.json"], "make qformer")
def qformer(results):
    r = results("week7/qformer.json")
    rows = [
        [
            row["design"],
            row["prefix_tokens"],
            f"{row['decoder_input_tokens']:.0f}",
            f"{row['connector_parameters']:,}",
            f"{row['connector_mflops']:.2f}",
            f"{row['decoder_mflops']:.1f}",
            *(f3(row["seen"][k]) for k in ("color", "shape", "position", "exact")),
            f3(row["heldout"]["exact"]),
        ]
        for row in r["rows"]
    ]
    header = ["connector", "image tokens to the decoder", "decoder input (tokens)", "connector parameters"]
    header += ["connector MFLOPs", "decoder MFLOPs"]
    seen = [f"{what}, seen pairs" for what in ("colour", "shape", "position", "all four")]
    return Table(header + seen + ["all four, held-out pairs"], rows)


@value("week7.qformer_setup", ["week7/qformer.json"], "make qformer")
def qformer_setup(results):
    r = results("week7/qformer.json")
    return f"{r['steps']} steps × {r['batch_size']} images each, greedy captions of {r['n_test']} test images"


def best(rows, score, highest=True):
    """The designs with the highest (or lowest) score, ties together: "A and B (0.092)"."""
    top = (max if highest else min)(score(r) for r in rows)
    return f"{' and '.join(r['design'] for r in rows if score(r) == top)} ({f3(top)})"


@value("week7.qformer_accuracy", ["week7/qformer.json"], "make qformer")
def qformer_accuracy(results):
    rows = results("week7/qformer.json")["rows"]
    seen, held = (lambda r: r["seen"]["exact"]), (lambda r: r["heldout"]["exact"])
    lower = [r["design"] for r in rows if held(r) < seen(r)]
    every = "every connector" if len(lower) == len(rows) else ", ".join(lower) or "no connector"
    return (
        f"All four attributes are right most often on seen pairs with the {best(rows, seen)}; on held-out "
        f"pairs most often with the {best(rows, held)} and least often with the {best(rows, held, highest=False)}. "
        f"On held-out pairs {every} scores lower than on seen ones"
    )


@value("week7.qformer_costs", ["week7/qformer.json"], "make qformer")
def qformer_costs(results):
    rows = results("week7/qformer.json")["rows"]
    extremes = {
        "the fewest connector MFLOPs": min(rows, key=lambda r: r["connector_mflops"]),
        "the longest decoder input": max(rows, key=lambda r: r["decoder_input_tokens"]),
        "the most decoder MFLOPs": max(rows, key=lambda r: r["decoder_mflops"]),
    }
    by_design = {}
    for what, row in extremes.items():
        by_design.setdefault(row["design"], []).append(what)
    return "; ".join(f"{', '.join(whats)}: the {design}" for design, whats in by_design.items())


@table(
    "week7.lora_all_layers",
    7,
    "LoRA on every linear layer of the Q-Former and the decoder",
    ["week7/lora_all_layers/new_concept.json"],
    "make lora",
)
def lora_all_layers(results):
    r = results("week7/lora_all_layers/new_concept.json")
    rows = [
        [
            row["method"],
            f"{row['trainable']:,}",
            *(f3(row[k]) for k in ("new_color", "new_exact", "old_color", "old_exact")),
        ]
        for row in r["rows"]
        if row["method"].startswith("LoRA")
    ]
    return Table(
        ["method (every linear layer)", "trainable", "pink: colours", "pink: exact", "old: colours", "old: exact"], rows
    )


@value("week7.adapter", ["week7/new_concept.json"], "make lora")
def adapter(results):
    a = results("week7/new_concept.json")["adapter"]
    same = "gives the same captions" if a["same_captions_after_reload_and_merge"] else "gives DIFFERENT captions"
    return f"({a['folder']}, {a['kilobytes']} kB). Reloaded into a fresh base model and merged, it {same}"
