"""Week 10: the moderation pipeline behind the API: cache -> batcher -> engine -> policy.

    frame ──key──> cache? ──no──> clip_image batcher ──> unit vector ──> concept scores ─┐
          └─key──> cache? ──no──> caption batcher    ──> caption ──> text rules ─────────┤
                                                      └─> p(yes) to each question ───────┤
    text ─────────────────────────> clip_text batcher  ──> cos(frame, text): mismatch ───┼─> policy.decide
         └──────────────────────────────────────────────────> text rules ───────────────┘

An image is judged frame by frame (a still image is one frame; images.py decodes them as the
viewer sees them), a long frame in square views along it, and its worst view decides. One batcher
per model stage, because the stages cost very different amounts (a caption is ~40 decoder steps,
an embedding one pass) and batch best at different sizes. The caption stage also answers the
policy's questions (engines.read_images): the same image queries, one more prefill per question.
"""

import asyncio
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stage3_moderation import batching, timing
from stage3_moderation import policy as policies
from stage3_moderation.batching import all_or_none
from stage3_moderation.cache import LRUCache

STAGES = ("clip_image", "clip_text", "caption")


@dataclass
class Options:
    batching: dict = field(default_factory=lambda: {s: batching.Settings() for s in STAGES})
    cache_entries: int = 4096
    cache_bytes: int = 64 * 2**20
    # Model calls running at once, over all stages (a batch waits for one before it closes, so it
    # grows meanwhile: batching.py); None: no limit (the Ray Serve ingress, whose calls run in
    # replicas elsewhere, unless told they share its cores). Past what the cores can run, a call only
    # time-slices them with the others, and every batch finishes later: settings.py sets cores // threads.
    model_calls: Optional[int] = None


