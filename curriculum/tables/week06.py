"""docs/week06.md's tables: info_nce and what the contrastive recipe depends on, from results/week6/."""

import math

from curriculum.tables import Table, checks, f3, table, value

table("week6.check", 6, "info_nce vs CLIP's own loss", ["week6/check.json"], "make week6")(checks("week6/check.json"))


@table("week6.train", 6, "A tiny CLIP trained with info_nce vs the bundled one", ["week6/train.json"], "make week6")
def infonce_train(results):
    r = results("week6/train.json")
    rows = [
        [name, f3(r[key]["text_to_image_R@1"]), f3(r[key]["image_to_text_R@1"])]
        for name, key in (
            (
                f"trained here with info_nce ({r['run']['steps']:,} steps × {r['run']['batch_size']}, "
                f"{r['seconds'] / 60:.1f} min)",
                "ours",
            ),
            ("the bundled tiny CLIP", "bundled"),
        )
    ]
    return Table(["model", "text→image R@1", "image→text R@1"], rows)


@table(
    "week6.negatives",
    6,
    "The denominator's role: batch size, temperature, no negatives",
    ["week6/negatives.json"],
    "make week6",
)
def negatives(results):
    rows = []
    for r in results("week6/negatives.json")["rows"]:
        label = r["label"] + (" (CLIP's initial value)" if r["temperature"] == 0.07 else "")
        rows.append(
            [
                label,
                f3(r["final_loss"]),
                f3(r["text_to_image_R@1"]),
                f3(r["image_to_text_R@1"]),
                f3(r["mean_cos_between_images"]),
            ]
        )
    return Table(["run", "final loss", "text→image R@1", "image→text R@1", "mean cos between images"], rows)


@value("week6.steps", ["week6/negatives.json"], "make week6")
def negatives_steps(results):
    return str(results("week6/negatives.json")["steps"])


def rises(values):
    return all(b > a for a, b in zip(values, values[1:]))


@value("week6.batch_trend", ["week6/negatives.json"], "make week6")
def batch_trend(results):
    rows = [r for r in results("week6/negatives.json")["rows"] if r["negatives"] and r["temperature"] is None]
    rows.sort(key=lambda r: r["batch_size"])
    r1 = [r["text_to_image_R@1"] for r in rows]
    verdict = "rises with every bigger batch" if rises(r1) else "does not rise with every bigger batch"
    batches = ", ".join(str(r["batch_size"]) for r in rows)
    return f"text→image R@1 {verdict} ({', '.join(f3(x) for x in r1)} at batch {batches})"


@value("week6.temperatures", ["week6/negatives.json"], "make week6")
def temperatures(results):
    rows = results("week6/negatives.json")["rows"]
    fixed = sorted((r for r in rows if r["temperature"] is not None), key=lambda r: r["temperature"])
    best = max(fixed, key=lambda r: r["text_to_image_R@1"])
    at = ", ".join(f"τ = {r['temperature']:g}: {f3(r['text_to_image_R@1'])}" for r in fixed)
    where = "in between" if best not in (fixed[0], fixed[-1]) else "at an end of the range"
    return f"text→image R@1 is highest {where}, at τ = {best['temperature']:g} ({at})"


@value("week6.bunched", ["week6/negatives.json"], "make week6")
def bunched(results):
    rows = [r for r in results("week6/negatives.json")["rows"] if r["negatives"]]
    most = max(rows, key=lambda r: r["mean_cos_between_images"])
    cosine = f3(most["mean_cos_between_images"])
    return f"of the runs with negatives, “{most['label']}” bunches its images the most (mean cosine {cosine})"


def rate_verdict(row, chance):
    """stuck at guessing (infonce_lab.diverged); barely moved: below guessing by less than a tenth; learned."""
    if row["diverged"]:
        return "stuck at guessing"
    return "barely moved" if row["final_loss"] > 0.9 * chance else "learned"


@table(
    "week6.learning_rates",
    6,
    "Learning rate and warm-up: where training stops converging",
    ["week6/learning_rates.json"],
    "make week6",
)
def learning_rates(results):
    r = results("week6/learning_rates.json")
    rows = [
        [
            f"{row['lr']:g}",
            "yes" if row["warmup"] else "no",
            f3(row["max_loss"]),
            f3(row["final_loss"]),
            f3(row["text_to_image_R@1"]),
            rate_verdict(row, r["chance_loss"]),
        ]
        for row in sorted(r["rows"], key=lambda row: (row["lr"], not row["warmup"]))
    ]
    return Table(["learning rate", "warm-up", "highest loss", "final loss", "text→image R@1", "verdict"], rows)


