"""Week 10: is the service alive while it is attacked? /healthz latency and the server's memory and
CPU while bodies and connections built to cost it the most arrive, one attack after the other (part
of `make bench`; the heavy images the limits admit are `stage3_moderation.bench liveness`'s).

    python -m stage3_moderation.liveness                  # starts the server -> outputs/bench/liveness.json
    python -m stage3_moderation.liveness --url http://127.0.0.1:8000 --pid 4242   # a server you started

  integers      {"input": [1, 1, ...]}: 1,000,000 integers (1.9 MiB) } from --clients clients, back to
  keys          708,308 unknown JSON keys (8.0 MiB)                   } back, up to --requests in all
  form-fields   a form of 130,764 one-byte fields (7.3 MiB)           } for at most --seconds
  header        a header line of --header-mib MiB (GET /healthz)      }
  slow-headers  --connections connections sending their headers a byte a second, for --slow-seconds
  slow-body     --connections connections sending an 8 MB body a byte a second, for --slow-seconds

Meanwhile a process of its own asks /healthz every 20 ms. A probe's latency counts from when it
was due, and a probe held up counts once for each probe due while it waited (no coordinated
omission: a 15 s stall is 750 late probes, not one). Per attack: the server's peak RSS (VmHWM,
reset before it), its CPU seconds, the most file descriptors it held (its connections, mostly),
and for the slow attacks how many connections the server closed, and when. Loopback only; every
attack bounded in count and time.
"""

import asyncio
import multiprocessing
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, tables
from stage3_moderation import loadgen
from stage3_moderation.bench import percentiles

OUT = OUTPUTS_DIR / "bench" / "liveness.json"
PROBE_S = 0.02
REQUEST_TIMEOUT_S = 180  # an attack request the old server took 16 s of CPU to refuse, shared by four clients


# ---------------------------------------------------------------- what the server holds
def reset_peak(pid):
    """Linux: VmHWM (the peak RSS) starts again from the current RSS (proc(5), clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def probe(url, stop, results, timeout):
    """Asks /healthz every PROBE_S s until `stop` is set, then sends back (latencies in ms from when
    each probe was due, one entry per probe it held up; failures)."""
    latencies, failures = [], 0
    with httpx.Client(base_url=url, timeout=timeout) as http:
        due = time.perf_counter()
        while not stop.is_set():
            try:
                failures += http.get("/healthz").status_code != 200
            except httpx.HTTPError:
                failures += 1
            late = time.perf_counter() - due
            held_up = int(late // PROBE_S) + 1  # this probe and those due while it waited
            latencies += [(late - k * PROBE_S) * 1000 for k in range(held_up)]
            due += held_up * PROBE_S
            stop.wait(max(0.0, due - time.perf_counter()))
    results.send((latencies, failures))


@contextmanager
def watching(url, pid, timeout=60.0):
    """While the block runs: /healthz asked from a process of its own (this one's work, such as
    sending 64 MiB, would delay its probes: 90 ms at p99 where a separate poller saw 4), and the
    most file descriptors the server held; the latencies and failures are filled in at the end."""
    context = multiprocessing.get_context("fork")
    stop, (receive, send) = context.Event(), context.Pipe(duplex=False)
    prober = context.Process(target=probe, args=(url, stop, send, timeout), daemon=True)
    prober.start()
    seen, done = {"fds": 0}, threading.Event()

    def count_fds():
        while not done.wait(0.1):
            seen["fds"] = max(seen["fds"], len(os.listdir(f"/proc/{pid}/fd")))

    counter = threading.Thread(target=count_fds, daemon=True)
    counter.start()
    try:
        yield seen
    finally:
        stop.set()
        done.set()
        seen["healthz_ms"], seen["failures"] = receive.recv()
        prober.join()
        counter.join()


# ---------------------------------------------------------------- the attacks
def raw_request(head, body=b""):
    """HTTP/1.1 bytes: the request line and headers in `head`, then Host, Content-Length, Connection: close."""
    return f"{head}Host: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


def moderation(content_type, body):
    return raw_request(f"POST /v1/moderations HTTP/1.1\r\nContent-Type: {content_type}\r\n", body)


def form_fields(n):
    field = b'--zz\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n'
    return b"".join(field % i for i in range(n)) + b"--zz--\r\n"


BODIES = {  # name: (what it is, its request from the arguments)
    "integers": (
        "a list of 1,000,000 integers (1.9 MiB JSON)",
        lambda args: moderation("application/json", b'{"input": [' + b",".join([b"1"] * 1_000_000) + b"]}"),
    ),
    "keys": (
        "708,308 unknown JSON keys",
        lambda args: moderation(
            "application/json", b'{"input": "x", ' + b",".join(b'"k%d":1' % i for i in range(708_308)) + b"}"
        ),
    ),
    "form-fields": (
        "a form of 130,764 fields",
        lambda args: moderation("multipart/form-data; boundary=zz", form_fields(130_764)),
    ),
    "header": (
        "a header line of --header-mib MiB",
        lambda args: raw_request(f"GET /healthz HTTP/1.1\r\nX-Long: {'a' * (args.header_mib * 2**20)}\r\n"),
    ),
}
SLOW = {  # name: (what it is, what each connection sends before its byte a second)
    "slow-headers": ("headers at a byte a second", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "),
    "slow-body": (
        "an 8 MB body at a byte a second",
        b"POST /v1/moderations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 8000000\r\n\r\n",
    ),
}
ATTACKS = (*BODIES, *SLOW)


async def exchange(host, port, request):
    """One request on its own connection -> its status, or what went wrong."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return type(e).__name__
    try:
        writer.write(request)
        try:
            await writer.drain()
        except ConnectionError:  # refused before it was all sent: its answer may be there
            pass
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        return line.split()[1].decode() if line else "closed"
    except (OSError, asyncio.TimeoutError) as e:
        return type(e).__name__
    finally:
        writer.close()


