"""Week 10: the three endpoints, framework-free: (body bytes, Content-Type) in, an OpenAI-shaped dict out.

    parse (a worker thread for large bodies) -> model name -> pixel budget -> decode (worker threads)
      -> moderator (cache, batchers, policy) -> the response

The FastAPI app (app.py) adds what belongs to HTTP: authentication, the watch for clients that
go away, error responses. Another front end (a Ray Serve deployment) calls the same methods;
a cancelled call leaves nothing behind (its queued items are dropped, its pixels released).
"""

import asyncio
import base64
import uuid
from contextlib import contextmanager
from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel

from stage3_moderation import images, inputs, timing
from stage3_moderation.batching import all_or_none
from stage3_moderation.errors import BadInput

PARSE_ON_LOOP_BYTES = 64 * 1024  # smaller bodies parse in well under a millisecond: a thread hop costs more


def check_model(requested, served):
    """OpenAI's rule: a model that is not served is 404 model_not_found; leaving it out is fine."""
    if requested is not None and requested != served:
        raise BadInput(
            f"the model {requested!r} does not exist here: this endpoint serves {served!r} (or leave model out)",
            status=404,
            param="model",
            code="model_not_found",
        )


def encode(vector, dimensions=None, encoding_format="float"):
    """OpenAI's `dimensions` and `encoding_format`: keep the first d values and renormalise,
    v[:d] / |v[:d]| (text-embedding-3's shortening), then a list of floats, or the base64 of
    the little-endian float32 bytes."""
    if dimensions:
        vector = vector[:dimensions] / max(float(np.linalg.norm(vector[:dimensions])), 1e-12)
    vector = np.asarray(vector, "<f4")
    return base64.b64encode(vector.tobytes()).decode() if encoding_format == "base64" else vector.tolist()


class Api:
    def __init__(self, moderator, limits, budget, decoder, names):
        """names: the served model of each endpoint, {"moderations": ..., "embeddings": ..., "captions": ...};
        decoder: the thread pool that parses large bodies and decodes images. Each endpoint takes the
        request's tenant too: whose cache entries it may use (service.Moderator._cached); and its
        client: whose share of the pixel budget it takes (batching.PixelBudget)."""
        self.moderator, self.limits, self.budget, self.decoder, self.names = moderator, limits, budget, decoder, names

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decoder, fn, *args)

    async def _parse(self, body, content_type, endpoint, name):
        args = (body, content_type, endpoint, self.limits)
        with timing.stage("parse"):
            parsed = (
                inputs.parse(*args) if len(body) <= PARSE_ON_LOOP_BYTES else await self._in_pool(inputs.parse, *args)
            )
        check_model(parsed.request.model, self.names[name])
        return parsed

    async def _decode(self, parsed, endpoint):
        """Each image's frames as displayed, decoded in the pool (a cancelled request drops the
        decodes that have not started)."""
        items = [item for item in parsed.items if item.image]
        with timing.stage("decode"):
            decoded = await all_or_none(
                *(
                    self._in_pool(images.decode, item.image.data, self.limits, item.image.param, endpoint.all_frames)
                    for item in items
                )
            )
        for item, frames in zip(items, decoded):
            item.frames = frames

    @contextmanager
    def _on_its_way(self):
        """The request counts as on its way to the batchers (Moderator.on_the_way: a batch waits for
        company only while some is) from its parse until it calls the function this yields, or fails."""
        moderator, waiting = self.moderator, True
        moderator.on_the_way += 1

        def arrived():
            nonlocal waiting
            if waiting:
                waiting = False
                moderator.on_the_way -= 1

        try:
            yield arrived
        finally:
            arrived()

    async def moderations(self, body, content_type, tenant, client):
        with self._on_its_way() as arrived:
            parsed = await self._parse(body, content_type, inputs.MODERATIONS, "moderations")
            with self.budget.hold(parsed.pixels, client):
                await self._decode(parsed, inputs.MODERATIONS)
                arrived()
                results = await all_or_none(
                    *(self.moderator.moderate(item.text, item.frames, tenant) for item in parsed.items)
                )
        return {"id": f"modr-{uuid.uuid4().hex}", "model": self.names["moderations"], "results": results}

    async def embeddings(self, body, content_type, tenant, client):
        with self._on_its_way() as arrived:
            parsed = await self._parse(body, content_type, inputs.EMBEDDINGS, "embeddings")
            request = parsed.request
            if request.dimensions and request.dimensions > self.moderator.dimension:
                raise BadInput(
                    f"dimensions is {request.dimensions}; the model's vectors have {self.moderator.dimension}",
                    param="dimensions",
                    code="invalid_dimensions",
                )
            # each text and each image gets a vector; an animation is embedded by its first frame
            parts = [(kind, i) for i in parsed.items for kind in ("image", "text") if getattr(i, kind) is not None]
            with self.budget.hold(parsed.pixels, client):
                await self._decode(parsed, inputs.EMBEDDINGS)
                arrived()
                vectors = await all_or_none(
                    *(
                        self.moderator.embed_image(item.frames[0], tenant)
                        if kind == "image"
                        else self.moderator.embed_text(item.text)
                        for kind, item in parts
                    )
                )
        tokens = sum(self.moderator.count_tokens([item.text for kind, item in parts if kind == "text"]))
        return {
            "object": "list",
            "model": self.names["embeddings"],
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "input_type": kind,
                    "embedding": encode(v, request.dimensions, request.encoding_format),
                }
                for i, ((kind, _), v) in enumerate(zip(parts, vectors))
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def captions(self, body, content_type, tenant, client):
        """Greedy BLIP-2 captions, one per image (an animation: its first frame). The moderation's own
        Reading: a later moderation of the same image finds it in the cache."""
        with self._on_its_way() as arrived:
            parsed = await self._parse(body, content_type, inputs.CAPTIONS, "captions")
            with self.budget.hold(parsed.pixels, client):
                await self._decode(parsed, inputs.CAPTIONS)
                arrived()
                readings = await all_or_none(*(self.moderator.read(item.frames[0], tenant) for item in parsed.items))
        return {
            "object": "list",
            "model": self.names["captions"],
            "data": [{"index": i, "caption": r.caption} for i, r in enumerate(readings)],
        }


# ---------------------------------------------------------------- the responses, for the OpenAPI document
class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[Literal["text", "image"]]]
    caption: Optional[str]
    image_text_similarity: Optional[float]
    mismatch: bool


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    input_type: Literal["text", "image"]
    embedding: Union[list[float], str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: Usage


class Caption(BaseModel):
    index: int
    caption: str


class CaptionResponse(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Caption]
