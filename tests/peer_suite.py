"""What every server of week 10's pipeline must answer as week 10 does (week 11, "the batchers
people deploy"): the requests of the parity check, and how two answers are compared."""

import httpx
import pytest
from test_week10_attacks import BLUE_CIRCLE, RED_CROSS, data_url, encode, long_picture, render

from stage3_moderation import loadgen


def image_part(data, mime="image/png"):
    return {"type": "image_url", "image_url": {"url": data_url(data, mime)}}


def parity_bodies():
    """/v1/moderations bodies: texts alone, scenes with their captions, a red cross beside a text
    it does not fit, a banner judged in views, a GIF judged frame by frame, three items in one."""
    bodies = loadgen.workload("mixed", 16, pool=8)
    cross = encode(render(RED_CROSS))
    gif = encode(render(BLUE_CIRCLE), "GIF", save_all=True, append_images=[render(RED_CROSS)], duration=100)
    bodies += [
        {"input": [{"type": "text", "text": "a small green circle"}, image_part(cross)]},
        {"input": [image_part(encode(long_picture((640, 64), (0, 0), RED_CROSS)))]},
        {"input": [image_part(gif, "image/gif")]},
        {"input": ["buy cheap pills now", "a blue circle", "hello"]},
    ]
    return bodies


def as_bytes(request):
    """(body bytes, Content-Type) of a request given as httpx's keywords (json=, files=, content=)."""
    built = httpx.Request("POST", "http://peer/v1/moderations", **request)
    return built.read(), built.headers.get("content-type", "")


def assert_same_answer(theirs, ours, name=""):
    """The same flags, categories and captions as week 10, scores to float32's precision."""
    assert theirs["model"] == ours["model"] and len(theirs["results"]) == len(ours["results"]), (name, theirs)
    for a, b in zip(theirs["results"], ours["results"]):
        assert (a["flagged"], a["categories"], a["caption"], a["mismatch"]) == (
            b["flagged"],
            b["categories"],
            b["caption"],
            b["mismatch"],
        ), (name, a, b)
        assert a["category_scores"] == pytest.approx(b["category_scores"], abs=1e-4), name
        if b["image_text_similarity"] is not None:
            assert a["image_text_similarity"] == pytest.approx(b["image_text_similarity"], abs=1e-4), name
