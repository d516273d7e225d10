"""The demos as a web app you can show: search, caption and ask, generate, moderate, a tab each (Gradio).

    make ui                                                  http://127.0.0.1:7860, the bundled tiny models
    python -m stage3_moderation.ui --blip2 data/models/tiny-blip2-prompts   the Chinese and one-sentence prompts
    python -m stage3_moderation.ui --clip openai/clip-vit-base-patch32 --blip2 Salesforce/blip2-opt-2.7b \\
        --sd stable-diffusion-v1-5/stable-diffusion-v1-5 --share          real checkpoints, a public link (Colab)

Each tab calls what its week's script calls: week 1's index and query (stage1_demos.clip_retrieval),
week 2's generation settings and caption_images (stage1_demos.blip2_caption), week 3's generate and
cross-attention maps (stage1_demos.sd_generate), week 10's /v1/moderations. Models load on first use
and stay loaded. Gradio's queue gives each tab's function its own concurrency limit (one generation,
one caption, two searches, four moderations at a time), so a 25-step generation does not hold up a
search.

Moderate posts the image and text to /v1/moderations and shows its answer as it is: a running
service's (--moderation-url) or, by default, this process's own week 10 app (MODERATION_* settings,
as `make serve`, with --clip and --blip2), called in-process without a socket (starlette's ASGI
client, which runs the app's start-up). Uploads are held to week 10's limits (8 MiB, 4096² pixels,
20:1 sides); a file that is not an image, a truncated one, an empty prompt: one line in the page
(Gradio's error toast), and the app keeps serving.
"""

import argparse
import functools
import hashlib
import mimetypes
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls: this machine has no internet

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402

from curriculum import OUTPUTS_DIR, cli, shapesworld, zoo  # noqa: E402
from curriculum.images import open_image  # noqa: E402
from curriculum.tiny_blip2 import DETAIL_PROMPT, PHOTO_PROMPT, qa_prompt  # noqa: E402
from curriculum.tiny_blip2_prompts import PROMPT_STYLES  # noqa: E402
from stage1_demos import blip2_caption, clip_retrieval, sd_generate  # noqa: E402
from stage3_moderation import images  # noqa: E402
from stage3_moderation.errors import BadInput  # noqa: E402
from stage3_moderation.inputs import Limits  # noqa: E402

LIMITS = Limits()  # week 10's: the same uploads are refused here as by the service
UI_DIR = OUTPUTS_DIR / "ui"
GALLERY = UI_DIR / "gallery"  # the default: ShapesWorld's test split, exported on first use
GALLERY_SIZE = 300  # week 1's gallery
PROMPTS = ["(none)", PHOTO_PROMPT, DETAIL_PROMPT, *[p for p in PROMPT_STYLES if p != DETAIL_PROMPT]]
EXAMPLE_PROMPT = "a large red circle in the top left"


def upload(label, elem_id, height=260):
    """An image upload whose function gets the file's path unopened. Gradio's Image opens it with Pillow
    first and fails in Pillow's words on a file that is not an image; here week 10's checks read it
    (images.probe / decode), so a bad file gets the service's one line. Set on the instance: a subclass
    of a Gradio component makes Gradio write a .pyi stub beside this file."""
    image = gr.Image(label=label, type="filepath", height=height, elem_id=elem_id)
    image.preprocess = lambda payload: None if payload is None else payload.path
    return image


