"""Week 9: the visual-question rule against the caption rule (stage3_moderation/vqa_rule.py)."""

import json

import numpy as np
import pytest

from curriculum import MODELS_DIR, shapesworld, zoo
from curriculum.tiny_blip2 import qa_prompt
from curriculum.tiny_blip2_compliance import ASKABLE, compliance_question
from stage1_demos.blip2_caption import QA, caption_images
from stage3_moderation import policy, vqa_rule

pytestmark = pytest.mark.week9


@pytest.fixture(scope="module")
def fine_tuned():
    return zoo.load_blip2(str(vqa_rule.FINE_TUNED), "cpu")


def scenes(n=60, seed=1):
    samples = shapesworld.generate("test", n, seed)
    has = np.array([any((o.color, o.shape) == ("red", "cross") for o in s.objects) for s in samples])
    return [s.image for s in samples], has


def test_confusion_arithmetic_and_where_the_mistakes_fall():
    predicted, expected = [True, True, True, False, False, False], [True, False, False, True, True, False]
    heldout = [False, True, False, False, True, True]
    r = policy.confusion(predicted, expected, heldout)
    assert (r["tp"], r["fp"], r["fn"], r["tn"], r["precision"], r["recall"]) == (1, 2, 2, 1, 0.3333, 0.3333)
    assert r["fp_by_pair"] == {"held_out": 1, "seen": 1} and r["fn_by_pair"] == {"held_out": 1, "seen": 1}
    assert r["seen_scenes"] == {"precision": 0.5, "recall": 0.5, "positives": 2}
    assert r["held_out_scenes"] == {"precision": 0.0, "recall": 0.0, "positives": 1}
    assert "fp_by_pair" not in policy.confusion(predicted, expected)


def test_separation_is_the_chance_a_positive_scores_above_a_negative():
    expected = np.array([True, True, False, False])
    assert vqa_rule.separation(np.array([0.9, 0.8, 0.1, 0.2]), expected) == 1.0
    assert vqa_rule.separation(np.array([0.1, 0.2, 0.9, 0.8]), expected) == 0.0
    assert vqa_rule.separation(np.full(4, 0.49), expected) == 0.5  # one score for all: ties, no separation
    assert vqa_rule.separation(np.array([0.1, 0.2]), np.array([True, True])) is None


def test_a_model_folder_is_recorded_as_the_repository_names_it():
    assert vqa_rule.as_named(str(vqa_rule.FINE_TUNED)) == "data/models/tiny-blip2-prompts"
    assert vqa_rule.as_named("tiny") == "tiny" and vqa_rule.as_named("Salesforce/blip2-opt-2.7b").startswith("Sales")


def test_p_yes_agrees_with_the_models_own_answer(fine_tuned):
    images, _ = scenes(20)
    question = vqa_rule.QUESTIONS["red_cross"]
    p_yes = vqa_rule.yes_probability(*fine_tuned, images, question)
    answers = caption_images(*fine_tuned, images, [qa_prompt(question)] * len(images), QA)
    assert all(0 <= p <= 1 for p in p_yes)
    assert [p >= 0.5 for p in p_yes] == [a == "yes" for a in answers]


def test_the_comparison_counts_every_rule_on_the_same_scenes():
    result = vqa_rule.compare(n=80, askers={"bundled": "tiny", "fine-tuned": str(vqa_rule.FINE_TUNED)})
    rules = {(r["category"], r["rule"]): r for r in result["rows"]}
    assert len(rules) == 2 * 5
    for (category, rule), r in rules.items():
        assert r["tp"] + r["fn"] == result["positives"][category] > 0, (category, rule)
        assert sum(r["fp_by_pair"].values()) == r["fp"] and sum(r["fn_by_pair"].values()) == r["fn"]
    for category, asked in result["p_yes"].items():
        assert set(asked) == {"bundled", "fine-tuned"} and all(0 <= a["separation"] <= 1 for a in asked.values())
    assert rules[("red_cross", "caption rule")]["recall"] >= 0.9  # the captions name the crosses they see
    deployed = rules[("red_cross", "deployed policy (concepts or caption)")]
    assert deployed["tp"] >= rules[("red_cross", "caption rule")]["tp"]  # an OR never finds fewer


def fake_compare(n, seed, threshold, askers):
    """compare()'s shape without the models: the CLI's writing is what is tested."""
    return {
        "n": n,
        "seed": seed,
        "positives": {},
        "rows": [],
        "askers": askers,
        "curves": {"red_cross": {"a": (0.5, 0.5)}},
    }


