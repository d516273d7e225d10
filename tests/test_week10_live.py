"""Week 10 against the real thing: a uvicorn process on loopback, driven by OpenAI's own Python SDK
and by schemathesis, and loaded with the heaviest images its limits admit."""

import base64
import io
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from curriculum import REPO_ROOT, shapesworld
from stage3_moderation import bench, loadgen

pytestmark = pytest.mark.week10
KEY = "sk-live-test"


@pytest.fixture(scope="module")
def live(onnx_export):
    env = {
        "MODERATION_ONNX_DIR": str(onnx_export[0]),
        "MODERATION_API_KEYS": KEY,
        "MODERATION_AUTH_METRICS_AND_DOCS": "1",
    }
    with loadgen.server(env) as (url, _):
        yield url


def sdk(url, key=KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def image_part(image):
    return {"type": "image_url", "image_url": {"url": loadgen.data_url(image)}}


# ---------------------------------------------------------------- OpenAI's Python SDK
def test_openai_sdk_moderations_of_a_text_an_image_and_both(live):
    client = sdk(live)
    text = client.moderations.create(input="free money at www.example.com")
    assert text.model == "shapesworld-demo/tiny" and text.id.startswith("modr-") and text._request_id
    [result] = text.results
    assert result.flagged and result.categories.model_extra == {"red_cross": False, "purple_cross": False, "spam": True}
    assert result.category_scores.model_extra["spam"] == 1.0
    cross = shapesworld.render(
        [shapesworld.ShapeObject("red", "cross", "large", "top left")], 64, np.random.default_rng(0)
    )
    [image] = client.moderations.create(input=[image_part(cross)], model="shapesworld-demo/tiny").results
    assert image.flagged and image.categories.model_extra["red_cross"] and "red cross" in image.model_extra["caption"]
    assert image.category_applied_input_types.model_extra["red_cross"] == ["image"]
    scene = shapesworld.sample("test", 11, seed=4)
    [both] = client.moderations.create(
        input=[{"type": "text", "text": scene.caption_en}, image_part(scene.image)]
    ).results
    assert both.category_applied_input_types.model_extra["red_cross"] == ["image", "text"]
    assert both.model_extra["image_text_similarity"] > 0.45 and not both.model_extra["mismatch"]


def test_openai_sdk_embeddings_in_float_and_base64_with_dimensions(live):
    client = sdk(live)
    texts = ["a large red cross in the top left", "a small blue circle in the bottom right"]
    default = client.embeddings.create(input=texts, model="tiny")  # the SDK asks for base64 and decodes it
    floats = client.embeddings.create(input=texts, model="tiny", encoding_format="float")
    assert default.model == "tiny" and [d.index for d in default.data] == [0, 1]
    assert default.usage.prompt_tokens == default.usage.total_tokens > len(texts)
    a, b = np.array([d.embedding for d in default.data]), np.array([d.embedding for d in floats.data])
    assert a.shape == b.shape and a.shape[0] == 2 and np.array_equal(a, b)  # float32 both ways, bit for bit
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    short = client.embeddings.create(input=texts[0], model="tiny", dimensions=16, encoding_format="float")
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (16,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    np.testing.assert_allclose(vector, a[0, :16] / np.linalg.norm(a[0, :16]), atol=1e-6)  # cut, renormalised
    raw = client.embeddings.with_raw_response.create(
        input=texts[0], model="tiny", encoding_format="base64", user="user-42"
    ).http_response.json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")  # little-endian float32
    np.testing.assert_array_equal(decoded, a[0].astype(np.float32))
    [image] = client.embeddings.create(input=[image_part(shapesworld.sample("test", 3).image)], model="tiny").data
    assert image.model_extra["input_type"] == "image" and len(image.embedding) == a.shape[1]


def test_openai_sdk_raises_its_typed_errors(live):
    client = sdk(live)
    with pytest.raises(openai.AuthenticationError) as wrong_key:
        sdk(live, key="sk-wrong").moderations.create(input="x")
    assert wrong_key.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as remote:
        client.moderations.create(input=[{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])
    assert remote.value.code == "invalid_image_url" and remote.value.param == "input[0]"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(input="x", model="tiny", dimensions=10_000)
    assert too_many.value.code == "invalid_dimensions" and too_many.value.param == "dimensions"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(input="x", model="text-embedding-3-small")
    assert unknown.value.code == "model_not_found" and unknown.value.request_id


# ---------------------------------------------------------------- schemathesis, every check, every operation
def test_schemathesis_finds_no_server_error_and_no_schema_violation(live, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from schemathesis.cli import schemathesis; schemathesis()",
            "--config-file",
            str(REPO_ROOT / "tests" / "schemathesis.toml"),
            "--no-color",
            "run",
            f"{live}/openapi.json",
            "--header",
            f"Authorization: Bearer {KEY}",
            "--checks",
            "all",
            "--max-examples",
            "300",
            "--seed",
            "22",
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(summary)  # operations, phases, cases run, failures: shown with pytest -s
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert run.returncode == 0 and "No issues found" in summary, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Tested: 6" in summary and cases and int(cases[1]) == int(cases[2]) >= 500, summary


# ---------------------------------------------------------------- memory and liveness under the heaviest images
def test_heavy_images_keep_memory_bounded_and_healthz_answering(onnx_export):
    """The issue's attack (3 requests of 16 images of 4096²: 0.5 -> 4.7 GB and /healthz stalled ~12 s)
    is refused by the request's pixel limit; the heaviest requests admitted (4 such images) are decoded
    off the event loop within a process-wide pixel budget: the rest get 503 at once, memory stays
    bounded, and /healthz keeps answering. Precise figures: `python -m stage3_moderation.bench liveness`."""
    r = bench.bench_liveness(
        # 24 requests: 12 could all be answered (most with an early 503) in 0.45 s, 19 health checks
        requests=24,
        concurrency=6,
        idle_seconds=1,
        env={"MODERATION_ONNX_DIR": str(onnx_export[0])},
    )
    assert r["attack_statuses"] == {"413": 3}, r
    # one address is one client, which holds at most half the budget: one such request at a time
    assert set(r["load_statuses"]) == {"200", "503"} and r["load_statuses"]["200"] >= 1, r
    assert r["rss_peak_mb"] - r["rss_before_mb"] < 640, r  # measured about 320 MiB on 2 cores
    # bounds loose enough for a loaded 2-core machine; before the fix the maximum was ~12 s
    assert r["healthz_loaded_ms"]["p50"] < 100 and r["healthz_loaded_ms"]["max"] < 1000, r
    assert r["healthz_loaded_ms"]["n"] >= 20, r  # it really was asked during the load


# ---------------------------------------------------------------- a fair share of the pixel budget
def largest_apng():
    """Issue 27's attack: an APNG of four 4096×4096 frames, about 60 kB that decode to 4 × 4096²
    pixels, the most one request may."""
    frames = [Image.new("L", (4096, 4096), shade) for shade in (0, 80, 160, 240)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    return {
        "input": [
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()},
            }
        ]
    }


def test_two_heavy_clients_leave_a_normal_one_served(onnx_export):
    """Issue 27: two clients looping on the largest requests held the whole pixel budget (first come,
    first served) and 97% of a third client's 64×64 requests got 503. With a fair share per key,
    the second heavy request waits for the first and the rest of the budget serves the others."""
    keys = ("heavy-1", "heavy-2", "normal")
    env = {"MODERATION_ONNX_DIR": str(onnx_export[0]), "MODERATION_API_KEYS": ",".join(keys)}
    heavy, normal = largest_apng(), {"input": [image_part(shapesworld.sample("test", 5).image)]}
    statuses = {key: [] for key in keys}
    done = threading.Event()
    deadline = time.monotonic() + 180

    def send(key, body, until):
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            while not until():
                statuses[key].append(http.post("/v1/moderations", json=body).status_code)

    def attacked():  # bounded in time and count
        return done.is_set() or time.monotonic() > deadline or max(len(statuses[k]) for k in keys[:2]) >= 3000

    with loadgen.server(env) as (url, _):
        heavies = [threading.Thread(target=send, args=(key, heavy, attacked)) for key in keys[:2]]
        for thread in heavies:
            thread.start()
        try:
            while httpx.get(f"{url}/readyz").json()["pixels_in_flight"] == 0:  # a heavy request holds pixels
                assert time.monotonic() < deadline, statuses
                time.sleep(0.01)
            send("normal", normal, lambda: len(statuses["normal"]) == 20)
        finally:
            done.set()
            for thread in heavies:
                thread.join(90)
    assert statuses["normal"] == [200] * 20, statuses
    heavy_statuses = statuses["heavy-1"] + statuses["heavy-2"]
    assert heavy_statuses.count(200) >= 1 and heavy_statuses.count(503) >= 1, statuses  # they did contend
