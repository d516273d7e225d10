"""Ray Serve vs the single process: week 11's service workload and load generator against both
servers in one run (part of `make bench`), so the numbers are ratios within that run.

    servers   the week-10 app (one uvicorn process, its own batchers), and the same system on Ray
              Serve (configs/serve/moderation.yaml) with 1 and with 2 BLIP-2 replicas
    load      image+text moderation requests from week 11's `workload`, the cache off so every
              request reaches the models, at concurrency 1, 8 and 32

    python -m stage3_moderation.ray_bench                       # -> outputs/bench/ray.json
    python -m stage3_moderation.ray_bench --n 96 --out /tmp/r.json   # a smoke run
"""

import asyncio
import os
from contextlib import contextmanager

from tqdm import tqdm

from curriculum import OUTPUTS_DIR, cli, tables
from stage3_moderation import engines, loadgen, ray_app
from stage3_moderation.bench import CONCURRENCY

OUT = OUTPUTS_DIR / "bench" / "ray.json"
NO_CACHE = {"MODERATION_CACHE_ENTRIES": "0"}  # week 11's "batching on, cache off" configuration


def drive(url, bodies, concurrency):
    """One closed-loop run of the load generator: the one call to change for another generator."""
    return asyncio.run(loadgen.drive(url, bodies, concurrency))


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


def bench_ray(n=960, pool=64):
    bodies = loadgen.workload("image", n, pool)
    rows = []
    for name, start in tqdm(SERVERS.items(), desc="servers"):
        with start() as url:  # one server at a time, stopped before the next starts
            drive(url, bodies[:64], max(CONCURRENCY))  # warm up code paths, allocators and Ray's routers
            for concurrency in CONCURRENCY:
                result = drive(url, bodies, concurrency)
                keep = ("concurrency", "n", "errors", "requests_per_s", "p50_ms", "p99_ms")
                rows.append({"server": name, **{k: result[k] for k in keep}})
    return {
        "workload": f"{n} image+text moderation requests, {pool} distinct images, cache off",
        "engine": engines.DEFAULT_ENGINE,
        "cpus": os.cpu_count(),
        "rows": rows,
    }


def main(argv=None):
    p = cli.Parser(description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--n", type=cli.positive_int, default=960, help="requests per concurrency")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = bench_ray(args.n)
    cli.write_json(result, args.out)
    cli.emit(result, args.json, lambda r: print(tables.ray_serve(r).markdown()))


if __name__ == "__main__":
    cli.run(main)
