"""The confusion log (the plan's 5-minute rule, every week): add, list, resolve and review round trip;
bad input is one line, exit 2, the log untouched; adds at the same moment all land; the plan's own
questions point at pages and commands that exist; the lab notebook shows the log."""

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest

from curriculum import REPO_ROOT, confusions, report

pytestmark = pytest.mark.week12
N_PLAN = len(confusions.PLAN)


@pytest.fixture
def log(tmp_path):
    return tmp_path / "notes" / "confusions.jsonl"


def run(cli_runner, *argv):
    return cli_runner(confusions.main, list(argv))


def test_add_list_resolve_review_round_trip(log, cli_runner):
    code, out, _ = run(cli_runner, "add", "Why 32 queries in the Q-Former?", "--week", "2", "--log", str(log))
    assert code == 0 and f"#{N_PLAN + 1}" in out and "started" in out
    code, out, _ = run(cli_runner, "add", "What is a latent?", "--week", "3", "--found", "VAE?", "--log", str(log))
    assert code == 0 and f"#{N_PLAN + 2}" in out and "started" not in out

    code, out, _ = run(cli_runner, "list", "--json", "--log", str(log))
    listed = json.loads(out)["entries"]
    assert code == 0 and [e["id"] for e in listed] == [N_PLAN + 1, N_PLAN + 2]
    assert listed[1]["found"] == "VAE?" and listed[1]["status"] == "open"
    code, out, _ = run(cli_runner, "list", "--week", "3", "--log", str(log))
    assert "What is a latent?" in out and "Q-Former" not in out
    code, out, _ = run(cli_runner, "list", "--all", "--json", "--log", str(log))
    assert len(json.loads(out)["entries"]) == N_PLAN + 2  # the plan's questions, resolved, come first

    code, out, _ = run(cli_runner, "review", "--json", "--log", str(log))
    review = json.loads(out)
    assert code == 0 and [e["id"] for e in review["open"]] == [N_PLAN + 1, N_PLAN + 2]
    look = review["open"][0]["look_at"]
    assert "q-former" in look["key_words"]
    assert any(a["id"] == 2 for a in look["answered"])  # the plan's own Q-Former question, and its pages
    assert any(h["see"] == "docs/week07.md#what-the-q-former-is-for" for h in look["headings"])
    assert all(w["see"].startswith("docs/week02.md:") for w in look["week_page"])
    assert len(review["resolved"]) == N_PLAN  # the log was started this week
    code, out, _ = run(cli_runner, "review", "--log", str(log))
    assert code == 0 and "docs/week07.md#what-the-q-former-is-for" in out and "docs/week03.md:" in out

    see = ["docs/week07.md#what-the-q-former-is-for", "python -m stage2_fundamentals.qformer_lab compare"]
    argv = ["resolve", str(N_PLAN + 1), "--answer", "a fixed budget of vectors", "--see", see[0], "--see", see[1]]
    code, out, _ = run(cli_runner, *argv, "--log", str(log))
    assert code == 0 and "resolved" in out
    entries = confusions.fold(log)
    assert entries[N_PLAN + 1]["status"] == "resolved" and entries[N_PLAN + 1]["see"] == see
    code, out, _ = run(cli_runner, "list", "--json", "--log", str(log))
    assert [e["id"] for e in json.loads(out)["entries"]] == [N_PLAN + 2]
    # the file is plain JSON Lines, one event a line
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events[-3:]] == ["add", "add", "resolve"] and len(events) == 2 * N_PLAN + 3


def test_review_takes_the_questions_of_the_last_days(log):
    confusions.add(log, "What does the VAE do?", 3)
    old = (datetime.now().astimezone() - timedelta(days=10)).isoformat(timespec="seconds")
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "add", "id": 99, "week": 5, "question": "Why beam search?", "at": old}) + "\n")
    week = confusions.review(log, 7)
    assert [e["id"] for e in week["open"]] == [N_PLAN + 1] and week["older_open"] == [99]
    assert [e["id"] for e in confusions.review(log, 30)["open"]] == [N_PLAN + 1, 99]


def test_list_of_a_log_not_started_shows_the_plans_questions_and_writes_nothing(log, cli_runner):
    code, out, _ = run(cli_runner, "list", "--log", str(log))
    assert code == 0 and "no log at" in out and "What does the Q-Former do?" in out and "docs/week07.md" in out
    assert not log.parent.exists()


def started(log):
    confusions.add(log, "What is a latent?", 3)
    return log


def corrupt(text):
    def make(log):
        started(log)
        with open(log, "a", encoding="utf-8") as f:
            f.write(text)
        return log

    return make


