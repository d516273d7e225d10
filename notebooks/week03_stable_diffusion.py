# %% [markdown]
# # Week 3 — Stable Diffusion: samplers, steps, latents and cross-attention
#
# Stable Diffusion denoises a small latent, not pixels: a text encoder turns the prompt into token
# embeddings, a UNet predicts the noise in the latent step by step (reading the tokens through
# cross-attention), a scheduler turns each prediction into a cleaner latent, and a VAE decodes the
# last one into an image. This notebook drives the project's `stage1_demos.sd_generate` functions on
# one loaded pipeline: generate, compare samplers × step counts, follow one prompt through every
# stage, and see which pixels each word steers. The hub profile runs Stable Diffusion 1.5 in half
# precision on the GPU. The week's page: [docs/week03.md](../docs/week03.md).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week: Stable Diffusion makes its own images
PROMPT = None  # your own prompt; None: the profile's example
N = 4  # images per prompt (seeds 0..N-1)
STEPS = 25  # denoising steps
SCHEDULERS = ["dpmsolver", "ddim", "euler", "pndm"]  # samplers to compare
STEP_COUNTS = [5, 10, 25]  # step counts to compare (the docs add 50)
N_COMPARE = 2  # images per (sampler, steps) cell, judged by the tiny CLIP
N_EVAL = 20  # ShapesWorld prompts for the fidelity table (tiny profile; the docs use 200)

# %%
from pathlib import Path

from IPython.display import Image, display

from curriculum import colab, viz, zoo
from stage1_demos import sd_generate
from stage1_demos.fidelity import Judge

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week03")
EXAMPLES = {  # (a prompt, a two-object prompt for attention, its words to map)
    "tiny": (
        "a large red circle in the top left",
        "a large red circle in the top left and a large blue square in the bottom right",
        ["circle", "square", "red"],
    ),
    "hub": (
        "a red apple on a wooden table, studio photo",
        "a red apple on the left and a blue cup on the right, on a wooden table",
        ["apple", "cup", "red"],
    ),
}
prompt, two_objects, words = EXAMPLES[PROFILE]
prompt = PROMPT or prompt
print(f"profile {PROFILE}: Stable Diffusion = {MODELS['sd']}")

# %% [markdown]
# ## Load the pipeline once
#
# `check_before_loading` reads only the tokenizer and the scheduler config, so a prompt too long for
# the text encoder, or more steps than the noise schedule has, is one line before gigabytes load.
# `zoo.load_sd` loads diffusers' `StableDiffusionPipeline` exactly as for a hub checkpoint.

# %%
sd_generate.check_before_loading(MODELS["sd"], {"prompt": prompt, "two_objects": two_objects}, [STEPS, *STEP_COUNTS])
pipe = zoo.load_sd(MODELS["sd"])
pipe.set_progress_bar_config(disable=True)
print(f"UNet {sum(p.numel() for p in pipe.unet.parameters()):,} parameters on {pipe.device}, {pipe.unet.dtype}")

# %% [markdown]
# ## Text → image
#
# Each image starts from the noise of its own seed, so image i is the same whatever else is in the
# batch. Classifier-free guidance runs the UNet twice per step (with the prompt and with the empty
# prompt) and moves `guidance` times further in the prompt's direction.

# %%
made = sd_generate.generate_command(pipe, prompt, None, STEPS, "dpmsolver", 5.0, 0, N, OUT / "generate.png")
print(f"{N} images in {made['seconds']:.1f} s ({made['scheduler']}, {made['steps']} steps)")
display(Image(filename=made["grid"]))

# %% [markdown]
# ## Samplers × steps
#
# Swapping the scheduler keeps the noise schedule the model was trained on
# (`X.from_config(pipe.scheduler.config)`). Fewer steps take bigger jumps along the same path;
# multistep solvers (DPMSolver++) stay accurate with fewer steps than PNDM. The tiny CLIP judges
# colour and shape of ShapesWorld prompts; for other prompts the verdict is n/a.

# %%
samplers = {name: sd_generate.scheduler_sampler(pipe, name, 5.0) for name in SCHEDULERS}
cells, tiles, labels = sd_generate.compare(samplers, prompt, 0, STEP_COUNTS, N_COMPARE, Judge())
sd_generate.print_compare(
    {"prompt": prompt, "seed": 0, "n": N_COMPARE, "schedulers": SCHEDULERS, "steps": STEP_COUNTS, "cells": cells}
)
display(Image(filename=viz.image_grid(tiles, labels, OUT / "compare.png", cols=len(STEP_COUNTS))))

# %% [markdown]
# ## The journey: tokens → text embeddings → latent noise → UNet → VAE
#
# `explain` writes the pipeline's loop out (DDIM, guidance) and records every real tensor shape
# beside SD 1.5's, and the model's guess of the clean image at each step: watch the picture settle.

# %%
journey, guesses = sd_generate.explain(pipe, prompt, 10, 5.0, 0)
sd_generate.print_explain(journey, MODELS["sd"])
step_labels = [f"step {i + 1}: t={t}" for i, t in enumerate(journey["timesteps"])]
display(Image(filename=viz.image_grid(guesses, step_labels, OUT / "journey.png")))

# %% [markdown]
# ## Which pixels does each word steer? Cross-attention maps
#
# In the UNet's cross-attention the latent pixels are the queries and the prompt's tokens the keys:
# `softmax(Q Kᵀ / √d)` says how much each pixel reads each word. `attention_maps` records those
# probabilities for one word, averaged over heads and steps, per resolution. In the tiny model the
# nouns land on their shapes' quadrants; the colour word spreads, because CLIP's causal text encoder
# has already folded "red" into the noun that follows it.

# %%
for word in words:
    image, by_resolution, overall = sd_generate.attention_maps(pipe, two_objects, word, STEPS, 5.0, 0)
    maps = [(f"{side}x{side} layers", heat.numpy()) for side, heat in by_resolution.items()]
    maps.append(("all layers, upsampled", overall.numpy()))
    title = f"cross-attention to {word!r}: {two_objects}"
    display(Image(filename=viz.heatmap_overlays(image, maps, OUT / f"attention_{word}.png", title)))
    print(f"{word!r}, share of the attention in each quadrant:", sd_generate.quadrant_shares(overall))

# %% [markdown]
# ## Prompt fidelity on ShapesWorld (tiny profile)
#
# One image per test caption, and for every object the caption asks for, the tiny CLIP of week 1
# looks at that object's quadrant and names its colour and shape. The hub profile skips this cell:
# the judge knows only ShapesWorld's 64 px world, and `evaluate` generates 50 prompts per batch,
# more 512 px images than a T4 holds at once.

# %%
if PROFILE == "tiny":
    fidelity, images, prompts = sd_generate.evaluate(pipe, "test", N_EVAL, STEPS)
    sd_generate.print_eval(fidelity)
    display(Image(filename=viz.image_grid(images[:16], prompts[:16], OUT / "eval.png")))
else:
    print("skipped: the fidelity judge is the tiny CLIP, trained on ShapesWorld's 64 px images")
