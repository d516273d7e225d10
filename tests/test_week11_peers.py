"""Week 11: week 10's pipeline a batch of requests at a time (batch_pipeline.py), as the servers
that batch for us run it (LitServe, Triton through PyTriton): the same answers, the same refusals."""

import json

import pytest
from peer_suite import as_bytes, assert_same_answer, parity_bodies
from test_week10_attacks import bad_bodies

from stage3_moderation.batch_pipeline import Pipeline
from stage3_moderation.errors import BadInput
from stage3_moderation.settings import Settings

pytestmark = pytest.mark.week11


@pytest.fixture(scope="module")
def pipeline(onnx_export):
    return Pipeline(Settings(onnx_dir=onnx_export[0]))


def test_one_batch_of_every_request_answers_as_week_10_does(pipeline, service_client):
    bodies = parity_bodies()
    answers = pipeline.moderate([pipeline.parse(json.dumps(b).encode(), "application/json") for b in bodies])
    flagged = 0
    for i, (body, answer) in enumerate(zip(bodies, answers)):
        week10 = service_client.post("/v1/moderations", json=body).json()
        assert_same_answer(answer, week10, i)
        flagged += any(r["flagged"] for r in week10["results"])
    assert flagged >= 3  # the red cross, its mismatched text, the spam: the check compares real verdicts


def test_bad_bodies_are_refused_as_week_10_refuses_them(pipeline, service_client):
    for name, request in bad_bodies().items():
        week10 = service_client.post("/v1/moderations", **request)
        with pytest.raises(BadInput) as refused:
            pipeline.parse(*as_bytes(request))
        assert (refused.value.status, refused.value.code) == (week10.status_code, week10.json()["error"]["code"]), name
