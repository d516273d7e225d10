"""Command-line conventions shared by every script (see DESIGN.md, 'Conventions').

Bad input raises `UserError`; `run` turns it into one line on stderr and exit code 2, so the
learner sees what to fix instead of a traceback. `--json` output goes through `print_json`.
"""

import argparse
import json
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake in the learner's input: the message names the problem and the fix."""


class RawHelp(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's line breaks in --help."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <problem> (see --help)`, exit code 2."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {text}")
    return value


def add_device_arg(parser):
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, mps or cpu")


def add_model_args(parser, default_model="tiny"):
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"'tiny' (bundled, default), a hub id or a local folder (default {default_model})",
    )
    add_device_arg(parser)


def shape_text(*dims):
    """A tensor shape as people write it: 1×4×8×8."""
    return "×".join(str(d) for d in dims)


def print_json(obj):
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def emit(result, as_json, print_text):
    """--json prints the result as JSON; otherwise print_text(result) prints it for people."""
    if as_json:
        print_json(result)
    else:
        print_text(result)


def write_json(obj, path):
    """The same JSON as print_json, to a file (parent folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def run(main, argv=None):
    """Call main(argv); a UserError becomes a one-line message and exit code 2."""
    try:
        main(argv)
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
