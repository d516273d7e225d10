"""The LAVIS backend: the bundled tiny BLIP-2, converted to LAVIS's Blip2OPT in .venv-lavis, is the same model.

Tests that run LAVIS skip without .venv-lavis (`make lavis-venv`); CI builds it (.ci/run)."""

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from curriculum import shapesworld, zoo
from curriculum.cli import UserError
from stage1_demos import blip2_caption, lavis_backend, lavis_convert, lavis_parity

pytestmark = pytest.mark.week2
needs_venv = pytest.mark.skipif(not lavis_backend.available(), reason="no .venv-lavis: run `make lavis-venv`")

GREEDY = blip2_caption.GREEDY


@pytest.fixture(scope="module", autouse=True)
def conversion_cache(tmp_path_factory):
    """Converted checkpoints go to a temporary folder instead of outputs/lavis."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lavis_convert, "CACHE", tmp_path_factory.mktemp("lavis"))
        yield


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    shapesworld.export("test", 4, folder)
    return sorted(map(str, folder.glob("*.png")))


@pytest.fixture(scope="module")
def parity():
    """transformers vs LAVIS on 100 test images: stages of one image, captions, week-2 answers."""
    return lavis_parity.compare(n=100)


def copy_of_tiny(tmp_path, **vision_changes):
    """The bundled checkpoint in a new folder, with its ViT config edited."""
    folder = tmp_path / "edited-blip2"
    shutil.copytree(zoo.resolve("tiny", "blip2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"].update(vision_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@needs_venv
def test_same_model_stage_by_stage(parity, capsys):
    """Image -> ViT -> Q-Former -> projection -> decoder logits, and the prompt's tokens (</s> first)."""
    with capsys.disabled():
        print()
        lavis_parity.print_result(parity)
    assert [c["name"] for c in parity["checks"]] == list(lavis_parity.STAGES.values())
    for check in parity["checks"]:
        assert check["max_abs_diff"] <= 1e-4, check
    ids = parity["prompt_ids"]
    assert ids["transformers"] == ids["lavis"] and ids["lavis"][0] == 2  # OPT's BOS, </s>


@needs_venv
def test_greedy_captions_equal_on_100_images(parity):
    assert parity["captions_equal"] >= 98, parity["differences"]


@needs_venv
def test_week2_questions_get_the_same_answers(parity):
    assert parity["answers_equal"] >= 98, parity["differences"]


@needs_venv
def test_captions_with_prompt_and_beams(gallery, blip2_model):
    """'a photo of' with 3 beams: the prompt steers LAVIS as it steers transformers, beam for beam."""
    settings = GREEDY | {"num_beams": 3}
    prompts = ["a photo of"] * len(gallery)
    lavis = lavis_backend.caption(gallery, prompts, settings)
    images = [shapesworld.sample("test", i).image for i in range(len(gallery))]
    assert lavis == blip2_caption.caption_images(*blip2_model, images, prompts, settings)
    plain = blip2_caption.caption_images(*blip2_model, images, [""] * len(gallery), settings)
    assert all(p != c and " in the " not in c for p, c in zip(plain, lavis))  # photo style: no positions


@needs_venv
@pytest.mark.parametrize(
    "argv", [["caption", "{0}", "{1}"], ["ask", "{0}", "--question", "what shape is it?"], ["prompts", "{1}"]]
)
def test_cli_lavis_prints_what_transformers_prints(cli_runner, gallery, argv):
    argv = [a.format(*gallery) for a in argv]
    code, expected, err = cli_runner(blip2_caption.main, argv)
    assert code == 0, err
    code, out, err = cli_runner(blip2_caption.main, [*argv, "--backend", "lavis"])
    assert code == 0, err
    assert out == expected


@needs_venv
def test_checkpoint_that_does_not_fit_the_built_model(cli_runner, gallery, tmp_path):
    """A config that disagrees with the weights: LAVIS builds 3 ViT blocks, the weights have 4."""
    folder = copy_of_tiny(tmp_path, num_hidden_layers=3)
    argv = ["caption", gallery[0], "--backend", "lavis", "--model", str(folder)]
    code, out, err = cli_runner(blip2_caption.main, argv)
    assert code == 2
    assert "does not fit" in err and "visual_encoder.blocks.3" in err and len(err.strip().splitlines()) == 1


