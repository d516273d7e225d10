"""`blip2_caption --backend lavis`: the same captioning through Salesforce's LAVIS, in a subprocess.

LAVIS 1.0.2, its last release, pins transformers<4.27 (no Blip2ForConditionalGeneration), so it
cannot be imported next to this venv's transformers 5. It lives in .venv-lavis (`make lavis-venv`),
and stage1_demos/lavis_runner.py runs there: one JSON request on stdin, one JSON answer on stdout.
Nothing in this process imports lavis.
"""
import json
import os
import subprocess

from curriculum import REPO_ROOT
from curriculum.cli import UserError

VENV = REPO_ROOT / ".venv-lavis"
RUNNER = REPO_ROOT / "stage1_demos" / "lavis_runner.py"
SETTINGS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "repetition_penalty")


def available():
    """True once `make lavis-venv` has finished."""
    return (VENV / ".lavis-installed").exists()


def caption(image_paths, prompts, settings, model="tiny", device="cpu"):
    """One caption per image from LAVIS's Blip2OPT; prompts[i] ("" for none) goes with image i.

    settings: the SETTINGS keys, and "seed" (default 0) for sampling; model: "tiny" (random, built
    offline) or a LAVIS blip2_opt model_type such as "pretrain_opt2.7b" (LAVIS downloads it).
    """
    if not available():
        raise UserError(f"the LAVIS backend needs its own venv, {VENV}: run `make lavis-venv` "
                        "(about 2.3 GB with CPU torch, 7 GB with CUDA; a few minutes)")
    request = {"model": model, "device": device, "images": [str(p) for p in image_paths], "prompts": list(prompts),
               "settings": {k: settings[k] for k in SETTINGS}, "seed": settings.get("seed", 0)}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from this venv leaks in
    if model == "tiny":
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([VENV / "bin" / "python", RUNNER], input=json.dumps(request), capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise UserError(f"LAVIS backend failed: {last}")
    return json.loads(proc.stdout)["captions"]
