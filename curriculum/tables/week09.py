"""docs/week09.md's tables (the ONNX exports, results/onnx/tiny/manifest.json; the caption rule vs a visual question,
results/week9/vqa_rule.json; the policy that asks, results/week9/policy_vqa.json and its cost,
results/bench/moderation_questions.json) and docs/week10.md's policy tables (results/week9/policy.json)."""

from curriculum.tables import Table, f3, table, value


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
        + [split(row, "seen_scenes"), split(row, "held_out_scenes")]
        for row in results("week9/vqa_rule.json")["rows"]
    ]
    header = ["category", "rule", "precision", "recall", "tp", "fp", "fn"]
    return Table(header + ["seen-pair scenes: P / R", "held-out-pair scenes: P / R"], rows)


def split(row, scenes):
    """'0.975 / 1.000': precision and recall on one kind of scene (confusion's breakdown)."""
    return "–" if scenes not in row else f"{row[scenes]['precision']:.3f} / {row[scenes]['recall']:.3f}"


@table(
    "week9.policy_vqa",
    9,
    "The policy that asks BLIP-2, on the same test scenes",
    ["week9/policy_vqa.json"],
    "make week9",
)
def policy_vqa(results):
    r = results("week9/policy_vqa.json")
    rows = [
        [name, f3(c["precision"]), f3(c["recall"]), c["tp"], c["fp"], c["fn"]]
        + [split(c, "seen_scenes"), split(c, "held_out_scenes"), of_total(c["fp_by_pair"])]
        for name, c in r["categories"].items()
    ]
    header = ["category", "precision", "recall", "tp", "fp", "fn", "seen-pair scenes: P / R"]
    return Table(header + ["held-out-pair scenes: P / R", "false positives on held-out-pair scenes"], rows)


@table(
    "week9.policy_vqa_thresholds",
    9,
    "The asking policy's thresholds on the val split",
    ["week9/policy_vqa.json"],
    "make week9",
)
def policy_vqa_thresholds(results):
    return threshold_table(results("week9/policy_vqa.json").get("thresholds_on_val"))


@value("week9.question_cost", ["bench/moderation_questions.json"], "make bench")
def question_cost(results):
    r = results("bench/moderation_questions.json")
    at = {row["config"].split(" (")[0]: row for row in r["rows"] if row["concurrency"] == 32}
    clip, asked = at["concepts + caption rule"], at["questions + caption rule"]
    stage = r["blip2_stage_batch_16"]
    return (
        f"at 32 clients the service answered {asked['requests_per_s']:.1f} requests/s with the questions against "
        f"{clip['requests_per_s']:.1f} with CLIP's concepts ({asked['requests_per_s'] / clip['requests_per_s']:.2f}×), "
        f"{asked['server_cpu_ms_per_request']:.1f} against {clip['server_cpu_ms_per_request']:.1f} server CPU ms per "
        f"request; BLIP-2's stage alone, in batches of 16: {stage['caption_ms_per_image']:.2f} ms per image for "
        f"the caption, {stage['caption_and_questions_ms_per_image']:.2f} with its {stage['questions']} questions"
    )


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
        else f"{m['false_alarms_on_own_caption']} false alarm{'s' * (m['false_alarms_on_own_caption'] > 1)}"
    )
    return (
        f"Mismatch (cos < {m['threshold']}): {alarms} on an image's own caption, and "
        f"{m['caught_other_caption']} of {m['other_captions']} other scenes' captions caught"
    )


def of_total(mistakes):
    """'4 of 6': how many of a rule's mistakes fell on scenes with a held-out pair (confusion's breakdown)."""
    return f"{mistakes['held_out']} of {mistakes['held_out'] + mistakes['seen']}"


NOT_SPLIT = "not yet split by scene in this result (`make week9` records it)"


@value("week9.held_out_share", ["week9/policy.json"], "make week9")
def held_out_share(results):
    r = results("week9/policy.json")
    if "scenes_with_a_held_out_pair" not in r:
        return f"the policy's mistakes are {NOT_SPLIT}"
    held_out = r["scenes_with_a_held_out_pair"]
    mistakes = "; ".join(
        f"{name}'s {of_total(c['fp_by_pair'])} false positives and {of_total(c['fn_by_pair'])} misses"
        for name, c in r["categories"].items()
    )
    return (
        f"{held_out} of the {r['n']} test scenes ({held_out / r['n']:.0%}) hold a held-out colour-shape pair, "
        f"and on them fall {mistakes}"
    )


