"""Week 11: week 10's moderation served by LitServe, one of the batchers people deploy (issue 31).
batch_pipeline.Pipeline does the work, so the answers and refusals are week 10's; LitServe forms
the batches, with week 10's settings: the caption stage's batch size and wait (MODERATION_CAPTION_*
or MODERATION_MAX_BATCH_SIZE / _MAX_WAIT_MS), timeout_s, max_body_bytes and serve.py's HTTP limits.

    python -m stage3_moderation.litserve_app --port 8000
    POST /v1/moderations   week 10's bodies (JSON or multipart) and answers; Server-Timing: total;dur=<ms>
    GET  /readyz           LitServe's health check: 200 "ok" once every worker has loaded the models
    GET  /batches          {"items": requests batched so far, "batches": batches run}: their ratio is
                           the mean batch

How LitServe 0.2.19 batches, against week 10's Batcher (batching.py):
  - requests cross processes: the HTTP process pickles each into a multiprocessing Manager's queue
    (server.py _init_manager, BaseRequestHandler._submit_request), a spawned inference worker takes it
    out (loops/loops.py inference_worker), and its answer comes back the same way
    (transport/process_transport.py); week 10 hands items to model threads of its own process.
  - the wait (loops/base.py collate_requests): a free worker opens a window of batch_timeout at once,
    polling the queue every millisecond until it closes or max_batch_size came; an empty window opens
    the next. A lone request waits 0 to batch_timeout, and an idle worker polls on (measured: 14% of a
    core, a whole core at batch_timeout 0); week 10 waits max_wait_ms from the first arrival, and sleeps.
  - whole requests, one stage after another (loops/simple_loops.py BatchedLoop.run_batched_loop): the
    worker decodes each request of the batch (decode_request: images too), then predicts on them all;
    week 10 decodes on the way in, in threads, and batches each model stage on its own.
  - one failure fails the batch: run_batched_loop answers all its requests with what any one's
    decode_request, predict or encode_response raised (week 10 retries items alone), so a refusal
    travels as a value, which encode_response turns into the HTTP answer. The queue is unbounded (never
    503), and timeout_s times only the wait in it (504); week 10 bounds its queues and times the whole request.

What a client sees differently from week 10 (tests/test_week11_litserve.py holds the rest to it):
  - nothing is refused before our code runs: LitServe would parse the body itself
    (server.py BaseRequestHandler._prepare_request: request.json() or request.form(); a body that is
    not JSON gets 500), but a FastAPI dependency (`RawBody`) hands the raw bytes and Content-Type to
    week 10's parser instead. 404 and 405 are week 10's (app.http_error).
  - LitServe's own errors, a failed batch (500 "Internal server error") and a request that waited
    longer than timeout_s (504 "Request timed out"), come in the API's error shape with code
    http_error (week 10: internal_error, timeout).
  - /readyz answers text ("ok", or 503 "not ready"), not JSON; /healthz, /metrics, /v1/embeddings and
    /v1/captions are not served; LitServe adds /, /info, /docs and /openapi.json. No X-Request-ID, and
    Server-Timing has the total only. MODERATION_API_KEYS is refused at start (no authentication here).
  - an answer of 1000 bytes or more is gzipped for a client that accepts it (LitServer adds GZipMiddleware).
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Annotated, NamedTuple

import litserve as ls
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from litserve.loops import BatchedLoop
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from curriculum import REPO_ROOT, cli
from curriculum.cli import UserError
from stage3_moderation import errors, loadgen, serve
from stage3_moderation.app import api_error, http_error
from stage3_moderation.batch_pipeline import Pipeline
from stage3_moderation.errors import ApiError
from stage3_moderation.middleware import BodyLimit
from stage3_moderation.settings import Settings, one_line

PATH = "/v1/moderations"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the only ones LitServer.run takes


class Body(NamedTuple):
    """A request as it crosses to the worker: pickled, so plain bytes rather than starlette's Request."""

    data: bytes
    content_type: str


async def read_body(request: Request) -> Body:
    return Body(await request.body(), request.headers.get("content-type", ""))


# LitServe's endpoint takes a parameter of the type decode_request's `request` is annotated with (server.py
# register_endpoints) and sends what FastAPI resolves it to on to the worker as it is, unless the type is
# starlette's Request, whose body it parses (_prepare_request). This type resolves, by a dependency, to the raw body.
RawBody = Annotated[Body, Depends(read_body)]