def test_conversion_accounts_for_every_weight(cli_runner, tmp_path):
    """LAVIS's checkpoint format; every transformers weight lands once (the fused ViT bias split in
    q_bias and v_bias, the key bias dropped; the tied lm_head written out)."""
    code, out, err = cli_runner(lavis_convert.main, ["--out", str(tmp_path / "lavis")])
    assert code == 0, err
    state = torch.load(tmp_path / "lavis" / "blip2_opt.pth")["model"]
    source = load_file(zoo.resolve("tiny", "blip2") + "/model.safetensors")
    vit_blocks = json.loads((tmp_path / "lavis" / "lavis.json").read_text())["vision"]["depth"]
    assert len(state) == len(source) + vit_blocks + 1
    q, k, v = source["vision_model.encoder.layers.0.self_attn.qkv.bias"].chunk(3)
    assert k.abs().max() > 0  # a real key bias (the tiny CLIP's), dropped exactly
    assert torch.equal(state["visual_encoder.blocks.0.attn.q_bias"], q)
    assert torch.equal(state["visual_encoder.blocks.0.attn.v_bias"], v)
    assert torch.equal(state["opt_model.lm_head.weight"], source["language_model.model.decoder.embed_tokens.weight"])
    assert {p.name for p in (tmp_path / "lavis" / "opt").iterdir()} == {
        "config.json",
        "pytorch_model.bin",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    }


def test_convert_replaces_only_its_own_output(cli_runner, tmp_path, monkeypatch):
    """--out never deletes what the command did not write: a folder of notes and the current folder
    are refused and left as they were; an earlier conversion is replaced whole."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "week2.md").write_text("my notes\n")
    code, out, err = cli_runner(lavis_convert.main, ["--out", str(notes)])
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in notes.iterdir()] == ["week2.md"]
    monkeypatch.chdir(notes)
    code, out, err = cli_runner(lavis_convert.main, ["--out", "."])
    assert code == 2 and "current folder" in err and [p.name for p in notes.iterdir()] == ["week2.md"]
    converted = tmp_path / "converted"
    assert cli_runner(lavis_convert.main, ["--out", str(converted)])[0] == 0
    (converted / "stale.txt").write_text("left from the first conversion")
    code, out, err = cli_runner(lavis_convert.main, ["--out", str(converted)])
    assert code == 0, err
    assert sorted(p.name for p in converted.iterdir()) == ["blip2_opt.pth", "lavis.json", "opt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "notes"]  # no staging left beside it


def test_checkpoint_that_lavis_cannot_build_says_why(tmp_path):
    with pytest.raises(UserError, match="does not fit LAVIS's Blip2OPT: the ViT's activation is relu"):
        lavis_convert.convert(str(copy_of_tiny(tmp_path, hidden_act="relu")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_image_is_found_before_lavis_starts(cli_runner, tmp_path):
    code, out, err = cli_runner(blip2_caption.main, ["caption", str(tmp_path / "no_such.png"), "--backend", "lavis"])
    assert code == 2 and "no_such.png" in err


def test_missing_venv_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lavis_backend, "VENV", tmp_path / "no-venv")
    with pytest.raises(UserError, match="make lavis-venv"):
        lavis_backend.caption([tmp_path / "a.png"], [""], GREEDY)


@pytest.mark.parametrize("python", [None, "this venv's"])
def test_broken_venv_says_how_to_rebuild_it(cli_runner, gallery, tmp_path, monkeypatch, python):
    """Made, then damaged: no interpreter, or one without LAVIS (this venv's)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".lavis-installed").touch()
    if python:
        (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(lavis_backend, "VENV", venv)
    code, out, err = cli_runner(blip2_caption.main, ["caption", gallery[0], "--backend", "lavis"])
    assert code == 2
    assert "is broken" in err and "make lavis-venv" in err and len(err.strip().splitlines()) == 1
