"""Week 10: turning untrusted request bodies into texts and images, or a 4xx that says why.

Everything a client sends is checked before a model sees it: JSON shape (unknown fields are
refused, not ignored), text length, list length, data URLs and base64, image bytes (corrupt,
truncated, not an image), image size in pixels *before* decoding (a 100-byte PNG can claim
50,000 × 50,000 pixels: a decompression bomb) and aspect ratio (a 1 × 20,000 strip resized to
the model's input is a gigantic tensor). Remote URLs are refused: the server never fetches
(no SSRF, and it runs offline).
"""
import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MULTIPART_FIELDS = {"image", "text", "model"}


@dataclass
class Limits:
    max_body_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 20.0
    max_text_chars: int = 10_000
    max_inputs: int = 32


class BadInput(Exception):
    """A client mistake: HTTP status, a message that says what to fix, and a short code."""

    def __init__(self, message, status=400, code="invalid_input", param=None):
        super().__init__(message)
        self.message, self.status, self.code, self.param = message, status, code, param


# ---------------------------------------------------------------- the JSON schema (OpenAI's shape)
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageURL(Strict):
    url: str = Field(description="a data URL: data:image/png;base64,...")


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class InputRequest(Strict):
    """`input`: a string, a list of strings (one result each), or a list of text / image_url parts."""
    input: Union[str, list[str], list[Part]]
    model: Optional[str] = None


@dataclass
class Item:
    """One thing to judge: text, an image (with its raw bytes, the cache key), or both."""
    text: Optional[str] = None
    image: Optional[Image.Image] = None
    image_bytes: Optional[bytes] = None


# ---------------------------------------------------------------- images
def decode_image(data, limits, param="image"):
    """Bytes -> RGB PIL image, or BadInput: not an image, corrupt, truncated, too many pixels."""
    if not data:
        raise BadInput("the image is empty (0 bytes)", param=param, code="invalid_image")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known, nothing decoded
    except Image.DecompressionBombError as e:  # Pillow's own, far higher, limit
        raise BadInput(f"the image is too large: {e}", status=413, param=param, code="image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput("the image bytes are not a PNG, JPEG or other image format Pillow reads",
                       param=param, code="invalid_image") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise BadInput(f"the image is {width}×{height} = {width * height:,} pixels; the limit is "
                       f"{limits.max_image_pixels:,}", status=413, param=param, code="image_too_large")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise BadInput(f"the image is {width}×{height}: sides more than {limits.max_aspect_ratio:g}:1 apart",
                       param=param, code="invalid_image")
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"the image could not be decoded (corrupt or truncated): {e}",
                       param=param, code="invalid_image") from None


def decode_data_url(url, limits, param):
    """data:image/...;base64,<payload> -> image; anything else is refused with the reason."""
    if not url.startswith("data:"):
        raise BadInput("image_url must be a data URL (data:image/png;base64,...): the server does not "
                       "fetch remote URLs", param=param, code="invalid_image_url")
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise BadInput("a data URL must look like data:image/png;base64,<base64 bytes>",
                       param=param, code="invalid_image_url")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("the data URL's payload is not valid base64", param=param, code="invalid_base64") from None
    return decode_image(data, limits, param), data


# ---------------------------------------------------------------- requests
def check_text(text, limits, param):
    if len(text) > limits.max_text_chars:
        raise BadInput(f"{param} is {len(text):,} characters; the limit is {limits.max_text_chars:,}",
                       status=413, param=param, code="text_too_long")
    return text


