"""Week 10: untrusted request bodies -> texts and (still encoded) images, or a 4xx that says why.

`parse(body, content_type, endpoint, limits)` takes the raw bytes and the Content-Type header,
so any front end can use it (the FastAPI app, a Ray Serve deployment, a test). Everything a
client sends is checked before a model sees it and before any pixel is decoded:
- JSON: parsed by pydantic's Rust parser, which refuses invalid UTF-8, lone surrogates
  ("\\ud800"), numbers too big to convert and nesting deeper than its limit with a clean error
  instead of Python's RecursionError / ValueError. What a refusal costs is bounded by the body's
  size: a body holding more JSON values than any valid request is refused before parsing, and lists
  and objects larger than any valid request before validation (a list of a million integers cost
  16 s of CPU to explain). Types are strict (no `true` or `"8"` for an integer) and unknown fields
  are refused, not ignored. Multipart: parsed from the bytes, at most MAX_KEYS fields; an
  unterminated body is refused.
- Texts: length; lists: number of entries.
- Images: data URLs only (the server never fetches a remote URL: no SSRF, and it runs offline),
  valid base64, a format a browser shows, read from the bytes and agreeing with the declared
  type; the pixels and frames each image would decode to, read from its header (a 100-byte PNG
  can claim 50,000 × 50,000 pixels: a decompression bomb), per image and summed per request.
Decoding itself happens later (images.decode), once the service has room for the request.
"""

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

import pydantic_core
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from python_multipart.multipart import MultipartParser, parse_options_header

from stage3_moderation import images
from stage3_moderation.errors import BadInput


@dataclass
class Limits:
    max_body_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096  # per image (per frame of an animation)
    max_aspect_ratio: float = 20.0
    max_text_chars: int = 10_000
    max_inputs: int = 32
    max_frames: int = 64  # per request: a still image is one frame, an animation each of its frames,
    # and in moderation a long image each of its square views (images.views)
    max_request_pixels: int = 4 * 4096 * 4096  # width × height × frames, summed over the request's images


# ---------------------------------------------------------------- the JSON bodies (OpenAI's shapes)
EXAMPLE_IMAGE = (
    "data:image/png;base64,"  # a 16×16 ShapesWorld red cross: for /docs and schemathesis
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAA+klEQVR42u2Qu0oDURiEZ87m7LIhYiQRVMQn0MJLKdjZWQhp"
    "7CxSCPY2vo6VBMTCUgsfQBCUkEpsFuMxJEKy5uzl/FZ2uxJ7v374ZobGRCAlTZOHR0msv7GuFupwDiUoAAwDZPnw7HzQPs1e"
    "XlWtBrIsUKGn4s510u2JtdB60rlKn56rrUNWw0IPP0bv5uj46+7eazaglIw+WZ9fur1RzQbyvMAAEX97U8Cs25Mk8Xe2vLVV"
    "ag2Rwko0JoKv3WDY3z/I3/qLlxfh3q6L49INAJBl1HrupO3G48rKsliLcmhMBAAkgwCkWPvLpz8GACIynWIGFP7If2AWvgHO"
    "mmPUG+9OgwAAAABJRU5ErkJggg=="
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Text = Annotated[str, Field(min_length=1)]  # an empty text has nothing to judge or embed


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class ImageURL(Strict):
    # the pattern is documentation only: read_data_url explains a refusal better than pydantic would
    url: str = Field(
        description="a data URL, data:image/png;base64,... (PNG, JPEG, GIF, WebP or BMP); remote URLs are refused",
        examples=[EXAMPLE_IMAGE],
        json_schema_extra={"pattern": "^data:"},
    )


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]
Input = Union[Text, Annotated[list[Text], Field(min_length=1)], Annotated[list[Part], Field(min_length=1)]]
INPUT_DOC = (
    "a string, a list of strings (one result each), or a list of text / image_url parts; at most "
    "MODERATION_MAX_INPUTS (32) entries of MODERATION_MAX_TEXT_CHARS (10,000) characters"
)
MODEL_DOC = "the served model, as each response's `model` names it; any other name is 404 model_not_found"


EXAMPLE_PARTS = [
    {"type": "text", "text": "a large red cross"},
    {"type": "image_url", "image_url": {"url": EXAMPLE_IMAGE}},
]


