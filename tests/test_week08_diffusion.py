"""Week 8 milestone: DDPM and DDIM from scratch equal diffusers' schedulers, step for step."""

import json
from dataclasses import replace

import pytest
import torch

from curriculum import MODELS_DIR, shapesworld, zoo
from curriculum.cli import UserError
from stage2_fundamentals import diffusion, diffusion_lab
from stage2_fundamentals.diffusion import Config, alphas_cumprod, snr, timesteps

pytestmark = pytest.mark.week8

PROMPT = "a large red circle in the top left"


@pytest.fixture(scope="module")
def checks():
    return diffusion_lab.run_checks()["checks"]


@pytest.fixture(scope="module")
def pipe():
    pipe = zoo.load_sd("tiny", "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "x0.png"
    shapesworld.sample("test", 1).image.save(path)
    return path


@pytest.mark.parametrize(
    "part",
    [
        "betas and ᾱ",
        "forward q(x_t | x_0)",
        "timesteps",
        "tiny SD's config",
        "set_alpha_to_one",
        "clip_sample, fixed_large",
        "v_prediction",
        "sample prediction",
        "100 steps",
    ],
)
def test_each_check_within_tolerance(checks, part):
    matching = [c for c in checks if part in c["name"]]
    assert matching, f"no check named {part!r}"
    for c in matching:
        assert c["ok"] and c["max_abs_diff"] <= diffusion_lab.ATOL, c


def test_checks_cover_both_samplers_and_eta(checks):
    names = " ".join(c["name"] for c in checks)
    assert "DDPM" in names and "DDIM 25 steps, η=0.0" in names and "η=1.0" in names and "η=0.5" in names


@pytest.fixture(scope="module")
def stand_in():
    """The loops of `check` without a UNet: a deterministic stand-in model, one x_T, the tiny SD's scheduler config."""
    model = lambda x, t: torch.tanh(x) * 0.5  # noqa: E731 - any deterministic model whose x̂_0 leaves [-1, 1]
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sd = Config.of(json.loads((MODELS_DIR / "tiny-sd" / "scheduler" / "scheduler_config.json").read_text()))
    return model, x_t, sd


def test_every_named_mistake_fails_a_check(stand_in):
    found = diffusion_lab.run_mistakes(*stand_in)["mistakes"]
    assert [m["mistake"] for m in found] == list(diffusion_lab.MISTAKES)
    for m in found:
        assert m["failed"] == len(m["failures"]) >= 1, m["mistake"]
        assert all(f["max_abs_diff"] > diffusion_lab.ATOL and not f["ok"] for f in m["failures"]), m


def test_without_a_mistake_the_stand_in_fails_no_check(stand_in):
    """So each failure above is its mistake's doing, not the stand-in's."""
    assert diffusion_lab.run_mistakes(*stand_in, mistakes={"none": {}})["mistakes"][0]["failed"] == 0


def test_snr_falls_from_signal_to_noise():
    for c in diffusion.SCHEDULE_CONFIGS.values():
        curve = snr(alphas_cumprod(c))
        assert torch.all(curve[1:] < curve[:-1]) and curve[0] > 1000 and curve[-1] < 0.01


def test_timestep_spacings():
    sd = Config(timestep_spacing="leading", steps_offset=1)
    assert timesteps(sd, 4).tolist() == [751, 501, 251, 1]
    assert timesteps(replace(sd, timestep_spacing="trailing"), 4).tolist() == [999, 749, 499, 249]
    assert timesteps(replace(sd, timestep_spacing="linspace"), 4).tolist() == [999, 666, 333, 0]


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_sample_reproduces_the_week3_pipeline(tmp_path, cli_runner, sampler, eta):
    code, out, _ = cli_runner(
        diffusion_lab.main,
        [
            "sample",
            "--prompt",
            PROMPT,
            "--seed",
            "3",
            "--steps",
            "10",
            "--sampler",
            sampler,
            "--eta",
            str(eta),
            "--out",
            str(tmp_path / "s.png"),
            "--json",
        ],
    )
    result = json.loads(out)
    assert code == 0 and result["max_pixel_diff"] == 0 and (tmp_path / "s.png").exists()


def test_ddim_eta0_is_deterministic_and_ddpm_is_not(pipe):
    diffs, images = diffusion_lab.determinism(pipe, PROMPT, seed=0, steps=10, guidance=5.0)
    assert diffs["ddim eta=0"] == 0
    assert diffs["ddpm"] > 30 and len(images) == 4


def test_same_seed_same_image_different_seed_different_image(pipe):
    a, b, c = (diffusion_lab.generate(pipe, [PROMPT], 10, [seed], "ddim")[0] for seed in (0, 0, 1))
    assert diffusion_lab.pixel_diff([a], [b]) == 0 and diffusion_lab.pixel_diff([a], [c]) > 30


def test_compare_grid_json_and_fidelity(tmp_path, cli_runner):
    out = tmp_path / "compare.png"
    code, stdout, _ = cli_runner(
        diffusion_lab.main,
        [
            "compare",
            "--prompt",
            PROMPT,
            "--step-counts",
            "3",
            "25",
            "--n",
            "2",
            "--schedulers",
            "dpmsolver",
            "--out",
            str(out),
            "--json",
        ],
    )
    result = json.loads(stdout)
    assert code == 0 and out.exists() and json.loads(out.with_suffix(".json").read_text()) == result
    assert result["schedulers"] == ["ddpm", "ddim eta=0", "ddim eta=0.5", "ddim eta=1", "dpmsolver"]
    assert len(result["cells"]) == 10
    ddim_25 = [c for c in result["cells"] if c["scheduler"] == "ddim eta=0" and c["steps"] == 25][0]
    assert ddim_25["fidelity"]["color"] == 1.0 and ddim_25["seconds_per_image"] > 0
    assert result["determinism"]["max_pixel_diff"]["ddim eta=0"] == 0


def test_forward_pictures_and_snr_table(tmp_path, cli_runner, image_file):
    out = tmp_path / "forward.png"
    code, stdout, _ = cli_runner(
        diffusion_lab.main, ["forward", "--image", str(image_file), "--out", str(out), "--json"]
    )
    result = json.loads(stdout)
    assert code == 0 and out.exists() and (tmp_path / "forward_snr.png").exists()
    assert set(result["snr"]) == set(diffusion.SCHEDULES) and result["timesteps"][0] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--prompt", PROMPT, "--steps", "0"], "argument --steps: expected a whole number from 1 to"),
        (["sample", "--prompt", PROMPT, "--eta", "-0.5"], "argument --eta: expected a finite number from 0 to 1"),
        (["sample", "--prompt", PROMPT, "--eta", "1e300"], "argument --eta: expected a finite number from 0 to 1"),
        (["sample", "--prompt", PROMPT, "--guidance", "nan"], "argument --guidance: expected a finite number"),
        (["sample", "--prompt", " "], "argument --prompt: empty text"),
        (["forward", "--image", "IMAGE", "--schedules", "cosine"], "invalid choice: 'cosine'"),
        (["forward", "--image", "missing.png"], "argument --image: no file at 'missing.png'"),
        # from the model's configs, before it loads: its scheduler's 1000 timesteps, its text encoder's 32 tokens
        (["sample", "--prompt", PROMPT, "--steps", "2000"], "use at most 999"),
        (["compare", "--prompt", PROMPT, "--step-counts", "10", "2000"], "use at most 999"),
        (["sample", "--prompt", PROMPT * 5], "--prompt is 46 tokens and this model's text encoder reads 32"),
    ],
)
def test_bad_input_is_a_clear_error(cli_runner, argv, message, tmp_path, image_file):
    argv = [str(image_file) if a == "IMAGE" else a for a in argv]
    code, _, err = cli_runner(diffusion_lab.main, argv + ["--out", str(tmp_path / "o.png")])
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_unknown_schedule_in_a_config_names_the_choices():
    with pytest.raises(UserError, match="unknown beta_schedule 'cosine': choose one of linear, scaled_linear"):
        Config(beta_schedule="cosine").validate()
