"""`blip2_caption --backend lavis`: the same BLIP-2 weights run by Salesforce's LAVIS, in a subprocess.

LAVIS 1.0.2, its last release, pins transformers<4.27 (no Blip2ForConditionalGeneration), so it
cannot be imported next to this venv's transformers 5. It lives in .venv-lavis (`make lavis-venv`),
and stage1_demos/lavis_runner.py runs there: one JSON request on stdin, one JSON answer on stdout.
Nothing in this process imports lavis. A transformers checkpoint (`tiny`, or a folder) is first
converted to LAVIS's names by stage1_demos/lavis_convert.py, once, into outputs/lavis/.
"""

import json
import os
import subprocess

from curriculum import REPO_ROOT
from curriculum.cli import UserError
from stage1_demos import lavis_convert

VENV = REPO_ROOT / ".venv-lavis"
RUNNER = REPO_ROOT / "stage1_demos" / "lavis_runner.py"
SETTINGS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "repetition_penalty")
# Blip2OPT.PRETRAINED_MODEL_CONFIG_DICT's keys (lavis cannot be imported here): LAVIS downloads these
LAVIS_MODEL_TYPES = ("pretrain_opt2.7b", "pretrain_opt6.7b", "caption_coco_opt2.7b", "caption_coco_opt6.7b")
REBUILD = "rebuild it: rm -rf .venv-lavis && make lavis-venv"


def available():
    """True once `make lavis-venv` has finished."""
    return (VENV / ".lavis-installed").exists()


def run(model, jobs, device="cpu"):
    """The runner's results, one per job (see lavis_runner.py). model: 'tiny' or a transformers
    BLIP-2 folder (converted for LAVIS), or a LAVIS model_type such as pretrain_opt2.7b (LAVIS
    downloads it)."""
    if not available():
        raise UserError(
            f"the LAVIS backend needs its own venv, {VENV}: run `make lavis-venv` "
            "(about 1.7 GB with CPU torch; a few minutes)"
        )
    python = VENV / "bin" / "python"
    if not python.exists():
        raise UserError(f"the LAVIS venv {VENV} is broken (no bin/python): {REBUILD}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from this venv leaks in
    # idle OpenMP threads sleep instead of spinning: with the cores shared, spinning threads made
    # the tiny model's generate() 5-20x slower here (stage 3's onnxruntime sessions do the same)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if model in LAVIS_MODEL_TYPES:
        target = model
    else:
        target = str(lavis_convert.converted(model))
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # everything is local
    request = {"model": target, "device": device, "jobs": jobs}
    proc = subprocess.run([python, RUNNER], input=json.dumps(request), capture_output=True, text=True, env=env)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
    if proc.returncode == 3:
        raise UserError(f"the LAVIS venv {VENV} is broken ({last.removeprefix('lavis_runner: ')}): {REBUILD}")
    if proc.returncode != 0:
        raise UserError(f"LAVIS backend failed: {last.removeprefix('lavis_runner: ')}")
    return json.loads(proc.stdout)["results"]


def caption_job(image_paths, prompts, settings, batch_size=16):
    """Captions from LAVIS's generate(): prompts[i] ("" for none) goes with image i; settings: the
    SETTINGS keys, and "seed" (default 0) for sampling."""
    return {
        "task": "caption",
        "images": [str(p) for p in image_paths],
        "prompts": list(prompts),
        "settings": {k: settings[k] for k in SETTINGS},
        "seed": settings.get("seed", 0),
        "batch_size": batch_size,
    }


def trace_job(image_path, prompt):
    """Each stage's tensor on the way from the image to the decoder's logits (generate()'s first step)."""
    return {"task": "trace", "image": str(image_path), "prompt": prompt}


def caption(image_paths, prompts, settings, model="tiny", device="cpu", batch_size=16):
    """One caption per image from LAVIS's Blip2OPT (see caption_job)."""
    return run(model, [caption_job(image_paths, prompts, settings, batch_size)], device)[0]["captions"]
