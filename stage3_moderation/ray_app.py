"""Beyond week 10: the same moderation API on Ray Serve, for traffic that outgrows one process.

    make serve-ray      # serve run configs/serve/moderation.yaml: http://127.0.0.1:8000, Ctrl-C stops it

    HTTP ──> Moderation (ingress, FastAPI)                  ──handle──> Clip  (@serve.batch: images, texts)
             week 10's app.py + endpoints.py + inputs.py:   ──handle──> Blip2 (@serve.batch: captions)
             auth, validation, decoding, cache, policy,
             the error shape

The ingress is week 10's app itself (`app.create_app`): the same routes, validation, cache, policy
and error responses. Only the seam differs: its Moderator's stages call the model deployments
through Ray Serve handles, where week 10 puts items into its own batchers (service.Moderator's
`stages`). Each model deployment runs the week-9 engine (MODERATION_ENGINE, ONNX by default) and
batches with `@serve.batch`; Ray places its replicas on any machine of the cluster, restarts one
that dies, autoscales between the config's bounds and refuses work past `max_queued_requests`.

Settings: MODERATION_* variables (the config's runtime_env) and the application's `args`, both
Settings fields; batching: each model deployment's `user_config`.
"""

import asyncio
import os
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import ray
import yaml
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from curriculum import REPO_ROOT, zoo
from curriculum.cli import UserError
from stage3_moderation import engines, errors, export_onnx, timing
from stage3_moderation import policy as policies
from stage3_moderation.app import create_app
from stage3_moderation.batching import Overloaded
from stage3_moderation.loadgen import free_port
from stage3_moderation.service import Moderator
from stage3_moderation.settings import Settings, one_line

CONFIG = REPO_ROOT / "configs" / "serve" / "moderation.yaml"
APP = "moderation"
BATCH_DEFAULTS = {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}  # week 10's defaults: 16 items, 5 ms


def settings_from(args):
    """Settings from MODERATION_* variables and the application's args (Settings' fields), or one line."""
    try:
        return Settings(**args)
    except ValidationError as e:
        raise UserError(f"moderation on Ray Serve: {one_line(e)}") from None


async def timed(fn, items):
    """fn(items) in a worker thread (the replica keeps answering), each output paired with its batch's
    (size, seconds, first): `first` on one item only, so the ingress counts every batch once in its
    metrics, while every request learns how long its batch's model call took (its Server-Timing)."""
    start = time.perf_counter()
    outputs = list(await asyncio.to_thread(fn, items))
    seconds = time.perf_counter() - start
    return [(output, (len(items), seconds, i == 0)) for i, output in enumerate(outputs)]


class ModelDeployment:
    """One week-9 engine in a replica; its batched methods' sizes come from the config's user_config."""

    batched = ()  # the @serve.batch methods

    async def __init__(self, settings):
        s = settings_from(settings)
        self.questions = policies.load(s.policy).questions  # the ingress checked them (app.check_questions)
        self.engine = await asyncio.to_thread(engines.load, s.engine, s.clip, s.blip2, s.onnx_dir, s.threads)
        await asyncio.to_thread(self.engine.warm_up, BATCH_DEFAULTS["max_batch_size"], self.questions)

    def reconfigure(self, config):
        """user_config: {max_batch_size, batch_wait_timeout_s}, changeable on a running application."""
        config = BATCH_DEFAULTS | (config or {})
        for name in self.batched:
            getattr(self, name).set_max_batch_size(config["max_batch_size"])
            getattr(self, name).set_batch_wait_timeout_s(config["batch_wait_timeout_s"])

    def describe(self):
        return {"engine": self.engine.name}


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Clip(ModelDeployment):
    batched = ("embed_image", "embed_text")

    @serve.batch(**BATCH_DEFAULTS)
    async def embed_image(self, images):
        return await timed(self.engine.embed_images, images)

    @serve.batch(**BATCH_DEFAULTS)
    async def embed_text(self, texts):
        return await timed(self.engine.embed_texts, texts)

    async def embed_texts(self, texts):
        """Unbatched: the policy's concepts, once at the ingress's start."""
        return await asyncio.to_thread(self.engine.embed_texts, texts)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Blip2(ModelDeployment):
    batched = ("caption",)

    @serve.batch(**BATCH_DEFAULTS)
    async def caption(self, images):
        """Readings: each image's caption and p(yes) to the policy's questions."""
        return await timed(lambda chunk: self.engine.read_images(chunk, self.questions), images)