@value("week6.lr_setup", ["week6/learning_rates.json"], "make week6")
def learning_rate_setup(results):
    r = results("week6/learning_rates.json")
    rates = sorted({row["lr"] for row in r["rows"]})
    return (
        f"{len(rates)} rates from {rates[0]:g} to {rates[-1]:g}, {r['steps']} steps × {r['batch_size']} from "
        f"scratch each, a {r['pool']:,}-image pool; guessing scores log {r['batch_size']} = {r['chance_loss']:.2f}"
    )


def rate_runs(results):
    """The learning-rate sweep's rows by rate: {lr: {warm-up: row}}."""
    runs = {}
    for row in results("week6/learning_rates.json")["rows"]:
        runs.setdefault(row["lr"], {})[row["warmup"]] = row
    return dict(sorted(runs.items()))


@value("week6.lr_edge", ["week6/learning_rates.json"], "make week6")
def learning_rate_edge(results):
    runs = rate_runs(results)
    learned = [lr for lr, pair in runs.items() if not all(row["diverged"] for row in pair.values())]
    stuck = [lr for lr in runs if lr not in learned]
    if not learned or not stuck or max(learned) > min(stuck):
        return (
            f"runs that end below guessing: {', '.join(f'{lr:g}' for lr in learned) or 'none'}; "
            f"at guessing: {', '.join(f'{lr:g}' for lr in stuck) or 'none'}"
        )
    return (
        f"From {min(learned):g} to {max(learned):g} the loss ends below guessing; from {min(stuck):g} up, "
        f"every run ends at guessing, so the edge lies between {max(learned):g} and {min(stuck):g}"
    )


@value("week6.lr_slow", ["week6/learning_rates.json"], "make week6")
def learning_rate_slow(results):
    r = results("week6/learning_rates.json")
    lowest, pair = next(iter(rate_runs(results).items()))
    ends = " and ".join(f3(row["final_loss"]) for row in pair.values())
    r1 = max(row["text_to_image_R@1"] for row in pair.values())
    return (
        f"At {lowest:g} the loss ends at {ends} (with and without warm-up), against {r['chance_loss']:.2f} for "
        f"guessing, and text→image R@1 at {f3(r1)} at most"
    )


@value("week6.lr_best", ["week6/learning_rates.json"], "make week6")
def learning_rate_best(results):
    rows = results("week6/learning_rates.json")["rows"]
    best = max(rows, key=lambda row: row["text_to_image_R@1"])
    lowest = min(rows, key=lambda row: row["final_loss"])
    same = (
        "also the lowest final loss"
        if lowest is best
        else f"lowest final loss: {lowest['lr']:g} ({f3(lowest['final_loss'])})"
    )
    return (
        f"the best retrieval is at {best['lr']:g} {'with' if best['warmup'] else 'without'} warm-up (text→image "
        f"R@1 {f3(best['text_to_image_R@1'])}, final loss {f3(best['final_loss'])}; {same})"
    )


@value("week6.lr_learned", ["week6/learning_rates.json"], "make week6")
def learning_rate_learned(results):
    runs = rate_runs(results)
    edge = max(lr for lr, pair in runs.items() if not all(row["diverged"] for row in pair.values()))
    warm, cold = runs[edge][True], runs[edge][False]
    helped = "helped" if warm["final_loss"] < cold["final_loss"] else "did not help"
    return (
        f"At {edge:g}, the run with warm-up ends at loss {f3(warm['final_loss'])} and text→image R@1 "
        f"{f3(warm['text_to_image_R@1'])}, the one without at {f3(cold['final_loss'])} and "
        f"{f3(cold['text_to_image_R@1'])}: the warm-up {helped} here"
    )


