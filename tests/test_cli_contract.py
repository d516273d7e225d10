"""The command-line contract, over every command and subcommand: bad input is one line, exit 2.

Commands are found from the source, not from a list: every module whose `__main__` block runs
`cli.run(main)`. Each exposes `build_parser()`, and every argument that takes a value is either a
choice or one of `curriculum.cli`'s kinds; each kind's bad values (below) are injected one at a
time into `main(argv)` in this process: exit 2, one line on stderr, no traceback, no file written
or removed, refused before any work (a model load takes seconds; a refusal here takes milliseconds).
A few real subprocesses check the same from the outside, and Ctrl-C.
"""

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curriculum import MODELS_DIR, REPO_ROOT, cli, docs

PACKAGES = ("curriculum", "stage1_demos", "stage2_fundamentals", "stage3_moderation", "interview")
NOT_UTF8 = os.fsdecode(b"caf\xe9")  # Latin-1 bytes in argv arrive as a lone surrogate
UNWRITABLE = Path("/proc/sys")  # not writable even by root


def command_modules():
    """Every module that is a learner's command: its __main__ block runs cli.run(main)."""
    for package in PACKAGES:
        for file in sorted((REPO_ROOT / package).glob("*.py")):
            if "cli.run(main)" in file.read_text(encoding="utf-8"):
                yield f"{package}.{file.stem}"


def leaves(parser, path=()):
    """(subcommand path, parser) for every runnable command under `parser`."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaves(child, (*path, name))


def bundled_of_another_family(family):
    for folder in sorted(MODELS_DIR.iterdir()):
        kind = cli.saved_model_kind(folder)
        if kind is not None and kind not in cli.FAMILIES[family][1]:
            return str(folder)
    raise AssertionError("no bundled model of another family")


def bad_values(kind, scratch):
    """What a careless learner types for an argument of this kind, each of which must be refused."""
    a_file = scratch / "notes.txt"
    a_file.write_text("my notes\n")
    empty = scratch / "empty.bin"
    empty.touch()
    a_folder = scratch / "a-folder"
    a_folder.mkdir(exist_ok=True)
    if isinstance(kind, cli.Seed):
        return ["-1", "1e20", str(cli.SEED_MAX + 1), "abc", ""]
    if isinstance(kind, cli.Count):
        return [str(kind.minimum - 1), str(kind.maximum + 1), "1000000000000", "1.5", "abc"]
    if isinstance(kind, cli.Number):
        values = ["nan", "inf", "-inf", "abc", "1e400"]
        values += [str(v) for v in (kind.above, kind.below) if v is not None]
        values += [str(kind.minimum - 1)] if kind.minimum is not None else []
        values += [str(kind.maximum * 10 + 1)] if kind.maximum is not None else []
        return values
    if isinstance(kind, cli.Text):
        return [NOT_UTF8] + ([] if kind.blank else ["", "   "])
    if isinstance(kind, cli.Url):
        return ["127.0.0.1:8000", "ftp://127.0.0.1", ""]
    if isinstance(kind, cli.Device):
        return ["gpu", "cuda:x", ""]
    if isinstance(kind, cli.OutFile):
        suffix = kind.suffixes[0]
        return [
            "",
            str(a_folder),
            str(scratch / "result.unsupported"),
            str(scratch / "result"),
            str(a_file / f"x{suffix}"),
            str(UNWRITABLE / f"x{suffix}"),
        ]
    if isinstance(kind, cli.OutFolder):
        values = ["", str(a_file), str(a_file / "below"), str(UNWRITABLE / "x")]
        return values + ([".", str(REPO_ROOT), str(MODELS_DIR), str(MODELS_DIR.parent), "/"] if kind.replace else [])
    if isinstance(kind, cli.InImage):
        fake = scratch / "fake.png"
        fake.write_text("not an image")
        return [str(scratch / "missing.png"), str(a_folder), str(empty), str(fake)]
    if isinstance(kind, cli.InFile):
        wrong = [str(a_file)] if kind.suffixes and ".txt" not in kind.suffixes else []
        return [str(scratch / "missing.file"), str(a_folder), str(empty), *wrong]
    if isinstance(kind, cli.InFolder):
        return [str(scratch / "missing-folder"), str(a_file), ""] + ([str(a_folder)] if kind.needs else [])
    if isinstance(kind, cli.Model):
        return [
            str(scratch / "missing-model"),
            "./missing-model",
            str(a_folder),
            str(a_file),
            bundled_of_another_family(kind.family),
        ]
    if isinstance(kind, docs.Collectable):
        return ["week99", "", "results/week1/eval.json", "week1/"]
    raise AssertionError(f"no bad values for the kind {kind!r}: add them here")


def argument_name(action):
    return "/".join(action.option_strings) or action.metavar or action.dest


# commands that need an optional extra (pyproject.toml): checked by `make peers-test`, which installs it
OPTIONAL = {"stage3_moderation.litserve_app": "peers"}


def cases():
    """(module, subcommand path, action) for every argument that takes a value; a command whose
    optional extra is missing is one case that fails where its marker's tests run."""
    found = []
    for name in command_modules():
        marks = [getattr(pytest.mark, OPTIONAL[name])] if name in OPTIONAL else []
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name not in OPTIONAL:
                raise
            found.append(pytest.param(name, (), f"not importable: {e}", marks=marks, id=f"{name}:import"))
            continue
        if not hasattr(module, "build_parser"):
            found.append(pytest.param(module, (), None, marks=marks, id=f"{name}::None"))  # fails below
            continue
        for path, parser in leaves(module.build_parser()):
            for action in parser._actions:
                if action.nargs != 0 and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                    case_id = f"{name}:{' '.join(path)}:{argument_name(action)}"
                    found.append(pytest.param(module, path, action, marks=marks, id=case_id))
    return found


