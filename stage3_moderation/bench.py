"""Week 11: how fast, at what cost in accuracy, and how far from what the hardware can do.

Three measurements, each as ratios within one run (these machines are noisy):

  engines  one torch matrix multiply's GFLOP/s in fp32 and bf16; the image tower of the tiny CLIP
           and of the CLIP ViT-B/32 architecture (random weights: no hub here; speed does not
           depend on the values) under each engine: images/s, min cosine to eager fp32, FLOPs per
           image; on the tiny models also R@1, caption parity and the time of one decoder step at
           1 and 16 rows, through the full engines of engines.py. The docs put each engine's
           FLOP/s over the best rate of its precision the run saw (that matrix multiply or an
           engine): how far it is from the fastest this machine was seen to go, not from the
           hardware's peak, which no measurement here reaches
  service  a real uvicorn process on loopback, on its own core(s), driven by wrk (loadgen's Python
           client where wrk is missing) from another: requests/s and p50 / p99 at 1, 8 and 32
           clients, dynamic batching on vs off, cache on vs off, with the server's own time per
           stage (Server-Timing); an open loop at shares of the maximum; the engines alone on the
           server's core; the service's targets as ratios (docs/week11.md)
  liveness /healthz latency and the server's memory, idle and under the heaviest image load the
           limits admit (images decoded off the event loop, a budget of decoded pixels in flight)
  questions what week 9's visual-question rule costs: the service with the demo policy (CLIP
           concepts + caption rule) against the policy that asks BLIP-2 its questions
           (shapesworld-vqa.yaml on the compliance BLIP-2), image+text requests, cache off, the
           same clients; and the BLIP-2 stage alone, a caption with and without the questions

    python -m stage3_moderation.bench                   # all of them -> outputs/bench/
    python -m stage3_moderation.bench engines --quick   # fewer seconds per measurement
"""

import asyncio
import copy
import io
import os
import re
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from curriculum import MODELS_DIR, OUTPUTS_DIR, REPO_ROOT, cli, runtime, shapesworld, tables, viz, zoo
from stage1_demos.clip_retrieval import recall_table
from stage3_moderation import engines, export_onnx, graphs, inputs, loadgen
from stage3_moderation.settings import Settings

OUT = OUTPUTS_DIR / "bench"
VQA_POLICY = REPO_ROOT / "data" / "policies" / "shapesworld-vqa.yaml"
COMPLIANCE = MODELS_DIR / "tiny-blip2-compliance"
VIT_B_32_BATCH = 16
MATMUL_N = 2048  # the reference matrix multiply: MATMUL_N × MATMUL_N by MATMUL_N × MATMUL_N
CONCURRENCY = (1, 8, 32)


def throughput(fn, items, seconds):
    """Items per second of fn(), after one warm-up call, over at least `seconds` (and 3 calls)."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return items * calls / (time.perf_counter() - start)


# ---------------------------------------------------------------- one matrix multiply
def matmul_gflops(seconds=2.0, n=MATMUL_N):
    """GFLOP/s of one torch n×n×n matrix multiply (2n³ FLOP) in fp32, and in bf16 where it is fast:
    a reference rate, not the hardware's peak (onnxruntime's kernels, or other shapes, can beat it)."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and not runtime.cpu_has_fast_bf16():
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        rates[name] = round(throughput(lambda: a @ b, 2 * n**3, seconds) / 1e9, 1)
    return rates


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
def bench_tower(name, model, pixels, seconds):
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
            rows.append(
                {
                    "model": name,
                    "engine": engine,
                    "precision": precision,
                    "batch": len(pixels),
                    "images_per_s": round(images_per_s, 1),
                    "min_cosine_to_fp32": round(export_onnx.min_cosine(vectors, reference), 6),
                    "gflop_per_image": round(gflop, 6),  # the tiny tower's is 0.008: 3 places would blur it
                    "first_call_s": round(first_call, 2),
                }
            )
    return rows


