"""Week 11: how fast, at what cost in accuracy, and how far from what the hardware can do.

Three measurements, each as ratios within one run (these machines are noisy):

  limits   the CPU's matrix-multiply throughput (GFLOP/s) in fp32 and bf16: the ceiling every
           engine is compared against ("share of limit" = achieved FLOP/s / this)
  engines  the image tower of the tiny CLIP and of the CLIP ViT-B/32 architecture (random
           weights: no hub here; speed does not depend on the values) under each engine:
           images/s, min cosine to eager fp32, share of its precision's limit; on the tiny
           models also R@1 and caption parity through the full engines of engines.py
  service  a real uvicorn process on loopback driven by loadgen: requests/s and p50 / p99 at
           concurrency 1, 8 and 32, dynamic batching on vs off, cache on vs off
  liveness /healthz latency and the server's memory, idle and under the heaviest image load the
           limits admit (images decoded off the event loop, a budget of decoded pixels in flight)

    python -m stage3_moderation.bench                   # all four -> outputs/bench/
    python -m stage3_moderation.bench engines --quick   # fewer seconds per measurement
"""

import asyncio
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from curriculum import OUTPUTS_DIR, cli, runtime, shapesworld, tables, viz, zoo
from stage1_demos.clip_retrieval import recall_table
from stage3_moderation import engines, export_onnx, graphs, loadgen

OUT = OUTPUTS_DIR / "bench"
VIT_B_32_BATCH = 16
CONCURRENCY = (1, 8, 32)


def throughput(fn, items, seconds):
    """Items per second of fn(), after one warm-up call, over at least `seconds` (and 3 calls)."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return items * calls / (time.perf_counter() - start)


# ---------------------------------------------------------------- limits
def matmul_limits(seconds=2.0, n=2048):
    """GFLOP/s of an n×n×n matrix multiply (2n³ FLOP) in fp32, and in bf16 where it is fast."""
    limits = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and not runtime.cpu_has_fast_bf16():
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        limits[name] = round(throughput(lambda: a @ b, 2 * n**3, seconds) / 1e9, 1)
    return limits


# ---------------------------------------------------------------- engines on one image tower
def flops_per_image(module, pixels):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(pixels[:1])
    return counter.get_total_flops()


def tower_runners(model, pixels, folder):
    """{engine: fn(pixel_values) -> unit vectors} for one CLIP image tower."""
    fp32 = graphs.ClipImage(model.float()).eval()
    path = Path(folder) / "clip_image.onnx"
    export_onnx.export_graph(fp32, (pixels[:2],), {"pixel_values": {0: torch.export.Dim("batch")}}, path)
    runners = {"torch-fp32": lambda x: fp32(torch.from_numpy(x)).numpy()}
    fast_dtype = engines.best_precision()
    low = graphs.ClipImage(copy.deepcopy(model).to(fast_dtype)).eval()
    if fast_dtype == torch.bfloat16:
        runners["torch-bf16"] = lambda x: low(torch.from_numpy(x).bfloat16()).float().numpy()
    compiled = engines.compile_module(low)
    runners["compile"] = lambda x: compiled(torch.from_numpy(x).to(fast_dtype)).float().numpy()
    session = engines.onnx_session(path)
    runners["onnx-fp32"] = lambda x: session.run(None, {"pixel_values": x})[0]
    if engines.cpu_has_fast_int8():
        int8 = engines.onnx_session(export_onnx.quantize(path))
        runners["onnx-int8"] = lambda x: int8.run(None, {"pixel_values": x})[0]
    return runners, "bf16" if fast_dtype == torch.bfloat16 else "fp32"


def vit_b_32_model():
    """CLIP ViT-B/32's architecture (CLIPConfig's defaults are openai/clip-vit-base-patch32's
    sizes) with random weights, seed 0."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    return CLIPModel(CLIPConfig()).eval()


@torch.no_grad()
def bench_tower(name, model, pixels, limits, seconds):
    rows = []
    gflop = flops_per_image(graphs.ClipImage(model), torch.from_numpy(pixels)) / 1e9
    with tempfile.TemporaryDirectory() as folder:
        runners, fast = tower_runners(model, torch.from_numpy(pixels), folder)
        reference = runners["torch-fp32"](pixels)
        for engine, run in tqdm(runners.items(), desc=f"engines on {name}"):
            start = time.perf_counter()
            vectors = run(pixels)  # the first call of `compile` compiles: its cost is reported
            first_call = time.perf_counter() - start
            images_per_s = throughput(lambda: run(pixels), len(pixels), seconds)
            precision = {"torch-bf16": "bf16", "compile": fast, "onnx-int8": "int8"}.get(engine, "fp32")
            limit = limits.get(precision)
            rows.append(
                {
                    "model": name,
                    "engine": engine,
                    "precision": precision,
                    "batch": len(pixels),
                    "images_per_s": round(images_per_s, 1),
                    "min_cosine_to_fp32": round(export_onnx.min_cosine(vectors, reference), 6),
                    "gflop_per_image": round(gflop, 3),
                    "share_of_limit": round(images_per_s * gflop / limit, 3) if limit else None,
                    "first_call_s": round(first_call, 2),
                }
            )
    return rows


