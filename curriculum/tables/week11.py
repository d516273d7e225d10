"""docs/week11.md's and docs/ray-serve.md's tables: the engines, the service under load and Ray Serve
(results/bench/moderation_engines.json, moderation_service.json, ray.json: `make bench`), the load test
(results/week11/load.json). stage3_moderation's benchmarks print the same tables."""

from curriculum.tables import Table, bench_table, f3, table, value


def percent(x):
    return f"{x:.0%}" if x else "n/a"


def achieved_gflops(row):
    """An engine's GFLOP/s on its tower: images/s × the FLOPs of one image (FlopCounterMode)."""
    return row["images_per_s"] * row["gflop_per_image"]


def best_rates(engines):
    """{precision: (GFLOP/s, what ran it)}: the fastest rate the run saw at each precision, of one
    torch matrix multiply and every engine on every tower. Not the hardware's peak: a floor under it."""
    best = {name: (gflops, "one torch matrix multiply") for name, gflops in engines["matmul_gflops"].items()}
    for r in engines["towers"]:  # int8 has no matrix multiply to stand beside: its engine is its own best
        if r["precision"] != "int8" and achieved_gflops(r) > best.get(r["precision"], (0, None))[0]:
            best[r["precision"]] = (achieved_gflops(r), f"{r['engine']} on the {r['model']}")
    return best


def share_of_best(row, best):
    """An engine's FLOP/s over the best its precision reached in the run (None: int8, no reference)."""
    rate = best.get(row["precision"])
    return achieved_gflops(row) / rate[0] if rate else None


def rates(engines):
    """One line: the torch matrix multiply's rates, and the best rate of each precision the run saw."""
    matmul = ", ".join(f"{k} {v:,} GFLOP/s" for k, v in engines["matmul_gflops"].items())
    n = engines.get("matmul_n", 2048)  # runs from before it was recorded multiplied 2048 × 2048 matrices
    best = "; ".join(f"{k} {v:,.1f} GFLOP/s ({who})" for k, (v, who) in best_rates(engines).items())
    return (
        f"One torch matrix multiply, {n} × {n} by {n} × {n} on {engines['threads']} threads: {matmul}. "
        f"The best rate this run saw at each precision: {best}"
    )


def engine_towers(engines):
    best = best_rates(engines)
    rows = [
        [
            r["model"],
            r["engine"],
            r["precision"],
            r["batch"],
            f"{r['images_per_s']:,}",
            f"{r['min_cosine_to_fp32']:.4f}",
            f"{achieved_gflops(r):,.1f}",
            percent(share_of_best(r, best)),
        ]
        for r in engines["towers"]
    ]
    header = ["image tower", "engine", "precision", "batch", "images/s", "min cosine to fp32", "GFLOP/s",
              "share of the run's best"]  # fmt: skip
    return Table(header, rows)


def step_ms(row):
    """A decoder step's milliseconds at 1 and 16 rows, or a dash where the run did not time it."""
    step = row.get("decoder_step_ms")  # runs of make bench before it was measured lack it
    return f"{step['1']} / {step['16']}" if step else "–"


def tiny_engines(engines):
    rows = [
        [
            r["engine"],
            f"{r['embed_images_per_s']:,}",
            r["captions_per_s"],
            step_ms(r),
            f"{r['min_cosine_to_fp32']:.4f}",
            f3(r["text_to_image_r1"]),
            r["captions_same_as_fp32"],
            r["warm_up_s"],
        ]
        for r in engines["tiny_engines"]
    ]
    return Table(
        [
            "tiny engine",
            "embed images/s (16)",
            "captions/s (16)",
            "decoder step ms, 1 / 16 rows",
            "min cosine",
            "text→image R@1",
            "captions same as fp32",
            "warm-up s",
        ],
        rows,
    )


