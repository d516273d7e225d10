"""Pieces every stage shares: ShapesWorld, the model zoo, CLI conventions, pictures."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "data" / "models"
OUTPUTS_DIR = REPO_ROOT / "outputs"
