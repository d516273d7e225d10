"""Week 10, tried as an attacker would: images judged as a viewer sees them, bad bodies of every
kind answered 4xx in the API's error shape, work bounded before decoding, clients that go away
costing nothing, a 500 that keeps the connection, and settings that cannot work refused."""

import asyncio
import base64
import http.client
import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate as validate_openapi
from PIL import Image
from pydantic import ValidationError

from curriculum import REPO_ROOT, shapesworld
from curriculum.shapesworld import ShapeObject
from stage3_moderation import batching, images, policy
from stage3_moderation.app import create_app
from stage3_moderation.inputs import Limits
from stage3_moderation.settings import Settings

pytestmark = pytest.mark.week10
RED_CROSS = [ShapeObject("red", "cross", "large", "top left")]
BLUE_CIRCLE = [ShapeObject("blue", "circle", "large", "bottom right")]


def render(objects, seed=0):
    return shapesworld.render(objects, 64, np.random.default_rng(seed))


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def data_url(data, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def moderate(client, data, mime="image/png"):
    response = client.post(
        "/v1/moderations", json={"input": [{"type": "image_url", "image_url": {"url": data_url(data, mime)}}]}
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


# ---------------------------------------------------------------- judged as displayed: the decoder alone
def test_alpha_is_composited_onto_white():
    half_red = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    [frame] = images.decode(encode(half_red), Limits())
    assert frame.image.mode == "RGB" and frame.image.getpixel((0, 0)) == (255, 127, 127)  # ½·red + ½·white
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    [frame] = images.decode(encode(palette, transparency=0), Limits())  # a transparent palette index
    assert frame.image.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_and_other_modes_become_their_8_bit_picture():
    grey = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # 0 .. 65,520
    [frame] = images.decode(encode(Image.fromarray(grey)), Limits())
    assert Image.open(io.BytesIO(encode(Image.fromarray(grey)))).mode == "I;16"
    expected = np.round(grey / 257)
    assert np.abs(np.asarray(frame.image.convert("L"), float) - expected).max() <= 1
    naive = np.asarray(Image.fromarray(grey).convert("RGB"))
    assert (naive == 255).mean() > 0.99  # what a naive convert judged: everything over 255 clipped to white
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in ink
    [frame] = images.decode(encode(cmyk, "JPEG", quality=95), Limits())
    assert frame.image.getpixel((4, 4))[0] > 200 and frame.image.getpixel((4, 4))[1] < 50


def test_exif_orientation_is_applied_as_browsers_do():
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down: shown rotated by 180°
    [frame] = images.decode(encode(image, "JPEG", exif=exif, quality=95), Limits())
    assert frame.image.getpixel((35, 10))[0] > 200 and frame.image.getpixel((5, 10))[1] > 200  # red now on the right


def test_animation_frames_are_counted_before_decoding_and_repeats_judged_once():
    a, b = render(BLUE_CIRCLE), render(RED_CROSS)
    gif = encode(a, "GIF", save_all=True, append_images=[b, a], duration=100, disposal=1)
    assert images.probe(gif, Limits(), "image").frames == 3
    frames = images.decode(gif, Limits())
    assert len(frames) == 2 and len({f.key for f in frames}) == 2  # the third repeats the first
    assert len(images.decode(gif, Limits(), all_frames=False)) == 1
    with pytest.raises(images.BadInput, match="3 frames; the limit is 2"):
        images.probe(gif, Limits(max_frames=2), "image")


def camera_jpeg(first, second):
    """A JPEG with a second picture appended (MPO, as cameras write): Pillow opens it as format MPO."""
    return encode(first, "MPO", save_all=True, append_images=[second])


def test_a_camera_jpeg_with_pictures_appended_is_judged_as_browsers_show_it():
    mpo = camera_jpeg(Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255)))
    probe = images.probe(mpo, Limits(), "image", declared="image/jpeg")
    assert (probe.format, probe.frames) == ("JPEG", 1)
    [frame] = images.decode(mpo, Limits())
    assert frame.image.getpixel((8, 8))[0] > 200  # the first picture, as a browser shows the file


