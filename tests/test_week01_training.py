"""Training on Accelerate: the same weights from 1 or 2 processes and from 1 or 4 micro-batches, a
run killed with SIGKILL and resumed (on another number of processes) ending where an uninterrupted
one does, and bad runs stopped with one line before any work, nothing saved touched."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from curriculum import (
    MODELS_DIR,
    OUTPUTS_DIR,
    REPO_ROOT,
    checkpoints,
    shapesworld,
    tiny_blip2,
    tiny_blip2_compliance,
    tiny_blip2_prompts,
    tiny_clip,
    tiny_sd,
    train_bench,
    training,
    zoo,
)

pytestmark = pytest.mark.week1

QUIET = training.Options(progress=False)
CLIP = tiny_clip.Config(steps=12, batch_size=16, pool=64)
CLIP_ARGS = ["--steps", "12", "--batch-size", "16", "--pool", "64", "--save-every", "3"]
BLIP2 = tiny_blip2.Config(steps=4, batch_size=8, pool=32)
# BLIP2's 4 steps on 2 processes or 4 micro-batches end within float rounding that Adam amplifies:
# measured 1.3e-4 and 1.2e-5 from 1 batch on 1 process; a token-mean weighting bug moves weights by
# 5e-3 (test_a_token_weighting_bug_is_caught). The tolerance sits between.
BLIP2_TOLERANCE = 1e-3
# train_bench.max_weight_diff leaves out the key biases, whose exact gradient is zero (softmax
# ignores them) and whose float noise Adam turns into steps of ±lr: they are compared through the outputs.
max_weight_diff = train_bench.max_weight_diff


def trainer_command(module, out, args, nproc=1):
    return [sys.executable, "-m", module, "--out", str(out), *args, "--nproc", str(nproc)]


def run(module, out, args, nproc=1):
    proc = subprocess.run(
        trainer_command(module, out, args, nproc), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "training.json").read_text())


def clip_embeddings(folder):
    """Unit text and image vectors of 8 test pairs: what the weights compute, key biases included."""
    model, processor = zoo.load_clip(str(folder), "cpu")
    samples = shapesworld.generate("test", 8)
    inputs = processor(
        text=[s.caption_en for s in samples], images=[s.image for s in samples], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs)
    return torch.cat([out.text_embeds, out.image_embeds])


def files(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def clip_reference(tmp_path_factory):
    """The tiny CLIP trainer, one process, never interrupted."""
    out = tmp_path_factory.mktemp("clip-1p")
    tiny_clip.train(out, CLIP, QUIET)
    return out


def kill_after_first_checkpoint(out, nproc):
    """The reference training on nproc processes, killed (SIGKILL, every process, as if the machine
    died) after its first checkpoint."""
    proc = subprocess.Popen(
        trainer_command("curriculum.tiny_clip", out, CLIP_ARGS, nproc=nproc),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoints.listed(out / "checkpoints" / "tiny-clip") and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    # torchrun starts each worker in a session of its own: kill the whole tree, not one process group
    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(psutil.Process().children(recursive=True), timeout=10)
    step = json.loads((checkpoints.listed(out / "checkpoints" / "tiny-clip")[-1] / "run.json").read_text())["step"]
    assert not (out / "model.safetensors").exists() and step < CLIP.steps, "killed before the end"
    return out


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    return kill_after_first_checkpoint(tmp_path_factory.mktemp("clip-killed"), nproc=2)


def test_two_processes_give_the_weights_of_one(clip_reference, tmp_path):
    """DDP with the contrastive batch gathered: 2 processes × 8 rows = 1 process × 16 rows."""
    record = run("curriculum.tiny_clip", tmp_path, CLIP_ARGS, nproc=2)
    assert record["num_processes"] == 2
    assert max_weight_diff(clip_reference, tmp_path) <= 1e-5
    torch.testing.assert_close(clip_embeddings(tmp_path), clip_embeddings(clip_reference), atol=1e-5, rtol=0)


def test_killed_on_two_processes_resumed_on_one_ends_the_same(clip_reference, killed_run, tmp_path):
    shutil.copytree(killed_run, tmp_path, dirs_exist_ok=True)
    record = run("curriculum.tiny_clip", tmp_path, [*CLIP_ARGS, "--resume"])
    assert record["num_processes"] == 1
    assert max_weight_diff(clip_reference, tmp_path) <= 1e-5
    torch.testing.assert_close(clip_embeddings(tmp_path), clip_embeddings(clip_reference), atol=1e-5, rtol=0)
    assert not (tmp_path / "checkpoints").exists(), "a finished run keeps no checkpoints"


def test_killed_and_resumed_on_one_process_ends_bit_for_bit(clip_reference, tmp_path):
    """On the same number of processes a resumed run repeats the very same float operations: every
    weight equal, not close."""
    kill_after_first_checkpoint(tmp_path, nproc=1)
    run("curriculum.tiny_clip", tmp_path, [*CLIP_ARGS, "--resume"])
    resumed, reference = load_file(tmp_path / "model.safetensors"), load_file(clip_reference / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert [k for k in reference if not torch.equal(resumed[k], reference[k])] == []


def test_token_mean_loss_on_two_processes(tmp_path):
    """BLIP-2's loss averages over target tokens, and the two halves of a batch hold different numbers."""
    tiny_blip2.train(tmp_path / "one", BLIP2, QUIET)
    record = run(
        "curriculum.tiny_blip2", tmp_path / "two", ["--steps", "4", "--batch-size", "8", "--pool", "32"], nproc=2
    )
    assert record["num_processes"] == 2
    assert max_weight_diff(tmp_path / "one", tmp_path / "two") <= BLIP2_TOLERANCE


