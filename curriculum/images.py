"""Reading images the learner points a script at: unreadable files are skipped or explained."""

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from curriculum.cli import UserError


def open_image(path):
    """A readable image as RGB, or None (the caller decides whether that is an error)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError):
        return None


def load_image(path):
    """A readable image as RGB; a missing or corrupt file is a UserError that says which."""
    if not Path(path).is_file():
        raise UserError(f"no image at {path}: pass the path of a PNG or JPEG file")
    image = open_image(path)
    if image is None:
        raise UserError(f"{path} is not a readable image (corrupt or not an image file)")
    return image