async def burst(host, port, request, clients, requests, seconds):
    """`clients` clients sending `request` back to back until `requests` were sent in all or
    `seconds` passed; their statuses and how long each took."""
    statuses, took, sent, start = {}, [], 0, time.perf_counter()

    async def client():
        nonlocal sent
        while sent < requests and time.perf_counter() - start < seconds:
            sent += 1
            began = time.perf_counter()
            status = await exchange(host, port, request)
            took.append((time.perf_counter() - began) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"requests": sent, "statuses": statuses, "request_ms": percentiles(took)}


async def trickle(host, port, head, seconds):
    """One connection that sends `head`, then a byte a second: the seconds until the server closed
    it, or None if it was still open after `seconds`."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    try:
        writer.write(head)
        while time.perf_counter() - start < seconds:
            try:
                if not await asyncio.wait_for(reader.read(65536), 1.0):
                    return time.perf_counter() - start
            except asyncio.TimeoutError:
                writer.write(b"a")
                await writer.drain()
    except OSError:
        return time.perf_counter() - start
    finally:
        writer.close()
    return None


async def slow(host, port, head, connections, seconds):
    """`connections` trickles at once: how many the server closed, and after how long (the median)."""
    closed = sorted(
        t
        for t in await asyncio.gather(*(trickle(host, port, head, seconds) for _ in range(connections)))
        if t is not None
    )
    return {
        "connections": connections,
        "closed_by_server": len(closed),
        "closed_after_s": round(closed[len(closed) // 2], 1) if closed else None,
    }


def measure(url, pid, args):
    """/healthz idle, then under each attack in turn, with the server's memory, CPU and descriptors."""
    host, port = url.removeprefix("http://").split(":")
    with watching(url, pid) as idle:
        time.sleep(2)
    rows = []
    for name in (n for n in ATTACKS if n in args.only):
        if name in BODIES:
            what, build = BODIES[name]
            attack = burst(host, int(port), build(args), args.clients, args.requests, args.seconds)
        else:
            what, head = SLOW[name]
            attack = slow(host, int(port), head, args.connections, args.slow_seconds)
        print(f"{name}: {what}", flush=True)
        reset_peak(pid)
        before, cpu = loadgen.memory_mb(pid)["rss"], loadgen.cpu_seconds(pid)
        with watching(url, pid) as seen:
            outcome = asyncio.run(attack)
            time.sleep(1)  # and the second after: the server may still be at work
        rows.append(
            {
                "attack": name,
                "what": what.replace("--header-mib", str(args.header_mib)),
                **outcome,
                "healthz_ms": percentiles(seen["healthz_ms"]),
                "healthz_failures": seen["failures"],
                "rss_before_mb": round(before),
                "rss_peak_mb": round(loadgen.memory_mb(pid)["peak"]),
                "server_cpu_s": round(loadgen.cpu_seconds(pid) - cpu, 2),
                "fds_peak": seen["fds"],
            }
        )
    return {
        "server": url if args.url else "python -m stage3_moderation.serve, started here",
        "healthz_idle_ms": percentiles(idle["healthz_ms"]),
        "attacks": rows,
    }


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.liveness", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--url", type=cli.Url(), help="a server you started (with --pid); default: start one")
    p.add_argument("--pid", type=cli.Count(1, 2**22), help="that server's process id: its memory, CPU and sockets")
    p.add_argument("--only", nargs="+", choices=ATTACKS, default=list(ATTACKS), help="these attacks (default all)")
    p.add_argument(
        "--clients", type=cli.Count(1, 64), default=4, help="clients of each body attack, up to 64 (default 4)"
    )
    p.add_argument(
        "--requests", type=cli.Count(1, 1_000), default=8, help="requests of each body attack, up to 1,000 (default 8)"
    )
    p.add_argument(
        "--seconds",
        type=cli.Number(minimum=1, maximum=300),
        default=10.0,
        help="each body attack sends for at most this long, 1 to 300 (default 10)",
    )
    p.add_argument(
        "--connections", type=cli.Count(1, 2_000), default=200, help="of each slow attack, up to 2,000 (default 200)"
    )
    p.add_argument(
        "--slow-seconds",
        type=cli.Number(minimum=1, maximum=300),
        default=35.0,
        help="each slow attack lasts this long, 1 to 300 (default 35: past the 30 s body timeout)",
    )
    p.add_argument(
        "--header-mib", type=cli.Count(1, 256), default=64, help="the long header line, 1 to 256 MiB (default 64)"
    )
    p.add_argument("--out", type=cli.OutFile(".json"), default=str(OUT), help=f"(default {OUT.relative_to(REPO_ROOT)})")
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if (args.url is None) != (args.pid is None):
        raise cli.UserError("--url and --pid go together: the server's address and its process id")
    with nullcontext((args.url, None)) if args.url else loadgen.server() as (url, process):
        result = measure(url, args.pid or process.pid, args)
    cli.write_json(result, args.out)
    cli.emit(result, args.json, lambda r: print(tables.week10.attacks(r).markdown()))


if __name__ == "__main__":
    cli.run(main)