def service(service_result):
    rows = [
        [
            r["config"],
            r["concurrency"],
            r["requests_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["server"]["p50_ms"] if r.get("server") else "–",
            r["server"]["p99_ms"] if r.get("server") else "–",
            r.get("server_cpu_ms_per_request", "–"),
            r.get("mean_batch", {}).get("caption", "–"),
            r["errors"],
        ]
        for r in service_result["rows"]
    ]
    header = ["configuration", "clients", "requests/s", "p50 ms", "p99 ms", "server p50", "server p99",
              "server CPU ms per request", "mean caption batch", "errors"]  # fmt: skip
    return Table(header, rows)


def service_breakdown(service_result):
    """Mean milliseconds per stage (timing.py) of the answered requests at 32 clients."""
    rows = [r for r in service_result["rows"] if r["concurrency"] == 32 and r.get("server")]
    stages = list(rows[0]["server"]["mean_ms"]) if rows else []
    return Table(
        ["configuration, 32 clients", *stages], [[r["config"], *r["server"]["mean_ms"].values()] for r in rows]
    )


def service_open_loop(service_result):
    rows = [
        [
            r["config"],
            f"{r['share_of_max']:.0%}",
            r["offered_per_s"],
            r["answered_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["errors"],
        ]  # fmt: skip
        for r in service_result["open_loop"]
    ]
    return Table(["configuration", "share of max", "offered/s", "answered/s", "p50 ms", "p99 ms", "errors"], rows)


def service_targets(service_result):
    rows = [[t["target"], t["ratio"], "met" if t["met"] else "not met"] for t in service_result["targets"]]
    return Table(["target", "measured", ""], rows)


ENGINES, SERVICE = "bench/moderation_engines.json", "bench/moderation_service.json"
bench_table("week11.towers", 11, "One image tower under each engine", ENGINES, engine_towers)
bench_table("week11.tiny_engines", 11, "The full engines on the tiny models", ENGINES, tiny_engines)
bench_table("week11.service", 11, "The service under load, batching and cache on and off", SERVICE, service)
bench_table(
    "week11.breakdown", 11, "Where a request's time goes, by the server's own clock", SERVICE, service_breakdown
)
bench_table("week11.open_loop", 11, "Latency at fixed arrival rates (open loop)", SERVICE, service_open_loop)
bench_table("week11.targets", 11, "The service's targets, as ratios of one run", SERVICE, service_targets)


RAY = "bench/ray.json"


def ray_serve(r):
    rows = [
        [x["server"], x["concurrency"], x["requests_per_s"], x["p50_ms"], x["p99_ms"], x["server_cpu_ms_per_request"]]
        + [x["errors"]]
        for x in r["rows"]
    ]
    header = ["server", "concurrency", "requests/s", "p50 ms", "p99 ms", "server CPU ms per request", "errors"]
    return Table(header, rows)


bench_table("week11.ray_serve", 11, "The single process vs Ray Serve, same workload, one run", RAY, ray_serve)

PROCESSES = ("ingress", "proxy", "clip", "blip2", "controller", "ray daemons and workers")


def ray_cpu(r):
    """Where each server's CPU goes at 32 clients: milliseconds per answered request, by process."""
    rows = []
    for x in r["rows"]:
        if x["concurrency"] == 32 and x["server"].startswith("Ray"):
            by = x["cpu_ms_by_process"]
            rows.append([x["server"], *(by.get(name, 0.0) for name in PROCESSES), x["server_cpu_ms_per_request"]])
    return Table(["server (32 clients)", *PROCESSES, "all"], rows)


bench_table("week11.ray_cpu", 11, "Ray Serve's CPU per request, by process", RAY, ray_cpu)


@value("week11.ray_workload", [RAY], "make bench")
def ray_workload(results):
    return run_setting(results(RAY))


def run_setting(r):
    """A server benchmark's workload and where its server and load generator ran."""
    cores = r["server_cpus"] if isinstance(r["server_cpus"], str) else ", ".join(map(str, r["server_cpus"]))
    where = f"the server on core {cores}, {r['client']} on the rest"
    return f"{r['workload']}, engine {r['engine']}; {r['cpus']} CPU cores: {where}"


RAY_SINGLE, RAY_DIRECT = "single process (week 10)", "Ray Serve, 1 BLIP-2 replica, direct ingress"
RAY_TARGET = 0.5  # issue 31: Ray Serve, one replica per model, against the single process at 32 clients


def ray_share(rows, server):
    """A server's requests/s at 32 clients over the single process's, in ray_bench's rows."""
    at = {(x["server"], x["concurrency"]): x["requests_per_s"] for x in rows}
    return at[server, 32] / at[RAY_SINGLE, 32]


@value("week11.ray_costs", [RAY], "make bench")
def ray_costs(results):
    """Ray's cost at one client, and at 32: through its proxy, with two BLIP-2 replicas, and with direct ingress."""
    rows = results(RAY)["rows"]
    at = {(x["server"], x["concurrency"]): x for x in rows}
    ray1, ray2 = "Ray Serve, 1 BLIP-2 replica", "Ray Serve, 2 BLIP-2 replicas"
    c1, c32 = at[RAY_SINGLE, 1], at[RAY_SINGLE, 32]

    def share(name):
        return f"{ray_share(rows, name):.2f}×"

    return (
        f"at one client, p50 {at[ray1, 1]['p50_ms']} ms on Ray against {c1['p50_ms']} ms in one process; at 32 "
        f"clients, against {c32['requests_per_s']} requests/s in one process ({c32['server_cpu_ms_per_request']} ms "
        f"of CPU each), Ray Serve answers {at[ray1, 32]['requests_per_s']} through its proxy ({share(ray1)}, "
        f"{at[ray1, 32]['server_cpu_ms_per_request']} ms each), {at[ray2, 32]['requests_per_s']} with two BLIP-2 "
        f"replicas ({share(ray2)}) and {at[RAY_DIRECT, 32]['requests_per_s']} with direct ingress "
        f"({share(RAY_DIRECT)}, {at[RAY_DIRECT, 32]['server_cpu_ms_per_request']} ms each)"
    )


@value("week11.ray_target", [RAY], "make bench")
def ray_target(results):
    """Issue 31's target for Ray Serve: its best configuration with one replica per model answers at
    least half the single process's requests/s at 32 clients."""
    ratio = ray_share(results(RAY)["rows"], RAY_DIRECT)
    return f"{'met' if ratio >= RAY_TARGET else 'not met'} ({ratio:.3f}× against at least {RAY_TARGET}×)"


@value("week11.rates", [ENGINES], "make bench")
def best_of_run(results):
    return rates(results(ENGINES))


@value("week11.flops", [ENGINES], "make bench")
def vit_flops(results):
    row = next(r for r in results(ENGINES)["towers"] if "ViT" in r["model"])
    return f"{row['gflop_per_image']:.1f} GFLOP per ViT-B/32 image"


@table("week11.load", 11, "The load test", ["week11/load.json"], "make week11")
def load_test(results):
    r = results("week11/load.json")
    return Table(
        ["requests", "concurrency", "errors", "distinct ids", "requests/s", "p50 ms", "p99 ms"],
        [[r["n"], r["concurrency"], r["errors"], r["unique_ids"], r["requests_per_s"], r["p50_ms"], r["p99_ms"]]],
    )


ON, OFF = "batching on, cache off", "batching off, cache off"


def service_row(service_result, config, concurrency):
    return next(r for r in service_result["rows"] if r["config"] == config and r["concurrency"] == concurrency)


@value("week11.batching", [SERVICE], "make bench")
def batching_at_32(results):
    s = results(SERVICE)
    on, off = service_row(s, ON, 32), service_row(s, OFF, 32)
    return (
        f"{on['requests_per_s']} requests/s against {off['requests_per_s']} without "
        f"({on['requests_per_s'] / off['requests_per_s']:.1f}×); p50 {on['p50_ms']} against {off['p50_ms']} ms, "
        f"p99 {on['p99_ms']} against {off['p99_ms']} ms"
    )


@value("week11.cache", [SERVICE], "make bench")
def cache_at_8(results):
    s = results(SERVICE)
    pairs = [
        (service_row(s, f"batching {b}, cache off", 8), service_row(s, f"batching {b}, cache on", 8))
        for b in ("on", "off")
    ]
    return (
        f"from {pairs[0][0]['requests_per_s']} to {pairs[0][1]['requests_per_s']} requests/s with batching, and "
        f"from {pairs[1][0]['requests_per_s']} to {pairs[1][1]['requests_per_s']} without"
    )


@value("week11.vit", [ENGINES], "make bench")
def vit_b32(results):
    engines = results(ENGINES)
    best = best_rates(engines)
    rows = {r["engine"]: r for r in engines["towers"] if "ViT" in r["model"]}
    fp32 = rows["torch-fp32"]["images_per_s"]

    def speed(name, r):
        notes = [f"{r['images_per_s'] / fp32:.1f}× eager fp32"] if name != "torch-fp32" else []
        if (shared := share_of_best(r, best)) is not None:
            notes.append(f"{shared:.0%} of the run's best {r['precision']} rate")
        return f"{name} {r['images_per_s']:,} images/s ({', '.join(notes)})"

    return "; ".join(speed(name, r) for name, r in rows.items())


@value("week11.tiny", [ENGINES], "make bench")
def tiny_engine_summary(results):
    rows = {r["engine"]: r for r in results(ENGINES)["tiny_engines"]}
    same = ", ".join(f"{name} {r['captions_same_as_fp32']}" for name, r in rows.items())
    recall = [r["text_to_image_r1"] for r in rows.values()]
    return (
        f"text→image R@1 from {min(recall):.3f} to {max(recall):.3f} across the engines; captions equal to fp32's: "
        f"{same}"
    )


def keeps_parity(row):
    """The parity an engine must keep to serve: every caption equal to fp32's, every vector within cosine 0.9999."""
    same, n = map(int, row["captions_same_as_fp32"].split("/"))
    return same == n and row["min_cosine_to_fp32"] >= 0.9999


@value("week11.default_engine", [ENGINES, SERVICE], "make bench")
def default_engine(results):
    rows = results(ENGINES)["tiny_engines"]
    default = next(r for r in rows if r["engine"] == results(SERVICE)["engine"])
    fastest = max((r for r in rows if keeps_parity(r)), key=lambda r: r["captions_per_s"])
    if fastest is default:
        return (
            f"of the engines that keep parity, the default, {default['engine']}, writes the most captions/s "
            f"({default['captions_per_s']}, against {min(r['captions_per_s'] for r in rows)} for the slowest engine)"
        )
    return (
        f"of the engines that keep parity, {fastest['engine']} writes the most captions/s "
        f"({fastest['captions_per_s']}); the default, {default['engine']}, writes {default['captions_per_s']}"
    )


@value("week11.decoder_step", [ENGINES, SERVICE], "make bench")
def decoder_step(results):
    engine = results(SERVICE)["engine"]
    row = next(r for r in results(ENGINES)["tiny_engines"] if r["engine"] == engine)
    step = row.get("decoder_step_ms")
    if not step:
        return "the time of a step at 1 and 16 rows is not in this run's results (`make bench` measures it)"
    return (
        f"a decoder step of {engine} takes {step['16']} ms for 16 rows against {step['1']} ms for 1, "
        f"{step['16'] / step['1']:.1f}× the time for 16× the rows"
    )


@value("week11.client", [SERVICE], "make bench")
def client_cost(results):
    s = results(SERVICE)
    wrk, python = service_row(s, ON, 32), s["python_client"]
    return (
        f"the Python client spent {python['client_cpu_ms_per_request']} ms of CPU per request and drove "
        f"{python['requests_per_s']} requests/s (p99 {python['p99_ms']} ms, the server's own p99 "
        f"{python['server']['p99_ms']} ms); {wrk['client']} spent {wrk['client_cpu_ms_per_request']} ms and drove "
        f"{wrk['requests_per_s']} (p99 {wrk['p99_ms']} ms)"
    )


@value("week11.engines_alone", [SERVICE], "make bench")
def engines_share(results):
    s = results(SERVICE)
    on = service_row(s, ON, 32)
    return (
        f"the engines alone, on the server's core, answer {s['engines_alone_per_s']} requests/s of this mix, "
        f"at {s['engines_alone_cpu_ms_per_request']} ms of CPU per request; the service answers "
        f"{on['requests_per_s']} ({on['requests_per_s'] / s['engines_alone_per_s']:.0%}), at "
        f"{on['server_cpu_ms_per_request']} ms of CPU per request"
    )


@value("week11.cpu_bound", [SERVICE], "make bench")
def cpu_bound(results):
    s = results(SERVICE)
    on, off = service_row(s, ON, 32), service_row(s, OFF, 32)
    a, b = off["server_cpu_ms_per_request"], on["server_cpu_ms_per_request"]
    cores = 1 if s["server_cpus"] == "all" else len(s["server_cpus"])  # "all": a one-core machine (split_cores)
    busy = on["requests_per_s"] * b / 1000 / cores
    where = "its core" if cores == 1 else f"its {cores} cores"
    return (
        f"with batching, {on['requests_per_s']} requests/s × {b} ms of CPU each kept {where} busy {busy:.0%} of "
        f"the time; without batching the server spends {a} ms of CPU per request, so on a busy core batching "
        f"can raise throughput about {a / b:.1f}× (measured: {on['requests_per_s'] / off['requests_per_s']:.1f}×); "
        f"the models alone need {s['engines_alone_cpu_ms_per_request']} ms per request in batches of 16"
    )


@value("week11.cores", [SERVICE], "make bench")
def service_cores(results):
    s = results(SERVICE)

    return f"server on {cores(s['server_cpus'])}, {s['client']} on {cores(s['client_cpus'])}"


def cores(cpus):
    return "every core" if cpus == "all" else "core " + ", ".join(map(str, cpus))


@value("week11.workload", [SERVICE], "make bench")
def service_workload(results):
    s = results(SERVICE)
    return f"{s['workload']}, engine {s['engine']}"


@value("week11.one_client", [SERVICE], "make bench")
def one_client(results):
    s = results(SERVICE)
    on, off = service_row(s, ON, 1), service_row(s, OFF, 1)
    return (
        f"at one client, p50 {on['p50_ms']} ms with batching and {off['p50_ms']} ms without; the stage queues "
        f"hold a request {on['server']['mean_ms']['queue']} ms on average with batching, "
        f"{off['server']['mean_ms']['queue']} ms without"
    )


@value("week11.where_time_goes", [SERVICE], "make bench")
def where_time_goes(results):
    s = results(SERVICE)
    on, off = service_row(s, ON, 32)["server"]["mean_ms"], service_row(s, OFF, 32)["server"]["mean_ms"]
    batch = service_row(s, ON, 32).get("mean_batch", {}).get("caption")
    return (
        f"without batching, a request spends {off['queue']} of its {off['total']} ms in a queue and "
        f"{off['compute']} ms in model calls; with batching, {on['queue']} ms in a queue and {on['compute']} ms in "
        f"model calls" + (f", whose caption batches hold {batch} images on average" if batch else "")
    )


@value("week11.decode_under_load", [SERVICE], "make bench")
def decode_under_load(results):
    s = results(SERVICE)
    one, many = service_row(s, ON, 1)["server"]["mean_ms"], service_row(s, ON, 32)["server"]["mean_ms"]
    return (
        f"with batching on, `decode` takes {one['decode']} ms at one client and {many['decode']} ms at 32, "
        f"`other` {one['other']} and {many['other']} ms"
    )


@value("week11.tails", [SERVICE], "make bench")
def tails(results):
    """The rows whose client p99 is more than twice the server's own: time outside the server's clock."""
    rows = [r for r in results(SERVICE)["rows"] if r.get("server") and r["p99_ms"] > 2 * r["server"]["p99_ms"]]
    if not rows:
        return "In this run the client's p99 is within twice the server's in every row"
    listed = "; ".join(
        f"{r['config']}, {r['concurrency']} client{'s' if r['concurrency'] > 1 else ''}: {r['p99_ms']} against "
        f"{r['server']['p99_ms']} ms"
        for r in rows
    )
    alone = any(r["concurrency"] == 1 for r in rows)
    return f"In this run the client's p99 is more than twice the server's in {len(rows)} rows ({listed})" + (
        ", one of them with a single client, where no other request was in the server to hold the core" if alone else ""
    )


@value("week11.open_loop_summary", [SERVICE], "make bench")
def open_loop_summary(results):
    """Per configuration, the highest offered rate answered in full, and the first one that was not."""

    def summary(config):
        rows = [r for r in results(SERVICE)["open_loop"] if r["config"] == config]
        kept = [r for r in rows if r["errors"] == 0 and r["answered_per_s"] >= 0.95 * r["offered_per_s"]]
        short = next((r for r in rows if r not in kept), None)
        text = (
            f"{config.split(',')[0]} keeps up with {kept[-1]['offered_per_s']}/s"
            if kept
            else f"{config} keeps up with no rate tried"
        )
        if short:
            statuses = ", ".join(f"{n} × {status}" for status, n in sorted(short["statuses"].items()))
            text += (
                f" and at {short['offered_per_s']}/s answers {short['answered_per_s']}/s "
                f"(p99 {short['p99_ms']} ms; {statuses})"
            )
        return text

    return "; ".join(summary(config) for config in (ON, OFF))


PEERS = "bench/peers.json"


def peers(r):
    """The closed loops: each server at 1, 8 and 32 clients."""
    rows = [
        [x["server"], x["concurrency"], x["requests_per_s"], x["p50_ms"], x["p99_ms"]]
        + [x["server_p50_ms"], x["server_p99_ms"], x["server_cpu_ms_per_request"], x["mean_batch"], x["errors"]]
        for x in r["rows"]
        if x["loop"] == "closed"
    ]
    header = ["server", "clients", "requests/s", "p50 ms", "p99 ms", "server p50 ms", "server p99 ms"]
    return Table(header + ["server CPU ms per request", "mean batch", "errors"], rows)


table("week11.peers", 11, "The batchers people deploy: closed loops", [PEERS], "make bench-peers")(
    lambda results: peers(results(PEERS))
)


def peers_open(r):
    """The open loops: each server at the same arrival rates, latency from when each request was due."""
    rows = [
        [x["server"], x["offered_per_s"], x["answered_per_s"], x["p50_ms"], x["p99_ms"], x["server_p99_ms"]]
        + [x["mean_batch"], x["errors"]]
        for x in r["rows"]
        if x["loop"] == "open"
    ]
    header = ["server", "offered/s", "answered/s", "p50 ms", "p99 ms", "server p99 ms", "mean batch", "errors"]
    return Table(header, rows)


table("week11.peers_open", 11, "The batchers people deploy: open loops", [PEERS], "make bench-peers")(
    lambda results: peers_open(results(PEERS))
)


WEEK10, SIDE_BY_SIDE = "week 10 (its own batchers)", "week 10, 3 model calls at once"


def closed_rows(r):
    return {(x["server"], x["concurrency"]): x for x in r["rows"] if x["loop"] == "closed"}


def against_best(r):
    """(clients, week 10's row, the best peer's row: the most requests/s) at each closed loop."""
    at, peers_ = closed_rows(r), {x["server"] for x in r["rows"]} - {WEEK10, SIDE_BY_SIDE}
    for clients in sorted({c for _, c in at}):
        yield clients, at[WEEK10, clients], max((at[p, clients] for p in peers_), key=lambda x: x["requests_per_s"])


def clients_text(clients):
    return f"{clients} client{'s' * (clients > 1)}"


@value("week11.peers_verdict", [PEERS], "make bench-peers")
def peers_verdict(results):
    """Week 10 against the best peer at each concurrency: requests/s and p99."""
    return "; ".join(
        f"at {clients_text(clients)}, week 10 {ours['requests_per_s']} requests/s (p99 {ours['p99_ms']} ms) "
        f"against {best['server']}'s {best['requests_per_s']} (p99 {best['p99_ms']} ms)"
        for clients, ours, best in against_best(results(PEERS))
    )


@value("week11.peers_target", [PEERS], "make bench-peers")
def peers_target(results):
    """Issue 31's target: at every concurrency, week 10's requests/s at least the best peer's, its p99 at most."""
    missed = [
        clients_text(clients)
        for clients, ours, best in against_best(results(PEERS))
        if ours["requests_per_s"] < best["requests_per_s"] or ours["p99_ms"] > best["p99_ms"]
    ]
    return f"not met at {', '.join(missed)}" if missed else "met at every concurrency"


@value("week11.peers_model_calls", [PEERS], "make bench-peers")
def peers_model_calls(results):
    """One model call at a time against three, on the server's one core."""
    r = results(PEERS)
    at = closed_rows(r)
    opened = {(x["server"], x["offered_per_s"]): x for x in r["rows"] if x["loop"] == "open"}
    top = max(x["offered_per_s"] for x in r["rows"] if x["loop"] == "open")
    one, three = at[WEEK10, 32], at[SIDE_BY_SIDE, 32]
    return (
        f"at 32 clients {one['requests_per_s']} requests/s (p99 {one['p99_ms']} ms) against {three['requests_per_s']} "
        f"(p99 {three['p99_ms']} ms) with three calls at once; at {top:g} requests/s offered, p99 "
        f"{opened[WEEK10, top]['p99_ms']} ms against {opened[SIDE_BY_SIDE, top]['p99_ms']} ms"
    )


@value("week11.peers_workload", [PEERS], "make bench-peers")
def peers_workload(results):
    return run_setting(results(PEERS))
