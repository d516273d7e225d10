"""Week 10: the moderation pipeline behind the API: cache -> batcher -> engine -> policy.

    image ──sha256──> cache? ──no──> clip_image batcher ──> unit vector ──> concept scores ─┐
          └─sha256──> cache? ──no──> caption batcher    ──> caption ──> text rules ─────────┤
    text ──────────────────────────> clip_text batcher  ──> cos(image, text): mismatch ────┼─> policy.decide
         └─────────────────────────────────────────────────> text rules ───────────────────┘

One batcher per model stage, because the stages cost very different amounts (a caption is ~40
decoder steps, an embedding one pass) and batch best at different sizes.
"""
import asyncio
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stage3_moderation import batching, policy as policies
from stage3_moderation.cache import LRUCache, content_key

STAGES = ("clip_image", "clip_text", "caption")


@dataclass
class Options:
    batching: dict = field(default_factory=lambda: {s: batching.Settings() for s in STAGES})
    cache_entries: int = 4096
    cache_bytes: int = 64 * 2**20


class Metrics:
    """Prometheus series, in a registry of their own (one per app, so tests do not collide)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("moderation_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("moderation_request_seconds", "request latency", ["endpoint"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("moderation_batch_size", "items per model call", ["stage"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.batch_seconds = Histogram("moderation_batch_seconds", "model call time", ["stage"], registry=r,
                                       buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.queue_depth = Gauge("moderation_queue_depth", "items waiting per stage", ["stage"], registry=r)
        self.cache = Counter("moderation_cache", "cache lookups", ["kind", "result"], registry=r)

    def on_batch(self, stage, size, seconds):
        self.batch_size.labels(stage).observe(size)
        self.batch_seconds.labels(stage).observe(seconds)


class Moderator:
    def __init__(self, engine, policy, options=None, metrics=None):
        self.engine, self.policy, self.options = engine, policy, options or Options()
        options = self.options
        self.metrics = metrics or Metrics()
        self.cache = LRUCache(options.cache_entries, options.cache_bytes)
        fns = {"clip_image": lambda images: list(engine.embed_images(images)),
               "clip_text": lambda texts: list(engine.embed_texts(texts)),
               "caption": engine.caption_images}
        self.batchers = {s: batching.Batcher(s, fns[s], options.batching[s], self.metrics.on_batch) for s in STAGES}
        for stage, batcher in self.batchers.items():
            self.metrics.queue_depth.labels(stage).set_function(lambda b=batcher: b.depth)
        self.concepts = dict(zip(policy.concepts, engine.embed_texts(policy.concepts))) if policy.concepts else {}

    async def stop(self):
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))

    async def _cached(self, stage, item):
        """The stage's output for an image, from the cache by content hash, else from its batcher."""
        key = content_key(stage, item.image_bytes)
        value = self.cache.get(key)
        self.metrics.cache.labels(stage, "hit" if value is not None else "miss").inc()
        if value is None:
            value = await self.batchers[stage].submit(item.image)
            self.cache.put(key, value)
        return value

    async def embed_image(self, item):
        return await self._cached("clip_image", item)

    async def caption(self, item):
        return await self._cached("caption", item)

    async def embed_text(self, text):
        return await self.batchers["clip_text"].submit(text)

    async def moderate(self, item):
        """One result in OpenAI's shape (+ caption, image_text_similarity, mismatch)."""
        scores = caption = similarity = None
        if item.image is not None:
            jobs = [self.embed_image(item), self.caption(item)]
            if item.text:
                jobs.append(self.embed_text(item.text))
            vector, caption, *text_vector = await asyncio.gather(*jobs)
            scores = {c: float(np.dot(vector, v)) for c, v in self.concepts.items()}
            if text_vector:
                similarity = float(np.dot(vector, text_vector[0]))
        return policies.decide(self.policy, item.text, scores, caption, similarity)
