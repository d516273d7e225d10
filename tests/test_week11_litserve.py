"""Week 11: week 10's pipeline served by LitServe (litserve_app.py), started for real once for the
module: the same answers and refusals as week 10's app, batches formed under concurrent load (bad
requests among them answered alone), and no process left once it stops."""

import asyncio
from contextlib import ExitStack
from types import SimpleNamespace

import httpx
import psutil
import pytest
from peer_suite import assert_same_answer, parity_bodies
from test_week10_attacks import RED_CROSS, bad_bodies, encode, render

from stage3_moderation import loadgen, timing
from stage3_moderation.settings import Settings

pytestmark = [pytest.mark.week11, pytest.mark.peers]
OVERSIZE = Settings().max_body_bytes + 1


@pytest.fixture(scope="module")
def litserve(onnx_export):
    """The LitServe app on the tiny export: url, client, pids() and stop() (the last test calls it)."""
    from stage3_moderation import litserve_app  # the `peers` extra: make test collects this module without it

    with ExitStack() as stack:
        url, pids = stack.enter_context(litserve_app.server({"MODERATION_ONNX_DIR": str(onnx_export[0])}))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        yield SimpleNamespace(url=url, client=client, pids=pids, stop=stack.close)


def batches(litserve):
    counted = litserve.client.get("/batches").json()
    return counted["items"], counted["batches"]


def test_every_parity_body_is_answered_as_week_10_answers_it(litserve, service_client):
    form = {"files": {"image": ("cross.png", encode(render(RED_CROSS)), "image/png"), "text": (None, "a blue circle")}}
    for i, request in enumerate([*({"json": body} for body in parity_bodies()), form]):
        answer = litserve.client.post("/v1/moderations", **request)
        assert answer.status_code == 200, (i, answer.text)
        assert timing.parse_header(answer.headers["server-timing"])["total"] > 0
        assert_same_answer(answer.json(), service_client.post("/v1/moderations", **request).json(), i)


def oversize_bodies():
    """Over MODERATION_MAX_BODY_BYTES: declared (refused by its Content-Length), and chunked (counted as
    it arrives; httpx sends a list of byte strings chunked)."""
    json = {"content-type": "application/json"}
    return {
        "a body over the limit": {"content": b" " * OVERSIZE, "headers": json},
        "a chunked body over the limit": {"content": [b" " * 2**20] * (OVERSIZE // 2**20 + 1), "headers": json},
    }


def test_bad_bodies_are_refused_as_week_10_refuses_them(litserve, service_client):
    for name, request in {**bad_bodies(), **oversize_bodies()}.items():
        ours, week10 = (
            litserve.client.post("/v1/moderations", **request),
            service_client.post("/v1/moderations", **request),
        )
        assert ours.status_code == week10.status_code, (name, ours.text, week10.text)
        assert ours.json() == week10.json(), name  # the same body: message, type, param and code
    assert litserve.client.post("/v1/moderations", json={"input": "still here"}).status_code == 200


def test_what_litserve_answers_itself_is_in_week_10s_shape(litserve, service_client):
    for method, path in [("GET", "/v1/moderations"), ("POST", "/v2/anything")]:
        ours, week10 = litserve.client.request(method, path), service_client.request(method, path)
        assert ours.status_code == week10.status_code and ours.json() == week10.json(), path
        assert ours.headers.get("allow") == week10.headers.get("allow")
    ready = litserve.client.get("/readyz")
    assert (ready.status_code, ready.text) == (200, "ok")  # plain text, where week 10 answers JSON


def test_sixteen_concurrent_requests_are_batched_and_bad_ones_refused_alone(litserve, service_client):
    good = loadgen.workload("image", 12, pool=12)
    bad = [{"input": "x", "model": "omni-moderation-latest"}, {"input": "x", "encoding_format": "base64"}] * 2
    bodies = good[:6] + bad + good[6:]
    before = batches(litserve)

    async def send_all():
        async with httpx.AsyncClient(base_url=litserve.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/moderations", json=body) for body in bodies))

    answers = asyncio.run(send_all())
    items, formed = (now - then for now, then in zip(batches(litserve), before))
    for i, (body, ours) in enumerate(zip(bodies, answers)):
        week10 = service_client.post("/v1/moderations", json=body)
        assert ours.status_code == week10.status_code, (i, ours.text)
        if ours.status_code == 200:
            assert_same_answer(ours.json(), week10.json(), i)
        else:
            assert ours.json() == week10.json(), i
    assert items == len(bodies) and formed < items, (items, formed)  # some batch held more than one request


def test_stopping_leaves_no_process(litserve):
    """Runs last: it stops the module's server, then looks for any process of it."""
    started = litserve.pids()
    assert len(started) >= 3  # the server, LitServe's HTTP process and inference worker (and its helpers)
    litserve.stop()

    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert not [pid for pid in started if alive(pid)]
