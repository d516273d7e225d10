"""Week 2: the plan's prompt exercise on the fine-tuned tiny BLIP-2 (data/models/tiny-blip2-prompts)."""

import json

import numpy as np
import pytest

from curriculum import cli, shapesworld
from curriculum.shapesworld import ShapeObject
from curriculum.tiny_blip2_prompts import (
    DETAIL_PROMPT_ZH,
    ONE_SENTENCE_PROMPT,
    ONE_SENTENCE_PROMPT_ZH,
    PROMPT_STYLES,
    example,
)
from stage1_demos import blip2_caption, prompt_styles

pytestmark = pytest.mark.week2
FINE_TUNED = str(prompt_styles.FINE_TUNED)


def test_measure_counts_what_an_answer_says():
    objects = (
        ShapeObject("red", "circle", "small", "top left"),
        ShapeObject("blue", "square", "large", "bottom right"),
    )
    detail = prompt_styles.measure(
        "two shapes: in the top left there is a small red circle and in the bottom right there is a large blue square",
        objects,
    )
    assert detail == {"words": 23, "shapes_named": 2, "says_where": True, "says_size": True, "pairs_right": True}
    short = prompt_styles.measure("a red circle and a green square", objects)
    assert short == {"words": 7, "shapes_named": 2, "says_where": False, "says_size": False, "pairs_right": False}


def test_same_answer_compares_the_languages_image_by_image():
    answers = {prompt: ["a red circle", "a blue square"] for prompt in PROMPT_STYLES}
    answers[DETAIL_PROMPT_ZH] = ["a red circle", "a blue cross"]  # the second image answered differently
    assert prompt_styles.same_answer(answers) == {"detail": 0.5, "one sentence": 1.0}


def test_training_mix_keeps_the_old_styles_and_adds_the_new():
    rng = np.random.default_rng(0)
    objects = shapesworld.sample("train", 0).objects
    prompts = [example(objects, rng)[0] for _ in range(2000)]
    for prompt in ("", "a photo of", DETAIL_PROMPT_ZH, ONE_SENTENCE_PROMPT_ZH, ONE_SENTENCE_PROMPT):
        assert prompt in prompts, prompt
    assert 0.25 < sum(p.startswith("Question:") for p in prompts) / len(prompts) < 0.45


def test_the_answers_differ_the_way_each_prompt_asks():
    result, _, _ = prompt_styles.compare({"fine-tuned": FINE_TUNED}, n=30)
    rows = {r["prompt"]: r for r in result["rows"]}
    for detail, short in (
        ("Describe the image in detail.", ONE_SENTENCE_PROMPT),
        (DETAIL_PROMPT_ZH, ONE_SENTENCE_PROMPT_ZH),
    ):
        assert rows[detail]["words"] > rows[short]["words"] + 5, (detail, short)
        assert rows[detail]["says_where"] >= 0.9 and rows[detail]["says_size"] >= 0.9
        assert rows[short]["says_where"] <= 0.1 and rows[short]["says_size"] <= 0.1
        assert rows[short]["pairs_right"] >= 0.6  # 0.75 on 200 images; 30 here


def test_the_fine_tuned_model_keeps_week_2s_thresholds():
    # n=500, as the base model's test and the docs' table: position is now bound to each object's colour and
    # shape, so it sits just under their accuracy, and 200 images leave it too close to call
    result = blip2_caption.evaluate(FINE_TUNED, "test", n=500, device="cpu")
    seen = result["groups"]["seen"]
    for attribute in blip2_caption.ATTRIBUTES:
        assert seen[attribute] >= 0.90, (attribute, seen)
    assert seen["qa"] >= 0.90, seen


def test_cli_runs_on_one_image(cli_runner, tmp_path):
    """--n 1: the example shown is the only image (test image 1, two shapes, when there are more)."""
    code, out, err = cli_runner(prompt_styles.main, ["--n", "1", "--json", "--out", str(tmp_path / "p.json")])
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 1 and len(result["rows"]) == 2 * len(PROMPT_STYLES)
    assert (tmp_path / "p.png").stat().st_size > 0 and json.loads((tmp_path / "p.json").read_text()) == result


def test_json_and_picture_appear_together_or_not_at_all(cli_runner, tmp_path, monkeypatch):
    def fail(*_):
        raise OSError("disk full")

    sample = shapesworld.sample("test", 0)
    monkeypatch.setattr(prompt_styles, "compare", lambda models, n: ({"n": n, "rows": []}, {"a": "b"}, sample.image))
    monkeypatch.setattr(cli, "write_json", fail)
    with pytest.raises(OSError):
        cli_runner(prompt_styles.main, ["--n", "1", "--out", str(tmp_path / "p.json")])
    assert list(tmp_path.iterdir()) == []
