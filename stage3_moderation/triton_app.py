"""Week 11: week 10's moderation served by Triton Inference Server through PyTriton, one of the
batchers people deploy that week 10's own is measured against (peers_bench.py, issue 31).

    make triton-venv                                                   # once: .venv-triton, triton_venv.sh
    .venv-triton/bin/python -m stage3_moderation.triton_app --http-port 8000

tritonserver (a child of this process) owns HTTP and the batching; each batch it forms goes through
its Python backend's stub (a grandchild) to `answer_batch` here, which runs batch_pipeline.Pipeline:
week 10's engines, policy, limits and answers, one engine call per model stage for the whole batch.
The batcher is sized from week 10's settings for its costliest stage, BLIP-2's (MODERATION_CAPTION_*
or MODERATION_MAX_BATCH_SIZE, MAX_WAIT_MS, MAX_QUEUE, TIMEOUT_S), so the comparison is fair.

Clients speak Triton's protocol, KServe v2 (`request_body` builds a request, `answer` reads one):
POST /v2/models/moderation/infer, shape [1, 1] for one body (a first dimension of n sends n)
    inputs   body          BYTES  the week-10 request body as the text whose characters are its bytes
                                  (latin-1): JSON cannot carry raw bytes and a multipart body may hold
                                  any; an ASCII body, as every JSON body with data URLs is, is itself
             content_type  BYTES  its Content-Type
    outputs  status        INT32  the HTTP status week 10 answers it with: 200 or the refusal's 4xx
             response      BYTES  week 10's JSON: the /v1/moderations answer or the error body

What differs from week 10 (tests/test_week11_triton.py holds the first three, but for the queue's
503s, which were seen by hand, as was the fourth):
  - Triton owns the HTTP layer, so every request this code answers is HTTP 200, a refusal too: its
    status is in `status`. A refusal is caught per request, since an exception fails the whole batch.
  - Triton answers some requests itself, before this code runs, in its own shape {"error": "..."}:
    infer JSON it cannot parse (HTTP 500), a missing input or a wrong shape (400), another model (404),
    and, from its queue policy, a full queue or a request that waited past the timeout (503; week 10:
    503 and 504). A body that is no latin-1 text is this module's own refusal (400, invalid_body_encoding).
  - The body's size is checked here (413, as week 10's middleware does); week 10's other HTTP limits
    (serve.py: header bytes, header and body timeouts, connections) have no Triton counterpart.
  - An unexpected exception (a bug, an engine failure) fails every request of its batch: HTTP 500 with
    the traceback as the message (PyTriton's proxy/inference.py, handle_requests). Week 10's batcher
    runs each item alone then, so only the bad one fails (batching.Batcher._call), with no traceback.
  - No API keys, no cache, no Server-Timing: the benchmark reads Triton's statistics (`stats`).

Triton's dynamic batcher against week 10's (batching.Batcher), from Triton's core/src/dynamic_batch_
scheduler.cc (DynamicBatchScheduler::GetDynamicBatch, BatcherThread) and docs/user_guide/batcher.md:
  - It batches requests; week 10 batches each stage's items (a request of 3 images: 1 here, 3 there).
  - Its delay counts from the oldest queued request's arrival (OldestEnqueueTime), week 10's from when
    its worker takes the first item (_collect): after a long batch the waiting leave at once here.
  - It forms a batch only when a model instance is free (PayloadSlotAvailable; PyTriton binds one per
    infer function), which runs the batch's stages in turn; week 10's stage batchers run side by side.
  - Unset, preferred_batch_size is [max_batch_size] (GET .../config): a full batch leaves at once, as in
    week 10. Its queue policy counts requests and time queued; week 10's, items and the whole request.
"""

import contextlib
import json
import os
import signal
import subprocess
import sysconfig
import tempfile

import httpx
import numpy as np

from curriculum import REPO_ROOT, cli
from curriculum.cli import UserError
from stage3_moderation import errors, loadgen
from stage3_moderation.errors import BadInput