@table(
    "week6.towers",
    6,
    "The same contrastive recipe with a ViT and with a CNN image tower",
    ["week6/towers.json"],
    "make week6",
)
def towers(results):
    r = results("week6/towers.json")
    rows = [
        [
            {"vit": "ViT (CLIP's, 16 px patches)", "cnn": "CNN (4 stride-2 convolutions)"}[row["tower"]],
            f"{row['parameters']:,}",
            f3(row["final_loss"]),
            f3(row["text_to_image_R@1"]),
            f3(row["heldout_text_to_image_R@1"]),
            f"{row['tokens'][0]} × {row['tokens'][1]}" + (" (the grid, flattened)" if row["tower"] == "cnn" else ""),
        ]
        for row in r["rows"]
    ]
    header = ["image tower", "parameters", "final loss", "R@1, seen pairs", "R@1, held-out pairs"]
    return Table(header + ["tokens it hands on"], rows)


@value("week6.towers_setup", ["week6/towers.json"], "make week6")
def towers_setup(results):
    r = results("week6/towers.json")
    return f"{r['steps']} steps × {r['batch_size']} each, a {r['pool']:,}-image pool, the same seed"


@value("week6.towers_verdict", ["week6/towers.json"], "make week6")
def towers_verdict(results):
    rows = {r["tower"]: r for r in results("week6/towers.json")["rows"]}
    cnn, vit = rows["cnn"], rows["vit"]
    winner = "the CNN" if cnn["text_to_image_R@1"] > vit["text_to_image_R@1"] else "the ViT"
    return (
        f"{winner} retrieves better: text→image R@1 {f3(cnn['text_to_image_R@1'])} for the CNN against "
        f"{f3(vit['text_to_image_R@1'])} for the ViT on seen pairs, {f3(cnn['heldout_text_to_image_R@1'])} against "
        f"{f3(vit['heldout_text_to_image_R@1'])} on held-out pairs"
    )


# ---------------------------------------------------------------- the learning rate in a BLIP-2 fine-tune
BLIP2_LR = "week6/blip2_lr.json"


PLATEAU_MARGIN = 0.05  # "at the coin-flip level": the held-out answer loss within 5% of ln 2


def plateau_step(row):
    """The first probed step at which the held-out answer loss is within PLATEAU_MARGIN of ln 2."""
    return next((step for step, loss in row["heldout_loss"] if loss <= (1 + PLATEAU_MARGIN) * math.log(2)), None)


def symbol(category):
    """red_cross -> red cross"""
    return category.replace("_", " ")


@table(
    "week6.blip2_lr",
    6,
    "Learning rate and warm-up in the BLIP-2 compliance fine-tune",
    [BLIP2_LR],
    "make week6",
)
def blip2_learning_rates(results):
    r = results(BLIP2_LR)
    categories = list(r["test"]["questions"])
    header = ["learning rate", "warm-up", "final training loss", "held-out answer loss: start → end (lowest)"]
    header += [f"steps to within {PLATEAU_MARGIN:.0%} of ln 2"]
    for category in categories:
        header += [f"{symbol(category)}: precision / recall", f"{symbol(category)}: AUC"]
    rows = []
    for row in sorted(r["rows"], key=lambda row: (row["lr"], not row["warmup"])):
        cells = [
            f"{row['lr']:g}",
            "yes" if row["warmup"] else "no",
            f3(row["final_loss"]),
            f"{f3(row['heldout_first'])} → {f3(row['heldout_final'])} ({f3(row['heldout_min'])})",
            plateau_step(row) if plateau_step(row) is not None else f"not in {r['steps']}",
        ]
        for category in categories:
            c = row["categories"][category]
            cells += [f"{f3(c['precision'])} / {f3(c['recall'])}", "–" if c["auc"] is None else f3(c["auc"])]
        rows.append(cells)
    return Table(header, rows)


@value("week6.blip2_lr_setup", [BLIP2_LR], "make week6")
def blip2_lr_setup(results):
    r = results(BLIP2_LR)
    rates = sorted({row["lr"] for row in r["rows"]})
    t, probe = r["test"], r["probe"]
    positives = " and ".join(f"{n} with a {symbol(c)}" for c, n in t["positives"].items())
    return (
        f"{len(rates)} rates from {rates[0]:g} to {rates[-1]:g}, each {r['steps']} steps × {r['batch_size']} from "
        f"the bundled tiny BLIP-2 with a {r['pool']:,}-image pool, warm-up over the first {r['warmup_steps']} steps "
        "or none; "
        f"the held-out loss on {probe['questions']} compliance questions about test scenes every {probe['every']} "
        f"steps; precision and recall at p(yes) ≥ {t['threshold']:g} on week 9's {t['n']} test scenes ({positives})"
    )


