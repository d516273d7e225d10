"""Command-line conventions shared by every script (see docs/design.md, 'Conventions').

Every argument is checked as it is parsed, before any model loads: its `type=` is one of the
argument kinds below (a seed, a count or a number with its range, text, an output file of the
writer's kind, an output folder, an input file or folder, a model of the right family). A bad
value is one line on stderr and exit code 2; so is a `UserError` raised later (`run`).

Nothing is lost or half-written: every file is written to a temporary name and renamed into place
(`atomic_paths`), a folder made whole is built beside its destination and swapped in
(`atomic_folder`). An existing folder is replaced only when it is empty, holds what this command
wrote there before, or with --force; never the current directory, the repository, data/models or
a folder above one of them, and a bundled checkpoint (data/models/*) only with --force. Ctrl-C at any moment:
'interrupted', exit code 130.
"""

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from curriculum import MODELS_DIR, REPO_ROOT

SEED_MAX = 2**32 - 1  # numpy and torch take seeds up to this


class UserError(Exception):
    """A mistake in the learner's input: the message names the problem and the fix."""

    def _render_traceback_(self):
        """In a notebook (IPython asks for this), the same one line as on the command line."""
        return [f"error: {self}"]


class RawHelp(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's line breaks in --help."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <problem> (see --help)`, exit code 2.

    After parsing, each OutFolder(replace=True) argument is checked against the folder it would
    replace (which needs --force, known only once every argument is read)."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for parser in [self, *subparsers_chosen(self, parsed)]:
            for action in parser._actions:
                value = getattr(parsed, action.dest, None)
                if isinstance(action.type, OutFolder) and action.type.replace and value is not None:
                    try:
                        action.type.check_replace(value, getattr(parsed, "force", False))
                    except UserError as e:
                        parser.error(f"argument {'/'.join(action.option_strings) or action.dest}: {e}")
        return parsed


def subparsers_chosen(parser, parsed):
    """The subcommand parsers `parsed` went through (`cmd sub ...`), outermost first."""
    chosen = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(parsed, action.dest, None)
            if name in action.choices:
                child = action.choices[name]
                chosen += [child, *subparsers_chosen(child, parsed)]
    return chosen


def add_force_arg(parser, what="the output folder"):
    parser.add_argument(
        "--force", action="store_true", help=f"replace {what} even if it holds files this command did not write"
    )


# ---------------------------------------------------------------- argument kinds
class Kind:
    """One kind of command-line value: called by argparse on the text, returns the value or raises
    ArgumentTypeError with the reason (argparse prefixes the argument's name)."""

    def refuse(self, message):
        raise argparse.ArgumentTypeError(message)

    def __repr__(self):  # argparse names the type in some messages
        return type(self).__name__.lower()


class Seed(Kind):
    """A random seed: an integer from 0 to 2**32 - 1 (what numpy and torch accept)."""

    def __call__(self, text):
        if not re.fullmatch(r"\d+", text.strip()) or int(text) > SEED_MAX:
            self.refuse(f"a seed is a whole number from 0 to {SEED_MAX}, got {text!r}")
        return int(text)


class Count(Kind):
    """A whole number in [minimum, maximum]: the command's real minimum and a stated maximum."""

    def __init__(self, minimum=1, maximum=100_000):
        self.minimum, self.maximum = minimum, maximum

    def __call__(self, text):
        if not re.fullmatch(r"[+-]?\d+", text.strip()):
            self.refuse(f"expected a whole number, got {text!r}")
        value = int(text)
        if not self.minimum <= value <= self.maximum:
            self.refuse(f"expected a whole number from {self.minimum} to {self.maximum}, got {text}")
        return value


class Number(Kind):
    """A finite number in its meaningful range; `above`/`below` exclude the bound itself."""

    def __init__(self, minimum=None, maximum=None, above=None, below=None):
        self.minimum, self.maximum, self.above, self.below = minimum, maximum, above, below

    def range_text(self):
        low = f"above {self.above}" if self.above is not None else f"from {self.minimum}" * (self.minimum is not None)
        high = f"below {self.below}" if self.below is not None else f"to {self.maximum}" * (self.maximum is not None)
        return f"{low} {high}".strip()

    def __call__(self, text):
        try:
            value = float(text)
        except ValueError:
            self.refuse(f"expected a number, got {text!r}")
        ok = math.isfinite(value)
        ok = ok and (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        ok = ok and (self.above is None or value > self.above) and (self.below is None or value < self.below)
        if not ok:
            self.refuse(f"expected a finite number {self.range_text()}, got {text}")
        return value


class Text(Kind):
    """Text typed by the learner: valid UTF-8 and not blank (`blank=True` allows '')."""

    def __init__(self, blank=False):
        self.blank = blank

    def __call__(self, text):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 arrive as lone surrogates
            self.refuse("the text is not valid UTF-8: check the terminal's encoding or the file it came from")
        if not self.blank and not text.strip():
            self.refuse("empty text: write what you mean, e.g. 'a red circle'")
        return text


class Url(Kind):
    """An http(s) URL of a server."""

    def __call__(self, text):
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
            self.refuse(f"expected a URL such as http://127.0.0.1:8000, got {text!r}")
        return text.rstrip("/")


class Device(Kind):
    """auto (cuda > mps > cpu), cpu, mps, cuda or cuda:N."""

    def __call__(self, text):
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
            self.refuse(f"expected auto, cpu, mps, cuda or cuda:N, got {text!r}")
        return text


def nearest_existing(path):
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def check_writable_place(path, kind):
    """The place where `path` would be made: no file on the way, and writable."""
    above = nearest_existing(Path(path).parent if kind == "file" else path)
    if not above.is_dir():
        raise UserError(f"{above} is a file, so nothing can be written under it")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"{above} is not writable: choose another place")


class OutFile(Kind):
    """A file to write, of one of `suffixes` (what its writer makes); it is replaced whole, and its
    folder is made if missing."""

    def __init__(self, *suffixes):
        self.suffixes = suffixes

    def __call__(self, text):
        path = Path(text)
        wanted = " or ".join(self.suffixes)
        if not text.strip() or path.is_dir() or text.endswith(("/", os.sep)):
            self.refuse(f"expected a {wanted} file to write, got {'a folder: ' + text if text.strip() else 'nothing'}")
        if path.suffix.lower() not in self.suffixes:
            self.refuse(f"{text} should end in {wanted} (that is the kind of file written)")
        try:
            check_writable_place(path, "file")
        except UserError as e:
            self.refuse(str(e))
        return path


class OutFolder(Kind):
    """A folder to write into. replace=False: named files are written into it and nothing else is
    touched. replace=True: the folder *is* the output, made whole (atomic_folder); an existing
    one is replaced only when empty, when it holds one of `markers` (glob patterns of what this
    command writes there), or with --force."""

    def __init__(self, replace=False, markers=()):
        self.replace, self.markers = replace, markers

    def __call__(self, text):
        if not text.strip():
            self.refuse("expected a folder, got nothing")
        path = Path(text)
        if path.exists() and not path.is_dir():
            self.refuse(f"{text} is a file, not a folder")
        try:
            check_writable_place(path, "folder")
        except UserError as e:
            self.refuse(str(e))
        if self.replace:
            resolved = path.resolve()
            never = (
                (Path.cwd().resolve(), "the current folder"),
                (REPO_ROOT, "the repository"),
                (MODELS_DIR, "data/models"),
            )
            for keep, name in never:
                if resolved == keep or resolved in keep.parents:
                    self.refuse(f"{text} is {name} or a folder above it: name a new folder for this output")
        return path

    def check_replace(self, path, force):
        """May this command put a new folder at `path`? (after parsing, when --force is known)."""
        path = Path(path)
        if not path.is_dir() or not any(path.iterdir()):
            return
        bundled = MODELS_DIR.resolve() in path.resolve().parents
        if bundled and not force:
            raise UserError(
                f"{path} is a bundled checkpoint that every other command loads: "
                "write to another folder, or pass --force to replace it (`make tiny-models` does)"
            )
        ours = any(next(path.glob(marker), None) for marker in self.markers)
        if not (ours or force):
            raise UserError(
                f"{path} already holds files this command did not write: "
                "choose a new folder, or pass --force to replace it"
            )


class InFile(Kind):
    """An existing, readable, non-empty file (of `suffixes`, if given)."""

    def __init__(self, *suffixes):
        self.suffixes = suffixes

    def __call__(self, text):
        path = Path(text)
        if not path.is_file():
            self.refuse(f"no file at {text!r}" + (": it is a folder" if path.is_dir() else ""))
        if self.suffixes and path.suffix.lower() not in self.suffixes:
            self.refuse(f"{text} should be a {' or '.join(self.suffixes)} file")
        if not os.access(path, os.R_OK):
            self.refuse(f"{text} is not readable")
        if path.stat().st_size == 0:
            self.refuse(f"{text} is empty")
        return path


class InImage(InFile):
    """An image file PIL can open (its header is read now; the pixels when it is used)."""

    def __call__(self, text):
        path = super().__call__(text)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            self.refuse(f"{text} is not a readable image (corrupt, or not a PNG/JPEG/...)")
        return path


class InFolder(Kind):
    """An existing, readable folder that holds `needs` (file names), when given."""

    def __init__(self, *needs, hint=""):
        self.needs, self.hint = needs, hint

    def __call__(self, text):
        path = Path(text)
        if not text.strip() or not path.is_dir():
            self.refuse(f"no folder at {text!r}" + (f": {self.hint}" if self.hint else ""))
        if not os.access(path, os.R_OK | os.X_OK):
            self.refuse(f"{text} is not readable")
        missing = [n for n in self.needs if not (path / n).exists()]
        if missing:
            self.refuse(f"{text} holds no {', '.join(missing)}" + (f": {self.hint}" if self.hint else ""))
        return path


# What a saved folder of each family says it is: config.json's model_type, or the diffusers pipeline class.
FAMILIES = {
    "clip": ("CLIP", {"clip"}),
    "clip-zh": ("Chinese CLIP text tower", {"clip_text_model"}),
    "blip2": ("BLIP-2", {"blip-2"}),
    "sd": ("Stable Diffusion", {"StableDiffusionPipeline"}),
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def saved_model_kind(folder):
    """The model_type (or pipeline class) a save_pretrained folder records, or None."""
    for name, key in (("config.json", "model_type"), ("model_index.json", "_class_name")):
        if (Path(folder) / name).is_file():
            try:
                return json.loads((Path(folder) / name).read_text(encoding="utf-8")).get(key)
            except (ValueError, OSError, AttributeError):
                return None
    return None


def family_of(kind):
    return next((FAMILIES[f][0] for f in FAMILIES if kind in FAMILIES[f][1]), kind)


class Model(Kind):
    """'tiny' (the bundled checkpoint), a hub id such as openai/clip-vit-base-patch32, or a folder
    written by save_pretrained whose config says it is of `family`; `none` also accepts that word."""

    def __init__(self, family, none=False):
        self.family, self.none = family, none

    def __call__(self, text):
        name, types = FAMILIES[self.family]
        if text == "tiny" or (self.none and text == "none"):
            return text
        path = Path(text)
        if path.is_dir():
            kind = saved_model_kind(path)
            if kind is None:
                self.refuse(f"{text} is a folder but not a saved model (no readable config.json or model_index.json)")
            if kind not in types:
                self.refuse(f"{text} is a {family_of(kind)} model; this needs a {name} model")
            return text
        if path.exists():
            self.refuse(f"{text} is a file; pass a model folder, a hub id or tiny")
        if HUB_ID.fullmatch(text) and not text.startswith((".", "/", "~")) and text.count("/") == 1:
            return text  # loaded from the hub cache (zoo.from_pretrained explains a miss)
        also = ", none" if self.none else ""
        self.refuse(
            f"no model folder at {text!r}: pass tiny{also}, a hub id like org/name, or a save_pretrained folder"
        )


# ---------------------------------------------------------------- writing whole files and folders
@contextlib.contextmanager
def atomic_paths(*paths):
    """Temporary paths beside `paths` (same suffixes, so writers pick the format), renamed onto them
    together when the block ends without error; removed otherwise (an error, Ctrl-C)."""
    finals = [Path(p) for p in paths]
    temps = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}-", suffix=final.suffix)
            os.close(handle)
            temps.append(Path(name))
        yield temps if len(temps) != 1 else temps[0]
        for temp, final in zip(temps, finals):
            os.chmod(temp, 0o644)
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(out):
    """A staging folder beside `out`, put in its place when the block ends without error (the old
    folder, which OutFolder(replace=True) allowed, removed only then); removed otherwise."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    old = out.parent / f"{staging.name}-old"
    try:
        yield staging
        os.chmod(staging, 0o755)
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    finally:
        if old.exists() and not out.exists():  # stopped between the two renames: the old folder goes back
            os.replace(old, out)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(text, path):
    with atomic_paths(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(obj, path):
    """The same JSON as print_json, to a file, whole or not at all (parent folders made)."""
    write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", path)


def beside(path, suffix):
    """`outputs/x.json` -> `outputs/x.png`: the picture that goes with a result."""
    return Path(path).with_suffix(suffix)


# ---------------------------------------------------------------- output and the run
def add_device_arg(parser):
    parser.add_argument("--device", type=Device(), default="auto", help="auto (cuda > mps > cpu), cuda, mps or cpu")


def add_model_args(parser, family, default_model="tiny"):
    parser.add_argument(
        "--model",
        type=Model(family),
        default=default_model,
        help=f"'tiny' (bundled, default), a hub id or a local {FAMILIES[family][0]} folder (default {default_model})",
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


def interrupted(*_):
    """Ctrl-C before `run` (while the libraries import): one line, exit 130; nothing is written yet."""
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def quiet_interrupt_while_importing():
    """Called by `curriculum/__init__` under `python -m`, before any heavy import; `run` hands Ctrl-C
    back to Python so that the work's `finally` blocks remove what they staged."""
    if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted)


def run(main, argv=None):
    """Call main(argv); a UserError becomes a one-line message and exit code 2, Ctrl-C exit 130."""
    if signal.getsignal(signal.SIGINT) is interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main(argv)
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BrokenPipeError:  # `... | head`: the reader left
        sys.stderr.close()
        sys.exit(1)
