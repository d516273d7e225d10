"""Week 11's batcher against the batchers people deploy: the same moderation pipeline served four
ways and measured in one run (`make bench-peers`, part of `make bench`), as ratios within it.

    servers   week 10's service (uvicorn, a batcher per model stage), LitServe (litserve_app.py),
              Triton through PyTriton (triton_app.py) and Ray Serve (ray_app.py, direct ingress):
              the same engines (ONNX), policy and answers (tests/test_week11_*.py hold them to it);
              and week 10 with its three stages' model calls side by side (as it was before this comparison)
    load      image+text moderation requests, cache off; the server on all cores but one (with
              every process it starts), wrk on that one: closed loops at 1, 8 and 32 clients,
              then open loops at fixed arrival rates (loadgen.open_loop: no coordinated omission)
    measured  requests/s; p50 and p99 as the client saw them and as the server did (its
              Server-Timing; Triton: its statistics' mean); the server's CPU ms per answered
              request; the mean batch it formed (images per BLIP-2 call); each the median of
              --rounds rounds over all the servers (the machine drifts by more than they differ)

    python -m stage3_moderation.peers_bench                           # -> outputs/bench/peers.json, peers.png
    python -m stage3_moderation.peers_bench --servers week10 litserve --seconds 2 --rounds 1 --out /tmp/p.json
"""

import asyncio
import json
import os
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import httpx
from tqdm import tqdm

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, tables, viz
from stage3_moderation import bench, engines, loadgen, ray_bench, triton_app
from stage3_moderation.bench import CONCURRENCY

OUT = OUTPUTS_DIR / "bench" / "peers.json"
RATES = (25, 50, 100, 150, 200)  # offered requests/s, the same for every server
NO_CACHE = {"MODERATION_CACHE_ENTRIES": "0"}


@dataclass
class Peer:
    name: str
    start: Callable  # cpus -> a context manager yielding (base URL, () -> the server's pids)
    batches: Callable  # base URL -> (images, BLIP-2 calls) so far
    path: str = "/v1/moderations"
    wrap: Optional[Callable] = None  # a /v1/moderations body -> the body this server takes


def caption_batches(url):
    """Week 10's /metrics (the service, and Ray Serve's ingress, which runs week 10's batchers)."""
    return bench.batch_totals(url).get("caption", (0.0, 0.0))


@contextmanager
def week10(cpus, env=None):
    with loadgen.server(NO_CACHE | (env or {}), cpus=cpus) as (url, process):
        yield url, lambda: [process.pid]


@contextmanager
def litserve(cpus):
    from stage3_moderation import litserve_app

    with litserve_app.server(NO_CACHE, cpus=cpus) as served:
        yield served


def litserve_batches(url):
    counted = httpx.get(f"{url}/batches").json()
    return counted["items"], counted["batches"]


@contextmanager
def triton(cpus):
    with triton_app.server(NO_CACHE, cpus=cpus) as served:
        yield served


def triton_batches(url):
    counted = triton_app.stats(url)
    return counted["inference_count"], counted["execution_count"]


def triton_body(body):
    return json.loads(triton_app.request_body(json.dumps(body).encode(), "application/json"))


@contextmanager
def ray_serve(cpus):
    with ray_bench.ray_serve(1, cpus, direct_ingress=True) as served:
        yield served


PEERS = {
    "week10": Peer("week 10 (its own batchers)", week10, caption_batches),
    # before this comparison: the three stages' model calls side by side on the server's core
    "week10-side-by-side": Peer(
        "week 10, 3 model calls at once",
        lambda cpus: week10(cpus, {"MODERATION_MODEL_CALLS_AT_ONCE": "3"}),
        caption_batches,
    ),
    "litserve": Peer("LitServe", litserve, litserve_batches),
    "triton": Peer("Triton (PyTriton)", triton, triton_batches, "/v2/models/moderation/infer", triton_body),
    "ray": Peer("Ray Serve (direct ingress)", ray_serve, caption_batches),
}


def mean_batch(peer, url, before):
    images, calls = peer.batches(url)
    return round((images - before[0]) / (calls - before[1]), 2) if calls > before[1] else None


def measure(peer, url, pids, bodies, seconds):
    """Closed loops at each concurrency, then open loops at each rate, with the server's CPU and batches."""
    rows = []
    bench.closed_loop(url, bodies, max(CONCURRENCY), 2, path=peer.path)  # warm up code paths and allocators
    for concurrency in CONCURRENCY:
        before = peer.batches(url)
        row = ray_bench.measured(url, pids, bodies, concurrency, seconds, peer.path)
        rows.append({"server": peer.name, "loop": "closed", **row, "mean_batch": mean_batch(peer, url, before)})
    for rate in RATES:
        before = peer.batches(url)
        row = asyncio.run(loadgen.open_loop(url, bodies, rate, seconds / 2, path=peer.path))
        server = row.pop("server") or {}
        rows.append(
            {
                "server": peer.name,
                "loop": "open",
                **{k: row[k] for k in ("offered_per_s", "answered_per_s", "n", "errors", "p50_ms", "p99_ms")},
                "server_p50_ms": server.get("p50_ms"),
                "server_p99_ms": server.get("p99_ms"),
                "mean_batch": mean_batch(peer, url, before),
            }
        )
    return rows


