"""Week 10: the ASGI middleware around the moderation app: body size, request ids, metrics, the
time of each stage of a request (timing.py: a Server-Timing header), and a JSON 500 for anything
unexpected. Pure ASGI (no BaseHTTPMiddleware), so a route still sees its
client's http.disconnect and streaming bodies pass through untouched."""

import logging
import re
import time
import uuid

from fastapi.responses import JSONResponse

from stage3_moderation import errors, timing
from stage3_moderation.errors import ApiError, BadInput

API_PATHS = ("/v1/moderations", "/v1/embeddings", "/v1/captions")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
log = logging.getLogger("stage3_moderation")


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
            error = BadInput(f"the body has {reason}; the limit is {self.max_bytes:,} bytes", 413, "body_too_large")
            return await JSONResponse(errors.body(error), 413)(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BadInput(f"the body is over the limit of {self.max_bytes:,} bytes", 413, "body_too_large")
            return message

        await self.app(scope, counting_receive, send)


class Observe:
    """ASGI middleware around everything: an id for every request (X-Request-ID: the client's if it
    sent a sane one, else a new one), the request metrics, the time of each stage of an API request
    (a Server-Timing header, and histograms), and a JSON 500 for any unexpected
    exception, logged with that id. Catching it here matters: Starlette's last resort sends a
    plain-text 500 and re-raises, and uvicorn then closes the connection, keep-alive or not."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = request_id if REQUEST_ID.fullmatch(request_id) else uuid.uuid4().hex
        status, start = None, time.perf_counter()
        api = scope["path"] in API_PATHS
        stages = timing.Timing() if api else None  # /healthz, /metrics and the docs are not timed
        token = timing.current.set(stages)

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if api:
                    total = time.perf_counter() - stages.start
                    if status == 200:
                        self.metrics.on_request(stages.breakdown(total))
                    headers.append((b"server-timing", stages.header(total).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if status is not None:
                raise  # the response has begun: only closing the connection can tell the client
            error = ApiError(f"an unexpected error on the server; it is logged under request id {request_id}")
            await JSONResponse(errors.body(error), 500)(scope, receive, send_with_id)
        finally:
            timing.current.reset(token)
            if scope["path"].startswith("/v1/"):
                # a fixed set of label values: a client probing random paths must not grow the series
                endpoint = scope["path"] if scope["path"] in API_PATHS else "other"
                self.metrics.requests.labels(endpoint, str(status or 500)).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