def blip2_runs(results):
    """{(lr, warm-up): row} of the BLIP-2 sweep."""
    return {(row["lr"], row["warmup"]): row for row in results(BLIP2_LR)["rows"]}


@value("week6.blip2_lr_speed", [BLIP2_LR], "make week6")
def blip2_lr_speed(results):
    runs = blip2_runs(results)
    start = f3(next(iter(runs.values()))["heldout_first"])
    steps = []
    for (lr, warmup), row in sorted(runs.items()):
        if warmup:
            step = plateau_step(row)
            steps.append(f"{'never' if step is None else f'step {step}'} at {lr:g}")
    return (
        f"with warm-up, the held-out answer loss falls from {start} to within {PLATEAU_MARGIN:.0%} of "
        f"ln 2 = {math.log(2):.3f} by {', '.join(steps)}"
    )


@value("week6.blip2_lr_plateau", [BLIP2_LR], "make week6")
def blip2_lr_plateau(results):
    r = results(BLIP2_LR)
    ends = [row["heldout_final"] for row in r["rows"]]
    medians = [
        c[key]
        for row in r["rows"]
        for c in row["categories"].values()
        for key in ("median_p_yes_with", "median_p_yes_without")
        if c[key] is not None
    ]
    return (
        f"every run ends with a held-out answer loss from {f3(min(ends))} to {f3(max(ends))}, against "
        f"ln 2 = {math.log(2):.3f} for a coin flip, and the median p(yes) on the test scenes lies between "
        f"{f3(min(medians))} and {f3(max(medians))} whether the symbol is there or not"
    )


@value("week6.blip2_lr_damage", [BLIP2_LR], "make week6")
def blip2_lr_damage(results):
    runs = blip2_runs(results)
    start = f3(next(iter(runs.values()))["first_loss"])
    best = min(row["final_loss"] for row in runs.values())
    kept = sorted({lr for (lr, _), row in runs.items() if row["final_loss"] <= 1.1 * best})
    worse = sorted({lr for (lr, _), row in runs.items() if row["final_loss"] > 1.1 * best})
    ends = "; ".join(
        f"{lr:g}: {f3(runs[(lr, True)]['final_loss'])} with warm-up, {f3(runs[(lr, False)]['final_loss'])} without"
        for lr in worse
        if (lr, True) in runs and (lr, False) in runs
    )
    kept_text = f"{kept[0]:g} to {kept[-1]:g}" if kept else "no rate"
    return (
        f"the training loss (starting at {start}) ends within 10% of the lowest, {f3(best)}, from {kept_text}, "
        f"and higher above ({ends or 'none'})"
    )


@value("week6.blip2_lr_warmup", [BLIP2_LR], "make week6")
def blip2_lr_warmup(results):
    runs = blip2_runs(results)
    top = max(lr for lr, _ in runs)
    warm, cold = runs.get((top, True)), runs.get((top, False))
    if not warm or not cold:
        return f"at {top:g} only one of the two runs was made"
    lower = "lower" if warm["max_loss"] < cold["max_loss"] else "not lower"
    return (
        f"at {top:g} the training loss peaks at {f3(warm['max_loss'])} with warm-up and {f3(cold['max_loss'])} "
        f"without ({lower} with it), and ends at {f3(warm['final_loss'])} and {f3(cold['final_loss'])}"
    )


@value("week6.blip2_lr_auc", [BLIP2_LR], "make week6")
def blip2_lr_auc(results):
    r = results(BLIP2_LR)
    parts = []
    for category in r["test"]["questions"]:
        scored = [(row["categories"][category]["auc"], row) for row in r["rows"]]
        scored = [(auc, row) for auc, row in scored if auc is not None]
        low, high = min(scored, key=lambda x: x[0]), max(scored, key=lambda x: x[0])
        parts.append(
            f"{symbol(category)} from {f3(low[0])} ({low[1]['lr']:g}{'' if low[1]['warmup'] else ', no warm-up'}) "
            f"to {f3(high[0])} ({high[1]['lr']:g}{'' if high[1]['warmup'] else ', no warm-up'})"
        )
    return "the AUC of p(yes) ranges " + "; ".join(parts)
