"""docs/week06.md's tables: info_nce and what the contrastive recipe depends on, from results/week6/."""

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
            "stuck at guessing" if row["diverged"] else "learned",
        ]
        for row in sorted(r["rows"], key=lambda row: (row["lr"], not row["warmup"]))
    ]
    return Table(["learning rate", "warm-up", "highest loss", "final loss", "text→image R@1", "verdict"], rows)


@value("week6.lr_setup", ["week6/learning_rates.json"], "make week6")
def learning_rate_setup(results):
    r = results("week6/learning_rates.json")
    return (
        f"{r['steps']} steps × {r['batch_size']} from scratch each, a {r['pool']:,}-image pool; guessing scores "
        f"log {r['batch_size']} = {r['chance_loss']:.2f}"
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
        f"Only at {', '.join(f'{lr:g}' for lr in learned)} does the loss end below guessing; from {min(stuck):g} up, "
        f"every run ends at guessing, so the edge lies between {max(learned):g} and {min(stuck):g}"
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
