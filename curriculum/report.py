"""`make report`: the learner's lab notebook, one self-contained HTML page from whatever was run.

For each week: its pictures (outputs/weekN/*.png, inlined), its measured tables from your own run
beside the reference numbers from results/, and the milestone's status from the last `make test`
(outputs/tests.xml). A week not yet run says which `make` target produces it. Then your confusion
log (notes/confusions.jsonl, `python -m curriculum.confusions`): the open questions, and the
resolved ones with their answers' pages. The page needs no server and no network: open
outputs/report.html in a browser, or publish it.

    python -m curriculum.report [--outputs outputs] [--out outputs/report.html] [--confusions notes/confusions.jsonl]
"""

import base64
import html
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, confusions, tables
from curriculum.docs import DOCS_DIR, Results

WEEKS = range(1, 13)
STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0 } h2 { border-top: 1px solid #ddd; padding-top: 1.2rem; margin-top: 2rem }
.status { font-size: 0.9rem; padding: 0.1rem 0.5rem; border-radius: 0.3rem; margin-left: 0.6rem }
.passed { background: #d9f2d9 } .failed { background: #f8d0d0 } .untested, .missing { background: #eee }
figure { display: inline-block; margin: 0.4rem; vertical-align: top }
figure img { max-width: 32rem; max-height: 26rem; border: 1px solid #ddd }
figcaption { font-size: 0.8rem; color: #555 }
table { border-collapse: collapse; margin: 0.5rem 0 1rem } td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem }
.pair { display: flex; gap: 1.5rem; flex-wrap: wrap } .pair h4 { margin: 0.3rem 0 }
"""


def page_title(page):
    """The H1 of a docs page."""
    return (DOCS_DIR / page).read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()


def milestone_status(junit):
    """{week: 'passed' | 'failed' | 'untested', ...} and counts, from pytest's JUnit XML."""
    counts = {n: Counter() for n in WEEKS}
    if junit.is_file():
        try:
            root = ET.parse(junit).getroot()
        except (ET.ParseError, OSError) as e:
            raise cli.UserError(f"{junit} is not readable JUnit XML ({e}): `make test` writes it again") from None
        for case in root.iter("testcase"):
            m = re.search(r"test_week(\d+)_", case.get("classname", ""))
            if not m or int(m.group(1)) not in counts:
                continue
            kind = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            counts[int(m.group(1))][kind] += 1
    status = {}
    for n, c in counts.items():
        status[n] = "failed" if c["failure"] or c["error"] else "passed" if c["passed"] else "untested"
    return status, counts


def picture(path):
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(str(path.relative_to(path.parents[1])))}</figcaption></figure>"
    )


def table_pair(name, mine, reference):
    """Your run's table beside the reference's (either may be missing)."""
    cells = []
    for label, results in (("your run", mine), ("reference (results/)", reference)):
        try:
            body = tables.TABLES[name](results).html()
        except cli.UserError as e:
            body = f"<p>{html.escape(str(e))}</p>"
        cells.append(f"<div><h4>{label}</h4>{body}</div>")
    return f'<h3>{html.escape(tables.TITLES[name])}</h3><div class="pair">{"".join(cells)}</div>'


def week_section(n, outputs, status, counts):
    folder = outputs / f"week{n}"
    pictures = sorted(folder.glob("*.png")) if folder.is_dir() else []
    mine, reference = Results(outputs), Results()
    names = [name for name in tables.TABLES if tables.WEEK[name] == n]
    ran = folder.is_dir() or any((outputs / f).is_file() for name in names for f in tables.FILES[name])
    c = counts[n]
    tally = (
        f"{c['passed']} passed, {c['failure'] + c['error']} failed, {c['skipped']} skipped"
        if sum(c.values())
        else "not tested yet: `make test`"
    )
    parts = [
        f'<h2 id="week{n}">{html.escape(page_title(f"week{n:02d}.md"))}'
        f'<span class="status {status[n]}">{tally}</span></h2>'
    ]
    if not ran:
        parts.append(f'<p class="missing">Not run yet: <code>make week{n}</code> produces it.</p>')
    parts += [picture(p) for p in pictures]
    parts += [table_pair(name, mine, reference) for name in names]
    return "\n".join(parts)


def reference_html(ref, folder):
    """A page of the repository as a link from the report's folder; a command as code; a URL as a link."""
    if re.match(r"https?://", ref):
        return f'<a href="{html.escape(ref)}">{html.escape(ref)}</a>'
    if ref.split()[0] in ("python", "make"):
        return f"<code>{html.escape(ref)}</code>"
    path, _, fragment = ref.partition("#")
    href = os.path.relpath(REPO_ROOT / path, folder).replace(os.sep, "/") + (f"#{fragment}" if fragment else "")
    return f'<a href="{html.escape(href)}">{html.escape(ref)}</a>'


def confusions_section(log, folder):
    """The confusion log: open questions, then the resolved ones with their answers and pages."""
    log = Path(log)
    parts = ['<h2 id="confusions">Confusion log</h2>']
    if not log.is_file():
        parts.append(
            f'<p class="missing">No log at <code>{html.escape(str(log))}</code> yet: '
            '<code>python -m curriculum.confusions add "your question" --week N</code> starts one, with the '
            "plan's own questions answered.</p>"
        )
        return "\n".join(parts)
    try:
        entries = list(confusions.fold(log).values())
    except cli.UserError as e:
        return "\n".join([*parts, f"<p>{html.escape(str(e))}</p>"])
    opened = [e for e in entries if e["status"] == "open"]
    done = [e for e in entries if e["status"] == "resolved"]
    parts.append(
        f"<p>{len(opened)} open, {len(done)} resolved, from <code>{html.escape(str(log))}</code> "
        "(<code>python -m curriculum.confusions review</code> in your weekly hour).</p>"
    )

    def table(title, header, rows):
        head = "".join(f"<th>{h}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
        return f"<h3>{title}</h3><table><tr>{head}</tr>{body}</table>"

    def first(e):
        return [f"#{e['id']}", e["week"], html.escape(e["question"])]

    if opened:
        rows = [[*first(e), html.escape(e["found"])] for e in opened]
        parts.append(table("Open", ["", "week", "question", "five minutes found"], rows))
    if done:
        rows = [
            [*first(e), html.escape(e["answer"]), "<br>".join(reference_html(r, folder) for r in e["see"])]
            for e in done
        ]
        parts.append(table("Resolved", ["", "week", "question", "answer", "see"], rows))
    return "\n".join(parts)


def build(outputs=OUTPUTS_DIR, out=None, log=None):
    outputs = Path(outputs)
    out = Path(out or outputs / "report.html")
    status, counts = milestone_status(outputs / "tests.xml")
    done = sum(s == "passed" for s in status.values())
    body = [
        f"<h1>My multimodal lab notebook</h1><p>{done} of 12 milestones pass. Built by <code>make report</code> "
        f"from <code>{html.escape(str(outputs))}</code>; the reference numbers are this repository's "
        "<code>results/</code>.</p>",
        "<p>"
        + " · ".join(
            [
                *(f'<a href="#week{n}">week {n}</a>' for n in WEEKS),
                '<a href="#confusions">confusions</a>',
                '<a href="#models">models</a>',
            ]
        )
        + "</p>",
    ]
    body += [week_section(n, outputs, status, counts) for n in WEEKS]
    body.append(confusions_section(log or confusions.DEFAULT_LOG, out.parent))
    mine, reference = Results(outputs), Results()
    body += ['<h2 id="models">The bundled models, and training on more processes</h2>']
    body += [table_pair(name, mine, reference) for name in tables.TABLES if tables.WEEK[name] == 0]
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Lab notebook</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    cli.write_text(page, out)
    return out


def build_parser():
    p = cli.Parser(prog="python -m curriculum.report", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument(
        "--outputs",
        type=cli.InFolder(hint="run a week first, e.g. `make week1`"),
        default=str(OUTPUTS_DIR),
        help="the folder your runs wrote (default outputs/)",
    )
    p.add_argument("--out", type=cli.OutFile(".html"), help="the page to write (default OUTPUTS/report.html)")
    p.add_argument(
        "--confusions",
        type=cli.InFile(".jsonl"),
        help="your confusion log (default notes/confusions.jsonl, shown when it exists)",
    )
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = build(args.outputs, args.out, args.confusions)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): open it in a browser")


if __name__ == "__main__":
    cli.run(main)
