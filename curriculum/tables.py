"""The measured tables of the docs (`make docs`) and of the lab notebook (`make report`), each
written from the JSON a week's command saved, never typed.

A renderer takes `results(file)`, which reads one JSON file of results/ (or of outputs/), and
returns a Table; a value renderer returns the text of one number. Each is registered with the
week it belongs to and the files it reads; MAKES says which make target writes each file.
"""

import html
import re
from dataclasses import dataclass

TABLES, VALUES, TITLES, WEEK, FILES = {}, {}, {}, {}, {}
MAKES = {}  # result file (relative to outputs/ and results/) -> the make target that writes it
# the pictures the docs show (relative to outputs/ and docs/img/) -> the make target that draws them
PICTURES = {
    "week1/text_two_objects.png": "make week1",
    "week1/image_query.png": "make week1",
    "week2/captions.png": "make week2",
    "week2/prompts.png": "make week2",
    "week3/compare.png": "make week3",
    "week3/attention_circle.png": "make week3",
    "week4/attention.png": "make week4",
    "week6/negatives.png": "make week6",
    "week7/search_zh.png": "make week7",
    "week7/new_concept_loss.png": "make week7",
    "week8/forward_snr.png": "make week8",
    "week8/compare_determinism.png": "make week8",
    "bench/moderation.png": "make bench",
}