class ModerationRequest(Strict):
    """OpenAI's moderation request. Typed parts form one input: their texts joined, at most one image."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"input": "free money at www.example.com"}, {"input": EXAMPLE_PARTS}]}
    )
    input: Input = Field(description=INPUT_DOC)
    model: Optional[str] = Field(None, description=MODEL_DOC)


class EmbeddingRequest(Strict):
    """OpenAI's embedding request; every text and image (part) gets its own vector."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"input": ["a red cross", "a blue circle"]},
                {"input": EXAMPLE_PARTS, "encoding_format": "base64", "dimensions": 16},
            ]
        }
    )
    input: Input = Field(description=INPUT_DOC)
    model: Optional[str] = Field(None, description=MODEL_DOC)
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: the little-endian float32 bytes of each vector, base64-encoded (as OpenAI)"
    )
    dimensions: Optional[int] = Field(
        None,
        ge=1,
        description="keep the first N dimensions and renormalise (as OpenAI's text-embedding-3); at most the model's",
    )
    user: Optional[str] = Field(None, description="an end-user id, accepted as OpenAI does (not stored)")


class CaptionRequest(Strict):
    """BLIP-2 captions, one per image part."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"input": EXAMPLE_PARTS[1:]}]})
    input: Annotated[list[ImagePart], Field(min_length=1)] = Field(description="image_url parts")
    model: Optional[str] = Field(None, description=MODEL_DOC)


# ---------------------------------------------------------------- the multipart bodies (curl -F)
IMAGE_DOC = "the image file: curl -F image=@picture.png (PNG, JPEG, GIF, WebP or BMP)"
TEXT_OR_IMAGE = {"anyOf": [{"required": ["image"]}, {"required": ["text"]}]}


def left_out(schema):
    """A form field is sent or left out; None is not a value a client can send, so no default either."""
    schema.pop("default")


def file_part(schema):
    """A file upload, spelled as OpenAPI 3.1 does (3.0's format: binary), and sent or left out."""
    schema.pop("default", None)
    del schema["format"]
    schema["contentMediaType"] = "application/octet-stream"


class ModerationForm(Strict):
    """An image, a text, or both: one input."""

    model_config = ConfigDict(json_schema_extra=TEXT_OR_IMAGE)
    image: Union[bytes, SkipJsonSchema[None]] = Field(None, description=IMAGE_DOC, json_schema_extra=file_part)
    text: Union[Text, SkipJsonSchema[None]] = Field(None, json_schema_extra=left_out)
    model: Union[str, SkipJsonSchema[None]] = Field(None, description=MODEL_DOC, json_schema_extra=left_out)


def form_integer(value):
    """A form field arrives as text: '8' is the integer 8; anything else ('true', '8.0', ' 8', more
    digits than an int64 holds) is left as it came, for strict validation to refuse."""
    return int(value) if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value) else value


class EmbeddingForm(ModerationForm):
    """An image, a text, or both: a vector for each."""

    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Union[Annotated[int, Field(ge=1), BeforeValidator(form_integer)], SkipJsonSchema[None]] = Field(
        None, json_schema_extra=left_out
    )
    user: Union[str, SkipJsonSchema[None]] = Field(None, json_schema_extra=left_out)


class CaptionForm(Strict):
    image: bytes = Field(description=IMAGE_DOC, json_schema_extra=file_part)
    model: Union[str, SkipJsonSchema[None]] = Field(None, description=MODEL_DOC, json_schema_extra=left_out)


@dataclass(frozen=True)
class Endpoint:
    """How an endpoint reads its body: its JSON and form models, whether typed parts form one
    input, and whether the whole picture is judged (every frame of an animation, a long image in
    square views: moderation) or its first frame as the models read it."""

    json: type
    form: type
    combine_parts: bool
    all_frames: bool


MODERATIONS = Endpoint(ModerationRequest, ModerationForm, combine_parts=True, all_frames=True)
EMBEDDINGS = Endpoint(EmbeddingRequest, EmbeddingForm, combine_parts=False, all_frames=False)
CAPTIONS = Endpoint(CaptionRequest, CaptionForm, combine_parts=False, all_frames=False)
REQUEST_MODELS = (ModerationRequest, EmbeddingRequest, CaptionRequest, ModerationForm, EmbeddingForm, CaptionForm)


