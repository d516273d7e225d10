"""Week 10: the moderation API (FastAPI). Run it with `make serve`, or

    uvicorn stage3_moderation.app:app --host 127.0.0.1 --port 8000

    POST /v1/moderations   OpenAI's request and response shape, + caption, image_text_similarity, mismatch
    POST /v1/embeddings    CLIP vectors for texts and images
    POST /v1/captions      BLIP-2 captions for images
    GET  /healthz          the process is up        GET /readyz   models loaded and warmed up
    GET  /metrics          Prometheus text          GET /docs     OpenAPI docs

Bodies are JSON ({"input": ...}) or multipart (curl -F image=@x.png -F text=...). Configuration
comes from environment variables (see `Config.from_env`); MODERATION_API_KEYS=key1,key2 turns
on Bearer authentication for the /v1 endpoints. Models load in the background at start-up
(exporting ONNX first if the export is missing), so /healthz answers at once and /readyz tells a
load balancer when to send traffic.
"""
import asyncio
import hmac
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from curriculum.cli import UserError
from stage3_moderation import batching, engines, inputs, policy as policies
from stage3_moderation.inputs import BadInput, InputRequest, Limits
from stage3_moderation.service import STAGES, Metrics, Moderator, Options

API_PATHS = ("/v1/moderations", "/v1/embeddings", "/v1/captions")
log = logging.getLogger("stage3_moderation")
if not log.handlers:  # uvicorn configures only its own loggers: give ours the same look
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)


def _env(name, default, kind=str):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a valid {kind.__name__}") from None


@dataclass
class Config:
    engine: str = engines.DEFAULT_ENGINE
    clip: str = "tiny"
    blip2: str = "tiny"
    policy: str = str(policies.DEFAULT_POLICY)
    onnx_dir: str = None  # default: outputs/onnx/<models>, exported at start-up if missing
    # One thread per model call: the three stages already run side by side on their own threads,
    # so more would oversubscribe the cores (measured: 1 and 2 are within noise on 2 cores).
    threads: int = 1
    api_keys: tuple = ()
    options: Options = field(default_factory=Options)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls):
        """MODERATION_* variables; batching is per stage, e.g. MODERATION_CAPTION_MAX_BATCH_SIZE."""
        d = Options()
        batching_settings = {}
        for stage in STAGES:
            prefix, default = f"MODERATION_{stage.upper()}_", d.batching[stage]
            batching_settings[stage] = batching.Settings(
                max_batch_size=_env(prefix + "MAX_BATCH_SIZE", _env("MODERATION_MAX_BATCH_SIZE", default.max_batch_size, int), int),
                max_wait_ms=_env(prefix + "MAX_WAIT_MS", _env("MODERATION_MAX_WAIT_MS", default.max_wait_ms, float), float),
                max_queue=_env("MODERATION_MAX_QUEUE", default.max_queue, int),
                timeout_s=_env("MODERATION_TIMEOUT_S", default.timeout_s, float))
        keys = tuple(k.strip() for k in _env("MODERATION_API_KEYS", "").split(",") if k.strip())
        return cls(engine=_env("MODERATION_ENGINE", cls.engine), clip=_env("MODERATION_CLIP", cls.clip),
                   blip2=_env("MODERATION_BLIP2", cls.blip2), policy=_env("MODERATION_POLICY", cls.policy),
                   onnx_dir=_env("MODERATION_ONNX_DIR", None), threads=_env("MODERATION_THREADS", cls.threads, int),
                   api_keys=keys,
                   options=Options(batching_settings, cache_entries=_env("MODERATION_CACHE_ENTRIES", d.cache_entries, int)),
                   limits=Limits(max_body_bytes=_env("MODERATION_MAX_BODY_BYTES", Limits.max_body_bytes, int)))


