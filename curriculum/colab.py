"""What the notebooks need beyond the project's own functions: where they run, which models, which images.

Two profiles, chosen in each notebook's parameters cell:
- `tiny`: the bundled models on the CPU, offline (the default off Colab, and what the tests run);
- `hub`: real checkpoints that fit a free T4 (CLIP ViT-B/32, BLIP-2 OPT-2.7b and Stable Diffusion
  1.5, half precision on the GPU), on a handful of real photos (the default on Colab with a GPU).

Each notebook opens with a setup cell that, on Colab only, clones this repository at its release
tag and calls `install_missing()`: Colab already has torch, numpy and transformers, and replacing
them inside a running kernel means a restart prompt and numpy ABI errors.
"""

import importlib.metadata
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from curriculum import OUTPUTS_DIR, REPO_ROOT, shapesworld
from curriculum.cli import UserError

PROFILES = ("tiny", "hub")
HUB_MODELS = {
    "clip": "openai/clip-vit-base-patch32",
    "blip2": "Salesforce/blip2-opt-2.7b",
    "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
# Photos of the COCO 2017 validation set (CC BY 4.0) that the Hugging Face docs use.
REAL_PHOTOS = {
    "cats.jpg": "http://images.cocodataset.org/val2017/000000039769.jpg",
    "bear.jpg": "http://images.cocodataset.org/val2017/000000000285.jpg",
    "kitchen.jpg": "http://images.cocodataset.org/val2017/000000000632.jpg",
    "stop_sign.jpg": "http://images.cocodataset.org/val2017/000000000724.jpg",
    "giraffes.jpg": "http://images.cocodataset.org/val2017/000000000025.jpg",
    "tennis.jpg": "http://images.cocodataset.org/val2017/000000000885.jpg",
}
# Colab's runtime has these; installing another version would replace them under a running kernel.
NEVER_INSTALL = {"torch", "numpy", "transformers"}
SHOWN_VERSIONS = ("torch", "transformers", "diffusers", "peft", "accelerate", "numpy", "onnxruntime", "faiss-cpu")


def on_colab():
    return "google.colab" in sys.modules


def choose_profile(profile=None):
    """None: `hub` on Colab with a GPU, `tiny` anywhere else."""
    if profile is None:
        import torch

        return "hub" if on_colab() and torch.cuda.is_available() else "tiny"
    if profile not in PROFILES:
        raise UserError(
            f"unknown profile {profile!r}: use 'tiny' (bundled models, CPU) or 'hub' (real checkpoints, GPU)"
        )
    return profile


def models(profile):
    """{"clip", "blip2", "sd"} -> what each script's --model takes: "tiny" or a hub id."""
    return dict(HUB_MODELS) if choose_profile(profile) == "hub" else dict.fromkeys(HUB_MODELS, "tiny")


def gallery(profile, n=6, folder=None):
    """Image files to work on: the learner's own folder if given, else ShapesWorld's test split
    (tiny) or a handful of real photos fetched once into outputs/notebooks/photos (hub)."""
    if folder is not None:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
        if not files:
            raise UserError(f"{folder} holds no .png, .jpg or .webp image: upload a few photos into it first")
        return files[:n]
    if choose_profile(profile) == "tiny":
        out = OUTPUTS_DIR / "notebooks" / f"shapesworld_{n}"  # one folder per size: notebooks may run at once
        shapesworld.export("test", n, out)
        return sorted(out.glob("*.png"))[:n]
    return fetch_photos(list(REAL_PHOTOS.items())[:n], OUTPUTS_DIR / "notebooks" / "photos")


def fetch_photos(photos, out):
    out.mkdir(parents=True, exist_ok=True)
    for name, url in photos:
        path = out / name
        if path.exists():
            continue
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except OSError as e:
            raise UserError(
                f"cannot fetch {url} ({e}): with no network, put a few photos in a folder and pass it as IMAGES"
            ) from None
        path.with_suffix(".part").write_bytes(data)
        path.with_suffix(".part").replace(path)
    return [out / name for name, _ in photos]


def project(pyproject=REPO_ROOT / "pyproject.toml"):
    """pyproject.toml's [project] table: the requirements, the version and the repository URL."""
    return tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]


def missing_requirements(pyproject=REPO_ROOT / "pyproject.toml"):
    """The project's requirements with no installed distribution, but for those never to replace."""
    from packaging.requirements import Requirement

    missing = []
    for line in project(pyproject)["dependencies"]:
        requirement = Requirement(line)
        if requirement.name in NEVER_INSTALL:
            continue
        try:
            importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(requirement))
    return missing


def versions():
    found = {}
    for name in SHOWN_VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def install_missing():
    """On Colab: pip-install what the runtime lacks, then print the versions this notebook runs on.
    Elsewhere: nothing (`make install` already did it)."""
    if not on_colab():
        return
    missing = missing_requirements()
    if missing:
        print("installing what Colab lacks:", ", ".join(missing))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)
    print("running on Python", sys.version.split()[0], "with", ", ".join(f"{k} {v}" for k, v in versions().items()))
