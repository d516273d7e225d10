"""Week 10: the moderation API (FastAPI). Run it with `make serve`, or

    python -m stage3_moderation.serve --host 127.0.0.1 --port 8000

(uvicorn held to serve.py's HTTP limits; `uvicorn --factory stage3_moderation.app:create_app`
serves the same app without them).

    POST /v1/moderations   OpenAI's request and response shape, + caption, image_text_similarity, mismatch
    POST /v1/embeddings    CLIP vectors for texts and images (OpenAI's encoding_format, dimensions)
    POST /v1/captions      BLIP-2 captions for images
    GET  /healthz          the process is up        GET /readyz   models loaded and warmed up
    GET  /metrics          Prometheus text          GET /docs     OpenAPI docs (/openapi.json)

Bodies are JSON ({"input": ...}) or multipart (curl -F image=@x.png -F text=...). Every /v1 answer
says where its time went in a Server-Timing header (timing.py). Settings come
from MODERATION_* environment variables (settings.py); MODERATION_API_KEYS=key1,key2 turns on
Bearer authentication for /v1 (and, with MODERATION_AUTH_METRICS_AND_DOCS=1, for /metrics and
the docs). Models load in the background at start-up (exporting ONNX first if the export is
missing), so /healthz answers at once and /readyz tells a load balancer when to send traffic.

This file is what belongs to HTTP: routes, authentication, readiness, the watch for clients that
go away, error responses (middleware.py: body size, request ids, metrics, the catch-all 500).
What each endpoint does is endpoints.py's, framework-free.
"""

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from curriculum import zoo
from curriculum.cli import UserError
from curriculum.provenance import shown
from stage3_moderation import engines, errors, export_onnx, openapi, timing
from stage3_moderation import policy as policies
from stage3_moderation.batching import Overloaded, PixelBudget
from stage3_moderation.endpoints import Api, CaptionResponse, EmbeddingResponse, ModerationResponse
from stage3_moderation.errors import ApiError, BadInput
from stage3_moderation.inputs import (
    CaptionForm,
    CaptionRequest,
    EmbeddingForm,
    EmbeddingRequest,
    ModerationForm,
    ModerationRequest,
)
from stage3_moderation.middleware import BodyLimit, Observe
from stage3_moderation.service import Metrics, Moderator
from stage3_moderation.settings import Settings, one_line

log = logging.getLogger("stage3_moderation")
if not log.handlers:  # uvicorn configures only its own loggers: give ours the same look
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)


@dataclass
class State:
    """What the app holds (app.state.moderation), reached through the `state` dependency."""

    settings: Settings
    metrics: Metrics
    policy: policies.Policy
    budget: PixelBudget
    api: Optional[Api] = None  # set once the models are loaded and warm
    load_error: Optional[str] = None
    load: Optional[Callable[["State"], Awaitable[Moderator]]] = None  # builds the moderator; default load_moderator


async def state(request: Request) -> State:  # async: FastAPI would run a plain function in a worker thread
    return request.app.state.moderation


# ---------------------------------------------------------------- dependencies
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <one of MODERATION_API_KEYS>")