def decoder_step_ms(engine, image, rows, seconds):
    """Mean milliseconds of one greedy decoder step (the KV-cached step after the prefill) while
    `rows` copies of one image are captioned together: every row writes the same caption, so 1 and
    16 rows take the same steps over the same cache lengths."""
    spent, step = [], engine.step

    def timed(*args):
        start = time.perf_counter()
        out = step(*args)
        spent.append(time.perf_counter() - start)
        return out

    engine.caption_images([image] * rows)  # warm: onnxruntime plans each new shape's memory once
    engine.step = timed  # the instance's attribute hides the method the greedy loop calls ...
    try:
        start = time.perf_counter()
        while not spent or time.perf_counter() - start < seconds:
            engine.caption_images([image] * rows)
    finally:
        del engine.step  # ... until deleted
    return round(1000 * sum(spent) / len(spent), 3)


def bench_tiny_engines(seconds, n=1000, n_captions=100):
    """The full engines on the tiny models: embed and caption speed, R@1, caption parity, and a
    decoder step's time at 1 and 16 rows (what batching captions saves)."""
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
                "decoder_step_ms": {str(rows): decoder_step_ms(engine, images[0], rows, seconds) for rows in (1, 16)},
            }
        )
    return rows


def bench_engines(seconds=3.0):
    matmul = matmul_gflops()
    clip, processor = zoo.load_clip("tiny", "cpu")
    images = [s.image for s in shapesworld.generate("test", 64)]
    tiny_pixels = processor(images=images, return_tensors="np").pixel_values
    vit_pixels = np.random.default_rng(0).standard_normal((VIT_B_32_BATCH, 3, 224, 224)).astype(np.float32)
    towers = bench_tower("tiny CLIP image tower", clip, tiny_pixels, seconds) + bench_tower(
        "CLIP ViT-B/32 image tower", vit_b_32_model(), vit_pixels, seconds
    )
    return {
        "threads": torch.get_num_threads(),
        "fast_bf16": runtime.cpu_has_fast_bf16(),
        "fast_int8": engines.cpu_has_fast_int8(),
        "matmul_gflops": matmul,
        "matmul_n": MATMUL_N,
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
OPEN_LOOP_SHARES = (0.25, 0.5, 0.8, 1.0)  # of the most batching served at 32 clients


def split_cores():
    """(the server's cores, the load generator's): apart, so the client cannot take the server's
    time; the server gets all but one. One core: both share it (None, None)."""
    cores = sorted(os.sched_getaffinity(0))
    return (set(cores[:-1]), {cores[-1]}) if len(cores) > 1 else (None, None)


def engines_alone(bodies, cpus, batch=16):
    """Requests/s of the models called directly on the service's cores, no HTTP: each image+text
    request's image embedding, caption and text embedding, in batches of `batch` (the service's
    largest), with the service's threads. The ceiling the service is measured against."""
    texts = [body["input"][0]["text"] for body in bodies]
    images = [  # the very images the service decodes, read from the bodies
        Image.open(io.BytesIO(inputs.read_data_url(body["input"][1]["image_url"]["url"], "input")[0])).convert("RGB")
        for body in bodies
    ]
    engine = engines.load(engines.DEFAULT_ENGINE, threads=Settings().threads)
    engine.warm_up(batch)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus or before)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(bodies), batch):
            engine.embed_images(images[i : i + batch])
            engine.caption_images(images[i : i + batch])
            engine.embed_texts(texts[i : i + batch])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {
            "requests_per_s": round(len(bodies) / seconds, 1),
            "cpu_ms_per_request": round(cpu * 1000 / len(bodies), 2),
        }
    finally:
        os.sched_setaffinity(0, before)


def batch_totals(url):
    """{stage: (items, model calls)} so far, from the server's /metrics."""
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'moderation_batch_size_(sum|count)\{stage="(\w+)"\} (\S+)', text)
    totals = {}
    for kind, stage, number in found:
        items, calls = totals.get(stage, (0.0, 0.0))
        totals[stage] = (float(number), calls) if kind == "sum" else (items, float(number))
    return totals


