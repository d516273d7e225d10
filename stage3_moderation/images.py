"""Week 10: untrusted image bytes -> the frames a person looking at the image would see.

A content filter must judge what the viewer sees, not what a naive decoder returns:
- Formats: only those a browser shows (PNG and APNG, JPEG, GIF, WebP, BMP), detected from the
  bytes; a declared type (data URL or upload) must agree. Pillow reads dozens more formats, each
  a parser an attacker can aim at; a type the viewer's browser would not show needs no verdict.
- Transparency: each frame is composited onto white, the background a browser gives a page that
  sets none. Dropping alpha would judge pixels the viewer never sees (RGB under alpha 0) and miss
  a picture drawn by the alpha channel itself.
- Animation: every frame of a GIF, APNG or animated WebP is judged and the worst frame decides
  (moderation); a harmless first frame no longer hides the rest. Frames are counted from the
  headers before decoding, against a limit per request.
- Pixel modes: 16-bit greyscale (I;16, I) is scaled to 8 bits (converting it naively clips it
  to a white square); palette, LA, CMYK, 1-bit are converted as Pillow converts them for display.
- EXIF orientation is applied, as browsers do.
- The whole picture: the models read a square (CLIP resizes the short side and crops the centre),
  so moderation judges a long frame in square views along its long side (`views`), each
  overlapping the next by half, and the worst view decides: nothing outside the centre is unseen.

The cost is known before any pixel is decoded (`probe`: width × height × frames from the
headers), so the service can refuse or queue a request before it spends memory on it. After
compositing, frames of more than `JUDGED_SIDE`² pixels are shrunk to that area (every model here
reads 224-336 px a side), so what waits in the batchers' queues is at most 512² × 3 bytes per frame,
and about twice that in views. Bounding the area, not the long side, keeps a 20:1 banner's short
side at 114 px rather than 26, so its views are not judged as thumbnails.
"""

import hashlib
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import ExifTags, Image, ImageSequence

from stage3_moderation.errors import BadInput

# Pillow's format name -> the MIME type a browser knows it by
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
FORMAT_NAMES = "PNG, JPEG, GIF, WebP or BMP"
# Pillow opens a JPEG with more pictures appended (MPO, as cameras write) as a format of its own;
# a browser shows it as the JPEG of its first picture, so that is what is judged.
SHOWN_AS = {"MPO": "JPEG"}
# Types that say nothing about the bytes, so they cannot disagree with them.
UNDECLARED = {None, "", "application/octet-stream"}
BACKGROUND = (255, 255, 255)  # a browser's default page background
JUDGED_SIDE = 512
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
T = Image.Transpose  # EXIF orientation tag -> the transposition that shows the picture upright
ORIENTATIONS = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}


@dataclass
class Probe:
    """What the headers say, before any pixel is decoded."""

    format: str
    width: int
    height: int
    frames: int
    views: int = 1  # square views judged per frame: `views` when the whole picture is judged, else 1

    @property
    def pixels(self):
        return self.width * self.height * self.frames


@dataclass
class Frame:
    """One picture as the viewer sees it: RGB on the white background, at most JUDGED_SIDE² pixels.
    key: the sha256 of its pixels, so the same picture (in any encoding, or a GIF's repeated
    frames) is computed once. views: the square Frames that judge it whole (moderation; a square
    frame is its own one view), empty where only the models' own preprocessing reads it."""

    image: Image.Image
    key: str
    views: list = field(default_factory=list)


def views(width, height):
    """How many square views judge a width × height picture whole: squares of the short side along
    the long one, each overlapping the next by at least half (so any shape up to half the short
    side lies whole in one of them), the last flush with the far end. 1 for a square, 5 for 3:1,
    39 for 20:1."""
    short, long = sorted((width, height))
    return math.ceil(2 * long / short) - 1


def keyed(image):
    """A Frame of `image`, keyed by the sha256 of its size and pixels."""
    return Frame(image, hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest())


def cut_views(frame, count):
    """The frame's `count` square views, evenly spaced from one end to the other (`count` comes from
    the header's size, as counted against the limits; a shrunk frame's sides are rounded)."""
    width, height = frame.image.size
    side, span = min(width, height), abs(width - height)
    if count == 1 or not span:
        return [frame]
    unique = {}
    for i in range(count):
        at = round(i * span / (count - 1))
        box = (at, 0, at + side, side) if width > height else (0, at, side, at + side)
        view = keyed(frame.image.crop(box))
        unique.setdefault(view.key, view)
    return list(unique.values())


def open_image(data, param):
    """Bytes -> a lazily decoded Pillow image of an allowed format (only the header is read)."""
    if not data:
        raise BadInput("the image is empty (0 bytes)", param=param, code="invalid_image")
    try:
        return Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as e:  # Pillow's own, far higher, limit
        raise BadInput(f"the image is too large: {e}", status=413, param=param, code="image_too_large") from None
    except Exception:  # every decoder has its own ways to fail on bad bytes (OSError, SyntaxError, struct.error, ...)
        raise BadInput(
            f"the bytes are not a {FORMAT_NAMES} image (the formats a browser shows), or their header is corrupt",
            param=param,
            code="invalid_image",
        ) from None


