"""The web app (stage3_moderation/ui.py, `make ui`): a real process on loopback, driven through Gradio's
API (gradio_client) and in headless Chromium (Debian's, driven by Playwright: no browser download).
The browser test saves a screenshot of each tab (outputs/ui/*.png, shown in docs/ui.md) and how long
each tab took to answer (outputs/ui/browser.json)."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from curriculum import OUTPUTS_DIR, REPO_ROOT, cli, shapesworld
from stage3_moderation.loadgen import free_port

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.ui
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = OUTPUTS_DIR / "ui"
RED_CROSS = [shapesworld.ShapeObject("red", "cross", "large", "top left")]


@pytest.fixture(scope="module")
def app(onnx_export, tmp_path_factory):
    """(URL, process) of `python -m stage3_moderation.ui` on a free port, its in-process moderation
    service on the session's ONNX export; stopped with Ctrl-C (SIGINT) at the end, which must leave no
    process and free the port."""
    port, log = free_port(), tmp_path_factory.mktemp("ui") / "ui.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "MODERATION_ONNX_DIR": str(onnx_export[0])}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stage3_moderation.ui", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)
    yield url, process
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, log.read_text()
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app[0], verbose=False)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Files to upload: a red cross, a two-shape test scene (and its truth), and bad ones."""
    folder = tmp_path_factory.mktemp("uploads")
    cross = folder / "red_cross.png"
    shapesworld.render(RED_CROSS, 64, np.random.default_rng(0)).save(cross)
    scene = shapesworld.sample("test", 1)
    scene.image.save(folder / "scene.png")
    (folder / "notes.png").write_text("not an image\n")
    (folder / "truncated.png").write_bytes(cross.read_bytes()[:120])
    Image.new("L", (7100, 7100)).save(folder / "huge.png")  # 50 megapixels, a few kB as PNG
    return folder, scene


def refused(call, *args, api_name):
    """The one-line message the page shows for a refused call (Gradio's error toast)."""
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        call(*args, api_name=api_name)
    return str(e.value)


def caption_args(image, question=""):
    """The caption tab's fields: image, prompt, question and week 2's greedy settings."""
    return gradio_client.handle_file(str(image)), "(none)", question, 40, 1, False, 1.0, 1.0, 1.0, 0


# ---------------------------------------------------------------- through Gradio's API
def test_search_finds_the_asked_shape_in_english_chinese_and_by_image(client, tmp_path):
    for query in ["a red circle", "红色的圆形"]:
        hits = client.predict(query, None, 3, "", api_name="/search")
        assert len(hits) == 3 and "red circle" in hits[0]["caption"], (query, hits)
    gallery = tmp_path / "gallery"
    shapesworld.export("test", 8, gallery)  # a folder the learner names
    [top] = client.predict(
        "", gradio_client.handle_file(str(gallery / "test_00005.png")), 1, str(gallery), api_name="/search"
    )
    caption = shapesworld.read_captions(gallery)["test_00005.png"]["caption_en"]
    assert top["caption"].startswith("#1 1.000") and top["caption"].endswith(caption)


def test_caption_names_the_colours_and_a_question_is_answered(client, pictures):
    folder, scene = pictures
    caption = client.predict(*caption_args(folder / "scene.png"), api_name="/caption")
    assert all(o.color in caption and o.shape in caption for o in scene.objects), (caption, scene.objects)
    answer = client.predict(*caption_args(folder / "scene.png", "how many shapes are there?"), api_name="/caption")
    assert answer == str(len(scene.objects)) or answer == ["one", "two"][len(scene.objects) - 1], answer


def test_generate_draws_the_model_size_and_the_word_map(client):
    prompt = "a large red circle in the top left"
    image, attention = client.predict(prompt, "ddim", 6, 5.0, 0, "red", api_name="/generate")
    assert Image.open(image).size == (64, 64)  # tiny-sd's sample size
    assert Image.open(attention).width > 64  # the image and a map per layer resolution, side by side
    image, attention = client.predict(prompt, "euler", 6, 5.0, 0, "", api_name="/generate")
    assert Image.open(image).size == (64, 64) and attention is None


def test_a_search_is_answered_while_a_generation_runs(client):
    """Each tab has its own slot in Gradio's queue: a long generation does not hold up a search."""
    job = client.submit("a large red circle in the top left", "ddpm", 80, 5.0, 0, "", api_name="/generate")
    deadline = time.monotonic() + 60
    while job.status().code != gradio_client.utils.Status.PROGRESS:  # its denoising steps have begun
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.05)
    assert client.predict("a red circle", None, 1, "", api_name="/search")
    assert not job.done()  # the search came back first
    assert Image.open(job.result()[0]).size == (64, 64)


def test_moderate_flags_a_red_cross_as_the_service_answers(client, pictures):
    folder, _ = pictures
    summary, answer = client.predict(gradio_client.handle_file(str(folder / "red_cross.png")), "", api_name="/moderate")
    [result] = answer["results"]
    assert result["flagged"] and result["categories"]["red_cross"] and "red cross" in result["caption"]
    assert summary.startswith("**Flagged**: red_cross")
    summary, answer = client.predict(None, "free money at www.example.com", api_name="/moderate")
    assert answer["results"][0]["categories"]["spam"] and "spam" in summary


