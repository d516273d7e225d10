"""The weeks as Colab notebooks: each notebooks/weekNN_<slug>.ipynb written from its jupytext script.

    python -m curriculum.notebooks build    # write every notebooks/weekNN_<slug>.ipynb from its .py
    python -m curriculum.notebooks check    # write nothing; exit 1 naming each notebook that differs

A week's script (jupytext percent format: `# %%` cells) holds only its story. The .ipynb that Colab
opens is generated from it, committed without outputs, with what every notebook shares added here:
- an "Open in Colab" badge whose link is the notebook's own path in the repository at its release
  tag (the repository URL is read from pyproject.toml's [project.urls] Repository, the one place);
- after the title, the setup cell: on Colab it clones the repository at that tag; everywhere it
  works from the repository root and installs only what the runtime lacks (curriculum.colab);
- Colab's GPU-runtime metadata (a T4), so "Open in Colab" starts on a GPU;
- relative links (`../docs/week01.md`) turned into links into the repository at the tag;
- a closing cell for the week's confusion log (the plan's 5-minute rule, curriculum.confusions).
The same script always gives the same bytes (cell ids from the cells' text), so `check` can tell a
stale notebook, or one saved with its outputs, from a fresh one.
"""

import hashlib
import posixpath
import re
import sys
from pathlib import Path

