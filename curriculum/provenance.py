"""What made each bundled checkpoint, recorded when it is saved and checked against the code today.

Every trainer's training.json carries a `provenance` block:

    command   the trainer module and its arguments (`make tiny-models` runs them)
    code      sha256 of every repository module the training process had loaded when it saved
    inputs    sha256 of the weights of every checkpoint it loaded (the CLIP that BLIP-2 starts from)
    weights   sha256 of the weights it wrote
    versions  the libraries and Python it ran on (the same code on other versions: other floats)

`python -m curriculum.provenance check` (and tests/test_provenance.py) then fails when a module a
checkpoint ran has changed since, when a checkpoint it started from was remade, when its weights
are not the ones it wrote, or when `make tiny-models` would now train it with another config:
remake it (`make tiny-models`), or, when a change cannot touch the weights (a message, a flag's
help), declare it unaffected with a reason:

    python -m curriculum.provenance declare curriculum/cli.py --why "argument checks only"

A declaration names the file's new sha256, so the next change to that file is caught again.
`compare A --to B` says whether two checkpoints hold the same weights, bit for bit or how far apart.
"""

import hashlib
import importlib
import json
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

from curriculum import MODELS_DIR, REPO_ROOT, cli
from curriculum.checkpoints import jsonable

PACKAGES = ("curriculum", "stage1_demos", "stage2_fundamentals", "stage3_moderation")
LIBRARIES = ("torch", "transformers", "diffusers", "accelerate", "numpy", "safetensors", "tokenizers")
DECLARATIONS = MODELS_DIR / "unaffected.json"
MAKEFILE = REPO_ROOT / "Makefile"
LOADED = set()  # checkpoint folders this process loaded (zoo.from_pretrained adds them)


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_sha256(folder):
    """One digest of every weights file under a model folder (a pipeline's too), named and in order."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def shown(path):
    """A path as the repository names it (relative to its root), anything else as given."""
    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def code_in_use():
    """{repository file: sha256} of every module of the project this process has imported, the one
    `python -m` runs as __main__ included (so found by its file, not its name)."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(REPO_ROOT):
            if Path(path).resolve().relative_to(REPO_ROOT).parts[0] in PACKAGES:
                files[shown(path)] = file_sha256(path)
    return dict(sorted(files.items()))


def versions():
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def record(command, weights_folder):
    """The provenance block of a checkpoint just written to `weights_folder`; command: (module, *args)."""
    return {
        "command": list(command),
        "code": code_in_use(),
        "inputs": {shown(folder): weights_sha256(folder) for folder in sorted(LOADED)},
        "weights": weights_sha256(weights_folder),
        "versions": versions(),
    }


# ---------------------------------------------------------------- checking the bundled checkpoints
def read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        if default is not None:
            return default
        raise cli.UserError(f"{shown(path)} is missing") from None
    except ValueError as e:
        raise cli.UserError(f"{shown(path)} is not valid JSON ({e})") from None


def bundled(models_dir=MODELS_DIR):
    """{checkpoint name: its training.json} of every bundled checkpoint."""
    return {p.parent.name: read_json(p) for p in sorted(Path(models_dir).glob("*/training.json"))}


def make_commands(makefile=MAKEFILE):
    """{checkpoint name: (module, *args)} from the `tiny-models` recipe: what a remake runs."""
    commands, recipe = {}, False
    for line in Path(makefile).read_text().splitlines():
        if line.startswith("tiny-models:"):
            recipe = True
        elif recipe and not line.startswith("\t"):
            break
        elif recipe:
            words = shlex.split(line.strip())
            module, args = words[words.index("-m") + 1], words[words.index("-m") + 2 :]
            commands[Path(args[args.index("--out") + 1]).name] = (module, *args)
    return commands


def config_of(command):
    """The config the trainer `command` names would train with today (its module's config_from_args)."""
    module = importlib.import_module(command[0])
    parsed = module.build_parser().parse_args([*command[1:], "--force"])  # the folder may be the bundled one
    return jsonable(module.config_from_args(parsed))


