"""Week 11: the real server under load, and the benchmark's measurements on a small scale."""

import asyncio
import re
import time

import httpx
import pytest

from stage3_moderation import bench, loadgen

pytestmark = pytest.mark.week11


@pytest.fixture(scope="module")
def server_url(onnx_export):
    env = {"MODERATION_ONNX_DIR": str(onnx_export[0]), "MODERATION_API_KEYS": "load-test-key"}
    with loadgen.server(env) as (url, _):
        yield url


def test_2000_requests_at_concurrency_32_without_errors_or_lost_responses(server_url):
    """A real uvicorn process on loopback; half the requests carry an image (64 distinct ones)."""
    bodies = loadgen.workload("mixed", 2000, pool=64)
    result = asyncio.run(loadgen.drive(server_url, bodies, 32, headers={"Authorization": "Bearer load-test-key"}))
    assert result["statuses"] == {"200": 2000}, result
    assert result["errors"] == 0 and result["unique_ids"] == 2000 and not result["failures"]
    metrics = httpx.get(f"{server_url}/metrics").text
    assert 'moderation_requests_total{endpoint="/v1/moderations",status="200"} 2000.0' in metrics
    # dynamic batching really batched: some caption calls held more than one image
    sizes = [
        line
        for line in metrics.splitlines()
        if line.startswith('moderation_batch_size_bucket{le="1.0",stage="caption"}')
    ]
    count = [line for line in metrics.splitlines() if line.startswith('moderation_batch_size_count{stage="caption"}')]
    assert float(sizes[0].split()[-1]) < float(count[0].split()[-1])


def test_real_server_enforces_api_keys(server_url):
    assert httpx.post(f"{server_url}/v1/moderations", json={"input": "x"}).status_code == 401
    assert httpx.get(f"{server_url}/readyz").json()["status"] == "ready"


def test_loadgen_cli_reports_errors(server_url, cli_runner):
    code, out, err = cli_runner(
        loadgen.main, ["--url", server_url, "--n", "20", "--concurrency", "4", "--kind", "text", "--json"]
    )
    assert '"401": 20' in out and '"errors": 20' in out  # no key: every request refused, counted
    assert code == 1 and err.startswith("error: all 20 requests failed") and err.count("\n") == 1


def test_loadgen_fails_when_no_request_succeeded(tmp_path, cli_runner):
    out = tmp_path / "load.json"
    argv = ["--url", f"http://127.0.0.1:{loadgen.free_port()}", "--n", "4", "--kind", "text", "--out", str(out)]
    code, _, err = cli_runner(loadgen.main, argv)  # nothing listens there
    assert code == 1 and "all 4 requests failed {'ConnectError': 4}" in err and err.count("\n") == 1
    assert out.exists()  # the result still records what happened


def test_engine_benchmark_rows_on_the_tiny_tower():
    """The benchmark's tower measurement, briefly: every engine runs, agrees with fp32, and is timed."""
    from curriculum import shapesworld, zoo

    clip, processor = zoo.load_clip("tiny", "cpu")
    pixels = processor(images=[s.image for s in shapesworld.generate("test", 8)], return_tensors="np").pixel_values
    matmul = bench.matmul_gflops(seconds=0.2, n=512)
    rows = bench.bench_tower("tiny", clip, pixels, seconds=0.1)
    by_engine = {r["engine"]: r for r in rows}
    assert {"torch-fp32", "compile", "onnx-fp32"} <= set(by_engine)
    assert by_engine["onnx-fp32"]["min_cosine_to_fp32"] >= 0.9999
    for r in rows:
        assert r["images_per_s"] > 0 and r["min_cosine_to_fp32"] >= 0.99, r
        assert r["gflop_per_image"] > 0
    engines = {"matmul_gflops": matmul, "matmul_n": 512, "threads": 2, "towers": rows, "tiny_engines": []}
    text = bench.markdown(engines, None)
    assert "| tiny | onnx-fp32 | fp32 | 8 |" in text and "512 × 512 by 512 × 512" in text
    shares = re.findall(r"\| (\d+)% \|", text)  # of the run's best rate at that precision: never above it
    assert shares and all(int(x) <= 100 for x in shares), text


def test_a_decoder_step_is_timed_alone_and_the_engine_is_left_as_it_was():
    class Engine:
        def step(self, rows):
            time.sleep(0.002)

        def caption_images(self, images):
            time.sleep(0.02)  # the image tower and the prefill: not a step
            for _ in range(3):
                self.step(len(images))
            return [""] * len(images)

    engine = Engine()
    assert 2 <= bench.decoder_step_ms(engine, None, 16, seconds=0.05) < 15
    assert "step" not in vars(engine)  # the method is the class's again
