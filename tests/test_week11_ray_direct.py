"""Ray Serve with direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS, Ray 2.60, experimental): the
ingress replica serves HTTP itself, with no proxy in front. The benchmark's Ray Serve peer
(peers_bench.py) runs this way, so it is held to week 10's answers and refusals like the others."""

import time

import httpx
import pytest
from peer_suite import assert_same_answer, parity_bodies
from test_week10_attacks import bad_bodies
from test_week11_ray import ray_processes

from stage3_moderation import ray_app

pytestmark = [pytest.mark.week11, pytest.mark.peers]


@pytest.fixture(scope="module")
def direct_client(onnx_export):
    with ray_app.serving({"onnx_dir": str(onnx_export[0])}, direct_ingress=True) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), [p.cmdline()[:2] for p in ray_processes()]


def test_direct_ingress_answers_as_week_10(direct_client, service_client):
    for i, body in enumerate(parity_bodies()):
        answer = direct_client.post("/v1/moderations", json=body)
        assert answer.status_code == 200, (i, answer.text)
        assert_same_answer(answer.json(), service_client.post("/v1/moderations", json=body).json(), i)


def test_direct_ingress_refuses_as_week_10(direct_client, service_client):
    for name, request in bad_bodies().items():
        theirs = direct_client.post("/v1/moderations", **request)
        ours = service_client.post("/v1/moderations", **request)
        assert (theirs.status_code, theirs.json()) == (ours.status_code, ours.json()), name