def closed_loop(url, bodies, concurrency, seconds, server_pid=None, path="/v1/moderations"):
    """wrk where it is installed, else the Python client; with the server's CPU milliseconds per
    answered request and the mean batch size of each model stage, when the server's pid is given."""
    if server_pid:
        cpu, batches = loadgen.cpu_seconds(server_pid), batch_totals(url)
    if loadgen.have_wrk():
        result = loadgen.drive_wrk(url, bodies, concurrency, seconds, path)
    else:
        some = bodies[: max(64, round(concurrency * seconds * 4))]
        result = asyncio.run(loadgen.drive(url, some, concurrency, path=path))
    if server_pid:
        result["server_cpu_ms_per_request"] = round(
            (loadgen.cpu_seconds(server_pid) - cpu) * 1000 / max(result["ok"], 1), 2
        )
        after = batch_totals(url)
        result["mean_batch"] = {
            stage: round((items - batches.get(stage, (0, 0))[0]) / calls_made, 1)
            for stage, (items, calls) in after.items()
            if (calls_made := calls - batches.get(stage, (0, 0))[1]) > 0
        }
    return result


def bench_service(seconds=8.0, n=960, pool=64):
    """Image + text moderation requests (images cycle through `pool` distinct scenes), against a
    real server on its own cores: closed loops at 1, 8 and 32 clients for each configuration, the
    Python client beside wrk, open loops at shares of the maximum, the engines alone, and the targets."""
    if not loadgen.have_wrk():
        print(loadgen.INSTALL_WRK)
    bodies = loadgen.workload("image", n, pool)
    server_cpus, client_cpus = split_cores()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # wrk, started from here, inherits it
    rows, open_rows, python_client = [], [], None
    for name, env in tqdm(SERVICE_CONFIGS.items(), desc="service configurations"):
        with loadgen.server(env, cpus=server_cpus) as (url, process):
            closed_loop(url, bodies, max(CONCURRENCY), 2)  # warm up code paths and allocators
            for concurrency in CONCURRENCY:
                rows.append({"config": name, **closed_loop(url, bodies, concurrency, seconds, process.pid)})
            if name == "batching on, cache off":
                python_client = asyncio.run(loadgen.drive(url, bodies[:480], max(CONCURRENCY)))
                most = rows[-1]["requests_per_s"]
            if "cache off" in name:
                for share in OPEN_LOOP_SHARES:
                    result = asyncio.run(loadgen.open_loop(url, bodies, share * most, seconds))
                    open_rows.append({"config": name, "share_of_max": share, **result})
    alone = engines_alone(bodies, server_cpus)
    result = {
        "workload": f"{n} image+text moderation requests, {pool} distinct images",
        "engine": engines.DEFAULT_ENGINE,
        "server_cpus": sorted(server_cpus) if server_cpus else "all",
        "client_cpus": sorted(client_cpus) if client_cpus else "all",
        "client": "wrk" if loadgen.have_wrk() else "python",
        "rows": rows,
        "python_client": python_client,
        "open_loop": open_rows,
        "engines_alone_per_s": alone["requests_per_s"],
        "engines_alone_cpu_ms_per_request": alone["cpu_ms_per_request"],
    }
    return {**result, "targets": targets(result)}


QUESTION_CONFIGS = {  # both: batching on, cache off
    "concepts + caption rule (shapesworld.yaml)": {"MODERATION_CACHE_ENTRIES": "0"},
    "questions + caption rule (shapesworld-vqa.yaml)": {
        "MODERATION_CACHE_ENTRIES": "0",
        "MODERATION_POLICY": str(VQA_POLICY),
        "MODERATION_BLIP2": str(COMPLIANCE),
    },
}


def reading_ms(engine, images, questions, seconds):
    """Milliseconds per image of BLIP-2's stage: the caption, and p(yes) to each question."""
    return round(1000 / throughput(lambda: engine.read_images(images, questions), len(images), seconds), 2)