def problems(models_dir=MODELS_DIR, makefile=MAKEFILE, declarations=DECLARATIONS):
    """One line per way a bundled checkpoint is not what today's code would make; [] when all are."""
    declared = read_json(declarations, default=[])
    commands = make_commands(makefile)
    found = []
    for name, training in bundled(models_dir).items():
        made = training.get("provenance")
        if made is None:
            found.append(f"{name}: no provenance in its training.json (made before it was recorded): remake it")
            continue
        if made["weights"] != weights_sha256(Path(models_dir) / name):
            found.append(f"{name}: its weights are not the ones its training wrote: remake it")
        command = commands.get(name)
        if command is None:
            found.append(f"{name}: `make tiny-models` does not make it")
        elif list(command) != made["command"]:
            then, now = " ".join(made["command"]), " ".join(command)
            found.append(f"{name}: made by `{then}`, `make tiny-models` now runs `{now}`")
        elif config_of(command) != made["config"]:
            found.append(f"{name}: its trainer's config has changed since: remake it")
        for file, sha in made["code"].items():
            now = file_sha256(REPO_ROOT / file) if (REPO_ROOT / file).exists() else None
            if now != sha and not any(
                d["file"] == file and d["sha256"] == now and name in d["checkpoints"] for d in declared
            ):
                found.append(
                    f"{name}: {file} has changed since it was trained: remake it (make tiny-models), or, if the "
                    f'change cannot alter its weights, `python -m curriculum.provenance declare {file} --why "..."`'
                )
        for source, sha in made["inputs"].items():
            if (REPO_ROOT / source).exists() and weights_sha256(REPO_ROOT / source) != sha:
                found.append(f"{name}: {source} was remade after it started from it: remake it")
    return found


def declare(file, why, models_dir=MODELS_DIR, declarations=DECLARATIONS):
    """Declare the current version of `file` unaffecting every checkpoint that ran another version."""
    path = REPO_ROOT / file
    if not path.is_file():
        raise cli.UserError(f"{file} is not a file of the repository")
    file, now = shown(path), file_sha256(path)
    affected = sorted(
        name
        for name, training in bundled(models_dir).items()
        if training.get("provenance", {}).get("code", {}).get(file, now) != now
    )
    if not affected:
        raise cli.UserError(f"no bundled checkpoint ran another version of {file}: nothing to declare")
    kept = [d for d in read_json(declarations, default=[]) if d["file"] != file]
    entry = {"file": file, "sha256": now, "checkpoints": affected, "why": why}
    cli.write_json(sorted([*kept, entry], key=lambda d: d["file"]), declarations)
    return entry


# ---------------------------------------------------------------- comparing two checkpoints
def compare(first, second):
    """{"identical": bit for bit?, "tensors": n, "max_abs_diff": largest difference of any weight}."""
    import torch
    from safetensors.torch import load_file

    def tensors(folder):
        files = sorted(Path(folder).rglob("*.safetensors"))
        if not files:
            raise cli.UserError(f"{folder} holds no .safetensors weights")
        return {f"{p.relative_to(folder).as_posix()}:{k}": t for p in files for k, t in load_file(p).items()}

    a, b = tensors(first), tensors(second)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise cli.UserError(f"{first} and {second} are not the same architecture (other tensor names or shapes)")
    diffs = [(a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a]
    identical = all(torch.equal(a[k], b[k]) for k in a)
    return {"identical": identical, "tensors": len(a), "max_abs_diff": max(diffs)}


def build_parser():
    p = cli.Parser(prog="python -m curriculum.provenance", description=__doc__, formatter_class=cli.RawHelp)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="is every bundled checkpoint what today's code would make? (exit 1 if not)")
    declaring = sub.add_parser("declare", help="declare a changed file unaffecting the checkpoints that ran it")
    declaring.add_argument("file", type=cli.InFile(), help="the changed repository file")
    declaring.add_argument("--why", type=cli.Text(), required=True, help="why the change cannot alter the weights")
    comparing = sub.add_parser("compare", help="are two checkpoints' weights the same, bit for bit?")
    comparing.add_argument("first", type=cli.InFolder(), help="a model folder")
    comparing.add_argument("--to", type=cli.InFolder(), required=True, help="the model folder to compare it with")
    comparing.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "check":
        found = problems()
        print("\n".join(found) or f"every bundled checkpoint is what today's code makes ({', '.join(bundled())})")
        raise SystemExit(1 if found else 0)
    if args.command == "declare":
        entry = declare(args.file, args.why)
        print(f"declared {entry['file']} ({entry['sha256'][:12]}) unaffecting {', '.join(entry['checkpoints'])}")
    else:
        result = compare(args.first, args.to)
        cli.emit(
            result,
            args.json,
            lambda r: print(
                f"{'identical, bit for bit' if r['identical'] else 'different'}: {r['tensors']} tensors, "
                f"largest difference {r['max_abs_diff']:.3g}"
            ),
        )


if __name__ == "__main__":
    cli.run(main)