class ModerationAPI(ls.LitAPI):
    def __init__(self, settings):
        batching = settings.options().batching["caption"]  # the costliest stage, the one the benchmark compares
        super().__init__(
            max_batch_size=batching.max_batch_size,
            batch_timeout=batching.max_wait_ms / 1000,
            api_path=PATH,
            loop=BatchedLoop(),  # predict gets a list at batch size 1 too (LitServe's choice there: the request alone)
        )
        self.settings = settings
        # requests batched and batches run, in shared memory: written by the workers, read by the HTTP processes
        self.counts = multiprocessing.get_context("spawn").Array("q", 2)

    def setup(self, device):
        self.pipeline = Pipeline(self.settings)

    def decode_request(self, request: RawBody):
        """The request's items, or the ApiError week 10 refuses it with (raised, it would fail its batch)."""
        try:
            return self.pipeline.parse(request.data, request.content_type)
        except ApiError as refused:
            return refused

    def predict(self, requests):
        answers = iter(self.pipeline.moderate([r for r in requests if not isinstance(r, ApiError)]))
        with self.counts.get_lock():
            self.counts[0] += len(requests)
            self.counts[1] += 1
        return [r if isinstance(r, ApiError) else next(answers) for r in requests]

    def encode_response(self, output):
        """The HTTP answer itself, status and all (a starlette Response pickles as its bytes)."""
        if isinstance(output, ApiError):
            return JSONResponse(errors.body(output), output.status, headers=output.headers)
        return JSONResponse(output)


class ServerTiming:
    """ASGI middleware: `Server-Timing: total;dur=<ms>` on every answer of the API, from the request's
    arrival to its answer's start: the `total` of week 10's header (timing.py), which load generators read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != PATH:
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def send_timed(message):
            if message["type"] == "http.response.start":
                header = f"total;dur={(time.perf_counter() - start) * 1000:.3f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", header)]}
            await send(message)

        await self.app(scope, receive, send_timed)


def build_server(settings, workers=1):
    """The LitServer of /v1/moderations on `workers` CPU worker processes, with week 10's error shapes."""
    if settings.api_keys:
        raise UserError("the LitServe app serves without authentication: unset MODERATION_API_KEYS")
    api = ModerationAPI(settings)
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=workers,
        timeout=settings.timeout_s,
        healthcheck_path="/readyz",
        middlewares=[(BodyLimit, {"max_bytes": settings.max_body_bytes})],
    )
    app = server.app
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(ServerTiming)

    @app.get("/batches")
    def batches():
        with api.counts.get_lock():
            items, formed = api.counts[:]
        return {"items": items, "batches": formed}

    return server


def announce_when_ready(url):
    """Prints one line once /readyz answers 200: LitServer.run blocks until shutdown, with no hook for it."""

    def wait():
        while not loadgen.answers(url):
            time.sleep(0.25)
        print(f"ready: LitServe serving POST {url}{PATH}", flush=True)

    threading.Thread(target=wait, daemon=True).start()


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.litserve_app", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--host", choices=HOSTS, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=cli.Count(1024, 65535), default=8000, help="1024 to 65535 (default 8000)")
    p.add_argument(
        "--workers",
        type=cli.Count(1, 64),
        default=1,
        help="inference worker processes, each with its own models and batches (default 1)",
    )
    p.add_argument("--log-level", choices=serve.LOG_LEVELS, default="info")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_environment()
    except ValidationError as e:
        raise UserError(one_line(e)) from None
    server = build_server(settings, args.workers)
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)  # where this machine reaches it
    announce_when_ready(f"http://{local}:{args.port}")
    # LitServer.run stops its processes on KeyboardInterrupt; SIGTERM would end this one alone, leaving them.
    # Its forked ones keep the default: uvicorn raises SIGTERM again once it has stopped (a traceback, else)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    server.run(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        generate_client_file=False,  # else it writes client.py into the current folder
        http=serve.protocol(settings),
        timeout_keep_alive=settings.keep_alive_s,
    )


@contextmanager
def server(env=None, cpus=None, ready_timeout=300):
    """The LitServe app in a real process on a free loopback port, as loadgen.server starts week 10's:
    yields (base URL, a function listing the pids of the process and of the ones it started) once
    /readyz says ready, then stops them all. env: extra MODERATION_* variables; cpus: the cores they may
    run on (as `taskset -c`)."""
    port = loadgen.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()  # not a pipe, which a chatty server could fill and block on
    process = subprocess.Popen(
        [sys.executable, "-m", "stage3_moderation.litserve_app", "--port", str(port), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    try:
        loadgen.wait_until_ready(process, url, timeout=ready_timeout, log=log, name="the LitServe app")
        yield url, lambda: [p.pid for p in loadgen.process_tree(process)]
    finally:
        loadgen.stop_tree(process, 60)
        log.close()


if __name__ == "__main__":
    cli.run(main)
