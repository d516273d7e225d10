"""Week 11: a load generator for the moderation API, and a way to start the real server for it.

`concurrency` clients each send their next request as soon as the last one is answered (a closed
loop, like `wrk` or `hey`), so throughput is what the server sustains at that many requests in
flight, and latency percentiles are read from every request.

    python -m stage3_moderation.loadgen --url http://127.0.0.1:8000 --n 500 --concurrency 32
    python -m stage3_moderation.loadgen --serve --n 2000 --concurrency 32 --kind mixed   # starts uvicorn too

`large_images_body`, `watch_health` and `memory_mb` measure the other side of load: the heaviest
requests the limits allow, with /healthz latency and the server's memory watched meanwhile.
"""

import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from curriculum import REPO_ROOT, cli, shapesworld
from curriculum.cli import UserError

KINDS = ("image", "text", "mixed")


def data_url(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def workload(kind, n, pool=64, seed=0):
    """n moderation bodies: an image with its caption ('image'), the caption alone ('text'), or
    alternating ('mixed'); images cycle through `pool` distinct test scenes (repeats hit the cache)."""
    if kind not in KINDS:
        raise UserError(f"unknown workload {kind!r}: choose one of {', '.join(KINDS)}")
    samples = shapesworld.generate("test", min(n, pool), seed)
    urls = [data_url(s.image) for s in samples]
    bodies = []
    for i in range(n):
        s, url = samples[i % len(samples)], urls[i % len(samples)]
        with_image = kind == "image" or (kind == "mixed" and i % 2 == 0)
        bodies.append(
            {"input": [{"type": "text", "text": s.caption_en}, {"type": "image_url", "image_url": {"url": url}}]}
            if with_image
            else {"input": s.caption_en}
        )
    return bodies


def large_images_body(n, side=4096, distinct=4):
    """An embeddings (or captions) request of n side×side PNGs (test scenes scaled up, `distinct` different ones):
    each a quarter of a megabyte that decodes to side² pixels."""
    urls = []
    for scene in shapesworld.generate("test", min(n, distinct), seed=7):
        buffer = io.BytesIO()
        scene.image.resize((side, side), Image.Resampling.NEAREST).save(buffer, "PNG", compress_level=1)
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return {"input": [{"type": "image_url", "image_url": {"url": urls[i % len(urls)]}} for i in range(n)]}


@contextmanager
def watch_health(url, interval=0.02):
    """/healthz latencies in ms, asked every `interval` s by a thread of its own while the block runs."""
    latencies, stop = [], threading.Event()

    def ask():
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.wait(interval):
                start = time.perf_counter()
                http.get("/healthz").raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def memory_mb(pid):
    """A Linux process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


async def drive(url, bodies, concurrency, headers=None, timeout=120, path="/v1/moderations"):
    """Send every body to POST url + path from `concurrency` clients; latencies and statuses (and for
    moderations, that each answer has its own id and one result)."""
    queue = list(enumerate(bodies))[::-1]
    latencies, statuses, ids, failures = [], {}, set(), []

    async def client(http):
        while queue:
            index, body = queue.pop()
            start = time.perf_counter()
            try:
                response = await http.post(path, json=body, headers=headers)
                status = response.status_code
                if status == 200 and path == "/v1/moderations":
                    payload = response.json()
                    ids.add(payload["id"])
                    if len(payload["results"]) != 1:
                        failures.append(f"request {index}: {len(payload['results'])} results")
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - start)
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "n": len(bodies),
        "concurrency": concurrency,
        "ok": statuses.get("200", 0),
        "errors": len(bodies) - statuses.get("200", 0),
        "statuses": statuses,
        "unique_ids": len(ids),
        "failures": failures[:5],
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(bodies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(env=None, port=None, ready_timeout=300, log=None):
    """A real uvicorn process on loopback serving `create_app`; yields (its base URL, the process)
    once /readyz says ready, and stops it afterwards. env: extra MODERATION_* variables."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "stage3_moderation.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {}),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready within {ready_timeout} s")
            time.sleep(0.25)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def print_result(r):
    print(
        f"{r['n']} requests at concurrency {r['concurrency']}: {r['requests_per_s']} req/s, "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; {r['ok']} ok, {r['errors']} errors {r['statuses']}"
    )


def main(argv=None):
    p = cli.Parser(description=__doc__, formatter_class=cli.RawHelp)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--serve", action="store_true", help="start uvicorn on a free loopback port first")
    p.add_argument("--n", type=cli.positive_int, default=500)
    p.add_argument("--concurrency", type=cli.positive_int, default=32)
    p.add_argument("--kind", default="mixed", choices=KINDS)
    p.add_argument("--pool", type=cli.positive_int, default=64, help="distinct images (repeats hit the cache)")
    p.add_argument("--api-key", help="sent as Authorization: Bearer <key>")
    p.add_argument("--out", help="also write the JSON result here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    bodies = workload(args.kind, args.n, args.pool)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    if args.serve:
        with server() as (url, _):
            result = asyncio.run(drive(url, bodies, args.concurrency, headers))
    else:
        result = asyncio.run(drive(args.url, bodies, args.concurrency, headers))
    if args.out:
        cli.write_json(result, args.out)
    cli.emit(result, args.json, print_result)


if __name__ == "__main__":
    cli.run(main)
