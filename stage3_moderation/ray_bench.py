"""Ray Serve vs the single process: week 11's service workload and load generator against both
servers in one run (part of `make bench`), so the numbers are ratios within that run.

    servers   the week-10 app (one uvicorn process, its own batchers), and the same system on Ray
              Serve (configs/serve/moderation.yaml) with 1 and with 2 BLIP-2 replicas
    load      image+text moderation requests from week 11's `workload`, the cache off so every
              request reaches the models, at concurrency 1, 8 and 32, from week 11's load
              generator (wrk where installed); as in week 11, the server on all cores but one
              (every process of Ray's: the daemons, controller, proxy and replicas) and wrk on that one
    cost      the server's CPU milliseconds per answered request, and for Ray each process's share:
              where its extra cost goes

    python -m stage3_moderation.ray_bench                              # -> outputs/bench/ray.json
    python -m stage3_moderation.ray_bench --seconds 2 --out /tmp/r.json   # a smoke run
"""

import os
import re
from contextlib import contextmanager

import psutil
from tqdm import tqdm

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, tables
from stage3_moderation import bench, engines, loadgen, ray_app
from stage3_moderation.bench import CONCURRENCY

OUT = OUTPUTS_DIR / "bench" / "ray.json"
NO_CACHE = {"MODERATION_CACHE_ENTRIES": "0"}  # week 11's "batching on, cache off" configuration
# what a server's process is, from its title (setproctitle) or command line
ROLES = [
    ("proxy", re.compile(r"ProxyActor")),
    ("ingress", re.compile(r"ServeReplica:\w+:Moderation")),
    ("clip", re.compile(r"ServeReplica:\w+:Clip")),
    ("blip2", re.compile(r"ServeReplica:\w+:Blip2")),
    ("controller", re.compile(r"ServeController")),
    ("week 10 server", re.compile(r"stage3_moderation\.serve")),
    # the other peers of peers_bench.py: LitServe's workers are multiprocessing's spawned children
    ("litserve", re.compile(r"stage3_moderation\.litserve_app|multiprocessing\.(spawn|resource_tracker)")),
    ("triton", re.compile(r"tritonserver|triton_app|triton_python_backend_stub|pytriton")),
]


def role(process):
    text = " ".join(process.cmdline()) or process.name()
    return next((name for name, pattern in ROLES if pattern.search(text)), "ray daemons and workers")


def cpu_by_role(pids):
    """{role: CPU seconds so far} over the given processes (those that have exited are left out)."""
    totals = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            totals[role(process)] = totals.get(role(process), 0.0) + times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return totals


@contextmanager
def single_process(cpus):
    with loadgen.server(NO_CACHE, cpus=cpus) as (url, process):
        yield url, lambda: [process.pid]


@contextmanager
def ray_serve(blip2_replicas, cpus, direct_ingress=False):
    """The config file's deployments on a local Ray cluster started on `cpus` (its processes inherit
    them), BLIP-2 fixed at this many replicas; this process goes back to its own cores."""
    options = ray_app.config_options(Blip2={"num_replicas": blip2_replicas})
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus or mine)
    try:  # 2 logical CPUs (Ray's reservations, not cores), whatever the cores
        # every replica runs on these cores: the ingress calls the models as many at once as they have, as week 10 does
        settings = {"cache_entries": 0, "model_calls_at_once": len(cpus or mine)}
        serving = ray_app.serving(settings, options, direct_ingress=direct_ingress)
        url = serving.__enter__()
    finally:
        os.sched_setaffinity(0, mine)
    try:
        yield url, lambda: [p.pid for p in psutil.Process().children(recursive=True) if p.name() != "wrk"]
    finally:
        serving.__exit__(None, None, None)


SERVERS = {
    "single process (week 10)": single_process,
    "Ray Serve, 1 BLIP-2 replica": lambda cpus: ray_serve(1, cpus),
    "Ray Serve, 2 BLIP-2 replicas": lambda cpus: ray_serve(2, cpus),
    "Ray Serve, 1 BLIP-2 replica, direct ingress": lambda cpus: ray_serve(1, cpus, direct_ingress=True),
}


def measured(url, pids, bodies, concurrency, seconds, path="/v1/moderations"):
    """bench.closed_loop, with the server's CPU ms per answered request, in all and by process."""
    before = cpu_by_role(pids())
    result = bench.closed_loop(url, bodies, concurrency, seconds, path=path)
    after, ok = cpu_by_role(pids()), max(result["ok"], 1)
    by_role = {k: round((after[k] - before.get(k, 0.0)) * 1000 / ok, 2) for k in after}
    keep = ("concurrency", "n", "errors", "requests_per_s", "p50_ms", "p99_ms")
    return {
        **{k: result[k] for k in keep},
        "server_cpu_ms_per_request": round(sum(by_role.values()), 2),
        "cpu_ms_by_process": by_role,
        "server_p50_ms": (result.get("server") or {}).get("p50_ms"),
        "server_p99_ms": (result.get("server") or {}).get("p99_ms"),
    }


def bench_ray(seconds=8.0, n=960, pool=64):
    """Week 11's closed loop (bench.closed_loop: wrk where installed) against each server in turn."""
    bodies = loadgen.workload("image", n, pool)
    server_cpus, client_cpus = bench.split_cores()
    mine = os.sched_getaffinity(0)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # wrk, started from here, inherits it
    rows = []
    try:
        for name, start in tqdm(SERVERS.items(), desc="servers"):
            with start(server_cpus) as (url, pids):  # one server at a time, stopped before the next starts
                bench.closed_loop(url, bodies, max(CONCURRENCY), 2)  # warm up code paths, allocators, Ray's routers
                for concurrency in CONCURRENCY:
                    rows.append({"server": name, **measured(url, pids, bodies, concurrency, seconds)})
    finally:
        os.sched_setaffinity(0, mine)
    return {
        "workload": f"image+text moderation requests ({pool} distinct images), cache off, {seconds:g} s per run",
        "engine": engines.DEFAULT_ENGINE,
        "cpus": os.cpu_count(),
        "server_cpus": sorted(server_cpus) if server_cpus else "all",
        "client": "wrk" if loadgen.have_wrk() else "python",
        "rows": rows,
    }


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.ray_bench", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument(
        "--seconds",
        type=cli.Number(minimum=1, maximum=300),
        default=8.0,
        help="per server and concurrency, 1 to 300 (default 8)",
    )
    p.add_argument(
        "--out",
        type=cli.OutFile(".json"),
        default=str(OUT),
        help=f"the JSON result (default {OUT.relative_to(REPO_ROOT)})",
    )
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = bench_ray(args.seconds)
    cli.write_json(result, args.out)
    cli.emit(result, args.json, lambda r: print(tables.week11.ray_serve(r).markdown()))


if __name__ == "__main__":
    cli.run(main)
