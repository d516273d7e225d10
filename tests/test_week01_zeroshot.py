"""Week 1: CLIP's zero-shot classification (§3.1) with one template and an ensemble, against a linear probe."""

import json

import numpy as np
import pytest

from curriculum import cli, zoo
from stage1_demos import clip_zeroshot as zs
from stage1_demos.clip_retrieval import embed_texts

pytestmark = pytest.mark.week1


@pytest.fixture(scope="module")
def result():
    return {(r["task"], r["images"]): r for r in zs.evaluate("tiny", n=150, n_train=400, device="cpu")["rows"]}


def test_zero_shot_accuracy(result):
    """The tiny CLIP names colour, shape and colour-shape pairs it was never trained to classify;
    chance is 1/6, 1/4 and 1/24."""
    assert result[("colour", "all")]["ensemble"] >= 0.85
    assert result[("shape", "all")]["one_template"] >= 0.85
    assert result[("colour-shape", "seen pairs")]["ensemble"] >= 0.9
    assert result[("colour-shape", "held-out pairs")]["ensemble"] >= 0.8


def test_the_probe_cannot_name_what_it_never_saw(result):
    """A linear probe trained on the train split has no weights for the held-out pairs; zero-shot has."""
    heldout = result[("colour-shape", "held-out pairs")]
    assert heldout["linear_probe"] == 0 and heldout["probe_classes_trained"] == 18
    assert result[("colour-shape", "seen pairs")]["linear_probe"] >= 0.9


def test_ensemble_is_the_normalised_mean_of_normalised_embeddings():
    model, processor = zoo.load_clip("tiny", "cpu")
    phrases, templates = ["red circle", "blue square"], zs.ENSEMBLE[:4]
    weights = zs.class_embeddings(model, processor, phrases, templates)
    for phrase, w in zip(phrases, weights):
        each = embed_texts(model, processor, [t.format(phrase) for t in templates])
        assert np.allclose(np.linalg.norm(each, axis=1), 1, atol=1e-5)  # normalised before averaging
        mean = each.mean(axis=0)
        assert np.allclose(w, mean / np.linalg.norm(mean), atol=1e-6)
    # one template: the embedding of that prompt itself
    single = zs.class_embeddings(model, processor, phrases, [zs.ONE_TEMPLATE])
    assert np.allclose(single, embed_texts(model, processor, ["a red circle", "a blue square"]), atol=1e-6)


def test_the_templates():
    assert len(zs.ENSEMBLE) == 15 and len(set(zs.ENSEMBLE)) == 15
    assert all(t.count("{}") == 1 for t in zs.ENSEMBLE)
    assert "a large {} in the bottom right" in zs.ENSEMBLE


def test_cli_writes_json_and_picture(cli_runner, tmp_path):
    code, out, _ = cli_runner(zs.main, ["--n", "40", "--n-train", "100", "--out", str(tmp_path / "z.json")])
    assert code == 0 and (tmp_path / "z.png").stat().st_size > 0 and (tmp_path / "z.json").exists()


def test_cli_runs_on_a_few_images(cli_runner):
    """The first two single-object test images both show a held-out pair: the seen-pairs group is
    left out, not a NaN or a crash."""
    code, out, err = cli_runner(zs.main, ["--n", "2", "--n-train", "3", "--json", "--device", "cpu"])
    assert code == 0, err
    rows = {(r["task"], r["images"]): r for r in json.loads(out)["rows"]}
    assert list(rows) == [("colour", "all"), ("shape", "all"), ("colour-shape", "held-out pairs")]
    assert all(r["n"] == 2 for r in rows.values())


def test_json_and_picture_appear_together_or_not_at_all(cli_runner, tmp_path, monkeypatch):
    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(cli, "write_json", fail)
    with pytest.raises(OSError):
        cli_runner(zs.main, ["--n", "3", "--n-train", "3", "--out", str(tmp_path / "z.json"), "--device", "cpu"])
    assert list(tmp_path.iterdir()) == []