def test_both_fine_tunes_are_asked_by_default_named_by_what_they_were_taught(monkeypatch, cli_runner):
    asked = {}
    monkeypatch.setattr(
        vqa_rule, "compare", lambda n, seed, t, askers: asked.update(askers) or fake_compare(n, seed, t, askers)
    )
    assert cli_runner(vqa_rule.main, ["--n", "4", "--json"])[0] == 0
    assert asked == {
        "bundled": "tiny",
        "prompt-tuned": str(vqa_rule.FINE_TUNED),
        "compliance": str(vqa_rule.COMPLIANCE),
    }


def test_the_json_and_its_picture_are_written_together(tmp_path, monkeypatch, cli_runner):
    out = tmp_path / "vqa_rule.json"
    monkeypatch.setattr(vqa_rule, "compare", fake_compare)
    code, _, _ = cli_runner(vqa_rule.main, ["--n", "4", "--ask", "none", "--out", str(out)])
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["vqa_rule.json", "vqa_rule.png"]
    assert list(json.loads(out.read_text())["askers"]) == ["bundled"]  # none: only the bundled model is asked
    for p in tmp_path.iterdir():
        p.unlink()
    monkeypatch.setattr(vqa_rule, "compare", lambda *a: fake_compare(*a) | {"rows": [object()]})  # JSON fails
    with pytest.raises(TypeError):
        vqa_rule.main(["--n", "4", "--out", str(out)])
    assert list(tmp_path.iterdir()) == []  # no picture without its JSON


# ---------------------------------------------------------------- the compliance fine-tune
def test_compliance_questions_are_balanced_near_misses_that_never_name_a_held_out_pair():
    rng = np.random.default_rng(0)
    samples = shapesworld.generate("train", 400, seed=3)
    asked = [(s.objects, *compliance_question(s.objects, rng)) for s in samples for _ in range(5)]
    answers = [answer for _, _, answer in asked]
    assert 0.45 < answers.count("yes") / len(answers) < 0.55
    near = 0
    for objects, question, answer in asked:
        color, shape = question.removeprefix("is there a ").removesuffix("?").split()
        present = {(o.color, o.shape) for o in objects}
        assert (color, shape) in ASKABLE and ((color, shape) in present) == (answer == "yes"), question
        near += answer == "no" and any(color == o.color or shape == o.shape for o in objects)
    assert near / answers.count("no") > 0.6  # most "no"s share an attribute with what is there


@pytest.fixture(scope="module")
def compliance_answers():
    """p(yes) of the compliance model for each category on scenes no model trained on and no
    measurement used (seed 7), with the truth and whether the scene holds a held-out pair."""
    model = zoo.load_blip2(str(MODELS_DIR / "tiny-blip2-compliance"), "cpu")
    samples = shapesworld.generate("test", 600, seed=7)
    images, heldout = [s.image for s in samples], np.array([s.heldout for s in samples])
    return {
        category: (
            vqa_rule.yes_probability(*model, images, question),
            np.array([policy.truth(policy.DEMOS[0], s.objects)[category] for s in samples]),
            heldout,
        )
        for category, question in vqa_rule.QUESTIONS.items()
    }


@pytest.mark.parametrize("category", vqa_rule.QUESTIONS)
def test_the_compliance_model_answers_by_looking_on_pairs_it_has_seen(compliance_answers, category):
    """Issue 29's target, precision and recall >= 0.90, on the scenes whose colour-shape pairs were
    all seen in training."""
    p_yes, expected, heldout = compliance_answers[category]
    scores = policy.confusion(p_yes[~heldout] >= 0.5, expected[~heldout])
    assert scores["tp"] + scores["fn"] >= 25  # enough scenes with the symbol to measure recall
    assert scores["precision"] >= 0.90 and scores["recall"] >= 0.90, scores


HELD_OUT_GAP = pytest.mark.xfail(
    strict=True,
    reason="open (issue 29): asked about a purple cross, the model says yes to a purple circle, a held-out "
    "pair it never saw (0.71 precision over all scenes of seed 7)",
)


@pytest.mark.parametrize("category", ["red_cross", pytest.param("purple_cross", marks=HELD_OUT_GAP)])
def test_the_compliance_model_answers_by_looking_on_every_scene(compliance_answers, category):
    """The same target on every scene, those with a held-out colour-shape pair included."""
    p_yes, expected, _ = compliance_answers[category]
    scores = policy.confusion(p_yes >= 0.5, expected)
    assert scores["precision"] >= 0.90 and scores["recall"] >= 0.90, scores