def says_errors(fn):
    """A tab's function whose refusals (UserError, week 10's BadInput) become Gradio's error toast, one line."""

    @functools.wraps(fn)
    def tab(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except cli.UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except BadInput as e:
            raise gr.Error(e.message, print_exception=False) from None

    return tab


class PageArgs(argparse.ArgumentParser):
    """A script's own arguments, read from a tab's fields: the same kinds and ranges as on its command
    line, and a refusal is one line in the page."""

    def error(self, message):
        raise cli.UserError(message.replace("argument --", ""))


def page_args(add_arguments, **fields):
    """Parse a tab's fields (name=value; True for a flag, None or False for absent) with add_arguments(parser)."""
    parser = PageArgs(add_help=False)
    add_arguments(parser)
    argv = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a slider's 25.0 is the count 25
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return parser.parse_args(argv)


def read_upload(path):
    """An uploaded file -> the RGB picture a browser shows (its first frame), under week 10's limits."""
    if path is None:
        raise cli.UserError("upload an image first")
    data = Path(path).read_bytes()
    if len(data) > LIMITS.max_body_bytes:
        raise cli.UserError(f"the file is {len(data):,} bytes; the limit is {LIMITS.max_body_bytes:,}")
    images.probe(data, LIMITS, "image", all_frames=False)  # size and sides from the header, before decoding
    return images.decode(data, LIMITS, all_frames=False)[0].image


LOADERS = {"clip": zoo.load_clip, "clip-zh": zoo.load_clip_zh, "blip2": zoo.load_blip2, "sd": zoo.load_sd}


class Models:
    """The app's models, each loaded once on first use (a lock: two tabs asking at once load it once)."""

    def __init__(self, clip, blip2, sd, device):
        self.names = {"clip": clip, "blip2": blip2, "sd": sd}
        self.device, self.lock, self.loaded = device, threading.Lock(), {}

    def get(self, family):
        with self.lock:
            if family not in self.loaded:
                self.loaded[family] = LOADERS[family](self.names.get(family, "tiny"), self.device)
            return self.loaded[family]


# ---------------------------------------------------------------- search (week 1)
INDEXING = threading.Lock()  # two searches at once export the default gallery, and index a folder, once
INDEXES = {}  # index folder -> (FAISS index, meta), read once


def gallery_folder(text):
    """The folder the learner named, or ShapesWorld's test split (exported once into outputs/ui/gallery)."""
    if text.strip():
        folder = Path(text.strip()).expanduser()
        if not folder.is_dir():
            raise cli.UserError(f"no folder at {text.strip()!r}: name a folder of images, or leave it empty")
        return folder
    with INDEXING:
        if not (GALLERY / "captions.jsonl").exists():
            shapesworld.export("test", GALLERY_SIZE, GALLERY)
    return GALLERY


def index_for(folder, clip, device):
    """The index of `folder` under outputs/ui/index, built on first use; a new one when the folder's
    files (names, sizes, times) or the CLIP change, so a search never reads a stale index."""
    listing = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.suffix.lower() in clip_retrieval.IMAGE_SUFFIXES
    )
    key = hashlib.sha256(repr((str(folder.resolve()), clip, listing)).encode()).hexdigest()[:16]
    index_dir = UI_DIR / "index" / key
    with INDEXING:
        if not (index_dir / clip_retrieval.META_FILE).exists():
            clip_retrieval.build_index(folder, index_dir, clip, device)
        if index_dir not in INDEXES:
            INDEXES[index_dir] = clip_retrieval.load_index(index_dir)
        return INDEXES[index_dir]


def search_tab(models):
    @says_errors
    def search(query, image_path, k, gallery, progress=gr.Progress(track_tqdm=True)):
        text = query.strip() or None
        if (text is None) == (image_path is None):
            raise cli.UserError("type a query or upload an image (one of the two; clear the other)")
        image = read_upload(image_path) if image_path is not None else None
        index, meta = index_for(gallery_folder(gallery), models.names["clip"], models.device)
        _, hits = clip_retrieval.query_hits(index, meta, models.get, text, image, int(k))
        return [
            (open_image(h["path"]), f"#{n} {h['score']:.3f} {h['caption'] or Path(h['path']).name}")
            for n, h in enumerate(hits, 1)
        ]

    with gr.Tab("Search (week 1)"):
        gr.Markdown(
            "CLIP retrieval: a text (English or Chinese) or an image against a gallery, nearest first (cosine)."
        )
        with gr.Row():
            with gr.Column():
                query = gr.Textbox(label="Query", placeholder="a red circle / 红色的圆形", elem_id="search-query")
                image = upload("…or an image", "search-image", 200)
                k = gr.Slider(1, 20, value=5, step=1, label="Top k")
                gallery = gr.Textbox(
                    label="Gallery folder", placeholder=f"empty: ShapesWorld test split ({GALLERY_SIZE} images)"
                )
                button = gr.Button("Search", variant="primary", elem_id="search-button")
            hits = gr.Gallery(label="Hits", columns=5, height=420, format="png", elem_id="search-hits")
        for event in (button.click, query.submit):
            event(
                search,
                [query, image, k, gallery],
                hits,
                api_name="search",
                concurrency_limit=2,
                concurrency_id="search",
            )