CASES = cases()


def test_every_command_is_found():
    """The discovery sees the commands (so an empty list cannot pass the contract)."""
    names = {getattr(case.values[0], "__name__", case.values[0]) for case in CASES}
    assert len(names) >= 30 and "stage1_demos.lavis_convert" in names and "curriculum.tiny_clip" in names
    assert set(OPTIONAL) <= names


@pytest.mark.parametrize("module,path,action", CASES)
def test_bad_values_are_refused_in_one_line(module, path, action, tmp_path, monkeypatch, capsys):
    assert not isinstance(action, str), f"{module}: {action} (install its extra: make peers)"
    assert action is not None, f"{module.__name__} has no build_parser(): its main must parse with it"
    assert isinstance(action.type, cli.Kind) or action.choices is not None, (
        f"{argument_name(action)} takes a value but no kind checks it: give it a curriculum.cli kind or choices"
    )
    monkeypatch.chdir(tmp_path)
    values = bad_values(action.type, tmp_path) if isinstance(action.type, cli.Kind) else ["not-a-choice"]
    before = sorted(tmp_path.rglob("*"))
    for value in values:
        argv = [*path, f"{action.option_strings[-1]}={value}"] if action.option_strings else [*path, "--", value]
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_:
            module.main(argv)
        seconds = time.perf_counter() - start
        err = capsys.readouterr().err
        shown = f"{module.__name__} {' '.join(argv)!r}"
        assert exit_.value.code == 2, f"{shown}: exit {exit_.value.code}"
        assert err.startswith("error:") and err.count("\n") == 1, f"{shown}: {err!r}"
        assert "Traceback" not in err
        assert argument_name(action).split("/")[0] in err or action.dest in err, f"{shown}: {err!r}"
        assert seconds < 2, f"{shown} took {seconds:.1f} s to refuse"
        assert sorted(tmp_path.rglob("*")) == before, f"{shown} wrote or removed files"


# ---------------------------------------------------------------- from the outside: real processes
def run_command(*argv, cwd=REPO_ROOT, timeout=120):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_real_process_refuses_in_one_line(tmp_path):
    result = run_command("stage1_demos.sd_generate", "generate", "--prompt", "a red circle", "--seed", "-1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--seed" in result.stderr


def interrupt_after(seconds, argv, cwd):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, err


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    code, err = interrupt_after(0.3, ["stage1_demos.sd_generate", "--help"], REPO_ROOT)
    assert code == 130 and err.strip() == "interrupted", err


def test_ctrl_c_during_an_export_leaves_nothing(tmp_path):
    out = tmp_path / "gallery"
    argv = ["curriculum.shapesworld", "export", "--n", "100000", "--out", str(out)]
    code, err = interrupt_after(6, argv, tmp_path)
    assert code == 130 and "Traceback" not in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
