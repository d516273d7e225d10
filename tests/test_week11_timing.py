"""Week 11: the server times every stage of a request (timing.py), and the load generators read it."""

import asyncio
import re
import time

import httpx
import pytest

from stage3_moderation import bench, loadgen, timing

pytestmark = pytest.mark.week11
WAIT_MS = 60


@pytest.fixture(scope="module")
def server_url(onnx_export):
    """Cache off and a long batching wait, which a lone request must not spend: no company is on its way."""
    env = {
        "MODERATION_ONNX_DIR": str(onnx_export[0]),
        "MODERATION_CACHE_ENTRIES": "0",
        "MODERATION_MAX_WAIT_MS": str(WAIT_MS),
    }
    with loadgen.server(env) as (url, _):
        yield url


def test_the_stages_add_up_to_the_request_and_the_wait_is_queue(server_url):
    body = loadgen.workload("image", 1)[0]
    with httpx.Client(base_url=server_url) as http:
        http.post("/v1/moderations", json=body)  # the first request of a process pays for imports
        start = time.perf_counter()
        response = http.post("/v1/moderations", json=body)
        client_ms = (time.perf_counter() - start) * 1000
    assert response.status_code == 200
    ms = timing.parse_header(response.headers["server-timing"])
    assert list(ms) == [*timing.STAGES, "other", "total"] and all(ms[s] >= 0 for s in timing.STAGES)
    named = sum(ms[s] for s in timing.STAGES)
    # the named stages hold the request's time: what is left (routing, building the answer) is small
    assert named == pytest.approx(ms["total"] - ms["other"], abs=0.01)
    assert ms["other"] < max(3.0, 0.1 * ms["total"]), ms
    # alone, with no request on its way, it did not wait max_wait_ms for company (batching.py): its queue
    # is the other stages' model calls before its own, on this one model-call slot per core
    assert ms["queue"] < min(WAIT_MS - 1, ms["compute"]), ms
    assert ms["compute"] > 0 and ms["decode"] > 0 and ms["total"] <= client_ms


def test_stage_histograms_count_every_answered_request(server_url):
    def count():
        metrics = httpx.get(f"{server_url}/metrics").text
        return float(re.search(r'moderation_stage_seconds_count\{stage="queue"\} (\S+)', metrics).group(1))

    before = count()
    with httpx.Client(base_url=server_url) as http:
        for body in loadgen.workload("mixed", 4):
            assert http.post("/v1/moderations", json=body).status_code == 200
    assert count() == before + 4


def test_only_the_item_that_came_back_last_sets_the_models_time():
    t = timing.Timing()
    t.item(queued=0.0, started=0.010, finished=0.050)  # the caption, back last
    t.item(queued=0.0, started=0.002, finished=0.005)  # the text embedding, back earlier
    assert t.seconds["queue"] == pytest.approx(0.010) and t.seconds["compute"] == pytest.approx(0.040)
    breakdown = t.breakdown(total=0.2)
    assert sum(v for k, v in breakdown.items() if k != "total") == pytest.approx(0.2)
    assert timing.parse_header(t.header(0.2))["compute"] == pytest.approx(40.0)


@pytest.mark.skipif(not loadgen.have_wrk(), reason=loadgen.INSTALL_WRK)
def test_wrk_drives_the_server_and_brings_back_its_timings(server_url):
    result = loadgen.drive_wrk(server_url, loadgen.workload("image", 16), concurrency=4, seconds=1)
    assert result["ok"] > 0 and result["errors"] == 0 and result["client"] == "wrk"
    means = result["server"]["mean_ms"]
    assert sum(v for k, v in means.items() if k != "total") == pytest.approx(means["total"], rel=0.01)
    assert result["p50_ms"] >= result["server"]["p50_ms"] * 0.9  # the client sees at least the server's time


def test_open_loop_sends_on_time_and_counts_from_when_each_request_was_due(server_url):
    result = asyncio.run(loadgen.open_loop(server_url, loadgen.workload("text", 8), rate=20, seconds=1))
    assert result["n"] == 20 and result["statuses"] == {"200": 20}
    assert result["p50_ms"] >= result["server"]["p50_ms"]


def row(config, concurrency, rps, p50, p99):
    return {"config": config, "concurrency": concurrency, "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99}


def open_row(config, share, offered, answered, p50, p99):
    return {"config": config, "share_of_max": share, "offered_per_s": offered, "answered_per_s": answered,
            "errors": 0, "p50_ms": p50, "p99_ms": p99}  # fmt: skip


def test_targets_are_the_issues_ratios():
    on, off = "batching on, cache off", "batching off, cache off"
    result = {
        "rows": [row(on, 32, 300, 100, 150), row(off, 32, 90, 350, 450)],
        "engines_alone_per_s": 400,
        "open_loop": [open_row(on, s, 300 * s, 300 * s, 20, 50) for s in bench.OPEN_LOOP_SHARES]
        + [open_row(off, 0.25, 75, 75, 30, 40)]
        + [open_row(off, s, 300 * s, 80, 900, 2000) for s in bench.OPEN_LOOP_SHARES[1:]],
    }
    targets = {t["target"]: t for t in bench.targets(result)}
    assert targets["throughput with batching / without, 32 clients (>= 3)"] == {
        "target": "throughput with batching / without, 32 clients (>= 3)", "ratio": 3.33, "met": True}  # fmt: skip
    assert targets["service / engines alone, requests/s (>= 0.5)"]["ratio"] == 0.75
    assert targets["p99 / p50 at 80% of the maximum, batching on (<= 3)"]["met"] is True
    # batching-off keeps up only at 25%, where batching's p99 (50) is worse than its 40: not met
    assert [t for t in targets if "open loop" in t] == ["p99 with batching / without, open loop at 25% (<= 1)"]
    assert targets["p99 with batching / without, open loop at 25% (<= 1)"]["met"] is False


def test_without_wrk_the_benchmark_says_how_to_install_it_and_drives_with_python(server_url, monkeypatch):
    monkeypatch.setattr(loadgen, "have_wrk", lambda: False)
    result = bench.closed_loop(server_url, loadgen.workload("text", 8), concurrency=2, seconds=0.5)
    assert result["client"] == "python" and result["errors"] == 0 and result["n"] >= 8
    assert "apt-get install wrk" in loadgen.INSTALL_WRK
