"""Beyond week 10: the moderation system on Ray Serve, started for real (a local Ray cluster of 2
CPUs, the config's deployments, 2 BLIP-2 replicas), against the week-10 app: the same answers,
the same errors, batching, overload and a replica killed under load."""

import asyncio
import time

import httpx
import psutil
import pytest
from test_week10_attacks import bad_bodies
from test_week10_service import bad_inputs, image_part, png_bytes

from curriculum import shapesworld
from stage3_moderation import engines, ray_app, timing

pytestmark = pytest.mark.week11
BLIP2 = {"num_replicas": 2}  # the ingress keeps a caption batch in flight on each
MAX_QUEUE = 64  # items waiting per stage in the ingress's batchers: small enough for one test to overflow
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "ray/dashboard", "ray/_private")


def ray_processes():
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any(name in " ".join(p.cmdline()) or name in p.name() for name in RAY_PROCESSES):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def ray_url(onnx_export):
    """One Serve application for the module's tests; Ray shut down afterwards, and no process of it left."""
    options = ray_app.config_options(Blip2=BLIP2)
    with ray_app.serving({"onnx_dir": str(onnx_export[0]), "max_queue": MAX_QUEUE}, options) as url:
        yield url
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), [p.cmdline()[:2] for p in ray_processes()]


@pytest.fixture(scope="module")
def ray_client(ray_url):
    with httpx.Client(base_url=ray_url, timeout=60) as client:
        yield client


def scenes(n, seed):
    return shapesworld.generate("test", n, seed)


def same_results(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert (a["flagged"], a["categories"], a["caption"], a["mismatch"]) == (
            b["flagged"],
            b["categories"],
            b["caption"],
            b["mismatch"],
        )
        assert a["category_applied_input_types"] == b["category_applied_input_types"]
        for name, score in a["category_scores"].items():
            assert score == pytest.approx(b["category_scores"][name], abs=1e-6), name
        if a["image_text_similarity"] is None:
            assert b["image_text_similarity"] is None
        else:
            assert a["image_text_similarity"] == pytest.approx(b["image_text_similarity"], abs=1e-6)


def parity_requests():
    """20 moderation requests: JSON and multipart; images, texts, both; one of several inputs."""
    s = scenes(8, seed=21)
    requests = []
    for scene in s[:4]:
        requests += [
            {"json": {"input": [{"type": "text", "text": scene.caption_en}, image_part(scene.image)]}},
            {"files": {"image": ("x.png", png_bytes(scene.image), "image/png")}, "data": {"text": scene.caption_en}},
        ]
    for scene, other in zip(s[4:7], s[:3]):
        requests += [
            {"json": {"input": [image_part(scene.image)]}},
            {"files": {"image": ("x.png", png_bytes(scene.image), "image/png")}},
            {"json": {"input": [{"type": "text", "text": other.caption_en}, image_part(scene.image)]}},  # mismatch
        ]
    requests += [{"json": {"input": "BUY NOW at http://spam.example"}}, {"json": {"input": [x.caption_en for x in s]}}]
    requests += [{"files": {"text": (None, "a small blue circle")}}]
    return requests


def test_parity_with_the_week10_app(ray_client, service_client):
    requests = parity_requests()
    assert len(requests) == 20
    for request in requests:
        ours, theirs = ray_client.post("/v1/moderations", **request), service_client.post("/v1/moderations", **request)
        assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
        same_results(ours.json()["results"], theirs.json()["results"])


def test_bad_input_gets_the_same_status_and_error_body(ray_client, service_client):
    cases = {**bad_inputs(shapesworld.sample("test", 11, seed=4)), **bad_bodies()}
    for name, request in cases.items():
        ours, theirs = ray_client.post("/v1/moderations", **request), service_client.post("/v1/moderations", **request)
        assert 400 <= theirs.status_code < 500, name
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), name
    for method, path in (("GET", "/v2/anything"), ("GET", "/v1/moderations"), ("POST", "/v1/nothing")):
        ours, theirs = ray_client.request(method, path), service_client.request(method, path)
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), path
    too_many = {"json": {"input": [image_part(scenes(1, 3)[0].image)] * 2, "dimensions": 10**6}}
    ours, theirs = ray_client.post("/v1/embeddings", **too_many), service_client.post("/v1/embeddings", **too_many)
    assert ours.status_code == theirs.status_code == 400 and ours.json() == theirs.json()


