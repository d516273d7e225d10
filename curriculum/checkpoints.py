"""Training checkpoints: written so that a kill never leaves a half-written newest one, and checked
before a run continues one (its run, its config, every file as it was saved).

    OUT/checkpoints/<trainer>/step-000100/    Accelerate's save_state + run.json (name, step, config, sha256s)

A run's trainers are named run/part (tiny-sd/vae, tiny-sd/unet): a folder holding another run's
checkpoints is refused, and without --resume an unfinished run's checkpoints are never overwritten.
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from curriculum import cli

FOLDER = "checkpoints"
RECORD = "run.json"
RECORDS = f"{FOLDER}/**/step-*/{RECORD}"  # every complete checkpoint of a run folder, of any trainer


def jsonable(config):
    """A config (dataclass or dict) as the JSON a checkpoint records it in."""
    return json.loads(
        json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config, default=str)
    )


def listed(folder):
    """Complete checkpoints in `folder`, oldest first (a save cut short has no record)."""
    return sorted(p for p in Path(folder).glob("step-*") if (p / RECORD).exists())


def records(out):
    """The run records of every complete checkpoint under OUT/checkpoints, of any trainer."""
    return sorted(Path(out).glob(RECORDS))


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_record(path):
    try:
        return json.loads((path / RECORD).read_text())
    except (OSError, ValueError) as e:
        raise cli.UserError(f"{path} is not a readable checkpoint ({e}): delete it to continue an older one") from None


def check(path, config):
    """The checkpoint at `path` is this run's (same config) and every file is as it was saved."""
    record = read_record(path)
    ours = jsonable(config)
    differ = sorted(k for k in ours.keys() | record["config"].keys() if ours.get(k) != record["config"].get(k))
    if differ:
        theirs = ", ".join(f"{k}={record['config'].get(k)}" for k in differ)
        raise cli.UserError(
            f"{path} was saved with {theirs}; this run has "
            f"{', '.join(f'{k}={ours.get(k)}' for k in differ)}: resume with the same settings"
        )
    for file, digest in record["files"].items():
        if not (path / file).is_file() or sha256(path / file) != digest:
            raise cli.UserError(f"{path / file} is missing or corrupt: delete {path} to continue an older checkpoint")
    return record


def to_resume(out, name, config, resume):
    """The checkpoint this run continues (None: it starts afresh). Trainers of one run are named
    run/part (tiny-sd/vae, tiny-sd/unet); checkpoints of another run in the same folder are refused,
    and without --resume an unfinished run's checkpoints are never overwritten."""
    folder = Path(out) / FOLDER
    found = [p.parent for p in records(out)]
    for path in found:
        theirs = read_record(path).get("name", "?")
        if theirs.split("/")[0] != name.split("/")[0]:
            raise cli.UserError(
                f"{path} is a checkpoint of {theirs}, not {name.split('/')[0]}: pass the --out "
                f"of a {name.split('/')[0]} run"
            )
    if resume and not found:
        raise cli.UserError(f"--resume: no checkpoint in {folder}: start without --resume")
    mine = listed(folder / name)
    if mine and not resume:
        raise cli.UserError(
            f"{folder} holds the checkpoints of an unfinished run: pass --resume to continue it, "
            f"or delete {folder} to start over"
        )
    if not mine:
        return None
    check(mine[-1], config)
    return mine[-1]


def save(accelerator, out, name, step, config):
    """Accelerate's save_state into a temporary folder, then renamed: a kill mid-save leaves the
    previous checkpoint as the newest. Keeps the two newest."""
    folder = Path(out) / FOLDER / name
    final = folder / f"step-{step:06d}"
    partial = folder / f".{final.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: sha256(p) for p in sorted(partial.iterdir()) if p.is_file()}
        record = {
            "name": name,
            "step": step,
            "config": jsonable(config),
            "num_processes": accelerator.num_processes,
            "files": files,
        }
        (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in listed(folder)[:-2]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