def probe(data, limits, param, declared=None, all_frames=True):
    """The header's size and frame count, checked against the limits; declared: the MIME type the
    client gave (data URL or upload), which must name the format the bytes really are. all_frames:
    the whole picture is judged (moderation): every frame, each in its square views."""
    image = open_image(data, param)
    shown = SHOWN_AS.get(image.format, image.format)
    if declared not in UNDECLARED and declared != FORMATS[shown]:
        raise BadInput(
            f"the image is declared as {declared} but its bytes are {shown} "
            f"({FORMATS[shown]}): send the type that matches",
            param=param,
            code="mime_mismatch",
        )
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise BadInput(
            f"the image is {width}×{height} = {width * height:,} pixels; the limit is {limits.max_image_pixels:,}",
            status=413,
            param=param,
            code="image_too_large",
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise BadInput(
            f"the image is {width}×{height}: sides more than {limits.max_aspect_ratio:g}:1 apart",
            param=param,
            code="invalid_image",
        )
    try:
        animated = all_frames and image.format not in SHOWN_AS
        frames = getattr(image, "n_frames", 1) if animated else 1  # GIF: a scan of the blocks, no decoding
    except Exception:
        raise BadInput(
            "the animation's frames could not be read (corrupt or truncated)", param=param, code="invalid_image"
        ) from None
    if frames > limits.max_frames:
        raise BadInput(
            f"the animation has {frames} frames; the limit is {limits.max_frames} per request",
            status=413,
            param=param,
            code="too_many_frames",
        )
    return Probe(shown, width, height, frames, views(width, height) if all_frames else 1)


def to_8bit(frame):
    """16-bit greyscale -> 8-bit L: 0..65535 onto 0..255 (convert("L") would clip everything over 255)."""
    values = np.asarray(frame).astype(np.uint32)
    # 2-D uint8 is L; no mode argument, which Pillow 11 (Colab's) deprecates
    return Image.fromarray(((values * 255 + 32767) // 65535).clip(0, 255).astype(np.uint8))


def as_displayed(frame, orientation=1):
    """One decoded frame -> RGB composited onto the background, at most JUDGED_SIDE² pixels."""
    if frame.mode in SIXTEEN_BIT:
        frame = to_8bit(frame)
    elif frame.mode == "F":
        raise BadInput("the image has 32-bit float pixels, which a browser does not show", code="invalid_image")
    transparent = frame.mode in ALPHA_MODES or "transparency" in frame.info  # palette / greyscale tRNS too
    shown = frame.convert("RGBA" if transparent else "RGB")
    # Pillow resizes RGBA with premultiplied alpha, so shrinking first and compositing after gives
    # the composite of the full-size frame, at a fraction of the memory.
    scale = min(1.0, JUDGED_SIDE / math.sqrt(shown.width * shown.height))
    shown.thumbnail((round(shown.width * scale), round(shown.height * scale)), Image.Resampling.BICUBIC)
    if transparent:  # out = alpha · pixel + (1 - alpha) · background
        shown = Image.alpha_composite(Image.new("RGBA", shown.size, BACKGROUND + (255,)), shown).convert("RGB")
    return shown.transpose(ORIENTATIONS[orientation]) if orientation in ORIENTATIONS else shown


def decode(data, limits, param="image", all_frames=True):
    """Bytes -> the distinct frames as displayed, or BadInput: not an allowed image, corrupt,
    truncated, over a limit. all_frames: the whole picture, for moderation (every frame of an
    animation, each with its square views); else the first frame alone, without views."""
    image = open_image(data, param)
    count = views(*image.size) if all_frames else 0
    all_frames = all_frames and image.format not in SHOWN_AS
    if image.format in ("JPEG", "MPO"):  # decode at a reduced scale (DCT scaling) when the picture is large
        image.draft(image.mode, (JUDGED_SIDE, JUDGED_SIDE))  # both sides stay >= what the area cap keeps
    frames = {}
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        for i, frame in enumerate(ImageSequence.Iterator(image)):
            if i == limits.max_frames or (i and not all_frames):
                break
            shown = keyed(as_displayed(frame, orientation))
            frames.setdefault(shown.key, shown)
    except (BadInput, MemoryError):
        raise
    except Exception as e:  # Pillow's decoders raise many types on malformed data
        raise BadInput(
            f"the image could not be decoded (corrupt or truncated): {e}", param=param, code="invalid_image"
        ) from None
    for frame in frames.values():
        frame.views = cut_views(frame, count) if count else []
    return list(frames.values())