class Metrics:
    """Prometheus series, in a registry of their own (one per app, so tests do not collide)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("moderation_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "moderation_request_seconds",
            "request latency",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_size = Histogram(
            "moderation_batch_size", "items per model call", ["stage"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.batch_seconds = Histogram(
            "moderation_batch_seconds",
            "model call time",
            ["stage"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        fine = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.stage_seconds = Histogram(
            "moderation_stage_seconds",
            "a request's time per stage (timing.py: they add up to the request's time)",
            ["stage"],
            registry=r,
            buckets=fine,
        )
        self.queue_seconds = Histogram(
            "moderation_queue_seconds",
            "an item's wait in a batcher before its batch ran",
            ["stage"],
            registry=r,
            buckets=fine,
        )
        self.queue_depth = Gauge("moderation_queue_depth", "items waiting per stage", ["stage"], registry=r)
        self.dropped = Counter(
            "moderation_dropped_items",
            "queued items whose request was cancelled, refused or timed out before their batch: removed uncomputed",
            ["stage"],
            registry=r,
        )
        self.disconnects = Counter(
            "moderation_client_disconnects",
            "requests whose client went away before the answer: their work was cancelled",
            registry=r,
        )
        self.pixels_in_flight = Gauge(
            "moderation_pixels_in_flight", "decoded image pixels held by running requests", registry=r
        )
        self.cache = Counter("moderation_cache", "cache lookups", ["kind", "result"], registry=r)

    def on_batch(self, stage, size, seconds):
        self.batch_size.labels(stage).observe(size)
        self.batch_seconds.labels(stage).observe(seconds)

    def on_drop(self, stage):
        self.dropped.labels(stage).inc()

    def on_item(self, stage, queue_seconds):
        self.queue_seconds.labels(stage).observe(queue_seconds)

    def on_request(self, breakdown):
        for stage, seconds in breakdown.items():
            self.stage_seconds.labels(stage).observe(seconds)


class Moderator:
    def __init__(self, engine, policy, options=None, metrics=None):
        """engine: the models, which embed the policy's concepts once (start) and count tokens (its
        CLIP tokenizer); one batcher per stage over it. In week 10 the engine is in this process; the Ray
        Serve ingress (ray_app.py) passes one whose calls go to its model deployments, a batch a call."""
        self.engine, self.policy, self.options = engine, policy, options or Options()
        options = self.options
        self.metrics = metrics or Metrics()
        self.cache = LRUCache(options.cache_entries, options.cache_bytes)
        # requests read and being parsed and decoded (endpoints.Api counts them): their items are on their way
        self.on_the_way = 0
        slots = asyncio.Semaphore(options.model_calls) if options.model_calls else None
        # an engine's methods run in worker threads, or on the event loop when they are coroutines
        # (ray_app.RemoteEngine: the models are elsewhere, and the loop only waits for them)
        fns = {
            "clip_image": engine.embed_images,
            "clip_text": engine.embed_texts,
            "caption": partial(engine.read_images, questions=policy.questions),
        }
        m, coming = self.metrics, lambda: self.on_the_way
        self.batchers = {
            s: batching.Batcher(s, fns[s], options.batching[s], m.on_batch, m.on_drop, m.on_item, slots, coming)
            for s in STAGES
        }
        for stage, batcher in self.batchers.items():
            self.metrics.queue_depth.labels(stage).set_function(lambda b=batcher: b.depth)
        self.concepts, self.dimension = {}, None  # start() embeds them

    async def start(self):
        """Before the first request: the policy's concepts embedded once, in one model call of the
        text stage, and the size of an embedding."""
        embed = self.batchers["clip_text"].model_call
        if self.policy.concepts:
            self.concepts = dict(zip(self.policy.concepts, await embed(self.policy.concepts)))
        self.dimension = len((await embed(["a"]))[0])

    async def stop(self):
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))

    async def _cached(self, stage, frame, tenant):
        """The stage's output for a frame, from the cache by its pixels' hash, else from its batcher.
        tenant (app.py: which API key sent the request) is part of the key: a hit's answer comes
        sooner, with no queue or compute time, so a cache shared by tenants would tell one of them
        whether another had sent the same picture."""
        key = (tenant, stage, frame.key)
        value = self.cache.get(key)
        self.metrics.cache.labels(stage, "hit" if value is not None else "miss").inc()
        if value is None:
            value = await self.batchers[stage].submit(frame.image)
            self.cache.put(key, value)
        return value

    async def embed_image(self, frame, tenant):
        return await self._cached("clip_image", frame, tenant)

    async def read(self, frame, tenant):
        """BLIP-2's Reading of a frame: its caption and p(yes) to each of the policy's questions."""
        return await self._cached("caption", frame, tenant)

    async def embed_text(self, text):
        return await self.batchers["clip_text"].submit(text)

    def count_tokens(self, texts):
        """CLIP tokens per text, as the model reads them (truncated to its context): OpenAI's usage."""
        if not texts:
            return []
        return [len(ids) for ids in self.engine.clip_processor.tokenizer(list(texts), truncation=True).input_ids]

    async def moderate(self, text, frames, tenant):
        """One result in OpenAI's shape (+ caption, image_text_similarity, mismatch): the text, and
        every frame of the image with it, each in its square views; the worst view decides.
        tenant: whose cache entries it may use."""
        if not frames:
            with timing.stage("policy"):
                return policies.decide(self.policy, text)
        # each frame in its square views (images.py: a long frame's centre crop alone left the rest unjudged)
        jobs = [
            all_or_none(*(all_or_none(self.embed_image(v, tenant), self.read(v, tenant)) for v in f.views or [f]))
            for f in frames
        ]
        if text:
            jobs.append(self.embed_text(text))
        outputs = await all_or_none(*jobs)
        with timing.stage("policy"):
            text_vector = outputs.pop() if text else None
            return judge(self.policy, self.concepts, text, outputs, text_vector)


def judge(policy, concepts, text, frames, text_vector=None):
    """The policy's result for a text and an image's frames, each frame a list of its views'
    (unit vector, Reading); concepts: {concept: unit vector}. The worst view decides."""
    results = []
    for views in frames:
        # the text fits a frame when it fits some part of it: the best view's cosine, not the worst
        similarity = None if text_vector is None else max(float(np.dot(v, text_vector)) for v, _ in views)
        for vector, reading in views:
            scores = {c: float(np.dot(vector, v)) for c, v in concepts.items()}
            answers = dict(zip(policy.questions, reading.answers))
            results.append(policies.decide(policy, text, scores, reading.caption, similarity, answers))
    return policies.worst(results)
