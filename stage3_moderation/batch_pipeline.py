"""Week 11: week 10's moderation, a whole batch of requests at a time, for the servers that form the
batches themselves (LitServe, Triton through PyTriton: docs/week11.md, "the batchers people deploy").

    body ──parse, decode (inputs.py, images.py)──> [(text, frames)] ─┐  one request at a time
                                                                     ├─ a batch of requests:
    one CLIP image call, one BLIP-2 call, one CLIP text call <───────┘  one call per model stage
        ──> service.judge, per item ──> the /v1/moderations answer of each request

The same engines (week 9's, MODERATION_ENGINE), policy, limits and judging as week 10's service, so
the answers are the same; what differs is who batches. Week 10 keeps a batcher per stage (an image
and its text's vector can ride in different batches, of different sizes); a server that batches
whole requests runs every stage on the batch it was given. No cache: the benchmark runs without.
"""

import uuid

from stage3_moderation import endpoints, engines, export_onnx, images, inputs
from stage3_moderation import policy as policies
from stage3_moderation.app import check_questions
from stage3_moderation.service import judge
from stage3_moderation.settings import Settings


class Pipeline:
    def __init__(self, settings=None):
        """settings: week 10's (default: the MODERATION_* environment). Loads and warms the engine."""
        self.settings = s = settings or Settings.from_environment()
        self.policy = policies.load(s.policy)
        check_questions(self.policy, s.blip2)
        if s.engine.startswith("onnx"):
            export_onnx.ensure_exported(s.clip, s.blip2, s.onnx_dir)
        self.engine = engines.load(s.engine, s.clip, s.blip2, s.onnx_dir, s.threads)
        self.engine.warm_up(max(o.max_batch_size for o in s.options().batching.values()), self.policy.questions)
        self.limits, self.model = s.limits(), f"{self.policy.name}/{s.clip}"
        concepts = self.policy.concepts
        self.concepts = dict(zip(concepts, self.engine.embed_texts(concepts))) if concepts else {}
        engines.freeze_heap()  # as week 10's start-up does: the comparison is of batching, not of collectors

    def parse(self, body, content_type):
        """A /v1/moderations body -> its items [(text, frames)]; errors.BadInput as week 10 refuses it."""
        parsed = inputs.parse(body, content_type, inputs.MODERATIONS, self.limits)
        endpoints.check_model(parsed.request.model, self.model)
        return [
            (item.text, images.decode(item.image.data, self.limits, item.image.param) if item.image else [])
            for item in parsed.items
        ]

    def moderate(self, requests):
        """The /v1/moderations answer of each parsed request: every image view of the batch in one
        CLIP call and one BLIP-2 call, every text beside an image in one CLIP text call."""
        judged = [(text, frames) for items in requests for text, frames in items if frames]
        views = [view.image for _, frames in judged for frame in frames for view in frame.views or [frame]]
        texts = [text for text, _ in judged if text]
        vectors = iter(self.engine.embed_images(views) if views else [])
        readings = iter(self.engine.read_images(views, self.policy.questions) if views else [])
        text_vectors = iter(self.engine.embed_texts(texts) if texts else [])
        answers = []
        for items in requests:
            results = []
            for text, frames in items:
                if not frames:
                    results.append(policies.decide(self.policy, text))
                    continue
                outputs = [[(next(vectors), next(readings)) for _ in frame.views or [frame]] for frame in frames]
                results.append(judge(self.policy, self.concepts, text, outputs, next(text_vectors) if text else None))
            answers.append({"id": f"modr-{uuid.uuid4().hex}", "model": self.model, "results": results})
        return answers
