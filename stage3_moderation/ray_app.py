"""Beyond week 10: the same moderation API on Ray Serve, for traffic that outgrows one process.

    make serve-ray      # serve run configs/serve/moderation.yaml: http://127.0.0.1:8000, Ctrl-C stops it

    HTTP ──> Moderation (ingress, FastAPI)                  ──handle, a batch──> Clip  (images, texts)
             week 10's app.py + endpoints.py + inputs.py,   ──handle, a batch──> Blip2 (captions, questions)
             auth, validation, decoding, cache, policy,
             the error shape, and week 10's batchers

The ingress is week 10's app itself (`app.create_app`): the same routes, validation, cache, policy,
error responses and batchers. Only the engine differs: the batchers' model calls go through Ray
Serve handles to the model deployments, one call per batch (RemoteEngine). Each model deployment
runs the week-9 engine (MODERATION_ENGINE, ONNX by default); Ray places its replicas on any
machine of the cluster, restarts one that dies, autoscales between the config's bounds and
refuses work past `max_queued_requests`.

An earlier version sent each item through its own handle call and batched in the deployments
with @serve.batch: three hops per image+text request, each pickling its arguments; batching before
the hop makes it three per batch (docs/ray-serve.md measures both).

Settings: MODERATION_* variables (the config's runtime_env) and the application's `args`, both
Settings fields, batching included (MODERATION_MAX_BATCH_SIZE ...), as in week 10.
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
from stage3_moderation import engines, errors, export_onnx
from stage3_moderation import policy as policies
from stage3_moderation.app import create_app
from stage3_moderation.batching import Overloaded
from stage3_moderation.loadgen import free_port
from stage3_moderation.service import Moderator
from stage3_moderation.settings import Settings, one_line

CONFIG = REPO_ROOT / "configs" / "serve" / "moderation.yaml"
APP = "moderation"


def settings_from(args):
    """Settings from MODERATION_* variables and the application's args (Settings' fields), or one line."""
    try:
        return Settings(**args)
    except ValidationError as e:
        raise UserError(f"moderation on Ray Serve: {one_line(e)}") from None


class ModelDeployment:
    """One week-9 engine in a replica. Each call is a whole batch, made by the ingress's batchers:
    one handle call carries up to max_batch_size items, where a call per item cost a hop per item."""

    async def __init__(self, settings):
        s = settings_from(settings)
        self.questions = policies.load(s.policy).questions  # the ingress checked them (app.check_questions)
        self.engine = await asyncio.to_thread(engines.load, s.engine, s.clip, s.blip2, s.onnx_dir, s.threads)
        largest = max(o.max_batch_size for o in s.options().batching.values())
        await asyncio.to_thread(self.engine.warm_up, largest, self.questions)
        engines.freeze_heap()

    def describe(self):
        return {"engine": self.engine.name}


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=4)
class Clip(ModelDeployment):
    async def embed_images(self, images):
        return await asyncio.to_thread(self.engine.embed_images, images)

    async def embed_texts(self, texts):
        return await asyncio.to_thread(self.engine.embed_texts, texts)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=4)
class Blip2(ModelDeployment):
    async def read_images(self, images):
        """Readings: each image's caption and p(yes) to the policy's questions."""
        return await asyncio.to_thread(self.engine.read_images, images, self.questions)


class RemoteEngine:
    """The engine of the ingress's Moderator when the models are deployments: week 10's batchers run
    in the ingress, and each batch is one call through a handle, awaited on the event loop (the
    methods are coroutines, so the batchers await them there instead of in a worker thread). Ray's
    failures become the API's: a deployment whose queue is full 503 overloaded, a replica that died
    under the batch 503 replica_failed."""

    def __init__(self, clip, blip2, name, clip_processor, timeout_s):
        self.clip, self.blip2, self.name, self.timeout_s = clip, blip2, name, timeout_s
        self.clip_processor = clip_processor  # token counts: no weights

    @classmethod
    async def connect(cls, clip, blip2, clip_name, timeout_s):
        name = (await clip.describe.remote())["engine"]
        processor = await asyncio.to_thread(zoo.load_processor, clip_name, "clip")
        return cls(clip, blip2, name, processor, timeout_s)

    async def call(self, stage, method, items):
        try:
            return await asyncio.wait_for(method.remote(list(items)), self.timeout_s)
        except BackPressureError as e:
            raise Overloaded(f"the {stage} deployment is overloaded: {e.message.strip().rstrip('.')}") from None
        except (RayActorError, ActorUnavailableError, DeploymentUnavailableError):
            raise errors.retry_later(
                f"the {stage} replica serving this request stopped (Ray Serve is replacing it): retry shortly",
                "replica_failed",
                1,
            ) from None

    async def embed_images(self, images):
        return await self.call("clip_image", self.clip.embed_images, images)

    async def embed_texts(self, texts):
        return await self.call("clip_text", self.clip.embed_texts, texts)

    async def read_images(self, images, questions):
        return await self.call("caption", self.blip2.read_images, images)  # the replica asks its policy's questions


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress()
class Moderation:
    """Week 10's FastAPI app as the ingress, its batchers over the two deployments' handles."""

    def __init__(self, clip, blip2, settings, replicas):
        self.clip, self.blip2, self.settings = clip, blip2, settings_from(settings)
        self.replicas = replicas  # {stage: the most replicas its deployment runs}: batches in flight at once

    async def load(self, service):
        """app.py's loader for this front end: week 10's Moderator, batching here, whose engine is the
        deployments; a stage keeps a batch in flight per replica."""
        s = service.settings
        options = s.options()
        for stage, batching in options.batching.items():
            batching.concurrency = self.replicas[stage]
        # the replicas run on their own CPUs, unless MODERATION_MODEL_CALLS_AT_ONCE says they share some
        options.model_calls = s.model_calls_at_once
        engine = await RemoteEngine.connect(self.clip, self.blip2, s.clip, s.timeout_s)
        return Moderator(engine, service.policy, options, service.metrics)

    def __serve_build_asgi_app__(self):
        return create_app(self.settings, load=self.load)


def most_replicas(options):
    return options.get("autoscaling_config", {}).get("max_replicas") or options.get("num_replicas", 1)


def build(args):
    """The application (`import_path: stage3_moderation.ray_app:build` in a Serve config); args:
    Settings fields, e.g. {"onnx_dir": ...}. Exports ONNX here, once, if it is missing, so the
    replicas never race to write it. Serve applies a config's deployment options after this builds,
    so the batches the ingress keeps in flight per stage come from configs/serve/moderation.yaml's
    replicas: a config that runs more replicas of a model should match them there."""
    return application(args, config_options())


def application(args=None, deployments=None):
    """build(args) with each deployment's options (deployments: {name: options}, as a config file's)."""
    args, deployments = dict(args or {}), deployments or {}
    s = settings_from(args)
    if s.engine.startswith("onnx"):
        export_onnx.ensure_exported(s.clip, s.blip2, s.onnx_dir)
    clip, blip2, ingress = (d.options(**deployments.get(d.name, {})) for d in (Clip, Blip2, Moderation))
    clips, blip2s = (most_replicas(deployments.get(d.name, {})) for d in (Clip, Blip2))
    replicas = {"clip_image": clips, "clip_text": clips, "caption": blip2s}
    return ingress.bind(clip.bind(args), blip2.bind(args), args, replicas)


def config_options(path=CONFIG, **changes):
    """{deployment: options} of a Serve config file's application, with changes ({deployment: options})
    applied; a fixed num_replicas replaces the autoscaling bounds."""
    options = {d.pop("name"): d for d in read_config(path)["applications"][0]["deployments"]}
    for name, change in changes.items():
        if "num_replicas" in change:
            options[name].pop("autoscaling_config", None)
        options[name] |= change
    return options


def read_config(path=CONFIG):
    """A Serve config file, as the file has it."""
    return yaml.safe_load(Path(path).read_text())


@contextmanager
def serving(args=None, deployments=None, num_cpus=2, ready_timeout=300, direct_ingress=False):
    """A local Ray cluster of num_cpus CPUs serving the application on a free loopback port; yields
    its base URL once /readyz says ready, then shuts Serve and Ray down (the tests and the benchmark).
    Serve and the application run with the config file's logging_config, and every Ray process with
    its application's environment variables, as under `serve run` on the file.
    direct_ingress: the URL is the ingress replica's own HTTP server, with no proxy in front (Ray
    2.60's experimental RAY_SERVE_ENABLE_DIRECT_INGRESS, which every Ray process inherits from here)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    config = read_config()
    application_config = config["applications"][0]
    env = dict(application_config["runtime_env"]["env_vars"])
    if direct_ingress:
        first = free_port()  # the replicas' ports are taken from here on: this one is free now
        env |= {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + 100),
        }
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=config["logging_config"])
        app = application(args, deployments)
        serve.run(app, name=APP, route_prefix="/", blocking=False, logging_config=application_config["logging_config"])
        url = f"http://127.0.0.1:{first if direct_ingress else port}"
        deadline = time.monotonic() + ready_timeout
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
        for name, value in before.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