def bench_questions(seconds=8.0, n=960, pool=64):
    """The two policies served alike (week 11's closed loop on the server's own cores, server CPU ms
    per request, mean batch per stage), and the BLIP-2 stage alone in batches of 16, with and without
    the questions: where the rule's cost goes."""
    from stage3_moderation import policy as policies

    bodies = loadgen.workload("image", n, pool)
    server_cpus, client_cpus = split_cores()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    export_onnx.ensure_exported(blip2_name=str(COMPLIANCE))  # before the clock: the server would export at start
    rows = []
    for name, env in tqdm(QUESTION_CONFIGS.items(), desc="policies"):
        with loadgen.server(env, cpus=server_cpus) as (url, process):
            closed_loop(url, bodies, max(CONCURRENCY), 2)
            for concurrency in CONCURRENCY:
                rows.append({"config": name, **closed_loop(url, bodies, concurrency, seconds, process.pid)})
    questions = policies.load(VQA_POLICY).questions
    engine = engines.load(engines.DEFAULT_ENGINE, blip2_name=str(COMPLIANCE), threads=Settings().threads)
    images = [sample.image for sample in shapesworld.generate("test", 16, seed=3)]
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, server_cpus or before)
    try:
        stage = {
            "caption_ms_per_image": reading_ms(engine, images, (), seconds / 2),
            "caption_and_questions_ms_per_image": reading_ms(engine, images, questions, seconds / 2),
            "questions": len(questions),
        }
    finally:
        os.sched_setaffinity(0, before)
    return {
        "workload": f"{n} image+text moderation requests, {pool} distinct images, cache off",
        "engine": engines.DEFAULT_ENGINE,
        "client": "wrk" if loadgen.have_wrk() else "python",
        "rows": rows,
        "blip2_stage_batch_16": stage,
    }


