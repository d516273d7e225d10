"""The docs: a front door that links every week, tables written from results/ (never typed), links
that resolve inside the repository, and a lab notebook that opens in a real browser."""

import json
import re
import shutil
import subprocess

import pytest

from curriculum import REPO_ROOT, docs, report, tables

pytestmark = pytest.mark.docs


def test_every_measured_block_is_what_make_docs_writes():
    assert docs.build(check=True) == [], "run `make docs` and commit"


def test_the_check_notices_a_changed_result():
    """The check can fail: one number moved in a result file changes the page that shows it."""
    original = docs.Results()

    def moved(name):
        data = original(name)
        if name == "week1/eval.json":
            data["text_to_image"]["R@1"] = 0.5
        return data

    assert REPO_ROOT / "docs" / "week01.md" in docs.build(check=True, results=moved)


def test_every_result_file_is_committed_and_every_renderer_is_used():
    text = "".join(page.read_text(encoding="utf-8") for page in docs.pages())
    for name in tables.MAKES:
        assert (docs.RESULTS_DIR / name).is_file(), name
    for name in [*tables.TABLES, *tables.VALUES]:
        kind = "table" if name in tables.TABLES else "value"
        assert f"<!-- {kind} {name} -->" in text, f"{name} is shown on no page"


def test_every_picture_is_committed_and_shown():
    text = "".join(page.read_text(encoding="utf-8") for page in docs.pages())
    for name in tables.PICTURES:
        assert (docs.PICTURES_DIR / name).is_file(), f"{name}: run `python -m curriculum.docs collect`"
        assert f"](img/{name})" in text, f"{name} is shown on no page"
    shown = {path.relative_to(docs.PICTURES_DIR).as_posix() for path in docs.PICTURES_DIR.rglob("*.png")}
    assert shown == set(tables.PICTURES), "docs/img holds a picture that tables.PICTURES does not list"


@pytest.mark.parametrize("page", docs.pages(), ids=lambda p: p.name)
def test_every_link_resolves_inside_the_repository(page):
    assert docs.broken_links(page) == []


def test_a_link_out_of_the_tree_or_to_nothing_is_caught():
    page = REPO_ROOT / "docs" / "week01.md"
    text = "[design](../../shared/DESIGN.md) [next](week02.md) [gone](week02.md#no-such-heading) [x](nope.md)"
    assert docs.broken_links(page, text) == ["../../shared/DESIGN.md", "week02.md#no-such-heading", "nope.md"]


def test_the_readme_is_a_front_door():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for week in range(1, 13):
        assert f"(docs/week{week:02d}.md)" in readme, week
    assert "make demo" in readme and "make test" in readme


def write(root, name, data):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_report_marks_what_was_run_and_what_was_not(tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(REPO_ROOT / "results" / "week1", outputs / "week1")
    shutil.copyfile(REPO_ROOT / "data" / "models" / "tiny-clip" / "loss.png", outputs / "week1" / "loss.png")
    (outputs / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_week01_zoo" '
        'name="a"/><testcase classname="tests.test_week02_captioning" name="b">'
        "<failure/></testcase></testsuite></testsuites>"
    )
    page = report.build(outputs).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1
    assert "Not run yet: <code>make week3</code>" in page and "Not run yet: <code>make week1</code>" not in page
    assert re.search(r'class="status passed">1 passed, 0 failed', page)
    assert re.search(r'class="status failed">0 passed, 1 failed', page)


def test_report_on_a_broken_tests_xml_is_one_line_and_writes_nothing(tmp_path, cli_runner):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "tests.xml").write_text("<testsuites><testsuite>")  # `make test` stopped while writing it
    code, out, err = cli_runner(report.main, ["--outputs", str(outputs), "--out", str(tmp_path / "report.html")])
    assert code == 2 and "tests.xml is not readable JUnit XML" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_a_corrupt_result_is_named_in_its_table_not_a_traceback(tmp_path):
    (tmp_path / "week1").mkdir()
    (tmp_path / "week1" / "eval.json").write_text("{")  # cut short
    page = report.build(tmp_path).read_text(encoding="utf-8")
    assert "eval.json is not readable JSON" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The page, with a first script that records every error and console.error, and a last one that
# writes what the browser saw into the DOM that --dump-dom prints.
PROBE_FIRST = (
    '<script>window.__errors = []; window.addEventListener("error", e => __errors.push(String(e.message '
    "|| e.target.src)), true); const __e = console.error; console.error = (...a) => { __errors.push(a.join"
    '(" ")); __e(...a); };</script>'
)
PROBE_LAST = (
    '<script>window.addEventListener("load", () => { document.body.setAttribute("data-probe", JSON.stringify('
    "{widths: [...document.images].map(i => i.naturalWidth), errors: __errors})); });</script>"
)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (.ci/run installs it)")
def test_the_report_opens_in_chromium_with_every_picture_loaded(tmp_path):
    outputs = tmp_path / "outputs"
    for week in ("week1", "week6"):
        shutil.copytree(REPO_ROOT / "results" / week, outputs / week)
    for name in ("tiny-clip", "tiny-blip2"):
        shutil.copyfile(REPO_ROOT / "data" / "models" / name / "loss.png", outputs / "week1" / f"{name}.png")
    page = report.build(outputs).read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE_FIRST).replace("</body>", PROBE_LAST + "</body>"))
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    probe = json.loads(re.search(r'data-probe="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(probe["widths"]) == 2 and all(width > 0 for width in probe["widths"])
    assert probe["errors"] == []


def test_reading_guide_quotes_the_lines_it_links():
    """Each row of docs/reading-guides.md quotes a line of code and links its line number: the line
    must still be there, so the guide cannot drift from the code."""
    guide = docs.DOCS_DIR / "reading-guides.md"
    rows = re.findall(r"\| `([^`]+)` \| \[[^\]]*\]\(\.\./([^#)]+)#L(\d+)\) \|", guide.read_text(encoding="utf-8"))
    assert len(rows) >= 40
    for snippet, path, line in rows:
        lines = (docs.REPO_ROOT / path).read_text(encoding="utf-8").splitlines()
        assert snippet in lines[int(line) - 1], (path, line, snippet)


@pytest.mark.parametrize("only", [["week9/policy.json"], ["week9/policy.json", "week9/vqa_rule.json"]])
def test_collect_copies_one_result_file_or_several(tmp_path, only):
    outputs, results, pictures = tmp_path / "outputs", tmp_path / "results", tmp_path / "img"
    for name in only:
        (outputs / name).parent.mkdir(parents=True, exist_ok=True)
        (outputs / name).write_text(json.dumps({"from": name}))
    assert docs.collect(outputs, results, pictures, only) == sorted(only)
    assert all(json.loads((results / name).read_text()) == {"from": name} for name in only)
