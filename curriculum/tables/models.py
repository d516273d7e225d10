"""docs/models.md's and docs/training.md's tables (week 0 of the lab notebook): how the bundled checkpoints were
trained (data/models/*/training.json, copied to results/models/) and training on 1 and 2 processes
(results/bench/training.json), and a checkpoint remade from scratch (results/provenance/remake.json)."""

from curriculum.tables import Table, table, value

MODELS = ("tiny-clip", "tiny-blip2", "tiny-blip2-prompts", "tiny-blip2-compliance", "tiny-clip-zh", "tiny-sd")


@table(
    "models.training",
    0,
    "How the bundled checkpoints were trained (data/models/*/training.json)",
    [f"models/{name}.json" for name in MODELS],
    "make tiny-models",
)
def model_training(results):
    rows = []
    for name in MODELS:
        r = results(f"models/{name}.json")
        precision, steps = r["precision"], f"{r['steps']:,}"
        if "vae_steps" in r:  # tiny-sd: its VAE first, then its UNet
            steps = f"{r['vae_steps']:,} VAE + {steps} UNet"
            precision = f"{r['vae_precision']} VAE, {precision} UNet"
        minutes = f"{r['train_minutes'] + r.get('vae_train_minutes', 0):.1f}"  # tiny-sd: VAE and UNet
        rows.append([f"`{name}`", steps, r["batch_size"], f"{r['final_loss']:.3f}", minutes, precision])
    return Table(["checkpoint", "steps", "batch", "final loss", "minutes (2 CPU cores)", "precision"], rows)


# ---------------------------------------------------------------- training on more processes (make bench)
@table("training.scaling", 0, "Training the tiny CLIP on 1 and 2 processes", ["bench/training.json"], "make bench")
def training_scaling(results):
    r = results("bench/training.json")
    rows = [
        [
            row["run"],
            row["num_processes"],
            f"{row['samples_per_s']:,}",
            f"{row['comm_share']:.0%}" if row["comm_share"] is not None else "not timed",
        ]
        for row in r["rows"]
    ]
    return Table(["run", "processes", "samples/s", "communication share of a step"], rows)


@value("training.ratio", ["bench/training.json"], "make bench")
def training_ratio(results):
    r = results("bench/training.json")
    return f"{r['speedup_2_vs_1']:.2f}× the samples/s of 1, with {r['comm_share_2']:.0%} of a step spent communicating"


@table(
    "training.divergence",
    0,
    "The same training on 1 and on 2 processes: how far apart the weights end",
    ["bench/training.json"],
    "make bench",
)
def training_divergence(results):
    r = results("bench/training.json")
    rows = [
        [
            f"{row['steps']:,}",
            f"{row['max_weight_diff']:.1e}",
            f"{row['final_loss_1']:.3f}",
            f"{row['final_loss_2']:.3f}",
        ]
        for row in r["divergence"]
    ]
    steps = f"steps (batch {r['divergence_batch_size']})"
    return Table([steps, "largest weight difference", "final loss, 1 process", "final loss, 2 processes"], rows)


@value("models.remake", ["provenance/remake.json"], "make remake")
def remake(results):
    r = results("provenance/remake.json")
    verdict = (
        "every weight identical, bit for bit" if r["identical"] else f"different, by up to {r['max_abs_diff']:.1e}"
    )
    versions = "the same library versions" if r["same_versions"] else "other library versions"
    return f"`{r['checkpoint']}` remade by `{r['command']}` on {versions}: {r['tensors']} tensors, {verdict}"