def validation_message(error):
    """One line from pydantic's complaints: the deepest one (a union of shapes reports one per
    shape it tried; the deepest is the shape the client meant), e.g. 'input.0.image_url: Field required'."""
    deepest = max(error.errors(), key=lambda e: (len(e["loc"]), "union" in str(e["loc"])))
    loc = deepest["loc"]
    if not loc:
        return 'the body must be a JSON object like {"input": "some text"}'
    if loc[0] == "input" and not any(isinstance(part, int) for part in loc) and deepest["type"] != "missing":
        return ('input must be a string, a list of strings, or a list of {"type": "text", ...} / '
                f'{{"type": "image_url", ...}} parts; got {type(deepest["input"]).__name__}')
    # drop pydantic's names for the union branches and the part's tag: input.0.image_url.url, not
    # input.list[tagged-union[...]].0.image_url.image_url.url
    path = [p for p in loc if not str(p).startswith(("list[", "str", "function", "tagged-union"))]
    path = [p for i, p in enumerate(path) if not (i and isinstance(path[i - 1], int) and p in ("text", "image_url"))]
    where = ".".join(str(p) for p in path)
    return f"{where}: {deepest['msg']}"


def parse_json(body, limits):
    """JSON body -> (list of parts, combined): parts are Items; combined says they form one input."""
    if not body.strip():
        raise BadInput("the request body is empty: send JSON like {\"input\": \"some text\"}", code="empty_body")
    try:
        request = InputRequest.model_validate(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"the body is not valid JSON: {e}", code="invalid_json") from None
    except ValidationError as e:
        raise BadInput(validation_message(e), code="invalid_request", param="input") from None
    if isinstance(request.input, str):
        return [Item(text=check_text(request.input, limits, "input"))], False
    if not request.input:
        raise BadInput("input is an empty list", param="input")
    if len(request.input) > limits.max_inputs:
        raise BadInput(f"input has {len(request.input)} entries; the limit is {limits.max_inputs}",
                       status=413, param="input", code="too_many_inputs")
    items = []
    for i, part in enumerate(request.input):
        param = f"input[{i}]"
        if isinstance(part, str):
            items.append(Item(text=check_text(part, limits, param)))
        elif isinstance(part, TextPart):
            items.append(Item(text=check_text(part.text, limits, param)))
        else:
            image, data = decode_data_url(part.image_url.url, limits, param)
            items.append(Item(image=image, image_bytes=data))
    return items, not isinstance(request.input[0], str)


async def parse_multipart(request, limits):
    """curl -F image=@x.png -F text=... -> one Item (parts, combined=True)."""
    try:
        form = await request.form(max_files=1, max_fields=len(MULTIPART_FIELDS))
    except BadInput:  # the body limit, raised while the form streams in
        raise
    except Exception as e:  # python-multipart's parse errors and Starlette's limits
        raise BadInput(f"the multipart body could not be parsed: {e}", code="invalid_multipart") from None
    unknown = set(form) - MULTIPART_FIELDS
    if unknown:
        raise BadInput(f"unknown form fields {sorted(unknown)}; send image (a file) and / or text",
                       code="unknown_field")
    item = Item()
    if "text" in form:
        if not isinstance(form["text"], str):
            raise BadInput("text must be a plain form field (-F text=...), not a file", param="text")
        item.text = check_text(form["text"], limits, "text")
    if "image" in form:
        upload = form["image"]
        if isinstance(upload, str):
            raise BadInput("image must be a file upload: -F image=@picture.png", param="image")
        item.image_bytes = await upload.read()
        item.image = decode_image(item.image_bytes, limits)
    if item.text is None and item.image is None:
        raise BadInput("send an image (-F image=@picture.png), a text (-F text=...) or both", code="empty_body")
    return [item], True


async def parse(request, limits):
    """Either content type the API accepts; anything else is 415."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return parse_json(await request.body(), limits)
    if kind == "multipart/form-data":
        return await parse_multipart(request, limits)
    raise BadInput(f"unsupported content type {kind or '(none)'!r}: send application/json or multipart/form-data",
                   status=415, code="unsupported_media_type")


def combine(items):
    """Typed parts form one input (as in OpenAI's API): texts joined, at most one image."""
    images = [i for i in items if i.image is not None]
    if len(images) > 1:
        raise BadInput("one input can hold one image: send a list of requests for more", param="input",
                       code="too_many_images")
    texts = [i.text for i in items if i.text is not None]
    return Item(text="\n".join(texts) if texts else None, image=images[0].image if images else None,
                image_bytes=images[0].image_bytes if images else None)