# ---------------------------------------------------------------- what parsing yields
@dataclass
class Upload:
    """An image as sent: its bytes and what its header says (nothing decoded yet)."""

    data: bytes
    probe: images.Probe
    param: str


@dataclass
class Item:
    """One thing to judge: a text, an image, or both; frames are filled in by decoding."""

    text: Optional[str] = None
    image: Optional[Upload] = None
    frames: list = field(default_factory=list)


@dataclass
class Parsed:
    items: list
    request: BaseModel  # the validated fields: model, encoding_format, dimensions, user

    @property
    def pixels(self):
        return sum(item.image.probe.pixels for item in self.items if item.image)


# ---------------------------------------------------------------- checks
def check_text(text, limits, param):
    if len(text) > limits.max_text_chars:
        raise BadInput(
            f"{param} is {len(text):,} characters; the limit is {limits.max_text_chars:,}",
            status=413,
            param=param,
            code="text_too_long",
        )
    return text


MAX_KEYS = 16  # keys of a JSON object, fields of a form: the API's largest (an embedding request) has 6
JSON_STRUCTURE = 4096  # quotes, commas, colons and brackets of a valid request besides its texts (at most ~700)


def check_json_size(body, limits):
    """Refuse, before parsing, a body that holds more JSON values than any valid request: parsing
    makes a Python object of each with the GIL held (2.8 million `[]` in 8 MiB: 0.6 s). Every value
    and key needs a quote, comma, colon or bracket; texts may be made of these characters too, so
    the limit allows for every text at its longest. One pass over the bytes, a few ms for 8 MiB."""
    found = len(body) - len(body.translate(None, b'",:[{'))
    allowed = limits.max_inputs * limits.max_text_chars + JSON_STRUCTURE
    if found > allowed:
        raise BadInput(
            f"the body holds {found:,} JSON quotes, commas, colons and brackets: more than the longest texts "
            f"and the API's own structure ({allowed:,})",
            status=413,
            code="body_too_complex",
        )


def parse_json(body):
    try:
        return pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as e:  # not JSON, not UTF-8, a lone surrogate, nested deeper than the parser's limit
        raise BadInput(f"the body is not valid JSON: {e}", code="invalid_json") from None


def check_shape(value, limits, where=None):
    """Refuse, before validating, a list longer than max_inputs or an object with more than MAX_KEYS
    keys anywhere in the body: no valid request holds one, and pydantic reports errors per entry
    and per key (a list of a million integers: two million errors). What validation may report is
    then bounded (a few per entry and key). `input` over its limit is a 413, as a request the
    schema allows; a list anywhere else, or an object that large, breaks the schema: 400."""
    if isinstance(value, list):
        if len(value) > limits.max_inputs:
            raise BadInput(
                f"{where or 'the body'} has {len(value):,} entries; the limit is {limits.max_inputs}",
                status=413 if where == "input" else 400,
                param=where,
                code="too_many_inputs" if where == "input" else "too_many_entries",
            )
        for i, entry in enumerate(value):
            check_shape(entry, limits, f"{where or 'body'}[{i}]")
    elif isinstance(value, dict):
        if len(value) > MAX_KEYS:
            raise BadInput(
                f"{where or 'the body'} has {len(value):,} keys; no object of this API has more than {MAX_KEYS}",
                param=where,
                code="too_many_keys",
            )
        for key, entry in value.items():
            check_shape(entry, limits, key if where is None else f"{where}.{key}")


def deepest(problems):
    """The complaint that says most: the deepest (a union of shapes reports one per shape it tried;
    the deepest is the shape the client meant), and at one depth a broken constraint before a wrong
    type ("" is a string, too short, rather than not a list; `true` is not an integer, rather than not None)."""

    def says(e):
        wrong_type = e["type"].endswith("_type") or e["type"] == "none_required"
        return len(e["loc"]), not wrong_type, "union" in str(e["loc"])

    return max(problems, key=says)


