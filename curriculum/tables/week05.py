"""docs/week05.md's tables: the decoding checks, the beam-search mistakes they catch, sweep and
repetition (results/week5/), the KV cache (results/bench/kv_cache.json)."""

from curriculum import shapesworld
from curriculum.tables import Table, checks, table, value

table("week5.check", 5, "The decoding loops vs transformers' generate()", ["week5/check.json"], "make week5")(
    checks("week5/check.json")
)


@table(
    "week5.mistakes",
    5,
    "Three beam-search mistakes, and the checks that catch them",
    ["week5/mistakes.json"],
    "make week5",
)
def mistakes(results):
    r = results("week5/mistakes.json")
    checks_run, pairs = len(r["checks"]), len(r["checks"]) * r["cases"]
    rows = [
        [
            f"a beam search that {row['mistake']}",
            f"{len(row['failed'])} of {checks_run}",
            f"{row['failures']} of {pairs}",
            "; ".join(row["failed"]) or "none",
        ]
        for row in r["mistakes"]
    ]
    return Table(["mistake", "beam-search checks failed", "check × case pairs failed", "which checks"], rows)


def against_greedy(text, greedy):
    """What a caption says, object by object (shapesworld.parse_caption), next to greedy's caption."""
    if text == greedy:
        return "greedy's caption"
    ours, theirs = shapesworld.parse_caption(text), shapesworld.parse_caption(greedy)
    if shapesworld.label_key(ours) == shapesworld.label_key(theirs):
        return "greedy's objects, in other words"
    if sorted((o.color, o.shape) for o in ours) == sorted((o.color, o.shape) for o in theirs):
        return "greedy's colour-shape pairs, at other places"
    if not ours:
        return "no complete object (size, colour, shape and place)"
    shared = sum(o in theirs for o in ours)
    return f"{len(ours)} complete object{'s' * (len(ours) > 1)}, {shared} of them greedy's"


@table("week5.sweep", 5, "One image under many decoding settings", ["week5/sweep.json"], "make week5")
def sweep(results):
    rows = results("week5/sweep.json")["rows"]
    greedy = next(r["text"] for r in rows if r["setting"] == "greedy")
    return Table(
        ["setting", "output", "against greedy's caption"],
        [[r["setting"], r["text"], against_greedy(r["text"], greedy)] for r in rows],
    )


@value("week5.caption_tokens", ["week5/sweep.json"], "make week5")
def caption_tokens(results):
    r = results("week5/sweep.json")
    greedy = next(row for row in r["rows"] if row["setting"] == "greedy")
    return f"{greedy['tokens']} tokens"


def _scores(row):
    return [f"{row['repeated_ngram_rate']:.3f}", f"{row['repeating']:.2f}"] + [
        f"{row[a]:.2f}" for a in ("color", "shape", "size", "position", "exact")
    ]


SCORES = ["repeated 3-grams", "captions that repeat", "colour", "shape", "size", "position", "exact"]


@table(
    "week5.repetition_search",
    5,
    "Does the tiny BLIP-2 repeat by itself? Settings a learner would use, over test scenes",
    ["week5/repetition.json"],
    "make week5",
)
def repetition_search(results):
    r = results("week5/repetition.json")
    rows = [
        [row["checkpoint"], f"`{row['prompt']}`" if row["prompt"] else "none", row["setting"], *_scores(row)]
        for row in r["search"]
    ]
    return Table(["checkpoint", "prompt", "decoding", *SCORES], rows)


def _remedies(problem):
    fix = problem["fix"]["setting"]
    rows = [
        [f"**{row['setting']}** (the fix)" if row["setting"] == fix else row["setting"], *_scores(row)]
        for row in problem["rows"]
    ]
    return Table([f"{problem['checkpoint']}, no prompt: setting", *SCORES], rows)


@table(
    "week5.repetition_natural",
    5,
    "The early checkpoint's own repetition, and what each remedy does",
    ["week5/repetition.json"],
    "make week5",
)
def repetition_natural(results):
    return _remedies(results("week5/repetition.json")["problems"]["natural"])


@table(
    "week5.repetition",
    5,
    "Repeated text when a longer caption is asked for, and what each remedy does",
    ["week5/repetition.json"],
    "make week5",
)
def repetition(results):
    return _remedies(results("week5/repetition.json")["problems"]["forced"])


@table(
    "week5.repetition_examples",
    5,
    "A longer caption asked for, and its remedies, on one test scene",
    ["week5/repetition.json"],
    "make week5",
)
def repetition_examples(results):
    rows = results("week5/repetition.json")["problems"]["forced"]["rows"]
    return Table(["setting", "caption of test scene 0"], [[row["setting"], row["example"]] for row in rows])


@value("week5.repetition_n", ["week5/repetition.json"], "make week5")
def repetition_n(results):
    return f"{results('week5/repetition.json')['n']} test scenes"


@value("week5.repetition_found", ["week5/repetition.json"], "make week5")
def repetition_found(results):
    r = results("week5/repetition.json")
    return f"{len(r['natural'])} of {len(r['search'])} settings"


@value("week5.repetition_found_which", ["week5/repetition.json"], "make week5")
def repetition_found_which(results):
    r = results("week5/repetition.json")
    by = {}
    for row in r["natural"]:
        by.setdefault(row["checkpoint"], []).append(row)
    return "; ".join(f"{len(rows)} of them on {checkpoint}" for checkpoint, rows in by.items()) or "none"


@value("week5.repetition_natural_fix", ["week5/repetition.json"], "make week5")
def repetition_natural_fix(results):
    return _fix(results("week5/repetition.json")["problems"]["natural"])


@value("week5.repetition_fix", ["week5/repetition.json"], "make week5")
def repetition_fix(results):
    return _fix(results("week5/repetition.json")["problems"]["forced"])


def _fix(problem):
    if not problem["repeats"]:
        return "none needed (it does not repeat)"
    fix = problem["fix"]
    if fix["setting"] is None:
        return "none (no remedy removes it)"
    rows = {r["setting"]: r for r in problem["rows"]}
    row, free = rows[fix["setting"]], rows[problem["free"]]
    kept = "keeps" if fix["keeps_caption"] else "does not keep"
    return (
        f"{fix['setting']}: {row['repeating']:.2f} of captions repeat, against {problem['rows'][0]['repeating']:.2f}; "
        f"exact {row['exact']:.2f} against free decoding's {free['exact']:.2f} (it {kept} the caption right)"
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
