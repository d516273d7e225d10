"""Week 9: ONNX export parity and engine equivalence, on the bundled tiny models."""

import copy

import numpy as np
import pytest
import torch

from curriculum import shapesworld
from curriculum.cli import UserError
from stage1_demos.blip2_caption import GREEDY, caption_images
from stage1_demos.clip_retrieval import embed_images, embed_texts
from stage3_moderation import engines, export_onnx, graphs

pytestmark = pytest.mark.week9


@pytest.fixture(scope="module")
def samples():
    return shapesworld.generate("test", 24, seed=3)


@pytest.fixture(scope="module")
def onnx_engine(onnx_export):
    from curriculum import zoo

    return engines.OnnxEngine(onnx_export[0], zoo.load_processor("tiny", "clip"), zoo.load_processor("tiny", "blip2"))


@pytest.fixture(scope="module")
def torch_engine(clip_model, blip2_model):
    return engines.TorchEngine(clip_model[0], clip_model[1], blip2_model[0], blip2_model[1])


def test_export_writes_every_graph_and_int8_copy(onnx_export):
    folder, manifest = onnx_export
    for graph in graphs.GRAPHS:
        assert (folder / f"{graph}.onnx").exists() and (folder / f"{graph}.int8.onnx").exists()
    assert graphs.is_exported(folder)
    assert [r["precision"] for r in manifest["parity"]] == ["fp32", "int8"]


def test_fp32_export_parity(onnx_export):
    fp32 = onnx_export[1]["parity"][0]
    for key in ("clip_image_cosine", "clip_text_cosine", "blip2_image_cosine"):
        assert fp32[key] >= export_onnx.PARITY_COSINE, key
    assert fp32["captions_identical"] == fp32["n"] == 32
    assert onnx_export[1]["fp32_parity_ok"]


def test_int8_export_stays_close(onnx_export):
    int8 = onnx_export[1]["parity"][1]
    for key in ("clip_image_cosine", "clip_text_cosine", "blip2_image_cosine"):
        assert 0.99 <= int8[key] < 1.0, key  # close, but really quantised
    assert int8["captions_identical"] >= 0.9 * int8["n"]


def test_dynamic_batch_axis(onnx_engine, torch_engine, samples):
    """Batch sizes the export never saw (1, 5, and 24 = one full chunk of 16 plus 8)."""
    images = [s.image for s in samples]
    for n in (1, 5, 24):
        ours, reference = onnx_engine.embed_images(images[:n]), torch_engine.embed_images(images[:n])
        assert ours.shape == (n, reference.shape[1])
        assert export_onnx.min_cosine(ours, reference) >= 0.9999


def test_onnx_text_tower_on_lengths_it_was_not_traced_with(onnx_engine, torch_engine):
    texts = ["a circle", "a small yellow cross in the top left and a large green triangle in the bottom right"]
    assert export_onnx.min_cosine(onnx_engine.embed_texts(texts), torch_engine.embed_texts(texts)) >= 0.9999


def test_torch_engine_equals_week1_and_week2(torch_engine, clip_model, blip2_model, samples):
    """The engines' shared greedy loop gives generate()'s captions; embeddings equal week 1's."""
    images, texts = [s.image for s in samples], [s.caption_en for s in samples]
    np.testing.assert_allclose(torch_engine.embed_images(images), embed_images(*clip_model, images), atol=1e-5)
    np.testing.assert_allclose(torch_engine.embed_texts(texts), embed_texts(*clip_model, texts), atol=1e-5)
    assert torch_engine.caption_images(images) == caption_images(*blip2_model, images, [""] * len(images), GREEDY)


def test_onnx_engine_captions_equal_torch(onnx_engine, torch_engine, samples):
    images = [s.image for s in samples]
    assert onnx_engine.caption_images(images) == torch_engine.caption_images(images)


def test_bf16_engine_close_to_fp32(clip_model, blip2_model, torch_engine, samples):
    bf16 = engines.TorchEngine(
        copy.deepcopy(clip_model[0]), clip_model[1], copy.deepcopy(blip2_model[0]), blip2_model[1], dtype=torch.bfloat16
    )  # the engine casts its models in place
    images = [s.image for s in samples]
    assert 0.99 <= export_onnx.min_cosine(bf16.embed_images(images), torch_engine.embed_images(images)) < 0.99999