# ---------------------------------------------------------------- caption and ask (week 2)
def caption_tab(models):
    @says_errors
    def caption(image_path, prompt, question, max_new_tokens, num_beams, do_sample, temperature, top_p, penalty, seed):
        image = read_upload(image_path)
        prompt = qa_prompt(question.strip()) if question.strip() else "" if prompt == PROMPTS[0] else prompt
        args = page_args(
            blip2_caption.add_generation_args,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            repetition_penalty=penalty,
            seed=seed,
        )
        args.model = models.names["blip2"]
        settings = blip2_caption.generation_settings(args, prompt)
        if settings["max_new_tokens"] < args.max_new_tokens:
            gr.Warning(f"only {settings['max_new_tokens']} new tokens fit after this prompt: generating at most that")
        model, processor = models.get("blip2")
        torch.manual_seed(settings["seed"])  # what sampling draws from
        return blip2_caption.caption_images(model, processor, [image], [prompt], settings)[0]

    with gr.Tab("Caption and ask (week 2)"):
        gr.Markdown(
            "BLIP-2 continues a prompt after the image's query tokens; a question is asked as "
            "`Question: … Answer:`. The bundled tiny model learned the English detail prompt; "
            "`--blip2 data/models/tiny-blip2-prompts` also the one-sentence and Chinese ones."
        )
        with gr.Row():
            with gr.Column():
                image = upload("Image", "caption-image", 260)
                prompt = gr.Dropdown(PROMPTS, value=PROMPTS[0], label="Prompt", allow_custom_value=True)
                question = gr.Textbox(
                    label="…or a question (replaces the prompt)", placeholder="what colour is the shape?"
                )
            with gr.Column():
                with gr.Accordion("Generation settings", open=False):
                    max_new_tokens = gr.Slider(
                        1, 64, value=blip2_caption.GREEDY["max_new_tokens"], step=1, label="Max new tokens"
                    )
                    num_beams = gr.Slider(1, 8, value=1, step=1, label="Beams (1 = greedy)")
                    do_sample = gr.Checkbox(label="Sample instead of the most likely token")
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature (when sampling)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (when sampling)")
                    penalty = gr.Slider(1.0, 3.0, value=1.0, step=0.05, label="Repetition penalty (1 = off)")
                    seed = gr.Number(0, precision=0, label="Seed (when sampling)")
                button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                answer = gr.Textbox(label="Caption", lines=3, elem_id="caption-answer")
        fields = [image, prompt, question, max_new_tokens, num_beams, do_sample, temperature, top_p, penalty, seed]
        button.click(caption, fields, answer, api_name="caption", concurrency_limit=1)


# ---------------------------------------------------------------- generate (week 3)
def sampling_arguments(parser):
    sd_generate.add_sampling_args(parser)
    parser.add_argument("--scheduler", choices=list(sd_generate.SCHEDULERS))
    parser.add_argument("--token", type=cli.Text(blank=True), default="")


