"""Week 11: load generators for the moderation API, and a way to start the real server for it.

Closed loop (`drive`, and `drive_wrk` with the C load generator wrk): `concurrency` clients each
send their next request as soon as the last one is answered, so throughput is what the server
sustains at that many requests in flight. A closed loop slows down with the server, though, and
then sends less: its latencies hide the requests that would have queued (coordinated omission).
Open loop (`open_loop`): requests leave at a fixed rate whatever the server does, and each
latency counts from when its request was due. That is how a latency target (an SLO) is judged.

Every answer's Server-Timing header (timing.py) is kept, so a run reports the server's own time
per stage beside what the client saw. This Python client shares the machine with the server:
`client_cpu_ms_per_request` says what it cost; wrk costs a fraction of that.

    python -m stage3_moderation.loadgen --url http://127.0.0.1:8000 --n 500 --concurrency 32
    python -m stage3_moderation.loadgen --serve --n 2000 --concurrency 32 --kind mixed   # starts uvicorn too

`large_images_body`, `watch_health` and `memory_mb` measure the other side of load: the heaviest
requests the limits allow, with /healthz latency and the server's memory watched meanwhile.
"""

import asyncio
import base64
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from curriculum import REPO_ROOT, cli, shapesworld
from curriculum.cli import UserError
from stage3_moderation import timing

WRK_SCRIPT = Path(__file__).with_name("wrk_moderations.lua")
INSTALL_WRK = "wrk is not installed (`sudo apt-get install wrk`): the Python load generator drives instead"


def have_wrk():
    return shutil.which("wrk") is not None


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


def cpu_seconds(pid):
    """CPU time a Linux process (all its threads) has used so far: user + system, from /proc. On a
    shared machine this stays honest when wall-clock rates do not: another process's load slows
    the server down but does not add to its CPU time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid):
    """A Linux process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


async def drive(url, bodies, concurrency, headers=None, timeout=120, path="/v1/moderations"):
    """Send every body to POST url + path from `concurrency` clients; latencies and statuses (and for
    moderations, that each answer has its own id and one result)."""
    queue = list(enumerate(bodies))[::-1]
    latencies, statuses, ids, failures, server = [], {}, set(), [], []

    async def client(http):
        while queue:
            index, body = queue.pop()
            start = time.perf_counter()
            try:
                response = await http.post(path, json=body, headers=headers)
                status = response.status_code
                if status == 200 and "server-timing" in response.headers:
                    server.append(timing.parse_header(response.headers["server-timing"]))
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
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
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
        **latency_summary(np.array(latencies) * 1000),
        "client": "python",
        "client_cpu_ms_per_request": round(cpu * 1000 / len(bodies), 3),
        "server": server_summary(server),
    }


def latency_summary(ms):
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def server_summary(timings):
    """The server's own view of the answered requests (Server-Timing): p50 / p99 of its total, and
    the mean milliseconds of each stage (means add up to the mean total; percentiles do not)."""
    if not timings:
        return None
    totals = np.array([t["total"] for t in timings])
    return {
        **latency_summary(totals),
        "mean_ms": {stage: round(float(np.mean([t[stage] for t in timings])), 2) for stage in timings[0]},
    }


