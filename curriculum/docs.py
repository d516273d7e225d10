"""`make docs`: every measured table and number in the docs, written from the committed results/.

Nothing measured is typed by hand. A page marks where a table (or one number in a sentence) goes,
and names what renders it:

    <!-- table week1.retrieval -->
    | direction | R@1 | R@5 | R@10 |          <- written by the renderer week1.retrieval in tables/week01.py,
    ...                                         from results/week1/eval.json
    <!-- /table -->

    ... text→image R@1 of <!-- value week6.ours_r1 -->0.984<!-- /value --> ...

Outside the blocks, a number that looks measured but is none (a default, a threshold, an image
size, a paper's figure: cite it) is marked right after it, `0.18215<!-- const: SD 1.x's latent
scaling factor -->`, and a comparison that is reasoned, not measured, carries `<!-- reasoned -->`;
curriculum/prose.py (tests/test_docs_prose.py) finds every other typed number, and every comparison
("beats", "needs fewer", "the same as") that is not beside the generated table or value showing it.

`python -m curriculum.docs` rewrites every marked block of README.md and docs/*.md from results/;
`--check` writes nothing and lists the blocks that differ (a test runs it, so the docs and the
results cannot drift apart). `python -m curriculum.docs collect` copies a run's measurements from
outputs/ (after the make targets that write them) into results/, the reference the docs show.
"""

import json
import re
import shutil
import sys
from pathlib import Path

from curriculum import MODELS_DIR, OUTPUTS_DIR, REPO_ROOT, cli, tables

RESULTS_DIR = REPO_ROOT / "results"
DOCS_DIR = REPO_ROOT / "docs"
PICTURES_DIR = DOCS_DIR / "img"  # the pictures the pages show, copied from a reference run's outputs/
BLOCK = re.compile(r"(<!-- (table|value) ([\w.]+) -->)(.*?)(<!-- /\2 -->)", re.DOTALL)


def pages():
    return [REPO_ROOT / "README.md", *sorted(DOCS_DIR.glob("*.md"))]


class Results:
    """results/ (or outputs/ and the models' own training.json: the report shows a learner's run the
    same way), read on demand."""

    def __init__(self, root=RESULTS_DIR):
        self.root = Path(root)

    def __call__(self, name):
        path = self.root / name if self.root == RESULTS_DIR else source(name, self.root)
        if not path.is_file():
            raise cli.UserError(f"{path} is missing: `{tables.MAKES[name]}` writes it")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise cli.UserError(f"{path} is not readable JSON ({e}): `{tables.MAKES[name]}` writes it again") from None


def render(kind, name, results, indent=""):
    """The markdown a block holds: a table between blank lines (indented like its marker, inside a
    list item), or a bare value."""
    if kind == "table":
        return (
            "\n" + "".join(f"{indent}{line}\n" for line in tables.TABLES[name](results).markdown().split("\n")) + indent
        )
    return tables.VALUES[name](results)


def unknown_renderer(page, kind, name):
    known = tables.TABLES if kind == "table" else tables.VALUES
    return cli.UserError(
        f"{page.relative_to(REPO_ROOT)}: no {kind} renderer {name!r} in curriculum/tables/ "
        f"(there are {', '.join(sorted(known))})"
    )


def rewrite(text, page, results):
    def block(m):
        opening, kind, name, _, closing = m.groups()
        if name not in (tables.TABLES if kind == "table" else tables.VALUES):
            raise unknown_renderer(page, kind, name)
        before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        return opening + render(kind, name, results, before if not before.strip() else "") + closing

    return BLOCK.sub(block, text)


def build(check=False, results=None):
    """Rewrite (or, with check, only compare) every page; returns the pages that differ. Every page is
    rendered before any is written, so a missing result or renderer leaves them all as they were."""
    results = results or Results()
    old = {page: page.read_text(encoding="utf-8") for page in pages()}
    new = {page: rewrite(text, page, results) for page, text in old.items()}
    differ = [page for page in old if new[page] != old[page]]
    if not check:
        for page in differ:
            cli.write_text(new[page], page)
    return differ