def generate_tab(models):
    @says_errors
    def generate(prompt, scheduler, steps, guidance, seed, word, progress=gr.Progress()):
        args = page_args(
            sampling_arguments,
            prompt=prompt,
            scheduler=scheduler,
            steps=steps,
            guidance=guidance,
            seed=seed,
            token=word,
        )
        sd_generate.check_before_loading(models.names["sd"], {"prompt": args.prompt}, [args.steps])
        pipe = models.get("sd")
        pipe.set_progress_bar_config(disable=True)  # the page's bar instead of the terminal's

        def on_step(done, total):
            progress((done, total), desc="denoising", unit="steps")

        prompt, word = args.prompt, args.token.strip()
        if not word:
            image = sd_generate.generate(
                pipe, [prompt], args.steps, args.scheduler, args.guidance, [args.seed], None, on_step
            )
            return image[0], None
        image, by_resolution, overall = sd_generate.attention_maps(
            pipe, prompt, word, args.steps, args.guidance, args.seed, args.scheduler, on_step
        )
        out = Path(tempfile.mkdtemp(prefix="attention-")) / "attention.png"
        sd_generate.attention_picture(image, by_resolution, overall, prompt, word, out)
        return image, str(out)

    with gr.Tab("Generate (week 3)"):
        gr.Markdown(
            "Stable Diffusion: the prompt, a sampler, its steps and guidance, the noise seed; name a word of the "
            "prompt to see where the UNet's cross-attention put it. The tiny model draws 64 px ShapesWorld scenes."
        )
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPT)
                scheduler = gr.Dropdown(list(sd_generate.SCHEDULERS), value="dpmsolver", label="Scheduler")
                steps = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="generate-steps")
                guidance = gr.Slider(0, 15, value=5.0, step=0.5, label="Guidance")
                seed = gr.Number(0, precision=0, label="Seed")
                word = gr.Textbox(
                    label="Cross-attention of the word (optional)", placeholder="red", elem_id="generate-word"
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Column():
                image = gr.Image(label="Generated", type="pil", height=256, format="png", elem_id="generated")
                attention = gr.Image(label="Cross-attention", type="filepath", format="png", elem_id="attention")
        fields = [prompt, scheduler, steps, guidance, seed, word]
        button.click(generate, fields, [image, attention], api_name="generate", concurrency_limit=1)


# ---------------------------------------------------------------- moderate (week 10)
class Moderation:
    """POST /v1/moderations to a running service (url), or to week 10's app in this process."""

    def __init__(self, url, clip, blip2):
        if url:
            self.client, self.where = httpx.Client(base_url=url, timeout=60), url
            return
        from fastapi.testclient import TestClient
        from pydantic import ValidationError

        from stage3_moderation.app import create_app
        from stage3_moderation.settings import Settings, one_line

        try:
            Settings.from_environment()  # a MODERATION_ name that is no setting is refused
            settings = Settings(clip=clip, blip2=blip2)
        except ValidationError as e:
            raise cli.UserError(f"moderation service: {one_line(e)}") from None
        self.client = TestClient(create_app(settings), raise_server_exceptions=False)
        self.client.__enter__()  # the app's start-up: its models load in the background from now
        self.where = "this process (week 10's app, in-process)"

    def close(self):
        self.client.__exit__(None, None, None)  # the in-process app's shut-down: its batchers stop

    def wait_ready(self, seconds=300):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready = self.client.get("/readyz")
            if ready.status_code == 200:
                return
            time.sleep(0.2)
        raise cli.UserError(f"the moderation service at {self.where} is not ready: {ready.text[:200]}")

    def moderate(self, image_path, text):
        if image_path is None and not text.strip():
            raise cli.UserError("upload an image or type a text (or both)")
        try:
            self.wait_ready()
            if image_path is None:
                response = self.client.post("/v1/moderations", json={"input": text})
            else:
                kind = mimetypes.guess_type(image_path)[0] or "application/octet-stream"
                part = {"image": (Path(image_path).name, Path(image_path).read_bytes(), kind)}
                response = self.client.post("/v1/moderations", files=part, data={"text": text} if text.strip() else {})
            body = response.json()
        except httpx.HTTPError as e:
            raise cli.UserError(f"cannot reach the moderation service at {self.where}: {e}") from None
        except ValueError:
            raise cli.UserError(f"{self.where} did not answer JSON: is it the moderation service?") from None
        if response.status_code != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise cli.UserError(f"{response.status_code}: {error.get('message', body)}")
        return body


def verdict(result):
    """The answer in a sentence or three: flagged or not, which categories, the caption."""
    flagged = [c for c, hit in result["categories"].items() if hit]
    scores = ", ".join(f"{c} {s:.2f}" for c, s in result["category_scores"].items())
    lines = [
        f"**{'Flagged' if result['flagged'] else 'Not flagged'}**" + (f": {', '.join(flagged)}" if flagged else "")
    ]
    lines.append(f"scores: {scores}")
    if result.get("caption"):
        lines.append(f"caption: {result['caption']}")
    if result.get("mismatch"):
        lines.append(f"the text does not match the image (similarity {result['image_text_similarity']:.2f})")
    return "\n\n".join(lines)


def moderate_tab(moderation):
    @says_errors
    def moderate(image_path, text):
        body = moderation.moderate(image_path, text)
        return verdict(body["results"][0]), body

    with gr.Tab("Moderate (week 10)"):
        gr.Markdown(
            "`POST /v1/moderations` with the image and the text; the answer as the service gives it. "
            f"Service: {moderation.where}."
        )
        with gr.Row():
            with gr.Column():
                image = upload("Image", "moderate-image", 260)
                text = gr.Textbox(
                    label="Text", placeholder="a small green cross in the top right", elem_id="moderate-text"
                )
                button = gr.Button("Moderate", variant="primary", elem_id="moderate-button")
            with gr.Column():
                summary = gr.Markdown(elem_id="verdict")
                answer = gr.JSON(label="/v1/moderations answered")
        button.click(moderate, [image, text], [summary, answer], api_name="moderate", concurrency_limit=4)


# ---------------------------------------------------------------- the app
def build(models, moderation):
    with gr.Blocks(title="Multimodal curriculum demos") as app:
        gr.Markdown(
            "# Multimodal curriculum: the demos\nModels: " + ", ".join(f"{k} `{v}`" for k, v in models.names.items())
        )
        search_tab(models)
        caption_tab(models)
        generate_tab(models)
        moderate_tab(moderation)
    return app


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.ui", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--host", type=cli.Text(), default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=cli.Count(1, 65535), default=7860, help="port (default 7860)")
    p.add_argument("--clip", type=cli.Model("clip"), default="tiny", help="CLIP for Search and Moderate (default tiny)")
    p.add_argument(
        "--blip2", type=cli.Model("blip2"), default="tiny", help="BLIP-2 for Caption and Moderate (default tiny)"
    )
    p.add_argument("--sd", type=cli.Model("sd"), default="tiny", help="Stable Diffusion for Generate (default tiny)")
    cli.add_device_arg(p)
    p.add_argument(
        "--moderation-url",
        type=cli.Url(),
        help="a running moderation service to ask (e.g. http://127.0.0.1:8000, `make serve`); default: week 10's app "
        "in this process",
    )
    p.add_argument("--share", action="store_true", help="also a public gradio.live link (needs internet: Colab)")
    return p


