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


def test_the_peers_benchmark_gives_each_number_its_median_over_the_rounds():
    from stage3_moderation.peers_bench import median_rows

    def closed(server, rps, p99, cpu, n):
        return {
            "server": server,
            "loop": "closed",
            "concurrency": 8,
            "n": n,
            "errors": 0,
            "requests_per_s": rps,
            "p99_ms": p99,
            "server_p99_ms": None,
            "cpu_ms_by_process": {"server": cpu},
        }

    rounds = [
        closed("a", 200.0, 40.0, 4.0, 1600),
        closed("b", 150.0, 90.0, 5.0, 1200),
        closed("a", 260.0, 35.0, 3.0, 2080),
        closed("a", 210.0, 80.0, 3.5, 1680),
        {"server": "a", "loop": "open", "offered_per_s": 50, "n": 200},
    ]
    a, b, opened = median_rows(rounds)
    assert (a["requests_per_s"], a["p99_ms"], a["cpu_ms_by_process"], a["n"]) == (210.0, 40.0, {"server": 3.5}, 5360)
    assert a["server_p99_ms"] is None and b["requests_per_s"] == 150.0
    assert type(a["concurrency"]) is int and type(opened["offered_per_s"]) is int  # what was measured, as it was


def test_the_target_against_the_best_peer_is_missed_where_week_10_serves_less_or_has_the_longer_tail():
    from curriculum.tables import week11

    def row(server, clients, rps, p99):
        return {"server": server, "loop": "closed", "concurrency": clients, "requests_per_s": rps, "p99_ms": p99}

    rows = [row(week11.WEEK10, 1, 100, 10), row(week11.WEEK10, 8, 250, 40), row(week11.WEEK10, 32, 300, 90)]
    rows += [row(week11.SIDE_BY_SIDE, c, 999, 1) for c in (1, 8, 32)]  # week 10 itself: not a peer
    rows += [row("LitServe", 1, 60, 12), row("LitServe", 8, 240, 55), row("LitServe", 32, 310, 100)]
    rows += [row("Triton", 1, 50, 9), row("Triton", 8, 260, 30), row("Triton", 32, 200, 80)]
    # 1 client: the best peer (LitServe, 60/s) has the longer tail; 8: Triton serves more; 32: LitServe serves more
    assert week11.peers_target(lambda _: {"rows": rows}) == "not met at 8 clients, 32 clients"
    rows[2] = row(week11.WEEK10, 32, 320, 90)
    assert week11.peers_target(lambda _: {"rows": rows}) == "not met at 8 clients"


def test_the_ray_target_is_met_from_half_the_single_process_at_32_clients():
    from curriculum.tables import week11

    def rows(ray):
        single, direct = "single process (week 10)", "Ray Serve, 1 BLIP-2 replica, direct ingress"
        return {
            "rows": [{"server": single, "concurrency": 32, "requests_per_s": 300.0}]
            + [{"server": direct, "concurrency": c, "requests_per_s": ray} for c in (8, 32)]
        }

    assert week11.ray_target(lambda _: rows(149.0)) == "not met (0.497× against at least 0.5×)"
    assert week11.ray_target(lambda _: rows(150.0)) == "met (0.500× against at least 0.5×)"
    assert week11.ray_target(lambda _: rows(180.0)) == "met (0.600× against at least 0.5×)"