def bench_tiny_engines(seconds, n=1000, n_captions=100):
    """The full engines on the tiny models: embed and caption speed, R@1, caption parity."""
    samples = shapesworld.generate("test", n)
    images, texts = [s.image for s in samples], [s.caption_en for s in samples]
    rows, reference = [], None
    export_onnx.ensure_exported()
    for name in tqdm(engines.ENGINES, desc="tiny engines"):
        engine = engines.load(name)
        start = time.perf_counter()
        engine.warm_up(max_batch_size=16)
        warm_up = time.perf_counter() - start
        image_vectors, text_vectors = engine.embed_images(images), engine.embed_texts(texts)
        captions = engine.caption_images(images[:n_captions])
        reference = reference or (image_vectors, captions)
        recall = recall_table(samples, image_vectors, text_vectors)
        rows.append(
            {
                "engine": engine.name,
                "requested": name,
                "warm_up_s": round(warm_up, 1),
                "embed_images_per_s": round(throughput(lambda: engine.embed_images(images[:16]), 16, seconds), 1),
                "captions_per_s": round(throughput(lambda: engine.caption_images(images[:16]), 16, seconds), 1),
                "min_cosine_to_fp32": round(export_onnx.min_cosine(image_vectors, reference[0]), 6),
                "text_to_image_r1": recall["text_to_image"]["R@1"],
                "captions_same_as_fp32": f"{sum(a == b for a, b in zip(captions, reference[1]))}/{n_captions}",
            }
        )
    return rows


def bench_engines(seconds=3.0):
    limits = matmul_limits()
    clip, processor = zoo.load_clip("tiny", "cpu")
    images = [s.image for s in shapesworld.generate("test", 64)]
    tiny_pixels = processor(images=images, return_tensors="np").pixel_values
    vit_pixels = np.random.default_rng(0).standard_normal((VIT_B_32_BATCH, 3, 224, 224)).astype(np.float32)
    towers = bench_tower("tiny CLIP image tower", clip, tiny_pixels, limits, seconds) + bench_tower(
        "CLIP ViT-B/32 image tower", vit_b_32_model(), vit_pixels, limits, seconds
    )
    return {
        "threads": torch.get_num_threads(),
        "fast_bf16": runtime.cpu_has_fast_bf16(),
        "fast_int8": engines.cpu_has_fast_int8(),
        "matmul_gflops": limits,
        "towers": towers,
        "tiny_engines": bench_tiny_engines(seconds),
    }


# ---------------------------------------------------------------- the service under load
SERVICE_CONFIGS = {
    "batching on, cache off": {"MODERATION_CACHE_ENTRIES": "0"},
    "batching off, cache off": {
        "MODERATION_CACHE_ENTRIES": "0",
        "MODERATION_MAX_BATCH_SIZE": "1",
        "MODERATION_MAX_WAIT_MS": "0",
    },
    "batching on, cache on": {},
    "batching off, cache on": {"MODERATION_MAX_BATCH_SIZE": "1", "MODERATION_MAX_WAIT_MS": "0"},
}


def bench_service(n=960, pool=64):
    """Image + text moderation requests; images cycle through `pool` distinct scenes."""
    bodies = loadgen.workload("image", n, pool)
    rows = []
    for name, env in tqdm(SERVICE_CONFIGS.items(), desc="service configurations"):
        with loadgen.server(env) as (url, _):
            asyncio.run(loadgen.drive(url, bodies[:64], max(CONCURRENCY)))  # warm up code paths and allocators
            for concurrency in CONCURRENCY:
                result = asyncio.run(loadgen.drive(url, bodies, concurrency))
                rows.append(
                    {
                        "config": name,
                        **{k: result[k] for k in ("concurrency", "n", "errors", "requests_per_s", "p50_ms", "p99_ms")},
                    }
                )
    return {
        "workload": f"{n} image+text moderation requests, {pool} distinct images",
        "engine": engines.DEFAULT_ENGINE,
        "rows": rows,
    }


# ---------------------------------------------------------------- liveness under heavy images
def percentiles(ms):
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "max": round(float(np.max(ms)), 1),
        "n": len(ms),
    }