MODEL = "moderation"
INPUTS = ("body", "content_type")
OUTPUTS = ("status", "response")
READY_PATHS = ("/v2/health/ready", f"/v2/models/{MODEL}/ready")
BATCHED_STAGE = "caption"  # BLIP-2: the stage whose batches cost the most (week 10's bench)
VENV = REPO_ROOT / ".venv-triton"
BUILT = VENV / ".installed"  # written by triton_venv.sh when the build has passed its import check
STOP_S = 30  # PyTriton's own stop waits for tritonserver; whatever is left after this is killed


# ---------------------------------------------------------------- the client's side (in any venv)
def request_body(body, content_type):
    """The infer request (JSON bytes) that carries one week-10 body (bytes) and its Content-Type."""
    data = {"body": body.decode("latin-1"), "content_type": content_type}  # latin-1: byte n is U+00nn
    request = {
        "inputs": [{"name": name, "shape": [1, 1], "datatype": "BYTES", "data": [data[name]]} for name in INPUTS],
        "outputs": [{"name": name} for name in OUTPUTS],
    }
    return json.dumps(request, ensure_ascii=False).encode()  # a byte over 127 travels as 2 bytes, not as \u00nn


def answer(response):
    """(status, week 10's JSON) of the first body from Triton's infer response (parsed JSON). An error
    Triton answered itself, before this module's code ran, raises ValueError with its message."""
    if "error" in response:
        raise ValueError(f"Triton refused the request itself: {response['error']}")
    outputs = {output["name"]: output["data"][0] for output in response["outputs"]}
    return outputs["status"], json.loads(outputs["response"])


def stats(url):
    """Triton's counters for the model since it started: bodies answered (inference_count), batches
    run (execution_count), the mean batch, and per request the mean milliseconds in Triton from
    arrival to answer, in its queue and in the batch's compute (input, infer function, output)."""
    model = httpx.get(f"{url}/v2/models/{MODEL}/stats", timeout=10).raise_for_status().json()["model_stats"][0]
    timings = model["inference_stats"]

    def mean_ms(*parts):
        count = timings[parts[0]]["count"]
        return round(sum(timings[p]["ns"] for p in parts) / count / 1e6, 2) if count else None

    bodies, batches = model["inference_count"], model["execution_count"]
    return {
        "inference_count": bodies,
        "execution_count": batches,
        "mean_batch": round(bodies / batches, 2) if batches else None,
        "request_ms": mean_ms("success"),
        "queue_ms": mean_ms("queue"),
        "compute_ms": mean_ms("compute_input", "compute_infer", "compute_output"),
    }


@contextlib.contextmanager
def server(env=None, cpus=None, ready_timeout=300):
    """The real server (python -m stage3_moderation.triton_app in .venv-triton) on free loopback ports;
    yields (its base URL, () -> the pids of it and its children) once Triton and the model are ready,
    then stops it and every child. env: extra MODERATION_* variables; cpus: the cores it may run on
    (its children inherit them), so a load generator on the others cannot take its time."""
    if not BUILT.exists():
        raise UserError(f"Triton runs from {VENV.name}, which is not built: run `make triton-venv`")
    http, grpc, metrics = (loadgen.free_port() for _ in range(3))
    url = f"http://127.0.0.1:{http}"
    command = [str(VENV / "bin" / "python"), "-m", "stage3_moderation.triton_app", "--host", "127.0.0.1"]
    command += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads it unless the start fails
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        try:
            loadgen.wait_until_ready(process, url, READY_PATHS, ready_timeout, log, "the Triton server")
            yield url, lambda: [p.pid for p in loadgen.process_tree(process)]
        finally:
            loadgen.stop_tree(process, STOP_S)


# ---------------------------------------------------------------- the server's side (in .venv-triton)
def received(body, content_type, max_body_bytes):
    """(body bytes, Content-Type) of one row of a batch, refused as week 10 refuses the body itself."""
    try:
        body = body.decode("utf-8").encode("latin-1")  # undoes request_body's text, which Triton stores as UTF-8
    except UnicodeError:
        raise BadInput(
            "the body input must be the body's bytes as text, one character U+0000-U+00FF per byte",
            code="invalid_body_encoding",
            param="body",
        ) from None
    if len(body) > max_body_bytes:
        message = f"the body has {len(body):,} bytes; the limit is {max_body_bytes:,} bytes"  # week 10's words
        raise BadInput(message, 413, "body_too_large")
    return body, content_type.decode("utf-8", errors="replace")