@table(
    "week9.thresholds",
    9,
    "The policy's thresholds on the val split",
    ["week9/policy.json"],
    "make week9",
)
def thresholds(results):
    return threshold_table(results("week9/policy.json").get("thresholds_on_val"))


def threshold_table(val):
    header = ["rule", "flags when", "should flag: min / median / max", "should pass: min / median / max",
              "flagged of should flag", "flagged of should pass"]  # fmt: skip
    if val is None:  # results of `make week9` from before it recorded them
        return Table(header, [["not in this result: `make week9` records it", "", "", "", "", ""]])

    def spread(s):
        return "–" if s is None else f"{s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}"

    def rule(name, threshold):
        if name == "mismatch":
            return "mismatch (own caption passes, another scene's flags)", f"cos < {threshold}"
        if name.endswith(" (question)"):
            return name, f"p(yes) ≥ {threshold}"
        return f"{name} concepts", f"cos ≥ {threshold}"

    rows = [
        [
            *rule(name, c["threshold"]),
            spread(c["should_flag"]),
            spread(c["should_pass"]),
            "{} of {}".format(*c["flagged_of_should_flag"]),
            "{} of {}".format(*c["flagged_of_should_pass"]),
        ]
        for name, c in val["checks"].items()
    ]
    return Table(header, rows)


@value("week9.thresholds_setup", ["week9/policy.json"], "make week9")
def thresholds_setup(results):
    val = results("week9/policy.json").get("thresholds_on_val")
    if val is None:
        return "the val split (not in this result: `make week9` records it)"
    return f"{val['n']:,} scenes of the val split (seed {val['seed']})"


def false_positives(row):
    if "fp_by_pair" not in row:
        return f"its false positives {NOT_SPLIT}"
    fp = row["fp_by_pair"]
    return f"{fp['held_out']} of its {fp['held_out'] + fp['seen']} false positives on scenes with a held-out pair"


def caption_and_concepts(rows, category):
    by_rule = {r["rule"]: r for r in rows if r["category"] == category}
    caption, concepts = by_rule["caption rule"], by_rule["CLIP concepts"]
    return (
        f"{category}: the caption rule finds {caption['tp']} of {caption['tp'] + caption['fn']} at precision "
        f"{caption['precision']:.3f} ({false_positives(caption)}); CLIP's "
        f"concepts find {concepts['tp']} at precision {concepts['precision']:.3f}"
    )


@value("week9.rules_compared", ["week9/vqa_rule.json"], "make week9")
def rules_compared(results):
    r = results("week9/vqa_rule.json")
    return "; ".join(caption_and_concepts(r["rows"], category) for category in r["positives"])


@value("week9.p_yes", ["week9/vqa_rule.json"], "make week9")
def p_yes(results):
    r = results("week9/vqa_rule.json")
    if "p_yes" not in r:
        return "p(yes) on each scene is not in this result (`make week9` records it)"

    def one(category, label, a):
        return (
            f"the {label} BLIP-2 asked about the {category.replace('_', ' ')}: p(yes) {a['with']['min']:.2f}–"
            f"{a['with']['max']:.2f} on scenes with one, {a['without']['min']:.2f}–{a['without']['max']:.2f} "
            f"without; separation {a['separation']:.2f}"
        )

    return "; ".join(one(c, label, a) for c, asked in r["p_yes"].items() for label, a in asked.items())


@value("week9.compliance_split", ["week9/vqa_rule.json"], "make week9")
def compliance_split(results):
    rows = [r for r in results("week9/vqa_rule.json")["rows"] if "compliance BLIP-2" in r["rule"]]
    if not rows or "seen_scenes" not in rows[0]:
        return "the compliance fine-tune is not in this result (`make week9` asks it)"

    def one(r):
        seen, held = r["seen_scenes"], r["held_out_scenes"]
        return (
            f"{r['category']}: precision / recall {seen['precision']:.3f} / {seen['recall']:.3f} on seen-pair "
            f"scenes, {held['precision']:.3f} / {held['recall']:.3f} on held-out-pair scenes "
            f"({of_total(r['fp_by_pair'])} false positives there)"
        )

    return "; ".join(map(one, rows))