class RemoteEngine:
    """What the Moderator asks of its engine outside the hot path, when the models are deployments:
    its name, the CLIP tokenizer (token counts, loaded here: no model weights), and text vectors
    once at start-up (the Moderator's constructor runs in a worker thread, so it may wait here)."""

    def __init__(self, clip, clip_name):
        self.clip = clip
        self.name = clip.describe.remote().result()["engine"]
        self.clip_processor = zoo.load_processor(clip_name, "clip")

    def embed_texts(self, texts):
        return self.clip.embed_texts.remote(list(texts)).result()


def remote_stage(stage, method, metrics, timeout_s):
    """async fn(item) -> output through a deployment handle: the Moderator's stage, as a batcher's
    submit is in week 10, with the same failures in the API's error shape: a full queue is 503
    overloaded, a replica that died under the request 503 replica_failed, too slow 504."""

    async def submit(item):
        sent = time.perf_counter()
        try:
            output, (size, seconds, first) = await asyncio.wait_for(method.remote(item), timeout_s)
        except BackPressureError as e:
            raise Overloaded(f"the {stage} deployment is overloaded: {e.message.strip().rstrip('.')}") from None
        except (RayActorError, ActorUnavailableError, DeploymentUnavailableError):
            raise errors.retry_later(
                f"the {stage} replica serving this request stopped (Ray Serve is replacing it): retry shortly",
                "replica_failed",
                1,
            ) from None
        if first:
            metrics.on_batch(stage, size, seconds)
        if (request := timing.current.get()) is not None:
            # the handle's round trip: the model call, and before it the queue, routing and transport
            returned = time.perf_counter()
            request.item(queued=sent, started=returned - seconds, finished=returned)
        return output

    return submit


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress()
class Moderation:
    """Week 10's FastAPI app as the ingress, its models behind the two deployments' handles."""

    def __init__(self, clip, blip2, settings):
        self.clip, self.blip2, self.settings = clip, blip2, settings_from(settings)

    def load(self, service):
        """app.py's loader for this front end (run in a worker thread): a Moderator whose stages are handles."""
        s, metrics = service.settings, service.metrics
        stages = {
            "clip_image": remote_stage("clip_image", self.clip.embed_image, metrics, s.timeout_s),
            "clip_text": remote_stage("clip_text", self.clip.embed_text, metrics, s.timeout_s),
            "caption": remote_stage("caption", self.blip2.caption, metrics, s.timeout_s),
        }
        return Moderator(RemoteEngine(self.clip, s.clip), service.policy, s.options(), metrics, stages)

    def __serve_build_asgi_app__(self):
        return create_app(self.settings, load=self.load)


def build(args):
    """The application (`import_path: stage3_moderation.ray_app:build` in a Serve config); args:
    Settings fields, e.g. {"onnx_dir": ...}. Exports ONNX here, once, if it is missing, so the
    replicas never race to write it."""
    return application(args)


def application(args=None, deployments=None):
    """build(args) with each deployment's options (deployments: {name: options}, as a config file's)."""
    args, deployments = dict(args or {}), deployments or {}
    s = settings_from(args)
    if s.engine.startswith("onnx"):
        export_onnx.ensure_exported(s.clip, s.blip2, s.onnx_dir)
    clip, blip2, ingress = (d.options(**deployments.get(d.name, {})) for d in (Clip, Blip2, Moderation))
    return ingress.bind(clip.bind(args), blip2.bind(args), args)


def config_options(path=CONFIG, **changes):
    """{deployment: options} of a Serve config file's application, with changes ({deployment: options})
    applied; a fixed num_replicas replaces the autoscaling bounds."""
    deployments = yaml.safe_load(Path(path).read_text())["applications"][0]["deployments"]
    options = {d.pop("name"): d for d in deployments}
    for name, change in changes.items():
        if "num_replicas" in change:
            options[name].pop("autoscaling_config", None)
        options[name] |= change
    return options


@contextmanager
def serving(args=None, deployments=None, num_cpus=2, ready_timeout=300):
    """A local Ray cluster of num_cpus CPUs serving the application on a free loopback port; yields
    its base URL once /readyz says ready, then shuts Serve and Ray down (the tests and the benchmark)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        serve.run(application(args, deployments), name=APP, route_prefix="/", blocking=False)
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + ready_timeout
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray Serve application was not ready within {ready_timeout} s")
            time.sleep(0.25)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
