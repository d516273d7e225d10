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


@table("week5.repetition", 5, "Repeated text, and what each fix does", ["week5/repetition.json"], "make week5")
def repetition(results):
    r = results("week5/repetition.json")
    return Table(
        ["setting (48 tokens)", f"repeated {r['ngram']}-grams", "output"],
        [[row["setting"], f"{row['repeated_ngram_rate']:.2f}", row["text"]] for row in r["rows"]],
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