def test_large_images_are_shrunk_for_judging():
    [frame] = images.decode(encode(Image.new("RGB", (2048, 1024), "blue")), Limits())
    assert frame.image.size == (images.JUDGED_SIDE, images.JUDGED_SIDE // 2)


# ---------------------------------------------------------------- the bypasses, through the API
def test_alpha_bypass_is_judged_as_composited(service_client):
    """The viewer sees a red cross: alpha draws it over a red square whose RGB a naive decoder sees."""
    cross = np.asarray(render(RED_CROSS)).astype(int)
    shape = np.abs(cross - shapesworld.BACKGROUND).sum(-1) > 60
    ys, xs = np.nonzero(shape)
    rgb = np.zeros_like(cross, dtype=np.uint8)
    rgb[:] = shapesworld.BACKGROUND
    rgb[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = cross[shape].mean(0)  # a red square around the cross
    shown = np.dstack([rgb, np.where(shape, 255, 0)]).astype(np.uint8)
    naive = moderate(service_client, encode(Image.fromarray(rgb)))
    assert not naive["flagged"], naive  # what dropping alpha judged
    judged = moderate(service_client, encode(Image.fromarray(shown, "RGBA")))
    assert judged["flagged"] and judged["categories"]["red_cross"], judged
    # and pixels nobody sees decide nothing: a red cross under alpha 0 is a blank white picture
    hidden = np.dstack([cross, np.zeros(cross.shape[:2])]).astype(np.uint8)
    assert moderate(service_client, encode(Image.fromarray(cross.astype(np.uint8))))["flagged"]
    assert not moderate(service_client, encode(Image.fromarray(hidden, "RGBA")))["flagged"]


@pytest.mark.parametrize(
    "fmt, mime, options",
    [("GIF", "image/gif", {}), ("PNG", "image/png", {}), ("WEBP", "image/webp", {"lossless": True})],
    ids=["GIF", "APNG", "animated WebP"],
)
def test_animation_bypass_every_frame_is_judged(service_client, fmt, mime, options):
    """A harmless first frame, a red cross after it: flagged, as the worst frame decides."""
    harmless = render(BLUE_CIRCLE, seed=1)
    animation = encode(harmless, fmt, save_all=True, append_images=[render(RED_CROSS)], duration=100, loop=0, **options)
    assert Image.open(io.BytesIO(animation)).n_frames == 2
    first_frame = moderate(service_client, encode(harmless))
    assert not first_frame["flagged"], first_frame  # what judging frame 0 alone decided
    judged = moderate(service_client, animation, mime)
    assert judged["flagged"] and judged["categories"]["red_cross"] and "red cross" in judged["caption"], judged


def test_sixteen_bit_bypass_is_judged_as_its_8_bit_picture(service_client):
    grey = np.asarray(render(RED_CROSS).convert("L"))
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    eight_bit = moderate(service_client, encode(Image.fromarray(grey)))
    naive_white = moderate(service_client, encode(Image.open(io.BytesIO(encode(sixteen))).convert("RGB")))
    assert eight_bit["flagged"] and not naive_white["flagged"]  # the test can tell the two apart
    assert moderate(service_client, encode(sixteen)) == eight_bit


# ---------------------------------------------------------------- bad bodies: 4xx in the error shape, never 5xx
def formats_a_browser_shows():
    """{name: (bytes, MIME type)} for every format and flavour the service accepts."""
    a, b = render(BLUE_CIRCLE), render(RED_CROSS)
    animated = {"save_all": True, "append_images": [b], "duration": 100}
    return {
        "PNG": (encode(a), "image/png"),
        "APNG": (encode(a, **animated), "image/png"),
        "JPEG": (encode(a, "JPEG"), "image/jpeg"),
        "GIF": (encode(a, "GIF"), "image/gif"),
        "animated GIF": (encode(a, "GIF", **animated), "image/gif"),
        "WebP": (encode(a, "WEBP"), "image/webp"),
        "animated WebP": (encode(a, "WEBP", lossless=True, **animated), "image/webp"),
        "BMP": (encode(a, "BMP"), "image/bmp"),
        "RGBA PNG": (encode(a.convert("RGBA")), "image/png"),
        "16-bit PNG": (encode(Image.fromarray(np.zeros((8, 8), np.uint16))), "image/png"),
    }


def formats_outside_the_list():
    image = Image.new("RGB", (16, 16), "red")
    found = {
        "SVG": b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9" fill="red"/></svg>',
        "PDF": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    }
    for fmt in (
        "TIFF",
        "ICO",
        "PPM",
        "TGA",
        "PCX",
        "SGI",
        "EPS",
        "DDS",
        "QOI",
        "JPEG2000",
        "ICNS",
        "DIB",
        "AVIF",
        "XBM",
        "MSP",
        "SPIDER",
    ):
        try:
            found[fmt] = encode(
                {"XBM": image.convert("1"), "MSP": image.convert("1"), "SPIDER": image.convert("F")}.get(fmt, image),
                fmt,
            )
        except (KeyError, OSError, ValueError):  # a Pillow built without that writer
            pass
    return found


def json_image(data, mime="image/png"):
    return {"json": {"input": [{"type": "image_url", "image_url": {"url": data_url(data, mime)}}]}}


def bad_bodies():
    raw = {"content-type": "application/json"}
    bodies = {
        "nested 100,000 deep": {"content": b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": raw},
        "a 5,000-digit integer": {"content": b'{"input": ' + b"7" * 5000 + b"}", "headers": raw},
        "a 5,000-digit integer as dimensions": {
            "content": b'{"input": "x", "dimensions": ' + b"7" * 5000 + b"}",
            "headers": raw,
        },
        "a lone surrogate": {"content": b'{"input": "\\ud800"}', "headers": raw},
        "a lone surrogate in a part": {"content": b'{"input": [{"type": "text", "text": "a\\udfff"}]}', "headers": raw},
        "NaN": {"content": b'{"input": NaN}', "headers": raw},
        "a data URL of text": json_image(b"hello", "text/plain"),
        "SVG as a data URL": json_image(b"<svg/>", "image/svg+xml"),
        "PNG declared as JPEG": json_image(encode(render(BLUE_CIRCLE)), "image/jpeg"),
        "GIF declared as PNG, uploaded": {
            "files": {"image": ("x.png", encode(render(BLUE_CIRCLE), "GIF"), "image/png")}
        },
        "a part without a name": {
            "content": b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n",
            "headers": {"content-type": "multipart/form-data; boundary=zz"},
        },
        "multipart without a boundary": {"content": b"--zz--", "headers": {"content-type": "multipart/form-data"}},
        "the same field twice": {"files": [("text", (None, "a")), ("text", (None, "b"))]},
        "text not UTF-8": {"files": {"text": (None, b"\xff\xfe")}},
        "an unknown model": {"json": {"input": "x", "model": "omni-moderation-latest"}},
        "embedding fields on moderations": {"json": {"input": "x", "encoding_format": "base64"}},
    }
    for name, (data, mime) in formats_a_browser_shows().items():
        bodies[f"{name} truncated"] = json_image(data[: len(data) // 2], mime)
        corrupt = bytearray(data)
        corrupt[6:22] = b"\xff" * 16  # the header, just after the signature
        bodies[f"{name} with a corrupt header"] = json_image(bytes(corrupt), mime)
    for name, data in formats_outside_the_list().items():
        bodies[f"{name} (not shown by browsers)"] = {"files": {"image": ("x", data, "application/octet-stream")}}
    return bodies


def assert_error_shape(response, name):
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["code"], (name, error)


def test_bad_bodies_get_4xx_in_the_error_shape(service_client):
    bodies = bad_bodies()
    assert len([n for n in bodies if "not shown by browsers" in n]) >= 12
    for name, request in bodies.items():
        assert_error_shape(service_client.post("/v1/moderations", **request), name)
    for path in ("/v1/embeddings", "/v1/captions"):
        assert_error_shape(service_client.post(path, **bodies["nested 100,000 deep"]), path)
    assert service_client.post("/v1/moderations", json={"input": "still here"}).status_code == 200


def test_bytes_scribbled_over_anywhere_never_give_a_5xx(service_client):
    """A byte flipped inside pixel data can still be a valid picture (200); anything else is a 4xx."""
    camera = {"camera JPEG (MPO)": (camera_jpeg(render(BLUE_CIRCLE), render(RED_CROSS)), "image/jpeg")}
    for name, (data, mime) in {**formats_a_browser_shows(), **camera}.items():
        for position in np.linspace(0, len(data) - 8, 12).astype(int):
            scribbled = bytearray(data)
            scribbled[position : position + 8] = b"\x00\xff" * 4
            response = service_client.post("/v1/moderations", **json_image(bytes(scribbled), mime))
            assert response.status_code < 500, (name, position, response.text)
            if response.status_code != 200:
                assert_error_shape(response, name)


def test_404_and_405_use_the_error_shape(service_client):
    missing = service_client.get("/v2/anything")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = service_client.get("/v1/moderations")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed" and wrong.headers["X-Request-ID"]


# ---------------------------------------------------------------- cost bounded before decoding
def solid_png(side):
    return encode(Image.new("L", (side, side)))  # a few kB that decode to side² pixels


def test_request_cost_is_bounded_from_the_headers(service_client):
    big = solid_png(4096)
    five = {"json": {"input": [{"type": "image_url", "image_url": {"url": data_url(big)}}] * 5}}
    refused = service_client.post("/v1/embeddings", **five)  # 5 × 4096² pixels > 4 × 4096²
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
    colours = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(66)]
    frames = encode(colours[0], "GIF", save_all=True, append_images=colours[1:])
    too_long = service_client.post("/v1/moderations", **json_image(frames, "image/gif"))
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "too_many_frames"
    assert service_client.post("/v1/embeddings", **json_image(frames, "image/gif")).status_code == 200  # 1st frame


def test_pixel_budget_refuses_with_503_and_is_always_released(service_client):
    budget = service_client.app.state.moderation.budget
    image = json_image(encode(render(BLUE_CIRCLE)))
    budget.used = budget.limit  # as if other requests held every pixel
    try:
        refused = service_client.post("/v1/moderations", **image)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert service_client.post("/v1/moderations", json={"input": "text needs no pixels"}).status_code == 200
    finally:
        budget.used = 0
    assert service_client.post("/v1/moderations", **image).status_code == 200
    broken = json_image(encode(render(BLUE_CIRCLE))[:-30])  # fails while decoding, after admission
    assert service_client.post("/v1/moderations", **broken).status_code == 400
    assert budget.used == 0


# ---------------------------------------------------------------- abandoned work
def test_siblings_of_a_refused_item_leave_the_queue():
    gate, seen = threading.Event(), []

    def held(items):
        gate.wait(5)
        seen.extend(items)
        return items

    async def main():
        batcher = batching.Batcher("t", held, batching.Settings(max_batch_size=1, max_wait_ms=0, max_queue=2))
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)  # 0 is in the model; the queue is empty
        with pytest.raises(batching.Overloaded):
            await batching.all_or_none(*(batcher.submit(i) for i in (1, 2, 3)))  # 3 finds the queue full
        depth, dropped = batcher.depth, batcher.dropped
        gate.set()
        await first
        await asyncio.sleep(0.05)
        await batcher.stop()
        return depth, dropped

    depth, dropped = asyncio.run(main())
    assert (depth, dropped) == (0, 2) and seen == [0]  # 1 and 2 were never computed


def test_clients_that_go_away_before_their_turn_cost_nothing(serve_in_thread):
    url, app = serve_in_thread(max_batch_size=1, max_wait_ms=0)
    moderator = app.state.moderation.api.moderator
    caption, entered, gate = moderator.batchers["caption"].fn, threading.Event(), threading.Event()
    moderator.batchers["caption"].fn = lambda images: (entered.set(), gate.wait(30), caption(images))[2]
    scenes = shapesworld.generate("test", 5, seed=21)  # distinct pictures: no cache hits

    def post(scene):  # a client that gives up after 1.5 s, closing its connection
        body = {"input": [{"type": "image_url", "image_url": {"url": data_url(encode(scene.image))}}]}
        try:
            return httpx.post(f"{url}/v1/moderations", json=body, timeout=1.5).status_code
        except httpx.TimeoutException:
            return "gave up"

    def caption_depth():
        return httpx.get(f"{url}/readyz").json()["queue_depth"]["caption"]

    try:
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(post, scenes[0])
            assert entered.wait(10)  # its caption holds the model ...
            rest = [pool.submit(post, s) for s in scenes[1:]]  # ... so these wait in the queue
            deadline = time.monotonic() + 1
            while caption_depth() < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert caption_depth() == 4
            assert [f.result() for f in [first, *rest]] == ["gave up"] * 5
        deadline = time.monotonic() + 5
        while caption_depth() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert caption_depth() == 0  # their slots are free at once
    finally:
        gate.set()
    batcher, deadline = moderator.batchers["caption"], time.monotonic() + 10
    while batcher.computed < 1 and time.monotonic() < deadline:  # the held caption finishes
        time.sleep(0.02)
    assert batcher.dropped == 4 and batcher.computed == 1  # only the caption already in the model ran
    metrics = httpx.get(f"{url}/metrics").text
    assert "moderation_client_disconnects_total 5.0" in metrics
    assert 'moderation_dropped_items_total{stage="caption"} 4.0' in metrics
    assert (
        httpx.post(
            f"{url}/v1/captions",
            json={"input": [{"type": "image_url", "image_url": {"url": data_url(encode(scenes[1].image))}}]},
            timeout=30,
        ).status_code
        == 200
    )


# ---------------------------------------------------------------- the catch-all 500
def test_an_unexpected_error_is_a_json_500_with_a_request_id_and_the_connection_stays(
    serve_in_thread, monkeypatch, caplog
):
    url, _ = serve_in_thread()
    monkeypatch.setattr(policy, "decide", lambda *args, **kwargs: 1 / 0)
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.request(
        "POST",
        "/v1/moderations",
        body=b'{"input": "x"}',
        headers={"Content-Type": "application/json", "X-Request-ID": "trace-42"},
    )
    failed = connection.getresponse()
    body = json.loads(failed.read())
    socket = connection.sock
    assert failed.status == 500 and failed.getheader("Content-Type") == "application/json"
    assert body["error"]["type"] == "server_error" and "trace-42" in body["error"]["message"]
    assert failed.getheader("X-Request-ID") == "trace-42" and not failed.will_close
    connection.request("GET", "/healthz")
    after = connection.getresponse()
    assert after.status == 200 and json.loads(after.read()) == {"status": "ok"}
    assert connection.sock is socket  # the same keep-alive connection served the next request
    connection.close()
    logged = [r for r in caplog.records if "trace-42" in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is ZeroDivisionError


# ---------------------------------------------------------------- settings that cannot work
def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValidationError, match="MODERATION_MAX_QUEUE=8 is shorter than one request may fill"):
        Settings(max_queue=8)
    with pytest.raises(ValidationError, match="the largest allowed request would get 503 forever"):
        Settings(max_pixels_in_flight=1000)
    with pytest.raises(ValidationError, match="needs MODERATION_API_KEYS"):
        Settings(auth_metrics_and_docs=True)
    with pytest.raises(ValidationError, match="engine"):
        Settings(engine="no-such-engine")


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("MODERATION_MAX_QUEUE", "8", "MODERATION_MAX_QUEUE=8 is shorter than one request may fill"),
        ("MODERATION_MAX_QUEUEE", "512", "unknown setting MODERATION_MAX_QUEUEE"),
        ("MODERATION_TIMEOUT_S", "soon", "MODERATION_TIMEOUT_S='soon': Input should be a valid number"),
        ("MODERATION_POLICY", "nope.yaml", "no policy file nope.yaml"),
    ],
    ids=["queue shorter than a request", "a typo", "not a number", "no policy"],
)
def test_the_app_factory_stops_with_one_line(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        create_app()
    assert str(stopped.value).startswith("moderation service: ") and message in str(stopped.value)
    assert "\n" not in str(stopped.value)


def test_uvicorn_refuses_to_start_with_one_line():
    started = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "stage3_moderation.app:create_app", "--port", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "MODERATION_MAX_QUEUE": "8"},
    )
    lines = started.stderr.strip().splitlines()
    assert started.returncode != 0 and len(lines) == 1 and "Traceback" not in started.stderr, started.stderr
    assert lines[0].startswith("moderation service: MODERATION_MAX_QUEUE=8 is shorter than"), lines


