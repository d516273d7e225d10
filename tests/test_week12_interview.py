"""Week 12 milestone: the tensor drills pass, the quiz runs without a person, and the STAR
write-ups quote measured results (or name the make target that measures them)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from interview import drill, einsum_attention, star

pytestmark = pytest.mark.week12


def test_every_drill_passes(cli_runner):
    code, out, _ = cli_runner(einsum_attention.main, ["check", "--json"])
    checks = json.loads(out)["checks"]
    assert code == 0 and len(checks) == 7 and all(c["ok"] for c in checks)


def test_the_drill_check_can_fail():
    import torch

    x = torch.randn(1, 3, 8)
    w = [torch.randn(8, 8) for _ in range(4)]
    causal = einsum_attention.einsum_attention(x, *w, heads=2, causal=True)
    full = einsum_attention.einsum_attention(x, *w, heads=2)
    assert torch.allclose(causal[:, -1], full[:, -1], atol=1e-5)  # the last token sees everything either way
    assert not torch.allclose(causal[:, 0], full[:, 0], atol=1e-3)  # the first one sees only itself


def test_questions_cover_the_plan_and_name_demos():
    questions = drill.load()
    texts = " ".join(q.text for q in questions)
    for topic in (
        "negatives",
        "CNN",
        "Q-Former",
        "Latent space",
        "DDPM vs DDIM",
        "LoRA",
        "Dynamic batching",
        "learning rate",
    ):
        assert topic in texts, topic
    assert all(q.answer for q in questions)
    assert sum(bool(q.demo) for q in questions) >= len(questions) - 1


def test_every_demo_names_a_real_module_or_target():
    """A make target the Makefile defines, or `python -m module [subcommand]`: a module that exists,
    with that subcommand among its names."""
    makefile = open("Makefile").read()
    for q in drill.load():
        if not q.demo:
            continue
        argv = q.demo.split()
        if argv[0] == "make":
            assert re.search(rf"^{argv[1]}:", makefile, flags=re.M), q.demo
            continue
        assert argv[:2] == ["python", "-m"], q.demo
        spec = importlib.util.find_spec(argv[2])
        assert spec is not None, q.demo
        if len(argv) > 3 and not argv[3].startswith("-"):  # a subcommand: one of the names its parser knows
            assert f'"{argv[3]}"' in Path(spec.origin).read_text(), q.demo


def test_the_answers_leave_out_the_docs_checks_marks(tmp_path):
    page = tmp_path / "q.md"
    page.write_text("## Why?\n\nBecause 48×<!-- const: 8·8·3 / 4 --> fewer<!-- reasoned -->.\n\nDemo: `make week8`\n")
    assert drill.load(page)[0].answer == "Because 48× fewer."


def test_quiz_list_and_no_input_modes(cli_runner):
    code, out, _ = cli_runner(drill.main, ["--list"])
    assert code == 0 and out.count("\n") == len(drill.load())
    code, out, _ = cli_runner(drill.main, ["--no-input", "--n", "2", "--seed", "3"])
    assert code == 0 and out.count("[1/2]") == 1 and out.count("[2/2]") == 1 and "demo:" in out


def test_a_questions_file_that_is_not_utf8_is_one_line(tmp_path, cli_runner):
    questions = tmp_path / "questions.md"
    questions.write_bytes("## Qu'est-ce qu'un caf\u00e9 ?\n".encode("latin-1"))
    code, out, err = cli_runner(drill.main, ["--list", "--questions", str(questions)])
    assert code == 2 and "not UTF-8" in err and len(err.strip().splitlines()) == 1


def test_quiz_interactive_with_scripted_answers(monkeypatch, capsys):
    replies = iter(["", "", "", "q"])  # reveal, next, reveal, quit
    monkeypatch.setattr("builtins.input", lambda prompt="": next(replies))
    drill.main(["--seed", "1", "--n", "3"])
    out = capsys.readouterr().out
    assert "[2/3]" in out and "[3/3]" not in out and "1 of 3 questions done" in out


def test_quiz_order_depends_on_the_seed():
    questions = drill.load()
    assert drill.order(questions, 1, None) == drill.order(questions, 1, None)
    assert drill.order(questions, 1, None) != drill.order(questions, 2, None)


def write(root, file, data):
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_star_quotes_the_measured_numbers(tmp_path, cli_runner):
    write(
        tmp_path,
        "week1/eval.json",
        {"text_to_image": {"R@1": 0.9123}, "image_to_text": {"R@1": 0.8771}, "heldout_combinations": {"R@1": 0.7531}},
    )
    write(tmp_path, "week7/crosslingual.json", {"zh": {"R@1": 0.6543}, "en": {"R@1": 0.9123}})
    write(tmp_path, "bench/kv_cache.json", {"rows": [{"case": "fixture decoder", "speedup": 4.321}]})
    out = tmp_path / "star.md"
    code, stdout, _ = cli_runner(star.main, ["--outputs", str(tmp_path), "--out", str(out)])
    assert code == 0 and out.read_text().strip() in stdout
    for number in ("0.912", "0.877", "0.753", "0.654", "4.32x"):
        assert number in stdout, number
    assert "run `make week2` (it writes outputs/week2/eval.json)" in stdout


def test_star_with_no_results_still_writes_and_names_the_targets(tmp_path, cli_runner):
    (tmp_path / "empty").mkdir()
    code, stdout, _ = cli_runner(star.main, ["--outputs", str(tmp_path / "empty"), "--out", str(tmp_path / "s.md")])
    assert code == 0 and (tmp_path / "s.md").exists()
    assert (
        "missing results: run `make bench export lora week1 week11 week2 week3 week4 week5 week7 week8 week9`" in stdout
    )


def test_star_moderation_numbers_come_from_the_benchmark(tmp_path, cli_runner):
    rows = [
        {"config": c, "concurrency": 32, "requests_per_s": r, "p99_ms": p}
        for c, r, p in (("batching on, cache off", 123.4, 456.7), ("batching off, cache off", 51.2, 789.1))
    ]
    write(tmp_path, "bench/moderation_service.json", {"rows": rows, "engines_alone_per_s": 246.8})
    write(tmp_path, "week11/load.json", {"n": 2000, "concurrency": 32, "errors": 0, "unique_ids": 2000})
    code, stdout, _ = cli_runner(star.main, ["--outputs", str(tmp_path), "--out", str(tmp_path / "s.md")])
    assert code == 0
    for number in (
        "123.4",
        "51.2",
        "2.4x",
        "456.7",
        "789.1",
        "50% of the engines",
        "2000 requests at concurrency 32: 0 errors",
    ):
        assert number in stdout, number


def test_no_number_in_the_prose_is_typed_by_hand():
    for p in star.PROJECTS:
        for text in (p.title, p.situation, p.task, p.action):
            assert not re.search(r"\d", text.replace("BLIP-2", "BLIP").replace("3-gram", "")), text


def test_no_demo_reads_another_weeks_outputs():
    """A quiz demo runs on its own: it may write under outputs/ but reads only committed files."""
    for q in drill.load():
        argv = q.demo.split()
        for option, value in zip(argv, argv[1:]):
            if value.startswith("outputs/"):
                assert option == "--out", q.demo
            if value.startswith("data/"):
                assert Path(value).exists(), q.demo