from curriculum import REPO_ROOT, cli
from curriculum.colab import project

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SOURCE = re.compile(r"week(\d\d)_[a-z0-9_]+\.py")
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB = "https://colab.research.google.com/github"
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
METADATA = {
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


# ---------------------------------------------------------------- where the notebooks point
def repository():
    """The published repository's URL, e.g. https://github.com/owner/name (no trailing slash or .git)."""
    url = project()["urls"]["Repository"].rstrip("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise cli.UserError(
            f"pyproject.toml's [project.urls] Repository is {url!r}: Colab opens https://github.com/OWNER/NAME"
        )
    return url


def ref():
    """The release tag the badges and the setup cell use: v{project.version}."""
    return f"v{project()['version']}"


def colab_url(name):
    """The "Open in Colab" link of notebooks/<name>.ipynb at the release tag."""
    owner_name = repository().removeprefix("https://github.com/")
    return f"{COLAB}/{owner_name}/blob/{ref()}/notebooks/{name}.ipynb"


def badge(name):
    return f"[![Open In Colab]({BADGE})]({colab_url(name)})"


def repository_link(path, picture=False):
    """A file of the repository at the release tag: its GitHub page, or (a picture) its raw bytes."""
    return f"{repository()}/{'raw' if picture else 'blob'}/{ref()}/{path}"


def absolute_links(markdown, where):
    """Relative links of a notebook's markdown (written from notebooks/, e.g. ../docs/week01.md) turned
    into links into the repository at the tag: an .ipynb opened on Colab has no folder around it."""

    def rewrite(m):
        picture, text, link = m.groups()
        if re.match(r"[a-z]+:|#", link):
            return m.group(0)
        path = posixpath.normpath(posixpath.join("notebooks", link))
        if path.startswith("../") or path == "..":
            raise cli.UserError(f"{where}: the link {link} leaves the repository")
        return f"{picture}[{text}]({repository_link(path, picture=bool(picture))})"

    return LINK.sub(rewrite, markdown)


# ---------------------------------------------------------------- the cells every notebook gets
def setup_code():
    return f'''# Setup (added to every week by `python -m curriculum.notebooks build`). On Colab: bring this
# repository at its release tag (no install that would need a runtime restart). Everywhere: work
# from the repository root, import its code from there, and install only what the runtime lacks.
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = "{repository()}"
REF = "{ref()}"
CLONE = Path("/content") / REPOSITORY.rsplit("/", 1)[1]
if "google.colab" in sys.modules:
    if not CLONE.is_dir():
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", REF, REPOSITORY, str(CLONE)], check=True)
    os.chdir(CLONE)
ROOT = next(
    (p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file() and (p / "curriculum").is_dir()),
    None,
)
if ROOT is None:
    raise FileNotFoundError(f"{{Path.cwd()}} is outside the repository: open the notebook in its notebooks/ folder")
os.chdir(ROOT)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curriculum import colab  # noqa: E402  (importable once the repository is on sys.path)

colab.install_missing()'''


def confusion_cells(week):
    import nbformat

    readme = repository_link("README.md") + "#your-lab-notebook"
    markdown = f"""## Your confusion log

The plan's 5-minute rule: when a concept stops you, look it up for five minutes; if it is still
unclear, write it down below and move on. Once a week, spend an hour on what you marked:
`python -m curriculum.confusions review` shows each question and where this repository answers it,
and `resolve` records the answer and its page ([how the log works]({readme})).

Fill `QUESTION` (and what the five minutes `FOUND`), then run the cell: it marks the question for
week {week} and lists the week's open ones. The log is `notes/confusions.jsonl`, a plain file you own
and can commit; on Colab it lives in the runtime's copy of the repository, so download it before
the runtime is recycled."""
    code = f'''from curriculum import confusions

QUESTION = ""  # e.g. "What does the Q-Former do?"
FOUND = ""  # what five minutes of looking found (optional)

if QUESTION.strip():
    confusions.main(["add", QUESTION, "--week", "{week}", *(["--found", FOUND] if FOUND.strip() else [])])
confusions.main(["list", "--week", "{week}"])'''
    return [nbformat.v4.new_markdown_cell(markdown), nbformat.v4.new_code_cell(code)]


# ---------------------------------------------------------------- building
def sources(folder=NOTEBOOKS_DIR):
    """The weeks' scripts, notebooks/weekNN_<slug>.py, in week order."""
    return sorted(p for p in Path(folder).glob("week*.py") if SOURCE.fullmatch(p.name))


def week_of(source):
    return int(SOURCE.fullmatch(Path(source).name).group(1))


def notebook_of(source):
    return Path(source).with_suffix(".ipynb")


def stable_ids(cells, stem):
    """Cell ids made from each cell's kind and text (a repeated cell gets -2, -3, ...): rebuilding gives
    the same ids, and an edit changes only its own cell's."""
    seen = {}
    for cell in cells:
        digest = hashlib.sha1(f"{stem}\0{cell.cell_type}\0{cell.source}".encode()).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"


def build_notebook(source):
    """The notebook a week's script gives (an nbformat NotebookNode, without outputs)."""
    import jupytext
    import nbformat

    source = Path(source)
    where = f"notebooks/{source.name}"
    nb = jupytext.read(source, fmt="py:percent")
    cells = nb.cells
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        raise cli.UserError(
            f"{where}: the first cell must be the markdown title (`# %% [markdown]`, then `# # Week N ...`)"
        )
    for cell in cells:
        if cell.cell_type == "markdown":
            cell.source = absolute_links(cell.source, where)
        elif cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    setup = nbformat.v4.new_code_cell(setup_code())
    header = [nbformat.v4.new_markdown_cell(badge(source.stem)), cells[0], setup]
    nb.cells = header + cells[1:] + confusion_cells(week_of(source))
    stable_ids(nb.cells, source.stem)
    nb.metadata = nbformat.from_dict(METADATA)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def text_of(nb):
    import nbformat

    return nbformat.writes(nb, version=4) + "\n"


def problems(folder=NOTEBOOKS_DIR):
    """{notebook: why it differs from what build writes} for every week's notebook (and any .ipynb
    that has no script). Every script is built before anything is compared."""
    import nbformat

    expected = {notebook_of(s): text_of(build_notebook(s)) for s in sources(folder)}
    found = {}
    for path in sorted({*expected, *Path(folder).glob("week*.ipynb")}):
        if path not in expected:
            found[path] = f"no script {path.with_suffix('.py').name} makes it"
        elif not path.is_file():
            found[path] = "missing"
        elif path.read_text(encoding="utf-8") != expected[path]:
            try:
                saved = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
                with_outputs = any(c.get("outputs") or c.get("execution_count") for c in saved.cells)
            except Exception:  # not even a notebook: stale is the whole story
                with_outputs = False
            found[path] = "saved with outputs" if with_outputs else f"stale (older than {path.with_suffix('.py').name})"
    return found


def build(folder=NOTEBOOKS_DIR):
    """Write every notebook that differs from its script; returns the ones written. All are built
    before any is written, so a bad script leaves every notebook as it was."""
    built = {notebook_of(s): text_of(build_notebook(s)) for s in sources(folder)}
    written = []
    for path, text in built.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            cli.write_text(text, path)
            written.append(path)
    return written


# ---------------------------------------------------------------- the command
def build_parser():
    p = cli.Parser(prog="python -m curriculum.notebooks", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument(
        "command",
        nargs="?",
        default="build",
        choices=("build", "check"),
        help="build (default): write each .ipynb from its script; check: write nothing, exit 1 if one differs",
    )
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = NOTEBOOKS_DIR
    if not sources(folder):
        raise cli.UserError(f"no week scripts (weekNN_<slug>.py) in {folder}")
    try:
        import jupytext  # noqa: F401  (a test extra: say how to get it rather than a traceback)
    except ImportError:
        raise cli.UserError("the notebook tools are missing: pip install -e '.[test]' (or `make install`)") from None
    if args.command == "check":
        differ = problems(folder)
        for path, why in differ.items():
            print(f"differs: {path.relative_to(folder.parent)}: {why}")
        if differ:
            print("the notebooks differ from their scripts: run `make notebooks` and commit", file=sys.stderr)
            sys.exit(1)
        print(f"all {len(sources(folder))} notebooks are what their scripts make")
        return
    written = build(folder)
    for path in written:
        print(f"wrote {path.relative_to(folder.parent)}")
    if not written:
        print(f"all {len(sources(folder))} notebooks were already what their scripts make")


if __name__ == "__main__":
    cli.run(main)