def test_compile_engine_pads_to_buckets(clip_model, blip2_model, torch_engine, samples):
    compiled = engines.TorchEngine(clip_model[0], clip_model[1], blip2_model[0], blip2_model[1], compiled=True)
    images = [s.image for s in samples[:3]]  # bucket 4: one padded row, sliced off again
    ours = compiled.embed_images(images)
    assert ours.shape[0] == 3
    assert export_onnx.min_cosine(ours, torch_engine.embed_images(images)) >= 0.9999


def test_buckets_and_padding():
    assert [engines.bucket(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 17]
    x = torch.arange(6.0).reshape(3, 2)
    padded = engines.pad_rows(x, 4)
    assert padded.shape == (4, 2) and torch.equal(padded[3], x[2]) and torch.equal(padded[:3], x)
    assert [len(c) for c in engines.chunks(list(range(35)))] == [16, 16, 3]


def test_greedy_loop_stops_rows_at_eos():
    """A fake decoder: row 0 says token 5 then </s>; row 1 says 6, 7, then </s>. Finished rows pad,
    and the cache passes from each call to the next."""

    class Tokenizer:
        pad_token_id, eos_token_id = 1, 2

        def batch_decode(self, ids, skip_special_tokens):
            return [" ".join(str(t) for t in row if t not in (1, 2)) for row in ids]

    script = {0: [5, 2, 9, 9], 1: [6, 7, 2, 9]}
    calls = []

    def logits_at(step):
        logits = np.zeros((2, 10))
        for row in (0, 1):
            logits[row, script[row][step]] = 1
        return logits

    def prefill(embeds, mask):
        calls.append(("prefill", embeds.shape[1], mask.tolist()))
        return logits_at(0), "cache 0", None

    def step(embeds, mask, keys, values):
        n = int(keys.split()[1]) + 1
        calls.append(("step", embeds.shape[1], keys))
        return logits_at(n), f"cache {n}", None

    table = np.eye(10, 4)
    ids = np.array([[1, 8, 2], [8, 8, 2]])  # row 0 left-padded; 8 stands for <image>
    captions = engines.greedy_captions(np.zeros((3, 4)), prefill, step, table, Tokenizer(), 8, ids, 10)
    assert captions == ["5", "6 7"]
    assert calls == [("prefill", 3, [[0, 1, 1], [1, 1, 1]]), ("step", 1, "cache 0"), ("step", 1, "cache 1")]


def test_engine_names_and_missing_exports(tmp_path):
    with pytest.raises(UserError, match="unknown engine"):
        engines.load("tensorrt")
    with pytest.raises(UserError, match="no complete ONNX export .* `make export`"):  # loading an engine never exports
        engines.load("onnx-fp32", onnx_dir=tmp_path)
    from curriculum import zoo

    with pytest.raises(UserError, match="make export"):
        engines.OnnxEngine(tmp_path, zoo.load_processor("tiny", "clip"), zoo.load_processor("tiny", "blip2"))


def test_export_cli_help(cli_runner):
    code, out, _ = cli_runner(export_onnx.main, ["--help"])
    assert code == 0 and "blip2_step.onnx" in out and "--no-int8" in out


def test_a_failed_export_leaves_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / graphs.MANIFEST).write_text("{}")  # an earlier export

    def failing(staging, *args):
        (staging / "clip_image.onnx").write_text("half an export")
        raise RuntimeError("the exporter failed")

    monkeypatch.setattr(export_onnx, "export_into", failing)
    with pytest.raises(RuntimeError):
        export_onnx.export("tiny", "tiny", out)
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no staging folder left beside it
    assert [p.name for p in out.iterdir()] == [graphs.MANIFEST]


def test_export_replaces_an_earlier_export_but_no_other_folder(tmp_path, monkeypatch, cli_runner):
    earlier, notes = tmp_path / "earlier", tmp_path / "notes"
    earlier.mkdir()
    (earlier / graphs.MANIFEST).write_text("{}")
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    parser = export_onnx.build_parser()
    assert parser.parse_args(["--out", str(earlier)]).out == earlier
    assert parser.parse_args(["--out", str(notes), "--force"]).out == notes
    code, _, err = cli_runner(export_onnx.main, ["--out", str(notes)])
    assert code == 2 and "--force" in err and err.count("\n") == 1
    monkeypatch.setattr(export_onnx, "default_dir", lambda *models: notes)  # the default folder is checked too
    code, _, err = cli_runner(export_onnx.main, [])
    assert code == 2 and "--force" in err
    with pytest.raises(UserError, match="did not write"):
        export_onnx.ensure_exported(folder=notes)  # nor does the service's start-up replace it
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