def test_four_micro_batches_give_the_weights_of_one_batch(tmp_path):
    tiny_blip2.train(tmp_path / "one", BLIP2, QUIET)
    tiny_blip2.train(tmp_path / "four", BLIP2, training.Options(grad_accum=4, progress=False))
    assert json.loads((tmp_path / "four" / "training.json").read_text())["grad_accum"] == 4
    assert max_weight_diff(tmp_path / "one", tmp_path / "four") <= BLIP2_TOLERANCE


def test_a_token_weighting_bug_is_caught(tmp_path, monkeypatch):
    """The tolerance can fail: each micro-batch's loss as the mean over its own tokens (scaled for the
    average, but not weighted by its share of the batch's tokens) ends far outside it."""
    tiny_blip2.train(tmp_path / "one", BLIP2, QUIET)
    monkeypatch.setattr(
        training.Trainer, "share_of_mean", lambda self, mean, count, total: mean * self.options.grad_accum
    )
    tiny_blip2.train(tmp_path / "bug", BLIP2, training.Options(grad_accum=4, progress=False))
    assert max_weight_diff(tmp_path / "one", tmp_path / "bug") > 2 * BLIP2_TOLERANCE


def test_sd_micro_batches_draw_the_batch_noise(tmp_path):
    """The VAE's latent noise and the UNet's noise and timesteps are drawn for the whole batch, so 2
    micro-batches see the losses of one batch. (Losses, not weights: many of this UNet's weights start
    with gradients near Adam's eps, 1e-8, where its first steps turn rounding noise into 1e-4 moves.)"""
    config = tiny_sd.Config(vae_steps=3, steps=3, vae_batch_size=8, batch_size=8, pool=16)
    records = []
    for grad_accum in (1, 2):  # fp32: where the VAE autocasts to bf16, its rounding depends on the batch size
        tiny_sd.train(
            tmp_path / str(grad_accum),
            config,
            training.Options(precision="fp32", grad_accum=grad_accum, progress=False),
        )
        records.append(json.loads((tmp_path / str(grad_accum) / "training.json").read_text()))
    for loss in ("vae_final_loss", "final_loss"):
        assert records[1][loss] == pytest.approx(records[0][loss], rel=1e-6), loss


