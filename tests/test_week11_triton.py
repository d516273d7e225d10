"""Week 11: week 10's pipeline served by Triton through PyTriton (triton_app.py), the real server
started once from .venv-triton: the same answers and refusals as week 10 in Triton's protocol, a bad
body alone in its batch, batches of more than one, and no process of it left afterwards."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from peer_suite import as_bytes, assert_same_answer, parity_bodies
from test_week10_attacks import bad_bodies

from stage3_moderation import loadgen, triton_app
from stage3_moderation.settings import Settings

pytestmark = [pytest.mark.week11, pytest.mark.peers]
INFER = f"/v2/models/{triton_app.MODEL}/infer"
JSON = "application/json"


def running(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def triton_url(onnx_export):
    """One Triton server for the module's tests; afterwards none of its processes is left."""
    seen = set()
    with triton_app.server({"MODERATION_ONNX_DIR": str(onnx_export[0])}) as (url, pids):
        seen.update(pids())
        yield url
        seen.update(pids())
    assert len(seen) >= 3, seen  # the server process, tritonserver and the Python backend's stub, at least
    assert not [pid for pid in seen if running(pid)]


@pytest.fixture(scope="module")
def triton(triton_url):
    with httpx.Client(base_url=triton_url, timeout=60) as client:
        yield client


def infer(client, body, content_type=JSON):
    """(HTTP status, status output, week 10's JSON) of one week-10 body sent to Triton."""
    response = client.post(INFER, content=triton_app.request_body(body, content_type))
    return response.status_code, *triton_app.answer(response.json())


def infer_all(client, bodies):
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: infer(client, json.dumps(body).encode()), bodies))


def test_every_parity_request_is_answered_as_week_10_answers_it(triton, service_client):
    bodies = parity_bodies()
    for i, (http, status, answer) in enumerate(infer_all(triton, bodies)):  # sent at once: batched together
        assert (http, status) == (200, 200), (i, answer)
        assert_same_answer(answer, service_client.post("/v1/moderations", json=bodies[i]).json(), i)


def test_bad_bodies_get_week_10s_status_and_code_inside_an_http_200(triton, service_client):
    """Triton owns the HTTP layer: the refusal travels in the outputs. Multipart bodies with bytes that
    are not UTF-8 arrive intact; the unknown model is among the bodies."""
    limit = Settings().max_body_bytes
    requests = bad_bodies() | {
        "over the body limit": {"content": b'{"input": "%s"}' % (b"x" * limit), "headers": {"content-type": JSON}}
    }
    for name, request in requests.items():
        week10 = service_client.post("/v1/moderations", **request)
        http, status, error = infer(triton, *as_bytes(request))
        assert (http, status, error["error"]["code"]) == (200, week10.status_code, week10.json()["error"]["code"]), name
        assert error == week10.json(), name


def test_a_bad_body_does_not_fail_the_good_ones_in_its_batch(triton):
    """One request of three bodies (a first dimension of 3) is one batch for certain."""
    good = [json.dumps({"input": text}) for text in ("a red cross", "buy cheap pills now")]
    bodies = [good[0], '{"input": ', good[1]]
    request = {
        "inputs": [
            {"name": "body", "shape": [3, 1], "datatype": "BYTES", "data": bodies},
            {"name": "content_type", "shape": [3, 1], "datatype": "BYTES", "data": [JSON] * 3},
        ]
    }
    outputs = {o["name"]: o["data"] for o in triton.post(INFER, json=request).raise_for_status().json()["outputs"]}
    assert outputs["status"] == [200, 400, 200]
    answers = [json.loads(r) for r in outputs["response"]]
    assert answers[1]["error"]["code"] == "invalid_json" and len(answers[2]["results"]) == 1


def test_concurrent_requests_are_batched_and_answered_correctly(triton, triton_url, service_client):
    bodies = loadgen.workload("image", 16, pool=4)
    before = triton_app.stats(triton_url)
    answers = infer_all(triton, bodies)
    after = triton_app.stats(triton_url)
    for i, (http, status, answer) in enumerate(answers):
        assert (http, status) == (200, 200), (i, answer)
        assert_same_answer(answer, service_client.post("/v1/moderations", json=bodies[i]).json(), i)
    bodies_run = after["inference_count"] - before["inference_count"]
    batches_run = after["execution_count"] - before["execution_count"]
    assert bodies_run == 16 and bodies_run / batches_run > 1, (before, after)
    assert after["queue_ms"] is not None and after["compute_ms"] > 0


def test_the_batcher_is_sized_from_week_10s_settings(triton):
    caption = Settings().options().batching[triton_app.BATCHED_STAGE]
    config = triton.get(f"/v2/models/{triton_app.MODEL}/config").json()
    batcher = config["dynamic_batching"]
    assert config["max_batch_size"] == caption.max_batch_size
    assert batcher["max_queue_delay_microseconds"] == caption.max_wait_ms * 1000
    assert batcher["preferred_batch_size"] == [caption.max_batch_size]  # Triton's default: a full batch goes at once
    policy = batcher["default_queue_policy"]
    assert (policy["max_queue_size"], policy["default_timeout_microseconds"]) == (
        caption.max_queue,
        caption.timeout_s * 1e6,
    )


def test_what_triton_answers_before_this_code_runs_is_in_its_own_shape(triton):
    malformed = triton.post(INFER, content=b'{"inputs": [')
    assert malformed.status_code == 500 and "parse" in malformed.json()["error"]
    missing = triton.post(INFER, json={"inputs": []})
    assert missing.status_code == 400 and "content_type" in missing.json()["error"]
    with pytest.raises(ValueError, match="Triton refused the request itself"):
        triton_app.answer(missing.json())
    another = triton.post("/v2/models/omni-moderation-latest/infer", content=triton_app.request_body(b"{}", JSON))
    assert another.status_code == 404 and "unknown model" in another.json()["error"]


def test_a_body_input_that_is_not_one_character_per_byte_is_refused(triton):
    request = json.loads(triton_app.request_body(b"", JSON))
    request["inputs"][0]["data"] = ['{"input": "\u4f60\u597d"}']  # raw UTF-8 text, not latin-1: chars over U+00FF
    status, error = triton_app.answer(triton.post(INFER, json=request).json())
    assert (status, error["error"]["code"]) == (400, "invalid_body_encoding")
