"""Week 9's visual-question rule as a policy rule kind (data/policies/shapesworld-vqa.yaml): every
engine answers as the library does, the live service and Ray Serve moderate with it, and a policy
that cannot be served stops the start in one line."""

import asyncio

import httpx
import numpy as np
import pytest

from curriculum import MODELS_DIR, shapesworld, zoo
from stage3_moderation import engines, export_onnx, ray_app, vqa_rule
from stage3_moderation import policy as policies
from stage3_moderation.app import create_app
from stage3_moderation.loadgen import data_url
from stage3_moderation.settings import Settings

pytestmark = pytest.mark.week9
COMPLIANCE = str(MODELS_DIR / "tiny-blip2-compliance")
VQA_POLICY = policies.POLICIES_DIR / "shapesworld-vqa.yaml"


@pytest.fixture(scope="module")
def compliance_export(tmp_path_factory):
    """An ONNX export of the tiny CLIP with the compliance BLIP-2, as the service makes at start-up."""
    folder = tmp_path_factory.mktemp("onnx-compliance")
    export_onnx.export("tiny", COMPLIANCE, folder, n=4, int8=False)
    return folder


@pytest.fixture(scope="module")
def mixed_scenes():
    """12 test scenes: 4 with a red cross, 4 with a purple cross, 4 with neither."""
    chosen = {"red_cross": [], "purple_cross": [], "neither": []}
    for sample in shapesworld.generate("test", 400, 5):
        truth = policies.truth("shapesworld-vqa", sample.objects)
        kind = next((c for c, present in truth.items() if present), "neither")
        if len(chosen[kind]) < 4 and not (truth["red_cross"] and truth["purple_cross"]):
            chosen[kind].append(sample)
    return [s for samples in chosen.values() for s in samples]


def test_the_vqa_policy_names_its_questions_and_their_blip2():
    policy = policies.load(VQA_POLICY)
    assert policy.questions == ("is there a red cross?", "is there a purple cross?")
    assert policy.question_model == COMPLIANCE
    assert policies.load().questions == ()  # the demo policy asks nothing: its BLIP-2 only captions


def test_a_question_flags_at_its_threshold_and_scores_p_yes():
    policy = policies.load(VQA_POLICY)
    answers = {"is there a red cross?": 0.97, "is there a purple cross?": 0.49}
    result = policies.decide(policy, None, {}, "a small green circle", None, answers)
    assert result["categories"] == {"red_cross": True, "purple_cross": False, "spam": False}
    assert result["category_scores"]["red_cross"] == 0.97 and result["category_scores"]["purple_cross"] == 0.49
    text_only = policies.decide(policy, "a red cross for you")  # no image: the question is not asked
    assert text_only["categories"]["red_cross"] and text_only["category_applied_input_types"]["red_cross"] == ["text"]


def test_every_engine_answers_as_the_library_does(compliance_export, mixed_scenes):
    """p(yes) from the engines' own decoder (PyTorch, ONNX) equals the transformers model's forward
    pass (vqa_rule.yes_probability); captions from the same reading equal caption_images'."""
    images = [s.image for s in mixed_scenes]
    policy = policies.load(VQA_POLICY)
    model, processor = zoo.load_blip2(COMPLIANCE, "cpu")
    library = np.stack([vqa_rule.yes_probability(model, processor, images, q) for q in policy.questions], 1)
    for engine in (
        engines.load("torch-fp32", blip2_name=COMPLIANCE),
        engines.load("onnx-fp32", blip2_name=COMPLIANCE, onnx_dir=compliance_export),
    ):
        readings = engine.read_images(images, policy.questions)
        np.testing.assert_allclose([r.answers for r in readings], library, atol=1e-4, err_msg=engine.name)
        assert [r.caption for r in readings] == engine.caption_images(images)
    expected = np.array(
        [[policies.truth(policy.name, s.objects)[c] for c in ("red_cross", "purple_cross")] for s in mixed_scenes]
    )
    assert ((library >= 0.5) == expected).all(), library.round(3)  # these scenes are seen pairs: answered right


def moderation_bodies(samples):
    return [{"input": [{"type": "image_url", "image_url": {"url": data_url(s.image)}}]} for s in samples]


async def post_concurrently(url, bodies):
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        responses = await asyncio.gather(*(http.post("/v1/moderations", json=body) for body in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json()["results"][0] for r in responses]


def check_against_truth(results, samples):
    for result, sample in zip(results, samples):
        truth = policies.truth("shapesworld-vqa", sample.objects)
        assert {c: result["categories"][c] for c in truth} == truth, (result, sample.caption_en)
        for category in truth:  # the answer's probability, as decided (a caption hit would score 1.0)
            assert 0 <= result["category_scores"][category] <= 1


@pytest.fixture(scope="module")
def live_results(compliance_export, mixed_scenes):
    """The week-10 service for real (uvicorn on loopback, its HTTP limits, ONNX engine, batching) with
    the VQA policy: the 12 scenes sent at once, so the caption stage batches readings."""
    import threading
    import time

    import uvicorn

    from stage3_moderation import serve as launcher
    from stage3_moderation.loadgen import free_port

    settings = Settings(onnx_dir=compliance_export, policy=VQA_POLICY, blip2=COMPLIANCE)
    port = free_port()
    server = uvicorn.Server(launcher.config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    try:
        while not (server.started and httpx.get(f"{url}/readyz").status_code == 200):
            assert time.monotonic() < deadline, "the service was not ready in 120 s"
            time.sleep(0.05)
        yield asyncio.run(post_concurrently(url, moderation_bodies(mixed_scenes)))
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_live_service_moderates_with_the_question_rule(live_results, mixed_scenes):
    check_against_truth(live_results, mixed_scenes)


def test_ray_serve_moderates_with_the_question_rule_as_the_live_service_does(
    compliance_export, mixed_scenes, live_results
):
    args = {"onnx_dir": str(compliance_export), "policy": str(VQA_POLICY), "blip2": COMPLIANCE}
    with ray_app.serving(args, ray_app.config_options(Blip2={"num_replicas": 1})) as url:
        results = asyncio.run(post_concurrently(url, moderation_bodies(mixed_scenes)))
    check_against_truth(results, mixed_scenes)
    for ours, theirs in zip(live_results, results):
        assert ours["categories"] == theirs["categories"] and ours["caption"] == theirs["caption"]
        np.testing.assert_allclose(
            list(ours["category_scores"].values()), list(theirs["category_scores"].values()), atol=1e-5
        )


def test_a_policy_that_asks_a_blip2_the_service_does_not_run_stops_the_start_in_one_line():
    with pytest.raises(SystemExit) as stop:
        create_app(Settings(policy=VQA_POLICY))  # the bundled BLIP-2, which answers "no" to everything
    message = str(stop.value.code)
    assert message.startswith("moderation service: policy shapesworld-vqa asks its questions of BLIP-2 ")
    assert "data/models/tiny-blip2-compliance, but the service runs BLIP-2 tiny" in message and "\n" not in message


def test_a_blip2_that_cannot_say_yes_or_no_in_one_token_is_refused():
    class Splitting:
        def __call__(self, text, add_special_tokens):
            return type("Ids", (), {"input_ids": [1, 2] if "yes" in text else [3]})()

    with pytest.raises(policies.UserError, match="splits ' yes' or ' no' into several tokens"):
        engines.yes_no_ids(Splitting())
