import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from curriculum import MODELS_DIR, REPO_ROOT, cli, runtime, shapesworld, tiny_clip, training, zoo

pytestmark = pytest.mark.week1


def test_tokenizer_round_trip(clip_model):
    _, processor = clip_model
    tok = processor.tokenizer
    for s in shapesworld.generate("test", 50):
        ids = tok(s.caption_en).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == s.caption_en
        assert len(ids) == len(s.caption_en.split()) + 2, "every caption word is one token"
    # text outside ShapesWorld still tokenizes (byte-level BPE), and round-trips
    assert tok.decode(tok("purple zebras").input_ids, skip_special_tokens=True) == "purple zebras"


def test_training_pixels_match_the_saved_processor(clip_model):
    """The trainer normalises pixels itself for speed; it must equal what inference computes."""
    _, processor = clip_model
    images = [s.image for s in shapesworld.generate("test", 4)]
    ours = tiny_clip.pixels(np.stack([np.asarray(im) for im in images]), processor.image_processor)
    theirs = processor(images=images, return_tensors="pt").pixel_values
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_tiny_resolves_to_the_bundled_checkpoint(clip_model):
    model, _ = clip_model
    assert zoo.resolve("tiny", "clip") == str(MODELS_DIR / "tiny-clip")
    assert type(model).__name__ == "CLIPModel" and model.config.projection_dim == 64


def test_bundled_checkpoints_stay_small():
    size = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert size < 40e6, f"data/models is {size / 1e6:.1f} MB"


def test_folder_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(cli.UserError, match="no config.json"):
        zoo.resolve(str(tmp_path), "clip")


def test_uncached_hub_id_offline_gives_advice_not_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stage1_demos.clip_retrieval",
            "eval",
            "--n",
            "4",
            "--model",
            "openai/clip-vit-base-patch32",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "hf download openai/clip-vit-base-patch32" in lines[0] and "--model tiny" in lines[0]


def test_devices():
    assert runtime.pick_device("cpu").type == "cpu"
    assert runtime.inference_dtype(torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(cli.UserError, match="not available"):
            runtime.pick_device("cuda")
    with pytest.raises(cli.UserError, match="unknown device"):
        runtime.pick_device("tpu")


@pytest.mark.parametrize("native_bf16, expected", [(False, torch.float16), (True, torch.bfloat16)])
def test_gpu_half_precision_is_fp16_where_bf16_is_only_emulated(monkeypatch, native_bf16, expected):
    """A T4 (Colab's free GPU) emulates bf16: torch.cuda.is_bf16_supported() says True there unless
    asked about native support, and the emulated kind is far slower than its fp16."""
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native_bf16
    )
    assert runtime.inference_dtype(torch.device("cuda")) == expected
    assert runtime.trains_in_bf16(torch.device("cuda")) is native_bf16


def test_every_loader_loads_in_the_devices_inference_dtype(monkeypatch, capfd):
    """What puts the hub profile in half precision on a GPU (bf16 stands in for it on the CPU here).
    Stable Diffusion stayed fp32 on diffusers 0.39, Colab's, which ignores from_pretrained(dtype=...)
    with a warning; and no library warns while loading (diffusers logs to stderr itself)."""
    monkeypatch.setattr(runtime, "inference_dtype", lambda device: torch.bfloat16)
    capfd.readouterr()
    pipe = zoo.load_sd("tiny", "cpu")
    assert capfd.readouterr().err == ""
    models = [zoo.load_clip("tiny", "cpu")[0], zoo.load_clip_zh("tiny", "cpu")[0], zoo.load_blip2("tiny", "cpu")[0]]
    models += [pipe.unet, pipe.vae, pipe.text_encoder]
    assert [model.dtype for model in models] == [torch.bfloat16] * len(models)


def test_training_runs_and_saves_a_loadable_checkpoint(tmp_path):
    """A few steps of the real trainer: the loss falls and from_pretrained reads the result."""
    out = tmp_path / "tiny-clip"
    trainer = tiny_clip.train(
        out, tiny_clip.Config(steps=12, batch_size=16, pool=64, lr=3e-3), training.Options(progress=False)
    )
    losses = trainer.progress.losses
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
    model, processor = zoo.load_clip(str(out), "cpu")
    assert processor.image_processor.crop_size["height"] == tiny_clip.IMAGE_SIZE
    record = json.loads((out / "training.json").read_text())
    assert (
        record["steps"] == 12
        and record["num_processes"] == 1
        and record["final_loss"] == pytest.approx(np.mean(losses))
    )
    assert next(model.parameters()).isfinite().all()


def test_contrastive_loss_is_clips_loss_when_each_caption_fits_one_image():
    from transformers import CLIPModel

    processor = tiny_clip.build_processor()
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip.build_config(processor.tokenizer))
    samples = shapesworld.generate("val", 40)
    keys = [shapesworld.label_key(s.objects) for s in samples]
    samples = [s for i, s in enumerate(samples) if keys.index(keys[i]) == i]  # unique labels only
    text = processor.tokenizer([s.caption_en for s in samples], padding=True, return_tensors="pt")
    out = model(
        **text,
        pixel_values=tiny_clip.pixels(np.stack([np.asarray(s.image) for s in samples]), processor.image_processor),
        return_loss=True,
    )
    ours = tiny_clip.contrastive_loss(out.logits_per_text, torch.eye(len(samples)))
    torch.testing.assert_close(ours, out.loss, atol=1e-6, rtol=1e-6)


def test_partial_captions_fit_exactly_the_images_that_show_them():
    objects = [s.objects for s in shapesworld.generate("val", 300)]
    table, column = tiny_clip.mention_table(objects)
    rng = np.random.default_rng(0)
    partial = 0
    for i in range(300):
        caption, named, whole = tiny_clip.training_caption(objects[i], rng)
        if whole:
            assert shapesworld.label_key(shapesworld.parse_caption(caption)) == shapesworld.label_key(objects[i])
            continue
        partial += 1
        fits = table[:, [column[(o.color, o.shape, o.size, o.position)] for o in named]].all(axis=1)
        brute = [
            all(
                any(
                    o.color == m.color
                    and o.shape == m.shape
                    and m.size in (None, o.size)
                    and m.position in (None, o.position)
                    for o in image
                )
                for m in named
            )
            for image in objects
        ]
        assert fits[i] and list(fits) == brute, caption
    assert partial > 50