def drive_wrk(url, bodies, concurrency, seconds=10.0, path="/v1/moderations"):
    """The closed loop of `drive`, with wrk (C, one thread, `concurrency` connections) for
    `seconds`: its own latency percentiles, and the Server-Timing of every answer (wrk_moderations.lua)."""
    with tempfile.TemporaryDirectory() as folder:
        lines, record = Path(folder) / "bodies.jsonl", Path(folder) / "record.tsv"
        lines.write_text("".join(json.dumps(body, separators=(",", ":")) + "\n" for body in bodies))
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s"]
            + ["-s", str(WRK_SCRIPT), url],
            env=os.environ | {"BODIES": str(lines), "RECORD": str(record), "WRK_PATH": path},
            check=True,
            capture_output=True,
        )
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        summary, *rows = record.read_text().splitlines()
    fields = dict(pair.split("=") for pair in summary.lstrip("# ").split())
    statuses, server = {}, []
    for row in rows:
        status, header = row.split("\t")
        statuses[status] = statuses.get(status, 0) + 1
        if status == "200" and header:
            server.append(timing.parse_header(header))
    n, cpu_s = int(fields["requests"]), (used.ru_utime + used.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    return {
        "n": n,
        "concurrency": concurrency,
        "ok": statuses.get("200", 0),
        "errors": n - statuses.get("200", 0) + int(fields["errors"]),
        "statuses": statuses,
        "seconds": float(fields["seconds"]),
        "requests_per_s": round(n / float(fields["seconds"]), 1),
        "p50_ms": round(int(fields["p50_us"]) / 1000, 1),
        "p99_ms": round(int(fields["p99_us"]) / 1000, 1),
        "client": "wrk",
        "client_cpu_ms_per_request": round(cpu_s * 1000 / max(n, 1), 3),
        "server": server_summary(server),
    }


async def open_loop(url, bodies, rate, seconds, timeout=60, path="/v1/moderations"):
    """Requests at a fixed `rate` per second for `seconds`, each sent when it is due whether or not
    the earlier ones were answered; a latency counts from when its request was due, so a client
    that fell behind cannot hide the server's queue (no coordinated omission).

    Lean on purpose (HTTP/1.1 on asyncio streams, every request encoded beforehand, a pool of
    keep-alive connections): an httpx client spends ~3 ms of CPU per request, enough to make
    itself the bottleneck at a few hundred requests per second."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    encoded = [http_request(host, path, body) for body in bodies]
    n, idle = max(1, round(rate * seconds)), []
    latencies, statuses, server = [], {}, []

    async def send(index):
        reused = bool(idle)
        reader, writer = idle.pop() if reused else await asyncio.open_connection(host, int(port))
        try:
            writer.write(encoded[index % len(encoded)])
            status_line = await reader.readline()
            if not status_line and reused:  # the server closed this idle keep-alive connection
                writer.close()
                idle.clear()  # the others have idled as long: start afresh
                return await send(index)
            status = int(status_line.split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers["content-length"]))
        except BaseException:
            writer.close()
            raise
        idle.append((reader, writer))
        return status, headers.get("server-timing")

    async def one(index, due):
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        try:
            status, header = await asyncio.wait_for(send(index), timeout)
            if status == 200 and header:
                server.append(timing.parse_header(header))
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            status = type(e).__name__
        latencies.append(time.perf_counter() - due)
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    start, cpu = time.perf_counter() + 0.05, time.process_time()
    await asyncio.gather(*(one(i, start + i / rate) for i in range(n)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    for _, writer in idle:
        writer.close()
    return {
        "offered_per_s": round(rate, 1),
        "n": n,
        "errors": n - statuses.get("200", 0),
        "statuses": statuses,
        "answered_per_s": round(statuses.get("200", 0) / elapsed, 1),
        **latency_summary(np.array(latencies) * 1000),
        "client_cpu_ms_per_request": round(cpu * 1000 / n, 3),
        "server": server_summary(server),
    }


def http_request(host, path, body):
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(env=None, port=None, ready_timeout=300, log=None, cpus=None):
    """A real server process on loopback (python -m stage3_moderation.serve: uvicorn with the HTTP
    limits); yields (its base URL, the process)
    once /readyz says ready, and stops it afterwards. env: extra MODERATION_* variables; cpus: the
    cores it may run on (as `taskset -c`), so a load generator on the others cannot take its time."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "stage3_moderation.serve",
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
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    try:
        wait_until_ready(process, url, timeout=ready_timeout)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def answers(url, paths=("/readyz",)):
    """Whether every path of the server at `url` answers 200 now."""
    try:
        return all(httpx.get(url + path, timeout=2).status_code == 200 for path in paths)
    except httpx.HTTPError:
        return False


def wait_until_ready(process, url, paths=("/readyz",), timeout=300, log=None, name="the server"):
    """Until every path answers 200. A process that exits first raises, with the last lines of `log`
    (a binary file it writes to) when given; so does one not ready in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not answers(url, paths):
        if process.poll() is not None:
            tail = ""
            if log is not None:
                log.seek(0)
                tail = ":\n" + "\n".join(log.read().decode(errors="replace").strip().splitlines()[-15:])
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not ready within {timeout} s")
        time.sleep(0.25)


def process_tree(process):
    """The process and all its children, as psutil's (none once it has gone)."""
    try:
        parent = psutil.Process(process.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(process, seconds):
    """Stops a server that stops its own children on SIGTERM (main turns it into Ctrl-C): it gets
    `seconds`, then is killed, and so is any child still there 10 s later. The children are listed
    first, since nothing lists them once their parent has gone."""
    children = process_tree(process)[1:]
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _, left = psutil.wait_procs(children, timeout=10)
    for leftover in left:
        leftover.kill()


def print_result(r):
    print(
        f"{r['n']} requests at concurrency {r['concurrency']}: {r['requests_per_s']} req/s, "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; {r['ok']} ok, {r['errors']} errors {r['statuses']}"
    )


def build_parser():
    p = cli.Parser(
        prog="python -m stage3_moderation.loadgen",
        description=__doc__,
        epilog="Exits with code 1 when no request succeeded (the result is still printed, and written with --out).",
        formatter_class=cli.RawHelp,
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", type=cli.Url(), help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--serve", action="store_true", help="start the server on a free loopback port first")
    p.add_argument("--n", type=cli.Count(1, 100_000), default=500, help="requests, up to 100,000 (default 500)")
    p.add_argument("--concurrency", type=cli.Count(1, 500), default=32, help="clients at once, up to 500 (default 32)")
    p.add_argument("--kind", default="mixed", choices=KINDS)
    p.add_argument(
        "--pool",
        type=cli.Count(1, 1_000),
        default=64,
        help="distinct images, up to 1,000 (default 64; repeats hit the cache)",
    )
    p.add_argument("--api-key", type=cli.Text(), help="sent as Authorization: Bearer <key>")
    p.add_argument("--out", type=cli.OutFile(".json"), help="also write the JSON result here")
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    bodies = workload(args.kind, args.n, args.pool)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    url = args.url
    if args.serve:
        with server() as (url, _):
            result = asyncio.run(drive(url, bodies, args.concurrency, headers))
    else:
        result = asyncio.run(drive(url, bodies, args.concurrency, headers))
    if args.out:
        cli.write_json(result, args.out)
    cli.emit(result, args.json, print_result)
    if result["ok"] == 0:  # a load test that measured nothing but failures failed
        print(
            f"error: all {result['n']} requests failed {result['statuses']}: "
            f"is the server at {url} up, and does it need --api-key?",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
