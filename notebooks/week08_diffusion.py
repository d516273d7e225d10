# %% [markdown]
# # Week 8 — diffusion from scratch: DDPM and DDIM against diffusers
#
# Week 3 used Stable Diffusion's schedulers as black boxes. `stage2_fundamentals/diffusion.py`
# re-derives them with the formula beside each line: the beta schedules and ᾱ_t, the closed-form
# forward process `x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`, the timestep spacings, and the DDPM and DDIM steps.
# This notebook proves those loops equal to diffusers' step by step, samples the week-3 pipeline with
# them, compares samplers × steps from a fixed seed, and shows the forward process in pictures.
# The week's page: [docs/week08.md](../docs/week08.md).
#
# The hub profile samples Stable Diffusion 1.5 in half precision on the GPU with the from-scratch
# DDIM loop. The step-by-step check stays on the tiny model: it compares float32 loops to 1e-5 on the
# CPU, which for SD 1.5 would take minutes per loop.

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week: the forward process noises a ShapesWorld image
PROMPT = None  # your own prompt; None: the profile's example
CHECK_STEPS = 5  # steps of each checked loop (the docs' `check` runs 10 to 100 on twelve configs)
STEPS = 10  # denoising steps of the from-scratch sample vs the pipeline (docs: 25; try 25 on a GPU)
STEP_COUNTS = [3, 8]  # step counts to compare; the middle one also runs the determinism pair (docs: 3 5 10 25 50)
SCHEDULERS = ["euler"]  # week-3 schedulers beside ours (docs: dpmsolver euler euler_a pndm)
N_COMPARE = 2  # images per (sampler, steps) cell (docs: 6)

# %%
import json
from pathlib import Path

from IPython.display import Image, display

from curriculum import checks, colab, shapesworld, zoo
from stage1_demos import sd_generate
from stage2_fundamentals import diffusion_lab

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week08")
EXAMPLES = {
    "tiny": "a small yellow square in the top right and a large purple cross in the bottom left",
    "hub": "a red apple on a wooden table, studio photo",
}
prompt = PROMPT or EXAMPLES[PROFILE]
print(f"profile {PROFILE}: Stable Diffusion = {MODELS['sd']}; the step-by-step check runs on tiny")

# %% [markdown]
# ## Load the pipeline once
#
# `check_before_loading` reads only the tokenizer and the scheduler config, so a prompt too long for
# the text encoder, or more steps than the noise schedule has, is one line before the weights load.
# `zoo.load_sd` picks the device and dtype: float32 on a CPU, half precision on a GPU.

# %%
sd_generate.check_before_loading(MODELS["sd"], {"prompt": prompt}, [STEPS, *STEP_COUNTS])
pipe = zoo.load_sd(MODELS["sd"])
pipe.set_progress_bar_config(disable=True)
unet_size = sum(p.numel() for p in pipe.unet.parameters())
print(f"{MODELS['sd']}: UNet of {unet_size:,} parameters on {pipe.device}, {pipe.unet.dtype}")

# %% [markdown]
# ## The from-scratch loops, step by step against diffusers
#
# Both loops get the same config, the same starting noise x_T, the same generator for the step noise
# and the same model (the tiny SD's UNet with classifier-free guidance); every intermediate sample
# must agree to 1e-5. Here: the three beta schedules, the forward process against `add_noise`, the
# three timestep spacings, and DDPM, DDIM η=0 and DDIM η=1 on the tiny SD's own config.

# %%
quick = [
    (
        diffusion_lab.CHECK_CONFIGS[0][0],
        None,
        [("ddpm", CHECK_STEPS, 0.0), ("ddim", CHECK_STEPS, 0.0), ("ddim", CHECK_STEPS, 1.0)],
    )
]
checks.print_checks(diffusion_lab.run_checks("tiny", quick))
reference = json.loads(Path("results/week8/check.json").read_text())["checks"]
print(f"\nthe reference run's full check (`make week8`): {sum(c['ok'] for c in reference)}/{len(reference)} ok")

# %% [markdown]
# ## The pipeline's image, reproduced
#
# `generate` runs the pipeline's own UNet and VAE with the from-scratch loop; `sample_command` then
# runs `StableDiffusionPipeline` with the matching diffusers scheduler from the same seed. On the
# tiny model in float32 the two images are identical (0 of 255). In half precision on a GPU the two
# loops round differently, so expect a few levels of difference, not zero.

# %%
for sampler, eta in [("ddim", 0.0), ("ddpm", 0.0)]:
    made = diffusion_lab.sample_command(pipe, prompt, 0, STEPS, sampler, eta, 5.0, OUT / f"sample_{sampler}.png")
    print(f"{sampler}, {STEPS} steps: from scratch vs the pipeline, max pixel difference {made['max_pixel_diff']}/255")
    display(Image(filename=made["picture"]))

# %% [markdown]
# ## Samplers × steps, from a fixed seed
#
# Each row is a sampler, each column a step count; every cell starts from the same noise. Our DDPM
# and DDIM (η = 0, 0.5, 1) sit beside diffusers' schedulers. On ShapesWorld prompts the tiny CLIP
# judges colour and shape (for other prompts the verdict is n/a). Then determinism: the same x_T with
# two different draws of the step noise. DDIM η=0 adds no noise and gives the same image twice; DDPM
# adds fresh noise every step and does not.

# %%
compared = diffusion_lab.compare(pipe, prompt, 0, STEP_COUNTS, N_COMPARE, 5.0, SCHEDULERS, OUT / "compare.png")
diffusion_lab.print_compare(compared)
display(Image(filename=compared["grid"]))
display(Image(filename=compared["determinism"]["picture"]))

# %% [markdown]
# ## The forward process, and why SD's noisiest step is not pure noise
#
# x_0 → x_t at t = 0 … 999 for each schedule, in pixels and in the tiny SD's latent space (decoded by
# its VAE), and the signal-to-noise ratio ᾱ/(1−ᾱ). Stable Diffusion's `scaled_linear` schedule keeps
# the most signal at t = 999: its noisiest training step still holds a trace of the image.

# %%
image = shapesworld.export("test", 2, OUT / "gallery") / "test_00001.png"
noised = diffusion_lab.forward(image, OUT / "forward.png")
diffusion_lab.print_forward(noised)
display(Image(filename=noised["grid"]))
display(Image(filename=noised["snr_plot"]))
