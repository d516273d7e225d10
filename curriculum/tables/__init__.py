"""The measured tables of the docs (`make docs`) and of the lab notebook (`make report`), each
written from the JSON a week's command saved, never typed.

A renderer takes `results(file)`, which reads one JSON file of results/ (or of outputs/), and
returns a Table; a value renderer returns the text of one number. Each is registered with the
week it belongs to and the files it reads; MAKES says which make target writes each file.

This file holds what every renderer shares; a week's renderers sit in that week's module
(week01.py ... week12.py: docs/weekNN.md's tables and values), the bundled models' in models.py
(docs/models.md, docs/training.md), the notebooks' in notebooks.py (docs/colab.md). A renderer's
name says where it is: `week6.negatives` in week06.py, `training.scaling` in models.py.
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
    "week6/blip2_lr.png": "make week6",
    "week7/search_zh.png": "make week7",
    "week7/new_concept_loss.png": "make week7",
    "week8/forward_snr.png": "make week8",
    "week8/compare_determinism.png": "make week8",
    "bench/moderation.png": "make bench",
    "bench/peers.png": "make bench-peers",
    **{f"ui/{tab}.png": "make test" for tab in ("search", "caption", "generate", "moderate", "error")},
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


def share(x):
    return "n/a" if x is None else f"{x:.2f}"


def checks(file):
    """Every check of a `check --json` result: what was compared, how far apart, within tolerance."""

    def render(results):
        rows = [
            [c["name"], c.get("detail") or f"{c['max_abs_diff']:.1e}", "ok" if c["ok"] else "FAIL"]
            for c in results(file)["checks"]
        ]
        return Table(["from scratch vs library", "max abs difference", ""], rows)

    return render


def bench_table(name, week, title, file, render):
    """A table that render(data) draws from one result file of `make bench`."""
    table(name, week, title, [file], "make bench")(lambda results: render(results(file)))


# Each module registers its renderers when imported, in the order it defines them: the order the lab
# notebook (curriculum/report.py) shows a week's tables in.
from curriculum.tables import (  # noqa: E402, F401  (they import the registries above)
    models,
    notebooks,
    week01,
    week02,
    week03,
    week04,
    week05,
    week06,
    week07,
    week08,
    week09,
    week10,
    week11,
    week12,
)
