"""Ray Serve vs the single process: week 11's service workload and load generator against both
servers in one run (part of `make bench`), so the numbers are ratios within that run.

    servers   the week-10 app (one uvicorn process, its own batchers), and the same system on Ray
              Serve (configs/serve/moderation.yaml) with 1 and with 2 BLIP-2 replicas
    load      image+text moderation requests from week 11's `workload`, the cache off so every
              request reaches the models, at concurrency 1, 8 and 32, from week 11's load
              generator (wrk where installed), sharing every core with the server

    python -m stage3_moderation.ray_bench                              # -> outputs/bench/ray.json
    python -m stage3_moderation.ray_bench --seconds 2 --out /tmp/r.json   # a smoke run
"""

import os
from contextlib import contextmanager

from tqdm import tqdm

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, tables
from stage3_moderation import bench, engines, loadgen, ray_app
from stage3_moderation.bench import CONCURRENCY

OUT = OUTPUTS_DIR / "bench" / "ray.json"
NO_CACHE = {"MODERATION_CACHE_ENTRIES": "0"}  # week 11's "batching on, cache off" configuration


@contextmanager
def single_process():
    with loadgen.server(NO_CACHE) as (url, _):
        yield url


def ray_serve(blip2_replicas):
    """The config file's deployments on a local Ray cluster, BLIP-2 fixed at this many replicas."""
    options = ray_app.config_options(Blip2={"num_replicas": blip2_replicas})
    return ray_app.serving({"cache_entries": 0}, options)


SERVERS = {
    "single process (week 10)": single_process,
    "Ray Serve, 1 BLIP-2 replica": lambda: ray_serve(1),
    "Ray Serve, 2 BLIP-2 replicas": lambda: ray_serve(2),
}


def bench_ray(seconds=8.0, n=960, pool=64):
    """Week 11's closed loop (bench.closed_loop: wrk where installed). Every server gets every core,
    as Ray's replicas need more than one to run side by side; wrk shares them, which it can afford
    (week 11 measures its cost per request), where the Python client could not."""
    bodies = loadgen.workload("image", n, pool)
    rows = []
    for name, start in tqdm(SERVERS.items(), desc="servers"):
        with start() as url:  # one server at a time, stopped before the next starts
            bench.closed_loop(url, bodies, max(CONCURRENCY), 2)  # warm up code paths, allocators and Ray's routers
            for concurrency in CONCURRENCY:
                result = bench.closed_loop(url, bodies, concurrency, seconds)
                keep = ("concurrency", "n", "errors", "requests_per_s", "p50_ms", "p99_ms")
                rows.append({"server": name, **{k: result[k] for k in keep}})
    return {
        "workload": f"image+text moderation requests ({pool} distinct images), cache off, {seconds:g} s per run",
        "engine": engines.DEFAULT_ENGINE,
        "cpus": os.cpu_count(),
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