def median_rows(rows):
    """One row per server and load: each number the median of its rounds' (n and errors: their sum)."""
    same = ("server", "loop", "concurrency", "offered_per_s")  # what a row measured
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key) for key in same), []).append(row)
    merged = []
    for group in groups.values():
        row = {}
        for key, first in group[0].items():
            values = [r[key] for r in group if r.get(key) is not None]
            if key in same:
                row[key] = first
            elif key in ("n", "errors"):
                row[key] = sum(values)
            elif isinstance(first, dict):
                row[key] = {k: round(statistics.median(r[key].get(k, 0.0) for r in group), 2) for k in first}
            elif isinstance(first, (int, float)) and values:
                row[key] = round(statistics.median(values), 2)
            else:
                row[key] = first
        merged.append(row)
    return merged


def bench_peers(names=tuple(PEERS), seconds=8.0, rounds=3, n=960, pool=64):
    """Every server measured in each of `rounds` rounds, one server at a time, in an order that turns
    by one each round: the machine's speed drifts by more than the servers differ, and a drift then
    falls on all of them. The table gives each number's median over the rounds."""
    bodies = loadgen.workload("image", n, pool)
    server_cpus, client_cpus = bench.split_cores()
    mine = os.sched_getaffinity(0)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # wrk and the open loop's client, started from here, inherit it
    rows = []
    runs = [names[(r + i) % len(names)] for r in range(rounds) for i in range(len(names))]
    try:
        for name in tqdm(runs, desc="servers × rounds"):
            peer = PEERS[name]
            wrapped = [peer.wrap(b) for b in bodies] if peer.wrap else bodies
            with peer.start(server_cpus) as (url, pids):  # one server at a time, stopped before the next starts
                rows += measure(peer, url, pids, wrapped, seconds)
    finally:
        os.sched_setaffinity(0, mine)
    order = {PEERS[name].name: i for i, name in enumerate(names)}
    return {
        "workload": f"image+text moderation requests ({pool} distinct images), cache off, {seconds:g} s per "
        f"closed loop and {seconds / 2:g} s per open loop; the median of {rounds} rounds",
        "engine": engines.DEFAULT_ENGINE,
        "cpus": os.cpu_count(),
        "server_cpus": sorted(server_cpus) if server_cpus else "all",
        "client": "wrk" if loadgen.have_wrk() else "python",
        "rounds": rounds,
        "rows": sorted(median_rows(rows), key=lambda row: order[row["server"]]),  # stable: loads keep their order
    }


def plot(result, out):
    """Requests/s against clients (closed loop), p99 against offered load (open loop): a line per server."""
    plt = viz._pyplot()
    fig, (closed, opened) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["server"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["server"] == name]
        shut = [r for r in rows if r["loop"] == "closed"]
        closed.plot([r["concurrency"] for r in shut], [r["requests_per_s"] for r in shut], marker="o", label=name)
        free = [r for r in rows if r["loop"] == "open"]
        opened.plot([r["offered_per_s"] for r in free], [r["p99_ms"] for r in free], marker="o", label=name)
    closed.set(
        title="closed loop", xlabel="concurrent clients", ylabel="requests / s", xscale="log", xticks=CONCURRENCY
    )
    closed.set_xticklabels([str(c) for c in CONCURRENCY])
    closed.minorticks_off()
    opened.set(title="open loop", xlabel="offered requests / s", ylabel="p99 ms (from when due)", yscale="log")
    for ax in (closed, opened):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return viz._save_figure(fig, out)


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.peers_bench", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument(
        "--servers", nargs="+", choices=list(PEERS), default=list(PEERS), help="which servers (default: all)"
    )
    p.add_argument(
        "--seconds",
        type=cli.Number(minimum=1, maximum=300),
        default=8.0,
        help="per closed loop (an open loop runs half as long), 1 to 300 (default 8)",
    )
    p.add_argument(
        "--rounds",
        type=cli.Count(1, 20),
        default=3,
        help="rounds over all servers; the table gives each number's median (default 3)",
    )
    p.add_argument(
        "--out",
        type=cli.OutFile(".json"),
        default=str(OUT),
        help=f"the JSON result, and the picture beside it (.png) (default {OUT.relative_to(REPO_ROOT)})",
    )
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = bench_peers(tuple(args.servers), args.seconds, args.rounds)
    with cli.atomic_paths(args.out, cli.beside(args.out, ".png")) as (data, picture):  # both or neither
        cli.write_json(result, data)
        plot(result, picture)
    cli.emit(result, args.json, lambda r: print(tables.week11.peers(r).markdown()))


if __name__ == "__main__":
    cli.run(main)