# ---------------------------------------------------------------- the OpenAPI contract
def test_openapi_document_is_valid_and_says_what_the_api_takes_and_answers(start_service, service_client):
    document = (
        start_service(api_keys=("k",), auth_metrics_and_docs=True)
        .get("/openapi.json", headers={"Authorization": "Bearer k"})
        .json()
    )
    validate_openapi(document)  # every $ref resolves, every schema is well formed
    assert "$defs" not in json.dumps(document)
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <one of MODERATION_API_KEYS>",
    }
    for path in ("/v1/moderations", "/v1/embeddings", "/v1/captions"):
        operation = document["paths"][path]["post"]
        assert set(operation["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
        assert operation["security"] == [{"HTTPBearer": []}]
        for status in ("400", "401", "404", "413", "415", "500", "503", "504"):
            error = operation["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
        assert operation["responses"]["503"]["headers"]["Retry-After"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    open_door = service_client.get("/openapi.json").json()  # no keys set: nothing claims to need one
    validate_openapi(open_door)
    assert "security" not in open_door["paths"]["/v1/moderations"]["post"]
    assert "401" not in open_door["paths"]["/v1/moderations"]["post"]["responses"]
    form = document["components"]["schemas"]["ModerationForm"]["properties"]["image"]
    assert form == {
        "contentMediaType": "application/octet-stream",
        "description": form["description"],
        "title": "Image",
        "type": "string",
    }  # a file upload, in OpenAPI 3.1's words