def test_bad_input_is_one_line_in_the_page_and_the_app_keeps_serving(client, pictures):
    folder, _ = pictures
    bad_images = {
        "notes.png": "the bytes are not a PNG, JPEG, GIF, WebP or BMP image",
        "truncated.png": "could not be decoded (corrupt or truncated)",
        "huge.png": "the image is 7100×7100 = 50,410,000 pixels; the limit is 16,777,216",
    }
    for name, says in bad_images.items():
        assert says in refused(client.predict, *caption_args(folder / name), api_name="/caption")
        assert says in refused(client.predict, gradio_client.handle_file(str(folder / name)), "x", api_name="/moderate")
    prompt = "a large red circle in the top left"
    assert "prompt: empty text" in refused(client.predict, " ", "ddim", 6, 5.0, 0, "", api_name="/generate")
    assert "nope" in refused(client.predict, prompt, "nope", 6, 5.0, 0, "", api_name="/generate")
    assert "'banana' is not in the prompt" in refused(
        client.predict, prompt, "ddim", 6, 5.0, 0, "banana", api_name="/generate"
    )
    assert "no folder at '/no/such/folder'" in refused(
        client.predict, "red", None, 3, "/no/such/folder", api_name="/search"
    )
    assert "type a query or upload an image" in refused(client.predict, "  ", None, 3, "", api_name="/search")
    assert "upload an image or type a text" in refused(client.predict, None, " ", api_name="/moderate")
    assert client.predict("a red circle", None, 1, "", api_name="/search")  # still serving


def test_a_taken_port_is_one_line_and_exit_2(app, cli_runner):
    from stage3_moderation import ui

    port = app[0].rsplit(":", 1)[1]
    code, _, err = cli_runner(ui.main, ["--port", port, "--moderation-url", "http://127.0.0.1:9"])
    assert code == 2 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1, err


# ---------------------------------------------------------------- in a real browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (.ci/run installs it)")
def test_each_tab_in_chromium_answers_and_a_bad_upload_shows_its_error(app, pictures):
    sync_api = pytest.importorskip("playwright.sync_api")
    folder, scene = pictures
    seconds = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(app[0])
        expect = sync_api.expect

        def timed(tab, button, result):
            start = time.monotonic()
            page.click(button)
            result()
            seconds[tab] = round(time.monotonic() - start, 2)
            page.screenshot(path=SHOTS / f"{tab}.png")

        SHOTS.mkdir(parents=True, exist_ok=True)
        page.fill("#search-query textarea", "a red circle")
        timed("search", "#search-button", lambda: expect(page.locator("#search-hits img")).to_have_count(5))

        page.get_by_role("tab", name="Caption and ask (week 2)").click()
        page.set_input_files("#caption-image input[type=file]", folder / "scene.png")
        answer = page.locator("#caption-answer textarea")
        timed("caption", "#caption-button", lambda: expect(answer).not_to_have_value("", timeout=30_000))
        assert all(o.color in answer.input_value() for o in scene.objects), answer.input_value()

        page.get_by_role("tab", name="Generate (week 3)").click()
        page.fill("#generate-word textarea", "red")
        timed(
            "generate", "#generate-button", lambda: expect(page.locator("#attention img")).to_be_visible(timeout=60_000)
        )
        assert page.locator("#generated img").is_visible()

        page.get_by_role("tab", name="Moderate (week 10)").click()
        page.set_input_files("#moderate-image input[type=file]", folder / "red_cross.png")
        page.fill("#moderate-text textarea", "a large red cross")
        timed(
            "moderate",
            "#moderate-button",
            lambda: expect(page.locator("#verdict")).to_contain_text("Flagged: red_cross", timeout=30_000),
        )

        page.get_by_role("tab", name="Caption and ask (week 2)").click()
        page.set_input_files("#caption-image input[type=file]", folder / "notes.png")
        page.click("#caption-button")
        toast = page.locator(".toast-body", has_text="the bytes are not a PNG, JPEG, GIF, WebP or BMP image")
        expect(toast).to_be_visible(timeout=30_000)
        page.wait_for_timeout(500)  # the toast slides in
        page.screenshot(path=SHOTS / "error.png")
        assert "Traceback" not in page.content()
        version = browser.version
        browser.close()
    assert not [e for e in errors if "favicon" not in e], errors
    generate = {"steps": 25, "scheduler": "dpmsolver", "word": "red"}  # the tab's defaults, and the word typed
    cli.write_json({"seconds_to_answer": seconds, "generate": generate, "chromium": version}, SHOTS / "browser.json")
    assert json.loads((SHOTS / "browser.json").read_text())["seconds_to_answer"].keys() == {
        "search",
        "caption",
        "generate",
        "moderate",
    }


# ---------------------------------------------------------------- the Space
def test_the_space_front_matter_runs_the_app_with_its_variables(monkeypatch, capsys):
    front = yaml.safe_load((REPO_ROOT / "deploy/space/README.md").read_text(encoding="utf-8").split("---")[1])
    app_file = REPO_ROOT / front["app_file"]
    assert front["sdk"] == "gradio" and app_file.is_file()
    assert "-e .[ui]" in (REPO_ROOT / "deploy/space/requirements.txt").read_text()
    monkeypatch.setattr(sys, "argv", [str(app_file), "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(app_file), run_name="__main__")
    assert e.value.code == 0 and "--moderation-url" in capsys.readouterr().out
    monkeypatch.setenv("UI_CLIP", "no/such-folder/")  # a Space variable reaches the app's --clip
    monkeypatch.setattr(sys, "argv", [str(app_file)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(app_file), run_name="__main__")
    assert e.value.code == 2 and "--clip: no model folder at 'no/such-folder/'" in capsys.readouterr().err