async def authorize(
    request: Request,
    service: State = Depends(state),
    credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer),
) -> None:
    """401 unless this path needs no key, or one of the keys came (Bearer scheme). The key names the
    request's tenant (request.state.tenant), whose cache entries are its own (service.Moderator._cached);
    without keys everyone is one tenant."""
    request.state.tenant = ""
    if not service.settings.requires_key(request.url.path):
        return
    token = credentials.credentials.encode() if credentials else b""
    matched = False
    for key in service.settings.api_keys:  # timing-safe, and every key compared: the time does not say which matched
        matched |= hmac.compare_digest(token, key.encode())
    if not matched:
        raise BadInput(
            "missing or wrong API key: send Authorization: Bearer <key>",
            status=401,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.tenant = hashlib.sha256(token).hexdigest()  # the key's hash: the cache holds no secret


async def ready_api(service: State = Depends(state)) -> Api:
    if service.api is None:
        raise errors.retry_later("the models are still loading: retry shortly (see GET /readyz)", "not_ready", 5)
    return service.api


async def disconnected(receive):
    """Returns once the client has gone: with the body read, the next ASGI message is http.disconnect
    (uvicorn sends it when the socket closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def client_of(request: Request) -> str:
    """Whose share of the pixel budget a request takes (batching.PixelBudget): its API key's tenant
    when keys are set, else its address (the one uvicorn reports: behind a trusted proxy, from
    X-Forwarded-For). An IPv6 address counts by its /64, which one host may pick its addresses from."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # no IP address (a test client, a Unix socket)
        address = host
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or ipaddress.IPv6Network((address, 64), strict=False)
    return request.state.tenant or str(address)


async def answer(request: Request, endpoint):
    """endpoint(body, content type, tenant, client) as JSON, cancelled if the client goes away first: its
    queued items are dropped and never computed (ClientDisconnect: a 499 nobody receives)."""
    with timing.stage("read"):
        body = await request.body()
    content_type = request.headers.get("content-type", "")
    work = asyncio.ensure_future(endpoint(body, content_type, request.state.tenant, client_of(request)))
    gone = asyncio.ensure_future(disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        request.app.state.moderation.metrics.disconnects.inc()
        raise ClientDisconnect()
    with timing.stage("serialize"):
        return JSONResponse(work.result())


# ---------------------------------------------------------------- routes
v1 = APIRouter(
    prefix="/v1", dependencies=[Depends(authorize)], responses=openapi.errors(400, 401, 404, 413, 415, 500, 503, 504)
)


@v1.post(
    "/moderations",
    tags=["moderation"],
    openapi_extra=openapi.request_body(ModerationRequest, ModerationForm),
    responses={200: {"model": ModerationResponse}},
)
async def moderations(request: Request, api: Api = Depends(ready_api)):
    """Judge texts and images against the policy, one result per input (typed parts form one input).
    An image is judged as displayed: composited onto white, every frame of an animation, the worst deciding."""
    return await answer(request, api.moderations)


@v1.post(
    "/embeddings",
    tags=["models"],
    openapi_extra=openapi.request_body(EmbeddingRequest, EmbeddingForm),
    responses={200: {"model": EmbeddingResponse}},
)
async def embeddings(request: Request, api: Api = Depends(ready_api)):
    """CLIP unit vectors, one per text or image, in one shared space (cosine = dot product)."""
    return await answer(request, api.embeddings)


@v1.post(
    "/captions",
    tags=["models"],
    openapi_extra=openapi.request_body(CaptionRequest, CaptionForm),
    responses={200: {"model": CaptionResponse}},
)
async def captions(request: Request, api: Api = Depends(ready_api)):
    """Greedy BLIP-2 captions, one per image."""
    return await answer(request, api.captions)


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    engine: str
    policy: str
    queue_depth: dict[str, int]
    pixels_in_flight: int


operations = APIRouter(tags=["operations"])


@operations.get("/healthz", response_model=Health)
async def healthz():
    """The process is up and its event loop answers (no key needed: for the load balancer)."""
    return {"status": "ok"}


@operations.get("/readyz", response_model=Ready, responses=openapi.errors(503))
async def readyz(service: State = Depends(state)):
    """Models loaded and warm: send traffic (no key needed: for the load balancer)."""
    if service.api is None:
        error = errors.retry_later(service.load_error or "loading and warming up the models", "not_ready", 5)
        return JSONResponse(errors.body(error), error.status, headers=error.headers)
    moderator = service.api.moderator
    return {
        "status": "ready",
        "engine": moderator.engine.name,
        "policy": moderator.policy.name,
        "queue_depth": {s: b.depth for s, b in moderator.batchers.items()},
        "pixels_in_flight": service.budget.used,
    }


@operations.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(authorize)],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
        **openapi.errors(401),
    },
)
async def metrics(service: State = Depends(state)):
    """Prometheus series: requests, latency and its stages, batch sizes, queue waits and depths, dropped items,
    cache, pixels in flight."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@operations.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
async def openapi_json(request: Request):
    return JSONResponse(request.app.openapi())


@operations.get("/docs", include_in_schema=False, dependencies=[Depends(authorize)])
async def docs(request: Request):
    return get_swagger_ui_html(openapi_url="/openapi.json", title=request.app.title)


# ---------------------------------------------------------------- errors
async def api_error(request, exc):
    """ApiError, Overloaded, TimeoutError -> OpenAI's error shape with its status and headers."""
    error = errors.as_api_error(exc)
    return JSONResponse(errors.body(error), error.status, headers=error.headers)