def caption_batches(client):
    """(items, batches) of the caption stage so far, from the ingress's /metrics."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        for key in ("sum", "count"):
            if line.startswith(f'moderation_batch_size_{key}{{stage="caption"}}'):
                values[key] = float(line.split()[-1])
    return values.get("sum", 0.0), values.get("count", 0.0)


async def post_all(url, path, bodies, concurrency, on_answer=None):
    """Every body to url + path from `concurrency` clients; [(index, status, JSON)] in answer order."""
    queue, answers = list(enumerate(bodies))[::-1], []

    async def client(http):
        while queue:
            index, body = queue.pop()
            response = await http.post(path, json=body)
            answers.append((index, response.status_code, response.json(), response.headers))
            if on_answer:
                on_answer(answers)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return answers


def test_blip2_batches_under_32_concurrent_requests(ray_url, ray_client):
    items, batches = caption_batches(ray_client)
    bodies = [{"input": [image_part(s.image)]} for s in scenes(64, seed=31)]  # distinct: no cache hits
    answers = asyncio.run(post_all(ray_url, "/v1/moderations", bodies, 32))
    assert [status for _, status, _, _ in answers] == [200] * 64
    items, batches = (now - before for now, before in zip(caption_batches(ray_client), (items, batches)))
    assert items == 64 and items / batches > 1, (items, batches)


def test_server_timing_holds_the_model_round_trip(ray_client):
    """Through the handles too, the stages add up and the model call is counted (timing.py)."""
    body = {"input": [{"type": "text", "text": "a red circle"}, image_part(scenes(1, seed=37)[0].image)]}
    response = ray_client.post("/v1/moderations", json=body)
    ms = timing.parse_header(response.headers["server-timing"])
    assert response.status_code == 200 and ms["compute"] > 0 and ms["queue"] >= 0
    assert sum(ms[s] for s in timing.STAGES) + ms["other"] == pytest.approx(ms["total"], abs=0.01)


def test_overload_is_an_immediate_503_in_the_error_shape(ray_url, ray_client):
    """6 requests of 32 images each put 192 captions into the ingress's caption queue of 64: the rest is
    refused at once, as week 10 refuses past its max_queue."""
    s = scenes(192, seed=41)
    bodies = [{"input": [image_part(x.image) for x in s[i : i + 32]]} for i in range(0, 192, 32)]
    answers = asyncio.run(post_all(ray_url, "/v1/captions", bodies, 6))
    statuses = sorted(status for _, status, _, _ in answers)
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for _, status, body, headers in answers:
        if status == 503:
            assert body["error"]["code"] == "overloaded" and body["error"]["type"] == "server_error"
            assert headers["Retry-After"] == "1"
    assert ray_client.post("/v1/captions", json=bodies[0]).status_code == 200  # served again once it drains


def test_a_killed_blip2_replica_fails_only_its_requests_and_is_replaced(ray_url, ray_client, onnx_export):
    """32 requests of 4 images each from 8 clients (so each replica holds a batch's worth); after 8
    answers, one of the two BLIP-2 replicas is killed. Every answer is right or a 5xx, none lost."""
    import ray

    s = scenes(128, seed=51)
    engine = engines.load("onnx-fp32", onnx_dir=onnx_export[0], threads=1)
    expected = [c for chunk in engines.chunks([x.image for x in s]) for c in engine.caption_images(chunk)]
    bodies = [{"input": [image_part(x.image) for x in s[i : i + 4]]} for i in range(0, 128, 4)]
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Blip2#" in a["name"]]
    assert len(replicas) == 2
    killed = []

    def kill_after_8(answers):
        if len(answers) >= 8 and not killed:
            killed.append(replicas[0]["name"])
            ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))

    answers = asyncio.run(post_all(ray_url, "/v1/captions", bodies, 8, kill_after_8))
    answered = [
        i
        for i, status, body, _ in answers
        if status == 200 and [d["caption"] for d in body["data"]] == expected[4 * i : 4 * i + 4]
    ]
    failed = [(status, body) for _, status, body, _ in answers if status != 200]
    print(f"killed replica under load: {len(answered)} answered correctly, {len(failed)} failed {failed[:1]}")
    assert killed and len(answered) + len(failed) == 32, answers  # every 200 is right: none wrong, none lost
    assert all(status >= 500 and body["error"]["type"] == "server_error" for status, body in failed), failed
    assert len(failed) <= 16, failed  # at most the 8 in flight, and what reached the replica before Serve saw it die
    deadline = time.monotonic() + 120
    while True:  # healthy again: Serve started a new replica in place of the killed one
        from ray import serve

        status = serve.status().applications[ray_app.APP]
        running = status.deployments["Blip2"].replica_states.get("RUNNING", 0)
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Blip2#" in a["name"]}
        if status.status == "RUNNING" and running == 2 and len(names) == 2 and killed[0] not in names:
            break
        assert time.monotonic() < deadline, (status, names)
        time.sleep(0.5)
    print(f"replaced in {time.monotonic() - deadline + 120:.1f} s")
    again = ray_client.post("/v1/captions", json=bodies[0])
    assert again.status_code == 200 and [d["caption"] for d in again.json()["data"]] == expected[:4]


def test_the_config_file_is_a_valid_serve_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(ray_app.CONFIG.read_text())
    app = ServeDeploySchema.model_validate(raw).applications[0]  # Serve's own check of the file
    assert app.import_path == "stage3_moderation.ray_app:build"
    deployments = raw["applications"][0]["deployments"]
    assert {d["name"] for d in deployments} == {"Moderation", "Clip", "Blip2"}
    most = 0
    for d in deployments:
        assert d["max_queued_requests"] > 0 and d["max_ongoing_requests"] >= 1
        replicas = d["autoscaling_config"]["max_replicas"] if "autoscaling_config" in d else d["num_replicas"]
        most += replicas * d["ray_actor_options"]["num_cpus"]
    assert most <= 2  # the largest it scales to still fits the 2 cores of this machine


def test_the_kuberay_manifest_runs_the_same_application():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    manifest = yaml.safe_load((ray_app.CONFIG.parents[2] / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    cluster = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"])).applications[0]
    local = ServeDeploySchema.model_validate(yaml.safe_load(ray_app.CONFIG.read_text())).applications[0]
    assert cluster.import_path == local.import_path and cluster.runtime_env == local.runtime_env
    assert cluster.logging_config == local.logging_config and local.logging_config.enable_access_log is False
    # onnx_dir: baked into the image; model_calls_at_once: the local replicas share one machine's
    # cores, a cluster's do not
    assert {k: v for k, v in cluster.args.items() if k != "onnx_dir"} == {
        k: v for k, v in local.args.items() if k != "model_calls_at_once"
    }
    assert "model_calls_at_once" not in cluster.args and local.args["model_calls_at_once"] == 2
    assert [d.name for d in cluster.deployments] == [d.name for d in local.deployments]
    assert [d.user_config for d in cluster.deployments] == [d.user_config for d in local.deployments]
    dockerfile = (ray_app.CONFIG.parents[2] / "deploy" / "kuberay" / "Dockerfile").read_text()
    images = {
        c["image"] for c in manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1 and images.pop() in dockerfile and "FROM rayproject/ray:2.60.0" in dockerfile
