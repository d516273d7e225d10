"""Pieces every stage shares: ShapesWorld, the model zoo, CLI conventions, pictures."""

import logging
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "data" / "models"
OUTPUTS_DIR = REPO_ROOT / "outputs"

# transformers' notice, on every command, that each image processor "requires torchvision; falling
# back to ...Pil": the PIL processors are this project's choice (torchvision does not install beside
# the CPU build of torch). Every stage package imports curriculum first, so this comes before any
# library loads.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)

# Ctrl-C while the libraries import (the first seconds of every command): one line, exit 130.
from curriculum import cli  # noqa: E402  (after the constants cli reads)

cli.quiet_interrupt_while_importing()
