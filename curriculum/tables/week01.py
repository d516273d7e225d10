"""docs/week01.md's tables: CLIP retrieval and zero-shot classification, from results/week1/."""

from curriculum.tables import Table, f3, table, value


@table("week1.retrieval", 1, "CLIP retrieval on the ShapesWorld test split", ["week1/eval.json"], "make week1")
def retrieval(results):
    r = results("week1/eval.json")
    rows = [
        [name, *(f3(r[key][f"R@{k}"]) for k in (1, 5, 10))]
        for name, key in (("text → image", "text_to_image"), ("image → text", "image_to_text"))
    ]
    rows.append(["held-out combinations, text → image", f3(r["heldout_combinations"]["R@1"]), "", ""])
    return Table(["direction", "R@1", "R@5", "R@10"], rows)


@value("week1.counts", ["week1/eval.json"], "make week1")
def retrieval_counts(results):
    r = results("week1/eval.json")
    return (
        f"{r['n']:,} test images: {r['n_seen']:,} queries of seen combinations, {r['n_heldout']:,} with a held-out pair"
    )


@table("week1.zeroshot", 1, "Zero-shot classification vs a linear probe", ["week1/zeroshot.json"], "make week1")
def zeroshot(results):
    r = results("week1/zeroshot.json")
    rows = [
        [
            f"{row['task']} (`{r['phrases'][row['task']]}`)",
            row["images"],
            row["classes"],
            f3(row["one_template"]),
            f3(row["ensemble"]),
            f3(row["linear_probe"]),
            row["n"],
        ]
        for row in r["rows"]
    ]
    header = ["task (class phrase)", "test images", "classes", "one template", f"{len(r['ensemble'])} templates"]
    return Table(header + ["linear probe", "n"], rows)


@value("week1.zeroshot_setup", ["week1/zeroshot.json"], "make week1")
def zeroshot_setup(results):
    r = results("week1/zeroshot.json")
    return f"{r['n_test']:,} single-object test images; the probe trained on {r['n_train_probe']:,} train images"


@value("week1.ensemble_effect", ["week1/zeroshot.json"], "make week1")
def ensemble_effect(results):
    """What the template ensemble changes against the one template, task by task."""
    r = results("week1/zeroshot.json")
    changes = [(row["ensemble"] - row["one_template"], row) for row in r["rows"]]
    return ", ".join(
        f"{change:+.3f} on {row['task']} (`{r['phrases'][row['task']]}`, {row['images']})" for change, row in changes
    )
