"""docs/week03.md's tables: schedulers × steps, cross-attention and prompt fidelity, from results/week3/."""

from curriculum import shapesworld
from curriculum.tables import Table, f3, share, table, value


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


@value("week3.fewest_steps", ["week3/compare.json"], "make week3")
def fewest_steps(results):
    """For each scheduler, the fewest of the compared step counts at which every image had colour and shape right."""
    r = results("week3/compare.json")
    first = {}
    for name in r["schedulers"]:
        right = [c["steps"] for c in r["cells"] if c["scheduler"] == name and c["fidelity"]["both"] == 1.0]
        first[name] = min(right, default=None)
    order = sorted(first, key=lambda name: (first[name] is None, first[name] or 0))
    return ", ".join(f"{name} {first[name]}" if first[name] else f"{name} none of them" for name in order)


@value("week3.step_time", ["week3/compare.json"], "make week3")
def step_time(results):
    """Milliseconds per step and image, at the fewest and the most steps compared."""
    r = results("week3/compare.json")
    few, most = min(r["steps"]), max(r["steps"])
    ms = {(c["scheduler"], c["steps"]): 1000 * c["seconds_per_image"] / c["steps"] for c in r["cells"]}
    return "; ".join(
        f"{name} {ms[name, few]:.1f} ms at {few} steps, {ms[name, most]:.1f} at {most}" for name in r["schedulers"]
    )


ATTENTION_WORDS = ("circle", "square", "red")  # make week3 maps these three words of one prompt


@table(
    "week3.attention",
    3,
    "Where each word's cross-attention falls",
    [f"week3/attention_{word}.json" for word in ATTENTION_WORDS],
    "make week3",
)
def attention(results):
    """Each word's share of the attention in its own object's quadrant, by layer resolution."""
    rows, header = [], None
    for word in ATTENTION_WORDS:
        r = results(f"week3/attention_{word}.json")
        (place,) = [o.position for o in shapesworld.parse_caption(r["prompt"]) if word in (o.color, o.shape)]
        shares = r["quadrant_shares"]
        header = header or ["word", "its object's quadrant", *(f"share there, {layers}" for layers in shares)]
        rows.append([f"`{word}`", place, *(f"{s[place]:.2f}" for s in shares.values())])
    return Table(header, rows)