def validation_message(problem, model):
    """One line from pydantic's complaint, e.g. 'input.0.image_url: Field required'."""
    loc = problem["loc"]
    if not loc:
        return 'the body must be a JSON object like {"input": "some text"}'
    if problem["type"] == "extra_forbidden":
        return f"unknown field {loc[-1]!r}: this endpoint takes {', '.join(model.model_fields)}"
    if (
        loc[0] == "input"
        and not any(isinstance(part, int) for part in loc)
        and problem["type"] not in ("missing", "too_short", "string_too_short")
    ):
        return (
            'input must be a string, a list of strings, or a list of {"type": "text", ...} / '
            f'{{"type": "image_url", ...}} parts; got {type(problem["input"]).__name__}'
        )
    # drop pydantic's names for the union branches and the part's tag: input.0.image_url.url, not
    # input.list[tagged-union[...]].0.image_url.image_url.url
    path = [p for p in loc if not str(p).startswith(("list[", "str", "constrained-str", "function", "tagged-union"))]
    path = [p for i, p in enumerate(path) if not (i and isinstance(path[i - 1], int) and p in ("text", "image_url"))]
    return f"{'.'.join(str(p) for p in path)}: {problem['msg']}"


def validate(model, value):
    """model.model_validate(value), or a BadInput naming the field at fault. pydantic's list of errors
    is built once; check_shape has bounded its length."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        problem = deepest(e.errors(include_url=False))
        param = str(problem["loc"][0]) if problem["loc"] else None
        raise BadInput(validation_message(problem, model), code="invalid_request", param=param) from None


def read_data_url(url, param):
    """data:image/png;base64,<payload> -> (bytes, declared MIME type); anything else is refused with the reason."""
    if not url.startswith("data:"):
        raise BadInput(
            "image_url must be a data URL (data:image/png;base64,...): the server does not fetch remote URLs",
            param=param,
            code="invalid_image_url",
        )
    header, comma, payload = url.partition(",")
    declared, *options = header.removeprefix("data:").split(";")
    if not comma or not options or options[-1] != "base64":
        raise BadInput(
            "a data URL must look like data:image/png;base64,<base64 bytes>", param=param, code="invalid_image_url"
        )
    if declared not in images.FORMATS.values():
        raise BadInput(
            f"a data URL of type {declared or '(none)'!r} is not an image a browser shows: use "
            f"{', '.join(images.FORMATS.values())}",
            param=param,
            code="unsupported_image_type",
        )
    try:
        return base64.b64decode(payload, validate=True), declared
    except (binascii.Error, ValueError):
        raise BadInput("the data URL's payload is not valid base64", param=param, code="invalid_base64") from None


# ---------------------------------------------------------------- bodies
def from_json(body, endpoint, limits):
    """JSON body -> (the validated request, its Items)."""
    if not body.strip():
        raise BadInput('the request body is empty: send JSON like {"input": "some text"}', code="empty_body")
    check_json_size(body, limits)
    value = parse_json(body)
    check_shape(value, limits)  # input's length among the rest
    request = validate(endpoint.json, value)
    entries = [request.input] if isinstance(request.input, str) else request.input
    items = []
    for i, entry in enumerate(entries):
        param = "input" if isinstance(request.input, str) else f"input[{i}]"
        if isinstance(entry, (str, TextPart)):
            items.append(Item(text=check_text(entry if isinstance(entry, str) else entry.text, limits, param)))
        else:
            data, declared = read_data_url(entry.image_url.url, param)
            items.append(
                Item(image=Upload(data, images.probe(data, limits, param, declared, endpoint.all_frames), param))
            )
    if endpoint.combine_parts and not isinstance(entries[0], str):
        items = [combine(items)]
    return request, items


@dataclass
class FormPart:
    name: str
    filename: Optional[str]
    content_type: Optional[str]
    data: bytes


def read_multipart(body, content_type):
    """multipart/form-data bytes -> FormParts, with python-multipart's parser (no temporary files:
    the body is already in memory and bounded by max_body_bytes). Refused at the part past MAX_KEYS,
    while parsing: 130,000 one-byte fields took 2 s to parse and then refuse."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadInput("multipart/form-data needs a boundary in its Content-Type", code="invalid_multipart")
    parts, header, ended = [], {}, []

    def begin_part():
        if len(parts) == MAX_KEYS:
            raise BadInput(
                f"the form has more than {MAX_KEYS} fields; no endpoint takes that many", code="too_many_fields"
            )
        parts.append(({}, bytearray()))

    callbacks = {
        "on_part_begin": begin_part,
        "on_header_field": lambda data, start, end: header.update(field=header.get("field", b"") + data[start:end]),
        "on_header_value": lambda data, start, end: header.update(value=header.get("value", b"") + data[start:end]),
        "on_header_end": lambda: parts[-1][0].update({header.pop("field", b"").lower(): header.pop("value", b"")}),
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
        "on_end": lambda: ended.append(True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except BadInput:
        raise
    except Exception as e:  # python-multipart's parse errors
        raise BadInput(f"the multipart body could not be parsed: {e}", code="invalid_multipart") from None
    if not ended:
        raise BadInput("the multipart body ended before its closing boundary", code="invalid_multipart")
    form = []
    for headers, data in parts:
        kind, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        if kind != b"form-data" or b"name" not in disposition:
            raise BadInput(
                "every multipart part needs Content-Disposition: form-data; name=...", code="invalid_multipart"
            )
        filename = disposition.get(b"filename")
        declared = (
            parse_options_header(headers[b"content-type"])[0].decode("latin-1") if b"content-type" in headers else None
        )
        form.append(
            FormPart(
                disposition[b"name"].decode("latin-1"), filename and filename.decode("latin-1"), declared, bytes(data)
            )
        )
    return form


def from_multipart(body, content_type, endpoint, limits):
    """curl -F image=@x.png -F text=... -> (the validated request, one Item)."""
    values, upload = {}, None
    for part in read_multipart(body, content_type):
        if part.name in values:
            raise BadInput(
                f"the form field {part.name!r} came twice: send one of each", code="invalid_multipart", param=part.name
            )
        if part.name == "image":
            if part.filename is None:
                raise BadInput("image must be a file upload: -F image=@picture.png", param="image")
            upload = part
            values["image"] = part.data
        elif part.filename is not None:
            raise BadInput(f"{part.name} must be a plain form field (-F {part.name}=...), not a file", param=part.name)
        else:
            try:
                values[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"the form field {part.name!r} is not valid UTF-8", param=part.name) from None
    request = validate(endpoint.form, values)
    if "image" not in values and "text" not in values:
        raise BadInput("send an image (-F image=@picture.png), a text (-F text=...) or both", code="empty_body")
    item = Item(text=check_text(values["text"], limits, "text") if "text" in values else None)
    if upload:
        item.image = Upload(
            upload.data, images.probe(upload.data, limits, "image", upload.content_type, endpoint.all_frames), "image"
        )
    return request, [item]


def parse(body, content_type, endpoint, limits):
    """Either content type the API accepts -> Parsed; anything else is 415. The request's cost is
    checked here, from the headers: frames and decoded pixels summed over its images."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        request, items = from_json(body, endpoint, limits)
    elif kind == "multipart/form-data":
        request, items = from_multipart(body, content_type, endpoint, limits)
    else:
        raise BadInput(
            f"unsupported content type {kind or '(none)'!r}: send application/json or multipart/form-data",
            status=415,
            code="unsupported_media_type",
        )
    parsed = Parsed(items, request)
    frames = sum(item.image.probe.frames * item.image.probe.views for item in items if item.image)
    if frames > limits.max_frames:
        raise BadInput(
            f"the request's images are judged in {frames} frames (an animation counts each, a long image "
            f"each square view it is judged in: 5 for 3:1); the limit is {limits.max_frames}",
            status=413,
            param="input",
            code="too_many_frames",
        )
    if parsed.pixels > limits.max_request_pixels:
        raise BadInput(
            f"the request's images decode to {parsed.pixels:,} pixels (width × height × frames, "
            f"summed); the limit is {limits.max_request_pixels:,}",
            status=413,
            param="input",
            code="request_too_large",
        )
    return parsed


def combine(items):
    """Typed parts form one input (as in OpenAI's API): texts joined, at most one image."""
    uploads = [i.image for i in items if i.image is not None]
    if len(uploads) > 1:
        raise BadInput(
            "one input can hold one image: send a list of requests for more", param="input", code="too_many_images"
        )
    texts = [i.text for i in items if i.text is not None]
    return Item(text="\n".join(texts) if texts else None, image=uploads[0] if uploads else None)
