"""docs/week08.md's tables: diffusion from scratch vs diffusers, and the samplers, from results/week8/."""

import re

from curriculum.tables import Table, checks, share, table, value

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


def short_check_name(name):
    """A loop check's name without its parenthesis and its ", every step": the check table has them in full."""
    return re.sub(r" \([^)]*\)", "", name).removesuffix(", every step")


@table(
    "week8.mistakes",
    8,
    "The checks with each named mistake swapped into the from-scratch steps",
    ["week8/mistakes.json"],
    "make week8",
)
def mistakes(results):
    rows = []
    for m in results("week8/mistakes.json")["mistakes"]:
        diffs = [f["max_abs_diff"] for f in m["failures"]]
        rows.append(
            [
                m["mistake"],
                f"{m['failed']} of {m['checks']}",
                " to ".join(dict.fromkeys(f"{d:.1e}" for d in (min(diffs), max(diffs)))) if diffs else "–",
                "; ".join(short_check_name(f["name"]) for f in m["failures"]) or "none: the checks miss it",
            ]
        )
    return Table(["mistake", "checks that fail", "off by", "the failing checks"], rows)


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


def by_sampler(r):
    """{sampler: {steps: fidelity}} of a compare result."""
    return {name: {c["steps"]: c["fidelity"] for c in r["cells"] if c["scheduler"] == name} for name in r["schedulers"]}


def colours_right_from(by_steps):
    """The fewest steps from which every object's colour is right, there and at every larger count (None: never)."""
    counts = sorted(by_steps)
    return next((s for i, s in enumerate(counts) if all(by_steps[k]["color"] == 1 for k in counts[i:])), None)


@value("week8.colours_right", ["week8/compare.json"], "make week8")
def colours_right(results):
    r = results("week8/compare.json")
    groups = {}
    for name, by_steps in by_sampler(r).items():
        groups.setdefault(colours_right_from(by_steps), []).append(name)
    parts = [f"from {s} steps on for {', '.join(groups[s])}" for s in sorted(k for k in groups if k is not None)]
    if None in groups:
        parts.append(f"not at every count up to {max(r['steps'])} for {', '.join(groups[None])}")
    return "; ".join(parts)


@value("week8.shape_spread", ["week8/compare.json"], "make week8")
def shape_spread(results):
    r = results("week8/compare.json")
    shapes = [
        by_steps[s]["shape"]
        for by_steps in by_sampler(r).values()
        if (start := colours_right_from(by_steps)) is not None
        for s in by_steps
        if s >= start
    ]
    objects = r["cells"][0]["fidelity"]["objects"]
    return (
        f"between {share(min(shapes))} and {share(max(shapes))}; with {objects} objects in all "
        f"({r['n']} images), one object is {1 / objects:.2f}"
    )


@value("week8.fewest_steps", ["week8/compare.json"], "make week8")
def fewest_steps(results):
    r = results("week8/compare.json")
    fewest = min(r["steps"])
    samplers = by_sampler(r)
    right = [name for name, by_steps in samplers.items() if by_steps[fewest]["color"] == 1]
    return f"At {fewest} steps, {len(right)} of {len(samplers)} samplers get every object's colour right"


@value("week8.seconds", ["week8/compare.json"], "make week8")
def seconds_per_image(results):
    r = results("week8/compare.json")
    ends = (min(r["steps"]), max(r["steps"]))
    per_steps = {s: [c["seconds_per_image"] for c in r["cells"] if c["steps"] == s] for s in ends}
    return ", ".join(f"{min(t):.2f}–{max(t):.2f} s at {s} steps" for s, t in per_steps.items())


@value("week8.determinism", ["week8/compare.json"], "make week8")
def determinism(results):
    d = results("week8/compare.json")["determinism"]
    return f"DDIM η=0: max pixel difference {d['max_pixel_diff']['ddim eta=0']}; DDPM: {d['max_pixel_diff']['ddpm']}"


@value("week8.snr", ["week8/forward.json"], "make week8")
def snr_at_end(results):
    snr = results("week8/forward.json")["snr"]
    return ", ".join(f"{name} {row['999']:.2g}" for name, row in snr.items())