BAD = {
    "a line that is not JSON": (corrupt('{"event": "add", "id": 50, \n'), ["list"], "is not JSON"),
    "an event of unknown kind": (corrupt('{"event": "delete", "id": 1}\n'), ["review"], "unknown event 'delete'"),
    "an add without a week": (corrupt('{"event": "add", "id": 50, "question": "q"}\n'), ["list"], "no week"),
    "a resolve of nothing": (corrupt('{"event": "resolve", "id": 77, "answer": "a", "see": []}\n'), ["list"], "#77"),
    "an add into a corrupt log": (corrupt("not json\n"), ["add", "q?", "--week", "1"], "is not JSON"),
    "a resolve in a corrupt log": (
        corrupt("[1, 2]\n"),
        ["resolve", "7", "--answer", "a", "--see", "README.md"],
        "unknown",
    ),
    "resolve without a log": (None, ["resolve", "1", "--answer", "a", "--see", "README.md"], "no confusion log"),
    "review without a log": (None, ["review"], "no confusion log"),
    "an unknown week (add)": (started, ["add", "q?", "--week", "13"], "--week"),
    "an unknown week (list)": (started, ["list", "--week", "0"], "--week"),
    "an unknown entry": (started, ["resolve", "42", "--answer", "a", "--see", "README.md"], "no question #42"),
    "an entry resolved already": (started, ["resolve", "2", "--answer", "a", "--see", "README.md"], "already resolved"),
    "a page that is not there": (started, ["resolve", "7", "--answer", "a", "--see", "docs/week13.md"], "week13"),
    "a heading that is not there": (started, ["resolve", "7", "--answer", "a", "--see", "docs/week01.md#x"], "#x"),
    "a subcommand that is not there": (
        started,
        ["resolve", "7", "--answer", "a", "--see", "python -m stage1_demos.sd_generate paint"],
        "'paint'",
    ),
    "a make target that is not there": (started, ["resolve", "7", "--answer", "a", "--see", "make week13"], "week13"),
    "a log that is a folder": (lambda log: log.mkdir(parents=True) or log, ["list"], "--log"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_exit_2_and_the_log_untouched(case, log, cli_runner):
    make, argv, says = BAD[case]
    if make:
        make(log)
    before = log.read_bytes() if log.is_file() else None
    listing = sorted(log.parent.parent.rglob("*"))
    code, out, err = run(cli_runner, *argv, "--log", str(log))
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and says in err, err
    assert "Traceback" not in err and out == ""
    assert (log.read_bytes() if log.is_file() else None) == before
    assert sorted(log.parent.parent.rglob("*")) == listing  # nothing made (no notes/ folder either)


def test_adds_at_the_same_moment_all_land_threads(log):
    threads, per_thread = 8, 25
    gate = threading.Barrier(threads)

    def adder(t):
        gate.wait()
        for i in range(per_thread):
            confusions.add(log, f"question {t}.{i}", 1 + i % 12)

    workers = [threading.Thread(target=adder, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    entries = confusions.fold(log)  # every line is a whole JSON event, no id twice
    questions = {e["question"] for e in entries.values() if e["source"] == "you"}
    assert questions == {f"question {t}.{i}" for t in range(threads) for i in range(per_thread)}
    assert sorted(entries) == list(range(1, N_PLAN + threads * per_thread + 1))


ADDER = """
import sys, time
from curriculum import confusions
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
for i in range(40):
    confusions.add(sys.argv[1], f"{sys.argv[3]} {i}", 4)
"""


def test_adds_at_the_same_moment_all_land_processes(log):
    import time

    start = time.time() + 1.5  # both interpreters are up by then; then they add at once
    procs = [
        subprocess.Popen([sys.executable, "-c", ADDER, str(log), str(start), name], cwd=REPO_ROOT)
        for name in ("first", "second")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * N_PLAN + 80 and all(json.loads(line) for line in lines)
    entries = confusions.fold(log)
    assert len(entries) == N_PLAN + 80 and sorted(entries) == list(range(1, N_PLAN + 81))


def test_an_add_after_a_hand_edit_without_a_final_newline_lands_on_its_own_line(log):
    started(log)
    log.write_bytes(log.read_bytes().rstrip(b"\n"))
    confusions.add(log, "and another?", 2)
    assert [e["question"] for e in confusions.fold(log).values()][-2:] == ["What is a latent?", "and another?"]


def test_the_plans_questions_point_at_pages_and_commands_that_exist():
    assert N_PLAN >= 3 and {item["week"] for item in confusions.PLAN} == {1, 2, 3}
    for item in confusions.PLAN:
        assert item["see"] and item["answer"] and item["plan"]
        for ref in item["see"]:
            assert confusions.reference_problem(ref) is None, (item["question"], ref)
    refs = {ref for item in confusions.PLAN for ref in item["see"]}
    assert {"docs/week01.md", "stage1_demos/clip_retrieval.py", "python -m stage1_demos.sd_generate attention"} <= refs
    assert "docs/week07.md#what-the-q-former-is-for" in refs
    assert "Why two encoders?" in (REPO_ROOT / "stage1_demos" / "clip_retrieval.py").read_text(encoding="utf-8")
    assert "**Cross-attention.**" in (REPO_ROOT / "docs" / "week03.md").read_text(encoding="utf-8")


def test_the_reference_check_can_fail():
    assert confusions.reference_problem("docs/week07.md#what-the-q-former-is-not") is not None
    assert confusions.reference_problem("python -m stage9.nothing") is not None
    assert confusions.reference_problem("../../etc/passwd") is not None
    assert confusions.reference_problem("make test-week3") is None  # a pattern rule
    assert confusions.reference_problem("https://arxiv.org/abs/2301.12597") is None


def test_the_lab_notebook_shows_the_log(log, tmp_path):
    confusions.add(log, "Why <32> queries?", 2, found="BLIP-2 §3")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    page = report.build(outputs, log=log).read_text(encoding="utf-8")
    assert 'id="confusions"' in page and f"1 open, {N_PLAN} resolved" in page
    assert "Why &lt;32&gt; queries?" in page and "BLIP-2 §3" in page
    href = os.path.relpath(REPO_ROOT / "docs" / "week07.md", outputs) + "#what-the-q-former-is-for"
    assert f'<a href="{href}">docs/week07.md#what-the-q-former-is-for</a>' in page
    assert "<code>python -m stage1_demos.sd_generate attention</code>" in page
    corrupt("oops\n")(log)
    assert "is not JSON" in report.build(outputs, log=log).read_text(encoding="utf-8")
    assert "No log at" in report.build(outputs, log=tmp_path / "none.jsonl").read_text(encoding="utf-8")


def test_help_says_where_the_log_lives():
    result = subprocess.run(
        [sys.executable, "-m", "curriculum.confusions", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "notes/confusions.jsonl" in result.stdout