@dataclass
class Table:
    header: list
    rows: list

    def markdown(self):
        def cell(c):
            return str(c).replace("|", "\\|")  # a pipe inside a cell would split it

        lines = ["| " + " | ".join(map(cell, self.header)) + " |", "|" + "---|" * len(self.header)]
        return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows])

    def html(self):
        def cell(c):  # `code` spans as <code>, as the markdown would render them
            return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(str(c)))

        head = "".join(f"<th>{cell(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><tr>{head}</tr>{body}</table>"


def table(name, week, title, files, make):
    """Register a table renderer: the week it belongs to (0: the models and their training), the
    files it reads, the make target that writes them."""

    def register(render):
        TABLES[name], TITLES[name], WEEK[name], FILES[name] = render, title, week, files
        MAKES.update({f: make for f in files})
        return render

    return register


def value(name, files, make):
    def register(render):
        VALUES[name] = render
        MAKES.update({f: make for f in files})
        return render

    return register


def f3(x):
    return f"{x:.3f}"


# ---------------------------------------------------------------- week 1
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


# ---------------------------------------------------------------- week 2
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


# ---------------------------------------------------------------- week 3
def share(x):
    return "n/a" if x is None else f"{x:.2f}"


@table("week3.compare", 3, "Schedulers × steps, one prompt, 4 seeds", ["week3/compare.json"], "make week3")
def scheduler_steps(results):
    r = results("week3/compare.json")
    rows = []
    for name in r["schedulers"]:
        cells = [c for c in r["cells"] if c["scheduler"] == name]
        rows.append(
            [
                name,
                *(
                    f"{share(c['fidelity']['color'])} / {share(c['fidelity']['shape'])}, {c['seconds_per_image']:.2f} s"
                    for c in cells
                ),
            ]
        )
    return Table(["scheduler", *(f"{s} steps" for s in r["steps"])], rows)


@table(
    "week3.fidelity", 3, "Prompt fidelity on the test split, judged by the tiny CLIP", ["week3/eval.json"], "make week3"
)
def fidelity(results):
    r = results("week3/eval.json")
    groups = (
        ("all", "fidelity"),
        ("seen colour-shape pairs", "seen_pairs"),
        ("held-out pairs", "heldout_pairs"),
        ("in one-object prompts", "one_object_prompts"),
        ("in two-object prompts", "two_object_prompts"),
    )
    rows = [[label, r[key]["objects"], *(f3(r[key][k]) for k in ("color", "shape", "both"))] for label, key in groups]
    return Table(["asked objects", "n", "colour", "shape", "both"], rows)


@value("week3.n", ["week3/eval.json"], "make week3")
def fidelity_n(results):
    r = results("week3/eval.json")
    return f"{r['prompts']} prompts, {r['fidelity']['objects']} asked objects"


# ---------------------------------------------------------------- the `check` subcommands (weeks 4, 5, 8)
def checks(file):
    """Every check of a `check --json` result: what was compared, how far apart, within tolerance."""

    def render(results):
        rows = [
            [c["name"], c.get("detail") or f"{c['max_abs_diff']:.1e}", "ok" if c["ok"] else "FAIL"]
            for c in results(file)["checks"]
        ]
        return Table(["from scratch vs library", "max abs difference", ""], rows)

    return render


table(
    "week4.check",
    4,
    "Attention and the decoder from scratch vs torch and transformers",
    ["week4/check.json"],
    "make week4",
)(checks("week4/check.json"))


# ---------------------------------------------------------------- week 6
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


# ---------------------------------------------------------------- week 7
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
    return Table(header + ["colour", "shape", "position", "all four", "all four, held-out pairs"], rows)


@value("week7.qformer_setup", ["week7/qformer.json"], "make qformer")
def qformer_setup(results):
    r = results("week7/qformer.json")
    return f"{r['steps']} steps × {r['batch_size']} images each, greedy captions of {r['n_test']} test images"


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


# ---------------------------------------------------------------- week 8
table(
    "week8.check",
    8,
    "DDPM and DDIM from scratch vs diffusers' schedulers, step by step",
    ["week8/check.json"],
    "make week8",
)(checks("week8/check.json"))


@value("week8.check_summary", ["week8/check.json"], "make week8")
def diffusion_check_summary(results):
    found = results("week8/check.json")["checks"]
    worst = max(c["max_abs_diff"] for c in found)
    agree = "agree exactly" if worst == 0 else f"agree within {worst:.1e}"
    return f"{sum(c['ok'] for c in found)} of {len(found)} checks {agree} (max difference {worst:g})"


SAMPLES = {
    "DDIM η = 0": "week8/sample_ddim.json",
    "DDIM η = 1": "week8/sample_ddim_eta1.json",
    "DDPM": "week8/sample_ddpm.json",
}


@table(
    "week8.samples",
    8,
    "The from-scratch loop vs the week-3 pipeline, same prompt, seed and steps",
    list(SAMPLES.values()),
    "make week8",
)
def samples(results):
    rows = [[name, results(file)["steps"], results(file)["max_pixel_diff"]] for name, file in SAMPLES.items()]
    return Table(["sampler", "steps", "max pixel difference (of 255)"], rows)


@table("week8.compare", 8, "Every sampler × steps, one prompt, 6 seeds", ["week8/compare.json"], "make week8")
def sampler_steps(results):
    r = results("week8/compare.json")
    rows = [
        [
            name,
            *(
                f"{share(c['fidelity']['color'])} / {share(c['fidelity']['shape'])}"
                for c in r["cells"]
                if c["scheduler"] == name
            ),
        ]
        for name in r["schedulers"]
    ]
    return Table(["sampler", *(f"{s} steps" for s in r["steps"])], rows)


@value("week8.determinism", ["week8/compare.json"], "make week8")
def determinism(results):
    d = results("week8/compare.json")["determinism"]
    return f"DDIM η=0: max pixel difference {d['max_pixel_diff']['ddim eta=0']}; DDPM: {d['max_pixel_diff']['ddpm']}"


@value("week8.snr", ["week8/forward.json"], "make week8")
def snr_at_end(results):
    snr = results("week8/forward.json")["snr"]
    return f"SNR {snr['scaled_linear']['999']:.2g} at t = 999, against {snr['linear']['999']:.2g}"


# ---------------------------------------------------------------- week 9
@table("week9.parity", 9, "ONNX exports vs PyTorch", ["onnx/tiny/manifest.json"], "make export")
def onnx_parity(results):
    rows = [
        [
            r["precision"],
            f"{r['clip_image_cosine']:.6f}",
            f"{r['clip_text_cosine']:.6f}",
            f"{r['blip2_image_cosine']:.6f}",
            f"{r['captions_identical']}/{r['n']}",
        ]
        for r in results("onnx/tiny/manifest.json")["parity"]
    ]
    return Table(
        ["precision", "clip image cos", "clip text cos", "blip2 queries cos", "greedy captions identical"], rows
    )


@table("week9.policy", 9, "The demo policy on generated test scenes", ["week9/policy.json"], "make week9")
def policy(results):
    r = results("week9/policy.json")
    rows = [[name, f3(c["accuracy"]), f3(c["precision"]), f3(c["recall"])] for name, c in r["categories"].items()]
    return Table(["category", "accuracy", "precision", "recall"], rows)


@table(
    "week9.vqa_rule",
    9,
    "Caption rule vs visual question, the same labelled scenes",
    ["week9/vqa_rule.json"],
    "make week9",
)
def vqa_rule(results):
    rows = [
        [row["category"], row["rule"], f3(row["precision"]), f3(row["recall"]), row["tp"], row["fp"], row["fn"]]
        for row in results("week9/vqa_rule.json")["rows"]
    ]
    return Table(["category", "rule", "precision", "recall", "tp", "fp", "fn"], rows)


@value("week9.vqa_setup", ["week9/vqa_rule.json"], "make week9")
def vqa_setup(results):
    r = results("week9/vqa_rule.json")
    positives = ", ".join(f"{n} with a {c.replace('_', ' ')}" for c, n in r["positives"].items())
    return f"{r['n']:,} generated test scenes (seed {r['seed']}): {positives}"


@value("week9.mismatch", ["week9/policy.json"], "make week9")
def mismatch(results):
    m = results("week9/policy.json")["mismatch"]
    alarms = (
        "no false alarm"
        if m["false_alarms_on_own_caption"] == 0
        else f"{m['false_alarms_on_own_caption']} false alarms"
    )
    return (
        f"Mismatch (cos < {m['threshold']}): {alarms} on an image's own caption, and "
        f"{m['caught_other_caption']} of {m['other_captions']} other scenes' captions caught"
    )


# ---------------------------------------------------------------- weeks 10 and 11: the service's benchmark
def percent(x):
    return f"{x:.0%}" if x else "n/a"


def engine_towers(engines):
    rows = [
        [
            r["model"],
            r["engine"],
            r["precision"],
            r["batch"],
            f"{r['images_per_s']:,}",
            f"{r['min_cosine_to_fp32']:.4f}",
            percent(r["share_of_limit"]),
        ]
        for r in engines["towers"]
    ]
    return Table(
        ["image tower", "engine", "precision", "batch", "images/s", "min cosine to fp32", "share of limit"], rows
    )


def tiny_engines(engines):
    rows = [
        [
            r["engine"],
            f"{r['embed_images_per_s']:,}",
            r["captions_per_s"],
            f"{r['min_cosine_to_fp32']:.4f}",
            f3(r["text_to_image_r1"]),
            r["captions_same_as_fp32"],
            r["warm_up_s"],
        ]
        for r in engines["tiny_engines"]
    ]
    return Table(
        [
            "tiny engine",
            "embed images/s (16)",
            "captions/s (16)",
            "min cosine",
            "text→image R@1",
            "captions same as fp32",
            "warm-up s",
        ],
        rows,
    )


def service(service_result):
    rows = [
        [
            r["config"],
            r["concurrency"],
            r["requests_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["server"]["p50_ms"] if r.get("server") else "–",
            r["server"]["p99_ms"] if r.get("server") else "–",
            r.get("server_cpu_ms_per_request", "–"),
            r.get("mean_batch", {}).get("caption", "–"),
            r["errors"],
        ]
        for r in service_result["rows"]
    ]
    header = ["configuration", "clients", "requests/s", "p50 ms", "p99 ms", "server p50", "server p99",
              "server CPU ms per request", "mean caption batch", "errors"]  # fmt: skip
    return Table(header, rows)


def service_breakdown(service_result):
    """Mean milliseconds per stage (timing.py) of the answered requests at 32 clients."""
    rows = [r for r in service_result["rows"] if r["concurrency"] == 32 and r.get("server")]
    stages = list(rows[0]["server"]["mean_ms"]) if rows else []
    return Table(
        ["configuration, 32 clients", *stages], [[r["config"], *r["server"]["mean_ms"].values()] for r in rows]
    )


def service_open_loop(service_result):
    rows = [
        [
            r["config"],
            f"{r['share_of_max']:.0%}",
            r["offered_per_s"],
            r["answered_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["errors"],
        ]  # fmt: skip
        for r in service_result["open_loop"]
    ]
    return Table(["configuration", "share of max", "offered/s", "answered/s", "p50 ms", "p99 ms", "errors"], rows)


def service_targets(service_result):
    rows = [[t["target"], t["ratio"], "met" if t["met"] else "not met"] for t in service_result["targets"]]
    return Table(["target", "measured", ""], rows)


def liveness(r):
    rows = [
        [name, m["p50"], m["p99"], m["max"], m["n"]]
        for name, m in (("idle", r["healthz_idle_ms"]), ("under load", r["healthz_loaded_ms"]))
    ]
    return Table(["/healthz", "p50 ms", "p99 ms", "max ms", "samples"], rows)


def bench_table(name, week, title, file, render):
    """A table that render(data) draws from one result file of `make bench`."""
    table(name, week, title, [file], "make bench")(lambda results: render(results(file)))


ENGINES, SERVICE, LIVENESS = (
    "bench/moderation_engines.json",
    "bench/moderation_service.json",
    "bench/moderation_liveness.json",
)
bench_table("week11.towers", 11, "One image tower under each engine", ENGINES, engine_towers)
bench_table("week11.tiny_engines", 11, "The full engines on the tiny models", ENGINES, tiny_engines)
bench_table("week11.service", 11, "The service under load, batching and cache on and off", SERVICE, service)
bench_table(
    "week11.breakdown", 11, "Where a request's time goes, by the server's own clock", SERVICE, service_breakdown
)
bench_table("week11.open_loop", 11, "Latency at fixed arrival rates (open loop)", SERVICE, service_open_loop)
bench_table("week11.targets", 11, "The service's targets, as ratios of one run", SERVICE, service_targets)
bench_table("week10.liveness", 10, "/healthz while the heaviest images the limits admit arrive", LIVENESS, liveness)


def attacks(r):
    """stage3_moderation.liveness: each attack, what the server answered, /healthz and the server's cost."""

    def answered(a):
        if "statuses" in a:
            return ", ".join(f"{n} × {status}" for status, n in sorted(a["statuses"].items()))
        return f"{a['closed_by_server']} of {a['connections']} closed" + (
            f" after {a['closed_after_s']} s" if a["closed_after_s"] is not None else ""
        )

    rows = [
        [a["what"], answered(a), a["healthz_ms"]["p99"], a["healthz_ms"]["max"], a["rss_peak_mb"] - a["rss_before_mb"]]
        + [a["server_cpu_s"], a["fds_peak"]]
        for a in r["attacks"]
    ]
    header = ["attack", "answered", "/healthz p99 ms", "max ms", "RSS + MiB", "server CPU s", "open files"]
    return Table(header, [["(idle)", "", r["healthz_idle_ms"]["p99"], r["healthz_idle_ms"]["max"], "", "", ""]] + rows)


bench_table("week10.attacks", 10, "/healthz and the server's cost under each attack", "bench/liveness.json", attacks)


RAY = "bench/ray.json"


def ray_serve(r):
    rows = [
        [x["server"], x["concurrency"], x["requests_per_s"], x["p50_ms"], x["p99_ms"], x["errors"]] for x in r["rows"]
    ]
    return Table(["server", "concurrency", "requests/s", "p50 ms", "p99 ms", "errors"], rows)


bench_table("week11.ray_serve", 11, "The single process vs Ray Serve, same workload, one run", RAY, ray_serve)


@value("week11.ray_workload", [RAY], "make bench")
def ray_workload(results):
    r = results(RAY)
    return f"{r['workload']}, engine {r['engine']}; {r['cpus']} CPU cores, shared by the server and {r['client']}"


@value("week11.ray_costs", [RAY], "make bench")
def ray_costs(results):
    """Ray's cost at one client (latency added by its hops) and what a second BLIP-2 replica gives at 32."""
    at = {(x["server"], x["concurrency"]): x for x in results(RAY)["rows"]}
    one, ray1, ray2 = "single process (week 10)", "Ray Serve, 1 BLIP-2 replica", "Ray Serve, 2 BLIP-2 replicas"
    c1, c32 = at[one, 1], at[one, 32]
    return (
        f"at one client, p50 {at[ray1, 1]['p50_ms']} ms on Ray against {c1['p50_ms']} ms in one process "
        f"({at[ray1, 1]['requests_per_s'] / c1['requests_per_s']:.2f}× the requests/s); at 32 clients, "
        f"{at[ray1, 32]['requests_per_s']} requests/s with one BLIP-2 replica and {at[ray2, 32]['requests_per_s']} "
        f"with two, against {c32['requests_per_s']} in one process "
        f"({at[ray2, 32]['requests_per_s'] / c32['requests_per_s']:.2f}×)"
    )


@value("week11.limits", [ENGINES], "make bench")
def matmul_limits(results):
    e = results(ENGINES)
    return f"Matrix-multiply limit ({e['threads']} threads): " + ", ".join(
        f"{k} {v:,} GFLOP/s" for k, v in e["matmul_gflops"].items()
    )


@value("week10.liveness_run", [LIVENESS], "make bench")
def liveness_run(results):
    r = results(LIVENESS)
    return (
        f"attack statuses {r['attack_statuses']}; of the load, {r['load_statuses']} in {r['load_seconds']} s; "
        f"the server's memory went from {r['rss_before_mb']} to {r['rss_peak_mb']} MiB at its peak"
    )


@table("week11.load", 11, "The load test", ["week11/load.json"], "make week11")
def load_test(results):
    r = results("week11/load.json")
    return Table(
        ["requests", "concurrency", "errors", "distinct ids", "requests/s", "p50 ms", "p99 ms"],
        [[r["n"], r["concurrency"], r["errors"], r["unique_ids"], r["requests_per_s"], r["p50_ms"], r["p99_ms"]]],
    )


# ---------------------------------------------------------------- week 5
table("week5.check", 5, "The decoding loops vs transformers' generate()", ["week5/check.json"], "make week5")(
    checks("week5/check.json")
)


@table("week5.sweep", 5, "One image under many decoding settings", ["week5/sweep.json"], "make week5")
def sweep(results):
    return Table(["setting", "output"], [[r["setting"], r["text"]] for r in results("week5/sweep.json")["rows"]])


@table("week5.repetition", 5, "Repeated text, and what each fix does", ["week5/repetition.json"], "make week5")
def repetition(results):
    r = results("week5/repetition.json")
    return Table(
        ["setting (48 tokens)", f"repeated {r['ngram']}-grams"],
        [[row["setting"], f"{row['repeated_ngram_rate']:.2f}"] for row in r["rows"]],
    )


@table("week5.kv_cache", 5, "Greedy decoding with and without the KV cache", ["bench/kv_cache.json"], "make bench")
def kv_cache(results):
    r = results("bench/kv_cache.json")
    rows = [
        [
            row["case"],
            f"{row['tokens_per_s_cache']:,} tok/s",
            f"{row['tokens_per_s_no_cache']:,} tok/s",
            f"{row['speedup']:.2f}×",
        ]
        for row in r["rows"]
    ]
    return Table(["decoder", "with cache", "without", "speed-up"], rows)


# ---------------------------------------------------------------- the bundled models (their training.json)
MODELS = ("tiny-clip", "tiny-blip2", "tiny-blip2-prompts", "tiny-clip-zh", "tiny-sd")


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
        # records written before the trainers moved to Accelerate say bf16_autocast; the SD one unet_steps,
        # and its UNet always trained in fp32 on a CPU
        precision = r.get("precision") or ("bf16" if r.get("bf16_autocast") and "vae_steps" not in r else "fp32")
        if "vae_steps" in r:
            vae_precision = r.get("vae_precision") or ("bf16" if r.get("bf16_autocast") else "fp32")
            steps = f"{r['vae_steps']:,} VAE + {r.get('steps', r.get('unet_steps')):,} UNet"
            precision = f"{vae_precision} VAE, {precision} UNet"
        else:
            steps = f"{r['steps']:,}"
        minutes = f"{r['train_minutes']:.1f}"
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


# ---------------------------------------------------------------- week 12
table("week12.check", 12, "The einsum drills, each checked", ["week12/check.json"], "make week12")(
    checks("week12/check.json")
)


def service_row(service_result, config, concurrency):
    return next(r for r in service_result["rows"] if r["config"] == config and r["concurrency"] == concurrency)


@value("week11.batching", [SERVICE], "make bench")
def batching_at_32(results):
    s = results(SERVICE)
    on, off = service_row(s, "batching on, cache off", 32), service_row(s, "batching off, cache off", 32)
    return (
        f"{on['requests_per_s']} requests/s against {off['requests_per_s']} without "
        f"({on['requests_per_s'] / off['requests_per_s']:.1f}×); p50 {on['p50_ms']} against {off['p50_ms']} ms, "
        f"p99 {on['p99_ms']} against {off['p99_ms']} ms"
    )


@value("week11.cache", [SERVICE], "make bench")
def cache_at_8(results):
    s = results(SERVICE)
    pairs = [
        (service_row(s, f"batching {b}, cache off", 8), service_row(s, f"batching {b}, cache on", 8))
        for b in ("on", "off")
    ]
    return (
        f"from {pairs[0][0]['requests_per_s']} to {pairs[0][1]['requests_per_s']} requests/s with batching, and "
        f"from {pairs[1][0]['requests_per_s']} to {pairs[1][1]['requests_per_s']} without"
    )


@value("week11.vit", [ENGINES], "make bench")
def vit_b32(results):
    rows = {r["engine"]: r for r in results(ENGINES)["towers"] if "ViT" in r["model"]}
    fp32 = rows["torch-fp32"]["images_per_s"]
    parts = [
        f"{name} {r['images_per_s']:,} images/s ({r['images_per_s'] / fp32:.1f}× eager fp32"
        + (f", {r['share_of_limit']:.0%} of its limit)" if r["share_of_limit"] else ")")
        for name, r in rows.items()
        if name != "torch-fp32"
    ]
    return f"eager fp32 runs {fp32:,} images/s ({rows['torch-fp32']['share_of_limit']:.0%} of the fp32 limit); " + (
        "; ".join(parts)
    )


@value("week11.tiny", [ENGINES], "make bench")
def tiny_engine_summary(results):
    rows = {r["engine"]: r for r in results(ENGINES)["tiny_engines"]}
    same = ", ".join(f"{name} {r['captions_same_as_fp32']}" for name, r in rows.items())
    return (
        f"captions equal to fp32's: {same}; onnx-fp32 writes {rows['onnx-fp32']['captions_per_s']} captions/s "
        f"against {rows['torch-fp32']['captions_per_s']} for torch-fp32"
    )


@value("week11.client", [SERVICE], "make bench")
def client_cost(results):
    s = results(SERVICE)
    wrk, python = service_row(s, "batching on, cache off", 32), s["python_client"]
    return (
        f"the Python client spent {python['client_cpu_ms_per_request']} ms of CPU per request and drove "
        f"{python['requests_per_s']} requests/s (p99 {python['p99_ms']} ms, the server's own p99 "
        f"{python['server']['p99_ms']} ms); {wrk['client']} spent {wrk['client_cpu_ms_per_request']} ms and drove "
        f"{wrk['requests_per_s']} (p99 {wrk['p99_ms']} ms)"
    )


@value("week11.engines_alone", [SERVICE], "make bench")
def engines_share(results):
    s = results(SERVICE)
    on = service_row(s, "batching on, cache off", 32)
    return (
        f"the engines alone, on the server's core, answer {s['engines_alone_per_s']} requests/s of this mix, "
        f"at {s['engines_alone_cpu_ms_per_request']} ms of CPU per request; the service answers "
        f"{on['requests_per_s']} ({on['requests_per_s'] / s['engines_alone_per_s']:.0%}), at "
        f"{on['server_cpu_ms_per_request']} ms of CPU per request"
    )


@value("week11.cpu_bound", [SERVICE], "make bench")
def cpu_bound(results):
    s = results(SERVICE)
    on, off = service_row(s, "batching on, cache off", 32), service_row(s, "batching off, cache off", 32)
    a, b = off["server_cpu_ms_per_request"], on["server_cpu_ms_per_request"]
    return (
        f"without batching the server spends {a} ms of CPU per request, with it {b} ms, so on its one core "
        f"batching can raise throughput about {a / b:.1f}× (measured: "
        f"{on['requests_per_s'] / off['requests_per_s']:.1f}×); the models alone need "
        f"{s['engines_alone_cpu_ms_per_request']} ms per request in batches of 16"
    )


@value("week11.cores", [SERVICE], "make bench")
def service_cores(results):
    s = results(SERVICE)

    return f"server on {cores(s['server_cpus'])}, {s['client']} on {cores(s['client_cpus'])}"


def cores(cpus):
    return "every core" if cpus == "all" else "core " + ", ".join(map(str, cpus))


@value("week11.workload", [SERVICE], "make bench")
def service_workload(results):
    s = results(SERVICE)
    return f"{s['workload']}, engine {s['engine']}"


# ---------------------------------------------------------------- the weeks as Colab notebooks (docs/colab.md)
NOTEBOOK_TIMES = "notebooks/times.json"  # tests/test_notebooks.py writes it (outputs/notebooks/times.json)


@table(
    "notebooks.tiny_times",
    None,  # shown in docs/colab.md only: the lab notebook's sections are the weeks and the models
    "Each notebook's tiny profile, top to bottom",
    [NOTEBOOK_TIMES],
    "make test",
)
def notebook_times(results):
    r = results(NOTEBOOK_TIMES)
    rows = [[int(name[4:6]), f"`{name}.ipynb`", f"{seconds:.0f} s"] for name, seconds in r["seconds"].items()]
    return Table(["week", "notebook", f"wall time (budget {r['budget_s']} s)"], rows)


@value("notebooks.machine", [NOTEBOOK_TIMES], "make test")
def notebook_machine(results):
    r = results(NOTEBOOK_TIMES)
    where = f"{r['machine']}, Python {r['python']}, torch {r['torch']}"
    return f"{len(r['seconds'])} notebooks, {sum(r['seconds'].values()):.0f} s in all, on {where}"
