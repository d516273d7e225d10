# %% [markdown]
# # Week 11 — load tests and benchmarks
#
# How fast is the week-10 service, and where does a request's time go? A load generator starts the
# real server on loopback and sends moderation requests from many clients at once; every answer
# carries the server's own time per stage (a `Server-Timing` header). Then a small benchmark: the
# same service with dynamic batching on and off, at one client and at several. The full benchmark
# (`make bench`: engines, four service configurations, open loops, liveness) takes minutes; its
# reference tables close the notebook. The week's page: [docs/week11.md](../docs/week11.md).
#
# Like week 10, the service runs the tiny models in both profiles. The numbers depend on the machine
# and on what else runs on it: compare rows measured together, not with another machine's.

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week: the load is generated from ShapesWorld scenes
ENGINE = "torch-fp32"  # the service's engine (its default, onnx-fp32, first exports the models: a minute more)
N_REQUESTS = 200  # the load test's requests (`make week11`: 2,000)
CONCURRENCY = 16  # its clients at once (`make week11`: 32)
CLIENTS = [1, 8]  # the benchmark's client counts (`make bench`: 1 8 32)
SECONDS = 1.0  # each benchmark measurement (`make bench`: 8)

# %%
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from IPython.display import Image, Markdown, display

from curriculum import cli, colab, tables
from stage3_moderation import bench, loadgen

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week11")
print(f"profile {PROFILE}; the service runs the bundled tiny models with engine {ENGINE}")
print("load generator:", "wrk" if loadgen.have_wrk() else f"Python (httpx); {loadgen.INSTALL_WRK}")


def in_thread(fn, *args):
    """fn(*args) on a thread of its own: the load generators call asyncio.run, which a notebook's
    thread cannot (the kernel already runs an event loop there)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


# %% [markdown]
# ## A load test
#
# `N_REQUESTS` moderation requests, alternating a text alone and an image with its caption (64
# distinct images, so repeats hit the cache), from `CONCURRENCY` clients that each send the next
# request as soon as the last is answered (a closed loop). Every request must come back 200 with an
# id of its own. `server` is the server's view from Server-Timing: its own p50 / p99, and the mean
# milliseconds of each stage (read, parse, decode, the batcher's queue, the model call, ...).

# %%
bodies = loadgen.workload("mixed", N_REQUESTS)
with loadgen.server(env={"MODERATION_ENGINE": ENGINE}) as (url, process):
    load = in_thread(asyncio.run, loadgen.drive(url, bodies, CONCURRENCY))
loadgen.print_result(load)
server = load["server"]
print(f"distinct ids: {load['unique_ids']}; the server's own p50 {server['p50_ms']} ms, p99 {server['p99_ms']} ms")
print("mean ms per stage:", server["mean_ms"])
cli.write_json(load, OUT / "load.json")

# %% [markdown]
# ## A small benchmark: dynamic batching on and off
#
# Image + text requests with the cache off, so every request reaches the models. With batching on,
# each model stage gathers up to 16 items into one call, waiting up to `max_wait_ms` while more
# requests are on their way; off, every item is its own call. One client gains nothing from
# batching; several clients share model calls, which is where the throughput comes from: watch
# "mean caption batch". Here the
# client and the server share this machine's cores; `make bench` gives each its own.

# %%
image_bodies = loadgen.workload("image", 256)
rows = []
for config in ("batching on, cache off", "batching off, cache off"):
    with loadgen.server(env=bench.SERVICE_CONFIGS[config] | {"MODERATION_ENGINE": ENGINE}) as (url, process):
        for clients in CLIENTS:
            measured = in_thread(bench.closed_loop, url, image_bodies, clients, SECONDS, process.pid)
            rows.append({"config": config, **measured})
display(Markdown(tables.week11.service({"rows": rows}).markdown()))

# %% [markdown]
# ## The reference run of `make bench`
#
# Measured on 2 cores with the server and wrk on a core each: one torch matrix multiply's rate, one
# image tower under each engine (the tiny CLIP's and ViT-B/32's architecture) with its share of the
# best rate the run saw at its precision, the full engines on the tiny models, and the service in
# four configurations.

# %%
reference = {
    part: json.loads(Path(f"results/bench/moderation_{part}.json").read_text()) for part in ("engines", "service")
}
print("one torch matrix multiply, the reference run:", reference["engines"]["matmul_gflops"], "GFLOP/s")
print("and on this machine now:", bench.matmul_gflops(seconds=0.5, n=1024), "GFLOP/s")
for table in (
    tables.week11.engine_towers(reference["engines"]),
    tables.week11.tiny_engines(reference["engines"]),
    tables.week11.service(reference["service"]),
    tables.week11.service_targets(reference["service"]),
):
    display(Markdown(table.markdown()))
display(Image(filename="docs/img/bench/moderation.png"))