def bench_liveness(requests=200, concurrency=12, idle_seconds=3.0, env=None):
    """/v1/embeddings requests of 4 PNGs of 4096² pixels each (the per-request pixel limit) from
    `concurrency` clients, after the issue's attack (3 requests of 16 such images, which the
    limit refuses), while a thread asks /healthz every 20 ms; the server's RSS before and at peak."""
    heavy = loadgen.large_images_body(4)
    attack = {"input": heavy["input"] * 4}
    with loadgen.server(env) as (url, process):
        with loadgen.watch_health(url) as idle:
            time.sleep(idle_seconds)
        before = loadgen.memory_mb(process.pid)
        with loadgen.watch_health(url) as loaded:
            refused = asyncio.run(loadgen.drive(url, [attack] * 3, 3, path="/v1/embeddings"))
            admitted = asyncio.run(loadgen.drive(url, [heavy] * requests, concurrency, path="/v1/embeddings"))
        after = loadgen.memory_mb(process.pid)
    idle_ms, loaded_ms = percentiles(idle), percentiles(loaded)
    return {
        "workload": f"{requests} requests of 4 × 4096² PNGs at concurrency {concurrency}, after 3 of 16",
        "attack_statuses": refused["statuses"],
        "load_statuses": admitted["statuses"],
        "load_seconds": admitted["seconds"],
        "healthz_idle_ms": idle_ms,
        "healthz_loaded_ms": loaded_ms,
        "healthz_p50_ratio": round(loaded_ms["p50"] / idle_ms["p50"], 2),
        "rss_before_mb": round(before["rss"]),
        "rss_peak_mb": round(after["peak"]),
    }


# ---------------------------------------------------------------- report
def markdown(engines_result, service_result, liveness_result=None):
    """The same tables the docs show (curriculum/tables.py), for whichever parts ran."""
    lines = []
    if engines_result:
        limits = ", ".join(f"{k} {v:,} GFLOP/s" for k, v in engines_result["matmul_gflops"].items())
        lines += [
            f"Matrix-multiply limit ({engines_result['threads']} threads): {limits}",
            "",
            tables.engine_towers(engines_result).markdown(),
            "",
            tables.tiny_engines(engines_result).markdown(),
        ]
    if service_result:
        lines += [
            "",
            f"Service ({service_result['workload']}, engine {service_result['engine']}):",
            "",
            tables.service(service_result).markdown(),
        ]
    if liveness_result:
        r = liveness_result
        lines += [
            "",
            f"Liveness ({r['workload']}): attack {r['attack_statuses']}, load {r['load_statuses']} in "
            f"{r['load_seconds']} s; server RSS {r['rss_before_mb']} MiB before, {r['rss_peak_mb']} MiB at peak.",
            "",
            tables.liveness(r).markdown(),
        ]
    return "\n".join(lines) + "\n"


def plot(engines_result, service_result, out):
    plt = viz._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if engines_result:
        rows = [r for r in engines_result["towers"] if "ViT" in r["model"]]
        axes[0].bar([r["engine"] for r in rows], [r["images_per_s"] for r in rows], color="tab:blue")
        for i, r in enumerate(rows):
            axes[0].text(
                i, r["images_per_s"], f"cos {r['min_cosine_to_fp32']:.4f}", ha="center", va="bottom", fontsize=7
            )
        axes[0].set(title=f"CLIP ViT-B/32 image tower, batch {VIT_B_32_BATCH}", ylabel="images / s")
    if service_result:
        for config in SERVICE_CONFIGS:
            rows = [r for r in service_result["rows"] if r["config"] == config]
            axes[1].plot(
                [r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=config
            )
        axes[1].set(
            title="moderation service on loopback",
            xlabel="concurrent clients",
            ylabel="requests / s",
            xscale="log",
            xticks=CONCURRENCY,
            xticklabels=[str(c) for c in CONCURRENCY],
        )
        axes[1].minorticks_off()
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return viz._save_figure(fig, out)


def print_report(result):
    print(markdown(result.get("engines"), result.get("service"), result.get("liveness")))


def main(argv=None):
    p = cli.Parser(description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("what", nargs="?", default="all", choices=("all", "engines", "service", "liveness"))
    p.add_argument("--out", default=str(OUT), help="folder for moderation_*.json, moderation.md, moderation.png")
    p.add_argument("--quick", action="store_true", help="0.5 s per measurement instead of 3 (a smoke run)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    result = {}
    if args.what in ("all", "engines"):
        result["engines"] = bench_engines(0.5 if args.quick else 3.0)
        cli.write_json(result["engines"], out / "moderation_engines.json")
    if args.what in ("all", "service"):
        result["service"] = bench_service(n=96 if args.quick else 960)
        cli.write_json(result["service"], out / "moderation_service.json")
    if args.what in ("all", "liveness"):
        result["liveness"] = bench_liveness(requests=24 if args.quick else 200)
        cli.write_json(result["liveness"], out / "moderation_liveness.json")
    (out / "moderation.md").write_text(markdown(result.get("engines"), result.get("service"), result.get("liveness")))
    plot(result.get("engines"), result.get("service"), out / "moderation.png")
    cli.emit(result, args.json, print_report)
    print(f"wrote {out}/moderation.md and moderation.png")


if __name__ == "__main__":
    cli.run(main)