def answer_batch(pipeline):
    """PyTriton's infer function: Triton's batch of requests -> the outputs of each. Every body is
    parsed on its own (a refusal answers that body alone), then the rest are moderated together."""
    max_body_bytes = pipeline.settings.max_body_bytes

    def infer(requests):
        rows = [(b, t) for r in requests for b, t in zip(r["body"][:, 0], r["content_type"][:, 0])]
        answers, parsed = {}, {}
        for i, (body, content_type) in enumerate(rows):
            try:
                parsed[i] = pipeline.parse(*received(body, content_type, max_body_bytes))
            except BadInput as refused:
                answers[i] = refused.status, errors.body(refused)
        answers |= {i: (200, a) for i, a in zip(parsed, pipeline.moderate(list(parsed.values())))}
        status = np.array([answers[i][0] for i in range(len(rows))], dtype=np.int32)[:, None]
        # object, not bytes_: numpy's fixed-width bytes would drop trailing NUL bytes
        response = np.array([json.dumps(answers[i][1]).encode() for i in range(len(rows))], dtype=object)[:, None]
        cuts = np.cumsum([len(r["body"]) for r in requests])[:-1]
        return [{"status": s, "response": t} for s, t in zip(np.split(status, cuts), np.split(response, cuts))]

    return infer


def serve(host, http_port, grpc_port, metrics_port):
    # PyTriton is installed only in .venv-triton (it pins numpy<2); the tests and the benchmark import
    # this module in .venv, for its client side
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
    except ImportError:
        raise UserError(
            f"PyTriton is not installed in this Python: run `make triton-venv`, then "
            f"{VENV.name}/bin/python -m stage3_moderation.triton_app"
        ) from None

    from stage3_moderation.batch_pipeline import Pipeline

    pipeline = Pipeline()  # MODERATION_* settings; ones that cannot work stop here in one line
    stage = pipeline.settings.options().batching[BATCHED_STAGE]
    # The stub links the libpython3.11 the loader finds first: a system one (Debian's 3.11.2) under
    # this interpreter's own standard library (e.g. pyenv's 3.11.7) fails in multiprocessing
    # ("'_thread.RLock' object has no attribute '_recursion_count'"). tritonserver, and so the stub,
    # inherit this environment.
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")])
    )
    config = TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        metrics_address=host,
        metrics_port=metrics_port,
    )
    # statistics open, as week 10's /metrics is; the rest (model loading among them) keeps PyTriton's token
    security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=round(stage.max_wait_ms * 1000),
        default_queue_policy=QueuePolicy(
            max_queue_size=stage.max_queue, default_timeout_microseconds=round(stage.timeout_s * 1e6)
        ),
    )
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=answer_batch(pipeline),
            inputs=[Tensor(name=name, dtype=bytes, shape=(1,)) for name in INPUTS],
            outputs=[
                Tensor(name="status", dtype=np.int32, shape=(1,)),
                Tensor(name="response", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(max_batch_size=stage.max_batch_size, batcher=batcher),
        )
        print(f"Triton serves {MODEL!r} at http://{host}:{http_port}/v2/models/{MODEL}/infer", flush=True)
        triton.serve()  # until SIGINT or SIGTERM, then stops tritonserver


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.triton_app", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--host", type=cli.Text(), default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--http-port", type=cli.Count(1, 65535), default=8000, help="HTTP/REST (default 8000)")
    p.add_argument("--grpc-port", type=cli.Count(1, 65535), default=8001, help="gRPC (default 8001)")
    p.add_argument("--metrics-port", type=cli.Count(1, 65535), default=8002, help="Prometheus metrics (default 8002)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, timeout, a process manager) as Ctrl-C: PyTriton stops tritonserver on
    # KeyboardInterrupt, while the default SIGTERM would leave it running, orphaned
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    serve(args.host, args.http_port, args.grpc_port, args.metrics_port)


if __name__ == "__main__":
    cli.run(main)