class Running:
    """The app serving in the background: `blocks` (Gradio's), and close() for it and its moderation."""

    def __init__(self, blocks, moderation):
        self.blocks, self.moderation = blocks, moderation

    def close(self):
        self.blocks.close()
        self.moderation.close()


def start(argv=None):
    """The app, serving in the background (a notebook's cell returns at once; `close()` stops it)."""
    args = build_parser().parse_args(argv)
    models = Models(args.clip, args.blip2, args.sd, args.device)
    moderation = Moderation(args.moderation_url, args.clip, args.blip2)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: offline
    app = build(models, moderation).queue(default_concurrency_limit=1)
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=LIMITS.max_body_bytes,
            theme=theme,
            prevent_thread_lock=True,
            quiet=not args.share,  # Gradio's own lines speak of launch(share=True); with --share they give the link
        )
    except OSError as e:  # Gradio's "Cannot find empty port": another server holds it
        moderation.close()
        raise cli.UserError(f"cannot listen on {args.host}:{args.port} ({e}): choose another --port") from None
    print(f"the demos: {app.local_url} (moderation: {moderation.where}); Ctrl-C stops", flush=True)
    return Running(app, moderation)


def main(argv=None):
    running = start(argv)
    try:
        running.blocks.block_thread()  # until Ctrl-C, which closes the server
    finally:
        running.close()


if __name__ == "__main__":
    cli.run(main)
