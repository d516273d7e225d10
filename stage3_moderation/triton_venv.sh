#!/usr/bin/env bash
# Builds .venv-triton: week 10's pipeline served by Triton through PyTriton (stage3_moderation/triton_app.py).
#
#   stage3_moderation/triton_venv.sh [venv folder, default .venv-triton]     # what `make triton-venv` runs
#
# A venv of its own because nvidia-pytriton 0.7.0 pins numpy<2 and the project (.venv) needs numpy 2:
# pip cannot put both in one environment. Only the server process runs here; the benchmark and the
# tests stay in .venv and start it (triton_app.server).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-triton}"
PY="$VENV/bin/python"
# make's TORCH_VERSION when make runs this (make VAR=... exports it), else the Makefile's default
TORCH_VERSION="${TORCH_VERSION:-$(sed -n 's/^TORCH_VERSION ?= //p' Makefile)}"

# Marked built only at the end, so a build that stopped halfway is never taken for a working one.
rm -f "$VENV/.installed"

# The venv from the same python3 as .venv, and torch chosen by the Makefile's own .torch rule
# (the CPU build on CPU-only Linux): asked for later by transformers, pip would pull the CUDA build.
make --no-print-directory VENV="$VENV" "$VENV/.torch"

# PyTriton with the project's dependencies in one resolve, so every package agrees on numpy 1.x:
# pyproject.toml's list, read from the file so the two never drift, less numpy>=2 (numpy<2 instead:
# all of them accept 1.26) and ray (the Ray Serve app never runs here). torch==$TORCH_VERSION is
# already installed and named again so the resolver keeps it.
mapfile -t DEPENDENCIES < <("$PY" -c '
import re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if re.match(r"(numpy|ray)\b", requirement) is None:
        print(requirement)
')
"$PY" -m pip install --quiet nvidia-pytriton==0.7.0 "numpy<2" "torch==$TORCH_VERSION" "${DEPENDENCIES[@]}"

# The project itself, editable, without its declared dependencies (numpy>=2 would conflict).
"$PY" -m pip install --quiet --no-deps -e .

# What the server imports, imported once: pip's resolve does not prove that onnxruntime, transformers
# and the engines load on numpy 1.x.
"$PY" -c "import numpy, onnxruntime, transformers, pytriton.triton, stage3_moderation.triton_app, stage3_moderation.engines"
touch "$VENV/.installed"