async def http_error(request, exc):
    """Starlette's 404 (no such path) and 405 (wrong method, with Allow) in the API's own shape."""
    known = {
        404: (f"no endpoint at {request.url.path}: see /docs", "not_found"),
        405: (f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"),
    }
    message, code = known.get(exc.status_code, (str(exc.detail), "http_error"))
    error = ApiError(message, exc.status_code, code, headers=exc.headers)
    return JSONResponse(errors.body(error), error.status, headers=error.headers)


async def client_gone(request, exc):
    return Response(status_code=499)  # nginx's "client closed request": only the logs and metrics see it


# ---------------------------------------------------------------- start-up
def load_engine(service):
    """Engine (exporting ONNX first if missing), warmed up on every batch shape."""
    s = service.settings
    if s.engine.startswith("onnx"):
        export_onnx.ensure_exported(s.clip, s.blip2, s.onnx_dir)
    engine = engines.load(s.engine, s.clip, s.blip2, s.onnx_dir, s.threads)
    engine.warm_up(max(o.max_batch_size for o in s.options().batching.values()), service.policy.questions)
    if service.policy.model != s.clip:
        log.warning(
            "policy %s was calibrated for CLIP %s, but the service runs %s: its thresholds may not fit",
            service.policy.name,
            service.policy.model,
            s.clip,
        )
    return engine


async def load_moderator(service):
    """The moderator over this process's models, loaded in a worker thread (the loop answers /readyz)."""
    engine = await asyncio.to_thread(load_engine, service)
    return Moderator(engine, service.policy, service.settings.options(), service.metrics)


async def load_in_background(service, decoder):
    try:
        moderator = await (service.load or load_moderator)(service)
        await moderator.start()
        names = {
            "moderations": f"{service.policy.name}/{service.settings.clip}",
            "embeddings": service.settings.clip,
            "captions": service.settings.blip2,
        }
        service.api = Api(moderator, service.settings.limits(), service.budget, decoder, names)
        engines.freeze_heap()  # after the models load: only the requests' objects are collected
        log.info("ready: engine %s, policy %s", moderator.engine.name, service.settings.policy)
    except Exception as e:  # kept for /readyz: the process stays up to say what went wrong
        service.load_error = f"{type(e).__name__}: {e}"
        log.exception("loading the models failed")


@asynccontextmanager
async def lifespan(app):
    service = app.state.moderation
    with ThreadPoolExecutor(service.settings.decode_threads, thread_name_prefix="decode") as decoder:
        loader = asyncio.create_task(load_in_background(service, decoder))
        yield
        loader.cancel()
        if service.api:
            await service.api.moderator.stop()


def check_questions(policy, blip2):
    """A policy that asks questions runs only on the BLIP-2 its question thresholds were read for,
    and on one that can answer yes/no in one token: else one line at start-up, not a service that
    silently never flags (the bundled BLIP-2 answers "no" to everything)."""
    if not policy.questions:
        return
    if zoo.resolve(policy.question_model, "blip2") != zoo.resolve(blip2, "blip2"):
        raise UserError(
            f"policy {policy.name} asks its questions of BLIP-2 {shown(policy.question_model)}, but the service "
            f"runs BLIP-2 {blip2}: set MODERATION_BLIP2 to the policy's question_model"
        )
    engines.yes_no_ids(zoo.load_processor(blip2, "blip2").tokenizer)


def create_app(
    settings: Optional[Settings] = None, load: Optional[Callable[[State], Awaitable[Moderator]]] = None
) -> FastAPI:
    """The ASGI app (`uvicorn --factory stage3_moderation.app:create_app`); settings default to the
    MODERATION_* environment's. Settings that cannot work stop the start with one line. await load(state)
    builds the moderator (default `load_moderator`: the models in this process; the Ray Serve
    ingress passes one whose models are deployments)."""
    try:
        settings = settings or Settings.from_environment()
        policy = policies.load(settings.policy)  # a bad policy file stops the start at once, with its reason
        check_questions(policy, settings.blip2)
    except (ValidationError, UserError) as e:
        raise SystemExit(f"moderation service: {one_line(e) if isinstance(e, ValidationError) else e}") from None
    app = FastAPI(
        title="Multimodal moderation (stage 3)",
        version="1.1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="CLIP concept scores + BLIP-2 captions judged by a YAML policy, in OpenAI's "
        "moderation shape. Bodies: application/json or multipart/form-data.",
    )
    metrics, budget = Metrics(), PixelBudget(settings.max_pixels_in_flight)
    metrics.pixels_in_flight.set_function(lambda: budget.used)
    app.state.moderation = State(settings, metrics, policy, budget, load=load)
    app.include_router(v1)
    app.include_router(operations)
    for exception in (ApiError, Overloaded, asyncio.TimeoutError):
        app.add_exception_handler(exception, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)  # added last, so outermost: it sees every response
    openapi.install(app, settings)
    return app