# ---------------------------------------------------------------- bad runs: one line, exit 2, nothing touched
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nproc", "3"], "does not split evenly into 3 processes"),
        (["--batch-size", "4", "--nproc", "8"], "does not split evenly into 8 processes"),
        (["--grad-accum", "2"], "another loss"),
        (["--resume"], "no checkpoint in"),
        (["--pool", "8"], "make the pool at least as large"),
        (["--steps", "1000000000"], "from 1 to 100000"),
        (["--seed", "-1"], "a seed is a whole number"),
    ],
)
def test_bad_runs_stop_before_any_work(cli_runner, tmp_path, argv, message):
    (tmp_path / "training.json").write_text("{}")  # a model this trainer saved there stays as it is
    before = files(tmp_path)
    code, out, err = cli_runner(tiny_clip.main, ["--out", str(tmp_path), *CLIP_ARGS, *argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert files(tmp_path) == before


@pytest.mark.parametrize(
    "main, argv, damage, message",
    [
        (tiny_blip2.main, [], None, "is a checkpoint of tiny-clip, not tiny-blip2"),
        (tiny_clip.main, ["--steps", "13"], None, "steps=12; this run has steps=13"),
        (tiny_clip.main, [], "model.safetensors", "missing or corrupt"),
        (tiny_clip.main, [], "random_states_0.pkl", "missing or corrupt"),
        (tiny_clip.main, [], "run.json", "not a readable checkpoint"),
    ],
    ids=["another model", "another config", "corrupt weights", "missing file", "corrupt record"],
)
def test_bad_checkpoints_are_refused(cli_runner, killed_run, tmp_path, main, argv, damage, message):
    shutil.copytree(killed_run, tmp_path, dirs_exist_ok=True)
    newest = checkpoints.listed(tmp_path / "checkpoints" / "tiny-clip")[-1]
    if damage == "model.safetensors":
        (newest / damage).write_bytes((newest / damage).read_bytes()[:1000])
    elif damage == "run.json":
        (newest / damage).write_text("{")
    elif damage:
        (newest / damage).unlink()
    before = files(tmp_path)
    args = ["--steps", "12", "--batch-size", "16", "--pool", "64", *argv, "--resume"]
    code, out, err = cli_runner(main, ["--out", str(tmp_path), *args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert files(tmp_path) == before


def test_an_unfinished_run_is_not_overwritten(cli_runner, killed_run, tmp_path):
    shutil.copytree(killed_run, tmp_path, dirs_exist_ok=True)
    before = files(tmp_path)
    code, out, err = cli_runner(tiny_clip.main, ["--out", str(tmp_path), *CLIP_ARGS])
    assert code == 2 and "pass --resume" in err
    assert files(tmp_path) == before


# ---------------------------------------------------------------- where a trainer writes
TRAINERS = {
    "tiny-clip": tiny_clip,
    "tiny-blip2": tiny_blip2,
    "tiny-blip2-prompts": tiny_blip2_prompts,
    "tiny-blip2-compliance": tiny_blip2_compliance,
    "tiny-sd": tiny_sd,
}


@pytest.mark.parametrize("name", TRAINERS)
def test_a_trainer_writes_to_outputs_unless_told_otherwise(name):
    """The default --out is outputs/train/<model>, never the bundled checkpoint the other commands load."""
    parser = TRAINERS[name].build_parser()
    out = Path(parser.get_default("out"))
    assert out == OUTPUTS_DIR / "train" / name and MODELS_DIR not in out.parents
    assert f"(defaultoutputs/train/{name})" in "".join(parser.format_help().split())  # what --help says


@pytest.mark.parametrize("name", TRAINERS)
def test_a_bundled_checkpoint_is_replaced_only_with_force(cli_runner, name):
    bundled = MODELS_DIR / name
    before = files(bundled)
    code, out, err = cli_runner(TRAINERS[name].main, ["--out", str(bundled), "--steps", "1"])
    assert code == 2 and "bundled checkpoint" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert files(bundled) == before


def test_a_folder_of_other_files_is_refused(cli_runner, tmp_path):
    (tmp_path / "notes.md").write_text("my notes\n")
    code, out, err = cli_runner(tiny_clip.main, ["--out", str(tmp_path), *CLIP_ARGS])
    assert code == 2 and "did not write" in err and len(err.strip().splitlines()) == 1
    assert files(tmp_path) == {"notes.md": hashlib.sha256(b"my notes\n").hexdigest()}


def test_a_save_cut_short_leaves_the_checkpoints_and_no_model(tmp_path, monkeypatch):
    """The model appears whole or not at all: Ctrl-C while it is being saved leaves the last
    checkpoint (and nothing beside the folder), and --resume then saves it."""
    out, config = tmp_path / "clip", tiny_clip.Config(steps=2, batch_size=4, pool=8)

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training.viz, "curve", interrupted)  # after save_pretrained wrote the weights
        with pytest.raises(KeyboardInterrupt):
            tiny_clip.train(out, config, training.Options(save_every=2, progress=False))
    assert [p.name for p in tmp_path.iterdir()] == ["clip"] and [p.name for p in out.iterdir()] == ["checkpoints"]
    tiny_clip.train(out, config, training.Options(save_every=2, resume=True, progress=False))
    assert (out / "model.safetensors").is_file() and not (out / "checkpoints").exists()


def test_the_benchmark_refuses_a_batch_two_processes_cannot_share(cli_runner, tmp_path):
    code, out, err = cli_runner(train_bench.main, ["--batch-size", "3", "--out", str(tmp_path)])
    assert code == 2 and "make it even" in err and list(tmp_path.iterdir()) == []


def test_processes_and_micro_batches_tile_the_batch():
    """Each process's micro-batches are its own rows: no sample is seen twice in one step."""
    shares = [rows for rank in range(2) for rows in training.shares(32, rank, 2, grad_accum=4)]
    assert [i for rows in shares for i in range(32)[rows]] == list(range(32))
    assert {rows.stop - rows.start for rows in shares} == {4}


def test_the_committed_two_machine_config_is_what_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / "two-machines.yaml"))
    assert (config.num_machines, config.num_processes, config.distributed_type) == (2, 16, "MULTI_GPU")