def targets(result):
    """The service's four targets (docs/week11.md) as measured ratios, each with whether it is met."""
    row = {(r["config"], r["concurrency"]): r for r in result["rows"]}
    on, off = row["batching on, cache off", 32], row["batching off, cache off", 32]
    open_loop = {(r["config"], r["share_of_max"]): r for r in result["open_loop"]}
    sustained = [  # rates batching-off keeps up with: answered nearly all, in time
        share
        for share in OPEN_LOOP_SHARES
        if (r := open_loop["batching off, cache off", share])["errors"] == 0
        and r["answered_per_s"] >= 0.95 * r["offered_per_s"]
    ]
    at_80 = open_loop["batching on, cache off", 0.8]
    checks = {
        "throughput with batching / without, 32 clients (>= 3)": (
            on["requests_per_s"] / off["requests_per_s"],
            3,
            ">=",
        ),
        "p99 with batching / without, 32 clients (<= 1)": (on["p99_ms"] / off["p99_ms"], 1, "<="),
        "service / engines alone, requests/s (>= 0.5)": (
            on["requests_per_s"] / result["engines_alone_per_s"],
            0.5,
            ">=",
        ),
        "p99 / p50 at 80% of the maximum, batching on (<= 3)": (at_80["p99_ms"] / at_80["p50_ms"], 3, "<="),
    }
    for share in sustained:
        a, b = open_loop["batching on, cache off", share], open_loop["batching off, cache off", share]
        checks[f"p99 with batching / without, open loop at {share:.0%} (<= 1)"] = (a["p99_ms"] / b["p99_ms"], 1, "<=")
    return [
        {"target": name, "ratio": round(ratio, 2), "met": ratio >= bound if op == ">=" else ratio <= bound}
        for name, (ratio, bound, op) in checks.items()
    ]


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
    `concurrency` clients, after an attack (3 requests of 16 such images, which the
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
    """The same tables the docs show (curriculum/tables/week10.py, week11.py), for whichever parts ran."""
    lines = []
    if engines_result:
        lines += [
            tables.week11.rates(engines_result),
            "",
            tables.week11.engine_towers(engines_result).markdown(),
            "",
            tables.week11.tiny_engines(engines_result).markdown(),
        ]
    if service_result:
        lines += [
            "",
            f"Service ({service_result['workload']}, engine {service_result['engine']}; server on cores "
            f"{service_result['server_cpus']}, {service_result['client']} on {service_result['client_cpus']}):",
            "",
            tables.week11.service(service_result).markdown(),
            "",
            "Where the time goes (mean ms per stage, the server's clock):",
            "",
            tables.week11.service_breakdown(service_result).markdown(),
            "",
            f"Open loop (engines alone: {service_result['engines_alone_per_s']} requests/s):",
            "",
            tables.week11.service_open_loop(service_result).markdown(),
            "",
            tables.week11.service_targets(service_result).markdown(),
        ]
    if liveness_result:
        r = liveness_result
        lines += [
            "",
            f"Liveness ({r['workload']}): attack {r['attack_statuses']}, load {r['load_statuses']} in "
            f"{r['load_seconds']} s; server RSS {r['rss_before_mb']} MiB before, {r['rss_peak_mb']} MiB at peak.",
            "",
            tables.week10.liveness(r).markdown(),
        ]
    return "\n".join(lines) + "\n"


def plot(engines_result, service_result, out):
    plt = viz._pyplot()
    panels = (1 if engines_result else 0) + (2 if service_result else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.5 * max(panels, 1), 4), squeeze=False)
    axes = list(axes[0])
    if engines_result:
        ax = axes.pop(0)
        rows = [r for r in engines_result["towers"] if "ViT" in r["model"]]
        ax.bar([r["engine"] for r in rows], [r["images_per_s"] for r in rows], color="tab:blue")
        for i, r in enumerate(rows):
            ax.text(i, r["images_per_s"], f"cos {r['min_cosine_to_fp32']:.4f}", ha="center", va="bottom", fontsize=7)
        ax.set(title=f"CLIP ViT-B/32 image tower, batch {VIT_B_32_BATCH}", ylabel="images / s")
    if service_result:
        for config in SERVICE_CONFIGS:
            rows = [r for r in service_result["rows"] if r["config"] == config]
            axes[0].plot(
                [r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=config
            )
        axes[0].set(
            title="moderation service on loopback",
            xlabel="concurrent clients",
            ylabel="requests / s",
            xscale="log",
            xticks=CONCURRENCY,
            xticklabels=[str(c) for c in CONCURRENCY],
        )
        axes[0].minorticks_off()
        axes[0].legend(fontsize=8)
        for config, color in (("batching on, cache off", "tab:blue"), ("batching off, cache off", "tab:orange")):
            rows = [r for r in service_result["open_loop"] if r["config"] == config]
            for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
                axes[1].plot(
                    [r["offered_per_s"] for r in rows],
                    [r[key] for r in rows],
                    style,
                    marker="o",
                    color=color,
                    label=f"{config.split(',')[0]}, {key[:3]}",
                )
        axes[1].set(
            title="latency at a fixed arrival rate (open loop)",
            xlabel="offered requests / s",
            ylabel="ms (from when each request was due)",
            yscale="log",
        )
        axes[1].legend(fontsize=8)
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return viz._save_figure(fig, out)


def print_report(result):
    print(markdown(result.get("engines"), result.get("service"), result.get("liveness")))


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.bench", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("what", nargs="?", default="all", choices=("all", "engines", "service", "liveness", "questions"))
    p.add_argument(
        "--out",
        type=cli.OutFolder(),
        default=str(OUT),
        help=f"folder for moderation_*.json, moderation.md, moderation.png (default {OUT.relative_to(REPO_ROOT)})",
    )
    p.add_argument("--quick", action="store_true", help="0.5 s per measurement instead of 3 (a smoke run)")
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.out
    result = {}
    if args.what in ("all", "engines"):
        result["engines"] = bench_engines(0.5 if args.quick else 3.0)
        cli.write_json(result["engines"], out / "moderation_engines.json")
    if args.what in ("all", "service"):
        result["service"] = bench_service(seconds=2.0 if args.quick else 8.0)
        cli.write_json(result["service"], out / "moderation_service.json")
    if args.what in ("all", "liveness"):
        result["liveness"] = bench_liveness(requests=24 if args.quick else 200)
        cli.write_json(result["liveness"], out / "moderation_liveness.json")
    if args.what in ("all", "questions"):
        result["questions"] = bench_questions(seconds=2.0 if args.quick else 8.0)
        cli.write_json(result["questions"], out / "moderation_questions.json")
    if args.what == "questions":  # not part of the report: docs/week09.md shows it
        return cli.emit(result, args.json, lambda r: print(f"wrote {out}/moderation_questions.json"))
    with cli.atomic_paths(out / "moderation.md", out / "moderation.png") as (md, png):  # the report: both or neither
        md.write_text(markdown(result.get("engines"), result.get("service"), result.get("liveness")), encoding="utf-8")
        plot(result.get("engines"), result.get("service"), png)
    cli.emit(result, args.json, print_report)
    print(f"wrote {out}/moderation.md and moderation.png")


if __name__ == "__main__":
    cli.run(main)
