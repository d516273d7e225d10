# %% [markdown]
# # Week 10 — the moderation service: start it, call it, stop it
#
# Week 9's exported models and policy, behind an HTTP API with OpenAI's request and response
# shapes: `POST /v1/moderations` (a text, an image, or both), `/v1/embeddings`, `/v1/captions`,
# plus `/healthz`, `/readyz` and `/metrics`. This notebook starts the real server
# (`python -m stage3_moderation.serve`: uvicorn held to the service's HTTP limits) in the background
# on a free loopback port, sends the requests of the week's curl examples with httpx, and stops it
# in the last cell. The week's page: [docs/week10.md](../docs/week10.md).
#
# The service runs the tiny models in both profiles: with real checkpoints it would hold BLIP-2
# OPT-2.7b in float32 on the CPU (about 11 GB of RAM) before serving a single request.

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # a folder of your own photos to send (on Colab, upload them into /content/images); None: ShapesWorld
# The service's default engine is onnx-fp32, which needs an ONNX export: week 9's is used when it is there,
# else one is made at start-up (a minute here). torch-fp32 starts at once.
ENGINE = "torch-fp32"
UI = False  # True: also the demos' web app (make ui) on this server, with a public share link on Colab

# %%
import atexit
import json
from contextlib import ExitStack

import httpx
from IPython.display import Image, display
from PIL import Image as PILImage

from curriculum import colab
from stage3_moderation import graphs, loadgen

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
found = colab.gallery("tiny", 4, IMAGES)  # the service's models are tiny: ShapesWorld, unless you give photos
photos = [found[i % len(found)] for i in range(4)]  # a folder of fewer than 4 is sent round again
print(f"profile {PROFILE}; the service runs the bundled tiny models with engine {ENGINE}; images: {photos[0].parent}")


def show(response):
    """A response as curl -s would print it (one line of JSON), after its status."""
    print(f"HTTP {response.status_code}:", json.dumps(response.json(), ensure_ascii=False))


# %% [markdown]
# ## Start the server in the background
#
# `loadgen.server` starts `python -m stage3_moderation.serve` as a child process on a free port of
# 127.0.0.1, polls `/readyz` until the models are loaded and warm (`/healthz` answers at once; `/readyz`
# is 503 until then), and stops the process when its context closes. The context is held open
# across cells here, and closed by the last cell, or when the kernel exits.

# %%
if globals().get("services") is not None:  # this cell run again: stop the earlier server first
    globals()["services"].close()
services = ExitStack()
atexit.register(services.close)
settings = {"MODERATION_ENGINE": ENGINE}  # the service reads MODERATION_* variables (docs/week10.md)
if ENGINE.startswith("onnx") and graphs.is_exported("outputs/notebooks/week09/onnx"):
    settings["MODERATION_ONNX_DIR"] = "outputs/notebooks/week09/onnx"
url, process = services.enter_context(loadgen.server(env=settings))
http = services.enter_context(httpx.Client(base_url=url, timeout=60))
print(f"serving at {url} (pid {process.pid})")
print("/healthz:", http.get("/healthz").json())
print("/readyz:", http.get("/readyz").json())

# %% [markdown]
# ## A text
#
# Text rules run on the text as a reader sees it; the demo policy's `spam` category catches links
# and sales pitches. The result has OpenAI's fields (`flagged`, `categories`, `category_scores`,
# `category_applied_input_types`) plus the service's own.

# %%
show(http.post("/v1/moderations", json={"input": "free money at www.example.com"}))

# %% [markdown]
# ## An image and its text, as multipart
#
# The image is judged by CLIP concept scores and by the text rules on its BLIP-2 caption; with text
# beside it, the CLIP cosine between the two is `image_text_similarity`, and below the policy's
# threshold the pair is a `mismatch` (a caption that does not describe its image).

# %%
display(Image(filename=photos[1]))
with open(photos[1], "rb") as f:
    show(http.post("/v1/moderations", files={"image": f}, data={"text": "a small green cross in the top right"}))

# %% [markdown]
# ## An image as an OpenAI-style data URL, and a caption

# %%
image_part = {"type": "image_url", "image_url": {"url": loadgen.data_url(PILImage.open(photos[2]))}}
show(http.post("/v1/moderations", json={"input": [image_part]}))
with open(photos[3], "rb") as f:
    show(http.post("/v1/captions", files={"image": f}))
show(http.post("/v1/embeddings", json={"input": ["a red circle"], "dimensions": 8}))

# %% [markdown]
# ## A bad input gets a 4xx and says why
#
# Every endpoint answers every error in one shape, OpenAI's: `{"error": {"message", "type", "param",
# "code"}}`, where `message` says what to fix and `param` names the field at fault.

# %%
show(http.post("/v1/moderations", json={"input": 42}))
show(http.post("/v1/moderations", files={"image": ("notes.png", b"not a picture", "image/png")}))

# %% [markdown]
# ## Readiness and metrics
#
# `/metrics` is Prometheus text: how many batches each stage ran, and the cache's hits and misses
# (send the same image twice and the second is a hit).

# %%
print(http.get("/readyz").json())
metrics = http.get("/metrics").text.splitlines()
print("\n".join(line for line in metrics if line.startswith(("moderation_batch_size_count", "moderation_cache_total"))))

# %% [markdown]
# ## The demos as a web app, with a link to share
#
# `make ui` on a laptop; here, with `UI = True` in the parameters cell, the same Gradio app
# (stage3_moderation/ui.py, [docs/ui.md](../docs/ui.md)): search, caption and ask, generate on this
# profile's models, and its Moderate tab asks the server started above. On Colab `--share` prints a
# public gradio.live link (open for 72 hours) to show it from any browser; `app.close()` stops it.

# %%
if UI:
    from stage3_moderation import ui

    models = [f"--{family}={MODELS[family]}" for family in ("clip", "blip2", "sd")]
    app = ui.start(
        [*models, f"--port={loadgen.free_port()}", f"--moderation-url={url}"] + ["--share"] * colab.on_colab()
    )
else:
    print("UI = False: set UI = True in the parameters cell to launch the web app here (make ui on a laptop)")

# %% [markdown]
# ## Stop the server
#
# Closing the context terminates the server process (and the HTTP client). Run this cell before you
# leave; a re-run of the start cell also stops the earlier server first.

# %%
if UI:
    app.close()
services.close()
print(f"server stopped: exit code {process.wait(10)}")