def source(name, outputs):
    """Where a result file comes from: a bundled model's training.json, or what a make target wrote."""
    if name.startswith("models/"):
        return MODELS_DIR / Path(name).stem / "training.json"
    return Path(outputs) / name


def collectable():
    """What `collect` can be limited to: each result file and picture, and each folder of them (week1, bench)."""
    names = [*tables.MAKES, *tables.PICTURES]
    return sorted({*names, *(name.split("/")[0] for name in names)})


class Collectable(cli.Kind):
    """A result file or picture of `collect`, or a folder of them."""

    def __call__(self, text):
        if text not in collectable():
            folders = sorted({name.split("/")[0] for name in collectable()})
            self.refuse(f"{text!r} is no result file or folder: a folder is one of {', '.join(folders)}")
        return text


def collect(outputs=OUTPUTS_DIR, results=RESULTS_DIR, pictures=PICTURES_DIR, only=()):
    """Copy every result file the renderers read (from outputs/, and the bundled models'
    training.json) into results/, and the pictures the pages show into docs/img/; a missing one
    names the make target that writes it. only: just these files and folders (a run that re-made
    some weeks' measurements and not others)."""

    def chosen(name):
        return not only or any(name == o or name.startswith(o + "/") for o in only)

    wanted = {Path(results) / name: source(name, outputs) for name in tables.MAKES if chosen(name)}
    wanted |= {Path(pictures) / name: Path(outputs) / name for name in tables.PICTURES if chosen(name)}
    missing = [str(path.relative_to(outputs) if path.is_relative_to(outputs) else path)
               for path in wanted.values() if not path.is_file()]  # fmt: skip
    if missing:
        makes = tables.MAKES | tables.PICTURES
        targets = sorted({makes[name] for name in missing})
        raise cli.UserError(f"no {', '.join(missing)}: run {', '.join(targets)} first")
    with cli.atomic_paths(*wanted) as temps:  # the run's files replace the reference's all together
        for temp, path in zip(temps if len(wanted) > 1 else [temps], wanted.values()):
            shutil.copyfile(path, temp)
    return sorted(name for name in [*tables.MAKES, *tables.PICTURES] if chosen(name))


# ---------------------------------------------------------------- links
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def broken_links(page, text=None):
    """The links of a page (its text, or the file's) that leave the repository or point at nothing in it."""
    text = re.sub(r"```.*?```", "", text if text is not None else page.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for link in LINK.findall(text):
        if re.match(r"[a-z]+://", link):
            continue  # the web, not the tree
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        inside = target == REPO_ROOT or REPO_ROOT in target.parents
        if (
            not inside
            or not target.exists()
            or (fragment and target.suffix == ".md" and fragment not in anchors(target))
        ):
            broken.append(link)
    return broken


def build_parser():
    p = cli.Parser(prog="python -m curriculum.docs", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument(
        "command",
        nargs="?",
        default="build",
        choices=("build", "collect"),
        help="build (default): rewrite the docs' tables from results/; collect: outputs/ -> results/",
    )
    p.add_argument(
        "--only",
        nargs="+",
        type=Collectable(),
        default=[],
        metavar="FILE_OR_FOLDER",
        help="collect: only these result files or folders of them (week1, bench/training.json; default all)",
    )
    p.add_argument("--check", action="store_true", help="build: write nothing, exit 1 if a page would change")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.only and args.command != "collect":
        raise cli.UserError("--only is for `collect`: the docs are built from all of results/")
    if args.command == "collect":
        names = collect(only=args.only)
        print(f"copied {len(names)} result files from outputs/ into results/; now run `make docs`")
        return
    differ = build(check=args.check)
    for page in differ:
        print(f"{'differs' if args.check else 'rewrote'}: {page.relative_to(REPO_ROOT)}")
    if args.check and differ:
        print("the docs differ from what `make docs` writes from results/: run it and commit", file=sys.stderr)
        sys.exit(1)
    if not differ:
        print("every page is what results/ says")


if __name__ == "__main__":
    cli.run(main)