def error(status, message, code, param=None, headers=None):
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit by Content-Length at once, and count the
    bytes of bodies sent without one (chunked), so an endless upload cannot fill the memory."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            reason = "a bad Content-Length" if not length.isdigit() else f"{int(length):,} bytes"
            response = error(413, f"the body has {reason}; the limit is {self.max_bytes:,} bytes", "body_too_large")
            return await response(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BadInput(f"the body is over the limit of {self.max_bytes:,} bytes", 413, "body_too_large")
            return message

        await self.app(scope, counting_receive, send)


def create_app(config=None):
    """The ASGI app; config defaults to the environment's (Config.from_env)."""
    config = config or Config.from_env()
    metrics = Metrics()
    policy = policies.load(config.policy)  # a bad policy file stops the start at once, with its reason
    state = {"moderator": None, "error": None, "model": f"{policy.name}/{config.clip}"}

    def load_models():
        engine = engines.load(config.engine, config.clip, config.blip2, config.onnx_dir, config.threads)
        engine.warm_up(max(s.max_batch_size for s in config.options.batching.values()))
        if policy.model != config.clip:
            log.warning("policy %s was calibrated for CLIP %s, but the service runs %s: its thresholds may not fit",
                        policy.name, policy.model, config.clip)
        return Moderator(engine, policy, config.options, metrics)

    async def load_in_background():
        try:
            state["moderator"] = await asyncio.to_thread(load_models)
            log.info("ready: engine %s, policy %s", state["moderator"].engine.name, config.policy)
        except Exception as e:  # kept for /readyz: the process stays up to say what went wrong
            state["error"] = f"{type(e).__name__}: {e}"
            log.exception("loading the models failed")

    @asynccontextmanager
    async def lifespan(app):
        loader = asyncio.create_task(load_in_background())
        yield
        loader.cancel()
        if state["moderator"]:
            await state["moderator"].stop()

    app = FastAPI(title="Multimodal moderation (stage 3)", version="1.0", lifespan=lifespan,
                  description="CLIP concept scores + BLIP-2 captions judged by a YAML policy, in OpenAI's "
                              "moderation shape. Bodies: application/json or multipart/form-data.")
    app.state.config, app.state.metrics, app.state.service = config, metrics, state
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)

    @app.exception_handler(BadInput)
    async def bad_input(request, e):
        return error(e.status, e.message, e.code, e.param, headers={"Retry-After": "5"} if e.status == 503 else None)

    @app.exception_handler(batching.Overloaded)
    async def overloaded(request, e):
        return error(503, f"{e}: retry shortly", "overloaded", headers={"Retry-After": "1"})

    @app.exception_handler(asyncio.TimeoutError)
    async def timed_out(request, e):
        return error(504, "the request took longer than the server's timeout", "timeout")

    @app.middleware("http")
    async def observe(request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            # a fixed set of label values: a client probing random paths must not grow the series
            endpoint = request.url.path if request.url.path in API_PATHS else "other"
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def ready_moderator(request):
        """Auth first (401), then readiness (503): the checks every /v1 endpoint shares."""
        if config.api_keys:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), k.encode())
                                                     for k in config.api_keys):
                raise BadInput("missing or wrong API key: send Authorization: Bearer <key>", status=401,
                               code="invalid_api_key")
        if state["moderator"] is None:
            raise BadInput("the models are still loading: retry shortly (see GET /readyz)", status=503,
                           code="not_ready")
        return state["moderator"]

    body_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": InputRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"}, "text": {"type": "string"}}}}}}}

    @app.post("/v1/moderations", openapi_extra=body_doc, tags=["moderation"])
    async def moderations(request: Request):
        """Judge texts and images against the policy: one result per input (typed parts form one input)."""
        moderator = await ready_moderator(request)
        items, combined = await inputs.parse(request, config.limits)
        items = [inputs.combine(items)] if combined else items
        results = await asyncio.gather(*(moderator.moderate(item) for item in items))
        return {"id": f"modr-{uuid.uuid4().hex}", "model": state["model"], "results": results}

    @app.post("/v1/embeddings", openapi_extra=body_doc, tags=["models"])
    async def embeddings(request: Request):
        """CLIP unit vectors, one per text or image, in one shared space (cosine = dot product)."""
        moderator = await ready_moderator(request)
        items, _ = await inputs.parse(request, config.limits)
        parts = [(kind, item) for item in items for kind in ("image", "text") if getattr(item, kind) is not None]
        vectors = await asyncio.gather(*(moderator.embed_image(item) if kind == "image" else moderator.embed_text(item.text)
                                         for kind, item in parts))
        return {"object": "list", "model": config.clip,
                "data": [{"object": "embedding", "index": i, "input_type": kind, "embedding": v.tolist()}
                         for i, ((kind, _), v) in enumerate(zip(parts, vectors))]}

    @app.post("/v1/captions", openapi_extra=body_doc, tags=["models"])
    async def captions(request: Request):
        """Greedy BLIP-2 captions, one per image."""
        moderator = await ready_moderator(request)
        items, _ = await inputs.parse(request, config.limits)
        if any(item.image is None for item in items):
            raise BadInput("/v1/captions takes images only (image_url parts or -F image=@...)", param="input")
        texts = await asyncio.gather(*(moderator.caption(item) for item in items))
        return {"object": "list", "model": config.blip2,
                "data": [{"index": i, "caption": c} for i, c in enumerate(texts)]}

    @app.get("/healthz", tags=["operations"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz():
        if state["moderator"] is None:
            reason = state["error"] or "loading and warming up the models"
            return error(503, reason, "not_ready", headers={"Retry-After": "5"})
        moderator = state["moderator"]
        return {"status": "ready", "engine": moderator.engine.name, "policy": moderator.policy.name,
                "queue_depth": {s: b.depth for s, b in moderator.batchers.items()}}

    @app.get("/metrics", tags=["operations"])
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


app = create_app()
