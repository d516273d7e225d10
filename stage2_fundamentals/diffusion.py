"""Week 8: diffusion, forward and reverse, from scratch, checked against diffusers' schedulers.

Forward process: a fixed schedule β_1..β_T adds a little Gaussian noise per step. With
α_t = 1 - β_t and ᾱ_t = α_1 · … · α_t, any step has a closed form (no loop needed):

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)    so    x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε,  ε ~ N(0, I)

A network learns to undo it: given x_t and t it predicts ε (or v = √ᾱ_t ε - √(1 - ᾱ_t) x_0, or
x_0 itself). Any of them gives a guess of the clean sample, x̂_0 = (x_t - √(1 - ᾱ_t) ε̂) / √ᾱ_t.
Sampling walks back from pure noise x_T over a few timesteps t > t' > …:

DDPM (Ho et al. 2020) samples the posterior q(x_t' | x_t, x̂_0): with β = 1 - ᾱ_t / ᾱ_t',
    x_t' = √ᾱ_t' β / (1 - ᾱ_t) · x̂_0 + √(1 - β) (1 - ᾱ_t') / (1 - ᾱ_t) · x_t + σ z,   z ~ N(0, I)
    σ² = β (1 - ᾱ_t') / (1 - ᾱ_t) ("fixed_small")  or  β ("fixed_large"); fresh noise z every step.

DDIM (Song et al. 2021) keeps x̂_0 and ε̂ and jumps straight to t':
    x_t' = √ᾱ_t' x̂_0 + √(1 - ᾱ_t' - σ²) ε̂ + σ z,   σ = η √((1 - ᾱ_t') / (1 - ᾱ_t) · β)
    η = 0: no noise at all, one deterministic path from x_T to x_0, which tolerates big jumps
    (few steps); η = 1: DDPM's amount of noise.

    python -m stage2_fundamentals.diffusion check [--json]
    python -m stage2_fundamentals.diffusion sample --prompt "a large red circle in the top left" --seed 0
    python -m stage2_fundamentals.diffusion compare --prompt "a large green triangle in the bottom right" --seed 0
    python -m stage2_fundamentals.diffusion forward --image outputs/week8/gallery/test_00001.png
"""
import inspect
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from curriculum import checks, cli, viz, zoo
from curriculum.images import load_image
from stage1_demos import sd_generate
from stage1_demos.fidelity import Judge

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
VARIANCES = ("fixed_small", "fixed_large")
ATOL = 1e-5
OUT = Path("outputs/week8")


@dataclass(frozen=True)
class Config:
    """The scheduler settings this module re-derives; names and defaults as in diffusers."""
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True      # DDIM: the step after the last one has ᾱ = 1 (else ᾱ_0)
    variance_type: str = "fixed_small"  # DDPM

    @classmethod
    def of(cls, scheduler_config):
        """The same settings as a diffusers scheduler config (e.g. a pipeline's scheduler.config);
        a setting the config leaves out or sets to None (as DPMSolver's variance_type) keeps its default."""
        return cls(**{f.name: scheduler_config[f.name] for f in fields(cls)
                      if scheduler_config.get(f.name) is not None})

    def validate(self):
        for name, value, allowed in [("beta_schedule", self.beta_schedule, SCHEDULES),
                                     ("timestep_spacing", self.timestep_spacing, SPACINGS),
                                     ("prediction_type", self.prediction_type, PREDICTIONS),
                                     ("variance_type", self.variance_type, VARIANCES)]:
            if value not in allowed:
                raise cli.UserError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        return self

    def library(self, cls):
        """The diffusers scheduler `cls` with these settings (each class takes the keys it knows)."""
        known = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in asdict(self).items() if k in known})


# The schedules as their papers use them: DDPM's linear, Stable Diffusion's, improved DDPM's cosine.
SCHEDULE_CONFIGS = {"linear": Config(),
                    "scaled_linear": Config(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                    "squaredcos_cap_v2": Config(beta_schedule="squaredcos_cap_v2")}


# ---------------------------------------------------------------- the forward process
def cosine_alpha_bar(s):
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2             # ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)


def betas(c):
    t_max = c.num_train_timesteps
    if c.beta_schedule == "linear":
        return torch.linspace(c.beta_start, c.beta_end, t_max, dtype=torch.float32)            # β evenly spaced
    if c.beta_schedule == "scaled_linear":
        return torch.linspace(c.beta_start ** 0.5, c.beta_end ** 0.5, t_max, dtype=torch.float32) ** 2  # √β evenly
    # cosine: β_t = 1 - ᾱ((t+1)/T) / ᾱ(t/T), capped at 0.999 so the last steps do not divide by ~0
    return torch.tensor([min(1 - cosine_alpha_bar((t + 1) / t_max) / cosine_alpha_bar(t / t_max), 0.999)
                         for t in range(t_max)], dtype=torch.float32)


def alphas_cumprod(c):
    return torch.cumprod(1.0 - betas(c), dim=0)                        # ᾱ_t = Π_{s ≤ t} (1 - β_s)


def add_noise(x0, noise, t, alpha_bar):
    """x_t for each row's timestep t, in one step."""
    a = alpha_bar[t].view(-1, *[1] * (x0.dim() - 1))
    return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise                       # x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε


def snr(alpha_bar):
    return alpha_bar / (1 - alpha_bar)                                  # signal-to-noise ratio ᾱ / (1 - ᾱ)


def timesteps(c, steps):
    """Which of the T training timesteps `steps` sampling steps visit, noisiest first."""
    t_max = c.num_train_timesteps
    if not 0 < steps <= t_max:
        raise cli.UserError(f"steps must be between 1 and {t_max} (the training timesteps), got {steps}")
    if c.timestep_spacing == "linspace":  # both ends included: T-1 ... 0
        t = np.linspace(0, t_max - 1, steps).round()[::-1]
    elif c.timestep_spacing == "leading":  # multiples of T // n from 0, shifted by steps_offset: never t = T-1
        t = (np.arange(steps) * (t_max // steps)).round()[::-1] + c.steps_offset
    else:  # trailing: counted back from T, so the first step starts at pure noise (t = T-1)
        t = np.round(np.arange(t_max, 0, -t_max / steps)) - 1
    return torch.from_numpy(t.astype(np.int64))


# ---------------------------------------------------------------- the reverse process
def predict_x0_eps(c, model_output, x_t, a_t):
    """(x̂_0, ε̂) from what the network predicts."""
    if c.prediction_type == "epsilon":
        x0 = (x_t - (1 - a_t) ** 0.5 * model_output) / a_t ** 0.5       # x̂_0 = (x_t - √(1-ᾱ) ε̂) / √ᾱ
        eps = model_output
    elif c.prediction_type == "v_prediction":
        x0 = a_t ** 0.5 * x_t - (1 - a_t) ** 0.5 * model_output          # x̂_0 = √ᾱ x_t - √(1-ᾱ) v̂
        eps = a_t ** 0.5 * model_output + (1 - a_t) ** 0.5 * x_t         # ε̂ = √ᾱ v̂ + √(1-ᾱ) x_t
    else:
        x0 = model_output
        eps = (x_t - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5                 # ε̂ = (x_t - √ᾱ x̂_0) / √(1-ᾱ)
    if c.clip_sample:  # pixels live in [-1, 1]; a guess outside is certainly wrong
        x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
    return x0, eps


def draw_noise(like, generator):
    """z ~ N(0, I) shaped like `like`; a list of generators draws one row each (diffusers' way)."""
    if isinstance(generator, list) and len(generator) > 1:
        return torch.cat([torch.randn((1, *like.shape[1:]), generator=g, dtype=like.dtype) for g in generator])
    generator = generator[0] if isinstance(generator, list) else generator
    return torch.randn(like.shape, generator=generator, dtype=like.dtype)


def ddpm_step(c, alpha_bar, t, t_prev, model_output, x_t, generator):
    """x_t -> x_t' (t' = the next timestep of the schedule, -1 after the last). Returns (x_t', x̂_0)."""
    a_t = alpha_bar[t]
    a_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0)
    alpha = a_t / a_prev                                                 # α of this jump (t - t' steps)
    beta = 1 - alpha                                                     # β = 1 - ᾱ_t / ᾱ_t'
    x0, _ = predict_x0_eps(c, model_output, x_t, a_t)
    mean = (a_prev ** 0.5 * beta / (1 - a_t)) * x0 + (alpha ** 0.5 * (1 - a_prev) / (1 - a_t)) * x_t  # μ̃(x_t, x̂_0)
    if t > 0:
        if c.variance_type == "fixed_small":
            variance = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)  # σ² = β̃, the true posterior's
        else:
            variance = beta                                              # σ² = β, an upper bound
        mean = mean + variance ** 0.5 * draw_noise(x_t, generator)       # x_t' = μ̃ + σ z
    return mean, x0


def ddim_step(c, alpha_bar, t, steps, model_output, x_t, eta, generator):
    """x_t -> x_t'. diffusers' DDIM steps back by T // steps whatever the spacing. Returns (x_t', x̂_0)."""
    t_prev = t - c.num_train_timesteps // steps
    final = torch.tensor(1.0) if c.set_alpha_to_one else alpha_bar[0]
    a_t = alpha_bar[t]
    a_prev = alpha_bar[t_prev] if t_prev >= 0 else final
    x0, eps = predict_x0_eps(c, model_output, x_t, a_t)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)             # σ² / η²
    sigma = eta * variance ** 0.5
    x_prev = a_prev ** 0.5 * x0 + (1 - a_prev - sigma ** 2) ** 0.5 * eps  # √ᾱ_t' x̂_0 + √(1-ᾱ_t'-σ²) ε̂
    if eta > 0:
        x_prev = x_prev + sigma * draw_noise(x_t, generator)             # + σ z
    return x_prev, x0


@torch.no_grad()
def reverse(model, x, c, steps, sampler="ddim", eta=0.0, generator=None):
    """Run the reverse process from x = x_T; model(x_t, t) is the network's prediction.
    Returns the sample after every step (the last one is x_0)."""
    alpha_bar, ts = alphas_cumprod(c), timesteps(c.validate(), steps)
    states = []
    for i, t in enumerate(ts):
        out = model(x, t)
        if sampler == "ddpm":
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x, _ = ddpm_step(c, alpha_bar, t, t_prev, out, x, generator)
        else:
            x, _ = ddim_step(c, alpha_bar, t, steps, out, x, eta, generator)
        states.append(x)
    return states


@torch.no_grad()
def library_reverse(model, x, scheduler, steps, eta=0.0, generator=None):
    """The same loop with a diffusers scheduler doing each step."""
    scheduler.set_timesteps(steps)
    extra = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    states = []
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator, **extra).prev_sample
        states.append(x)
    return states


# ---------------------------------------------------------------- Stable Diffusion with these loops
def pipeline_model(pipe, prompts, guidance):
    """model(x_t, t) for a Stable Diffusion pipeline: its UNet with classifier-free guidance,
    ε̂ = ε̂(x_t, "") + w (ε̂(x_t, prompt) - ε̂(x_t, "")), batched as the pipeline batches it."""
    positive, negative = pipe.encode_prompt(list(prompts), pipe.device, 1, True)
    text = torch.cat([negative, positive])

    def model(x, t):
        uncond, cond = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample.chunk(2)
        return uncond + guidance * (cond - uncond)
    return model


def initial_latents(pipe, seeds):
    """x_T, one generator per image, drawn as the pipeline draws them; returns (latents, generators)."""
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    return draw_noise(torch.empty(len(generators), channels, size, size), generators), generators


@torch.no_grad()
def generate(pipe, prompts, steps, seeds, sampler="ddim", eta=0.0, guidance=5.0, noise_seed=None):
    """Images from the pipeline's UNet and VAE with the from-scratch loop. Step noise (DDPM, or
    DDIM with η > 0) comes from each image's own generator, as in the pipeline, or, with
    noise_seed, from a separate one: same x_T, different noise draws."""
    c = Config.of(pipe.scheduler.config)
    latents, generators = initial_latents(pipe, seeds)
    noise = generators if noise_seed is None else torch.Generator("cpu").manual_seed(noise_seed)
    x0 = reverse(pipeline_model(pipe, prompts, guidance), latents, c, steps, sampler, eta, noise)[-1]
    images = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images)


def pixel_diff(a, b):
    """Max difference in 0-255 levels between two lists of images."""
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def sample_command(pipe, prompt, seed, steps, sampler, eta, guidance, out):
    """The from-scratch loop vs the pipeline with the matching diffusers scheduler."""
    ours = generate(pipe, [prompt], steps, [seed], sampler, eta, guidance)
    pipe.scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(pipe.scheduler.config)
    theirs = pipe([prompt], num_inference_steps=steps, guidance_scale=guidance, eta=eta,
                  generator=[torch.Generator("cpu").manual_seed(seed)]).images
    diff = pixel_diff(ours, theirs)
    viz.image_grid(ours + theirs, [f"from scratch ({sampler})", f"pipeline + {sampler.upper()}Scheduler"], out)
    return {"prompt": prompt, "seed": seed, "steps": steps, "sampler": sampler, "eta": eta, "guidance": guidance,
            "max_pixel_diff": diff, "picture": str(out)}


# ---------------------------------------------------------------- check
def check_name(label, sampler, steps, eta):
    return f"{label}: {sampler.upper()} {steps} steps" + (f", η={eta}" if sampler == "ddim" else "")


CHECK_CONFIGS = [
    # (label, config or None for the tiny SD's own, [(sampler, steps, eta)])
    ("tiny SD's config (scaled_linear, leading, offset 1, ᾱ_final = ᾱ_0)", None,
     [("ddpm", 25, 0.0), ("ddim", 25, 0.0), ("ddim", 25, 1.0)]),
    ("same with set_alpha_to_one", "set_alpha_to_one", [("ddim", 25, 0.0)]),
    ("linear, trailing, clip_sample, fixed_large", Config(timestep_spacing="trailing", variance_type="fixed_large"),
     [("ddpm", 20, 0.0), ("ddim", 20, 0.5)]),
    ("squaredcos_cap_v2, linspace, v_prediction",
     Config(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", prediction_type="v_prediction"),
     [("ddpm", 20, 0.0), ("ddim", 20, 0.0)]),
    ("scaled_linear, trailing, sample prediction, no clipping",
     Config(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
            prediction_type="sample", clip_sample=False), [("ddpm", 10, 0.0), ("ddim", 10, 1.0)]),
    ("linear, leading, 100 steps", Config(), [("ddpm", 100, 0.0), ("ddim", 100, 0.0)]),
]


def steps_record(name, ours, theirs):
    """Every step of two sampling loops: the worst difference over all of them."""
    worst = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    return {"name": name, "max_abs_diff": worst, "ok": worst <= ATOL and len(ours) == len(theirs)}


@torch.no_grad()
def run_checks(model_name="tiny"):
    pipe = zoo.load_sd(model_name, "cpu")
    sd = Config.of(pipe.scheduler.config)
    model = pipeline_model(pipe, ["a large red circle in the top left"], guidance=5.0)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    x_t = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    results = []
    for schedule, c in SCHEDULE_CONFIGS.items():
        ours, theirs = betas(c), c.library(DDPMScheduler).betas
        results.append(steps_record(f"betas and ᾱ, {schedule}", [ours, alphas_cumprod(c)],
                                     [theirs, c.library(DDPMScheduler).alphas_cumprod]))
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 3, 8, 8)
    results.append(steps_record("forward q(x_t | x_0) vs DDPMScheduler.add_noise, 4 timesteps",
                                 [add_noise(x0, noise, t, alphas_cumprod(sd))],
                                 [sd.library(DDPMScheduler).add_noise(x0, noise, t)]))
    for spacing in SPACINGS:
        c = replace(sd, timestep_spacing=spacing)
        scheduler = c.library(DDIMScheduler)
        scheduler.set_timesteps(30)
        results.append(steps_record(f"timesteps, {spacing} spacing, 30 steps", [timesteps(c, 30).float()],
                                     [scheduler.timesteps.float()]))
    for label, c, runs in CHECK_CONFIGS:
        c = sd if c is None else replace(sd, set_alpha_to_one=True) if c == "set_alpha_to_one" else c
        for sampler, steps, eta in runs:
            library = c.library(DDPMScheduler if sampler == "ddpm" else DDIMScheduler)
            ours = reverse(model, x_t, c, steps, sampler, eta, torch.Generator().manual_seed(7))
            theirs = library_reverse(model, x_t, library, steps, eta, torch.Generator().manual_seed(7))
            results.append(steps_record(check_name(label, sampler, steps, eta) + ", every step", ours, theirs))
    return {"checks": results}


# ---------------------------------------------------------------- compare and determinism
# the from-scratch samplers in `compare`: name -> (sampler, η)
OURS = {"ddpm": ("ddpm", 0.0), "ddim eta=0": ("ddim", 0.0), "ddim eta=0.5": ("ddim", 0.5),
        "ddim eta=1": ("ddim", 1.0)}


def our_sampler(pipe, sampler, eta, guidance):
    return lambda prompts, steps, seeds: generate(pipe, prompts, steps, seeds, sampler, eta, guidance)


def determinism(pipe, prompt, seed, steps, guidance):
    """Same x_T (seed), two different draws of the step noise: max pixel difference per sampler."""
    result, images = {}, []
    for name in ("ddim eta=0", "ddpm"):
        sampler, eta = OURS[name]
        runs = [generate(pipe, [prompt], steps, [seed], sampler, eta, guidance, noise_seed=k)[0] for k in (1, 2)]
        result[name] = pixel_diff(runs[:1], runs[1:])
        images += runs
    return result, images


def compare(pipe, prompt, seed, steps_list, n, guidance, schedulers, out):
    pipe.set_progress_bar_config(disable=True)
    samplers = {name: our_sampler(pipe, *OURS[name], guidance) for name in OURS}
    samplers |= {name: sd_generate.scheduler_sampler(pipe, name, guidance) for name in schedulers}
    cells, tiles, labels = sd_generate.compare(samplers, prompt, seed, steps_list, n, Judge())
    grid = viz.image_grid(tiles, labels, out, cols=len(steps_list))
    steps = steps_list[len(steps_list) // 2]
    diffs, images = determinism(pipe, prompt, seed, steps, guidance)
    pair_out = Path(out).with_name(Path(out).stem + "_determinism.png")
    labels = [f"{name}, noise draw {k}" for name in ("DDIM eta=0", "DDPM") for k in (1, 2)]
    viz.image_grid(images, labels, pair_out)
    result = {"prompt": prompt, "seed": seed, "n": n, "guidance": guidance, "schedulers": list(samplers),
              "steps": steps_list, "cells": cells, "grid": str(grid),
              "determinism": {"steps": steps, "max_pixel_diff": diffs, "picture": str(pair_out)}}
    cli.write_json(result, Path(out).with_suffix(".json"))
    return result


def print_compare(result):
    sd_generate.print_compare(result)
    d = result["determinism"]
    print(f"\nsame seed, two draws of the step noise ({d['steps']} steps): max pixel difference "
          + ", ".join(f"{name} {diff}" for name, diff in d["max_pixel_diff"].items())
          + f"\n(DDIM eta=0 adds no noise: one path from x_T; DDPM adds fresh noise every step) {d['picture']}")


# ---------------------------------------------------------------- forward
FORWARD_T = (0, 50, 100, 250, 500, 750, 999)


@torch.no_grad()
def forward(image_path, out, schedules=SCHEDULES, model_name="tiny", seed=0):
    """x_0 -> x_t over t for each schedule, in pixel space and in the tiny SD's latent space, and
    the SNR curves."""
    image = load_image(image_path)
    x0 = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]  # pixels in [-1, 1]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.tensor(FORWARD_T)
    to_image = lambda x: viz.to_pil(x.clamp(-1, 1) * 0.5 + 0.5)  # noqa: E731
    tiles, labels = [], []
    configs = {name: SCHEDULE_CONFIGS[name] for name in schedules}
    for schedule, c in configs.items():
        x_t = add_noise(x0.expand(len(t), -1, -1, -1), noise.expand(len(t), -1, -1, -1), t, alphas_cumprod(c))
        tiles += [to_image(x) for x in x_t]
        labels += [f"{schedule}, t={s}" for s in FORWARD_T]
    pipe = zoo.load_sd(model_name, "cpu")
    sd = Config.of(pipe.scheduler.config)
    vae, scale = pipe.vae, pipe.vae.config.scaling_factor
    z0 = vae.encode(x0).latent_dist.mean * scale
    z_noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    z_t = add_noise(z0.expand(len(t), -1, -1, -1), z_noise.expand(len(t), -1, -1, -1), t, alphas_cumprod(sd))
    tiles += [to_image(x) for x in vae.decode(z_t / scale).sample]
    labels += [f"SD latent x_t, decoded, t={s}" for s in FORWARD_T]
    grid = viz.image_grid(tiles, labels, out, cols=len(FORWARD_T))
    curves = {name: snr(alphas_cumprod(c)).log10().tolist() for name, c in configs.items()}
    snr_plot = viz.lines(curves, Path(out).with_name(Path(out).stem + "_snr.png"),
                         "signal-to-noise ratio ᾱ/(1-ᾱ) of each schedule", "timestep t", "log10 SNR")
    table = {name: {str(s): float(f"{float(snr(alphas_cumprod(c))[s]):.4g}") for s in FORWARD_T}
             for name, c in configs.items()}
    return {"image": str(image_path), "timesteps": list(FORWARD_T), "snr": table, "grid": str(grid),
            "snr_plot": str(snr_plot)}


def print_forward(result):
    print("SNR = ᾱ/(1-ᾱ) at each t (1: as much signal as noise)")
    print(f"{'schedule':<20}" + "".join(f"{f't={t}':>11}" for t in result["timesteps"]))
    for name, row in result["snr"].items():
        print(f"{name:<20}" + "".join(f"{v:>11.4g}" for v in row.values()))
    print(f"\nx_0 -> x_t: {result['grid']}\nSNR curves: {result['snr_plot']}")


# ---------------------------------------------------------------- command line
def main(argv=None):
    parser = cli.Parser(prog="python -m stage2_fundamentals.diffusion", description=__doc__,
                        formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove the schedules and the DDPM / DDIM loops equal to diffusers")
    one = sub.add_parser("sample", help="the from-scratch loop on the tiny SD vs the pipeline's image")
    one.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    one.add_argument("--eta", type=cli.non_negative_float, default=0.0,
                     help="DDIM's noise: 0 (default) none, 1 as much as DDPM")
    one.add_argument("--steps", type=cli.positive_int, default=25)
    one.add_argument("--out", default=str(OUT / "sample.png"))
    grid = sub.add_parser("compare", help="DDPM vs DDIM (η 0, 0.5, 1) vs week-3 schedulers x step counts")
    grid.add_argument("--step-counts", nargs="+", type=cli.positive_int, default=[10, 25, 50, 100])
    grid.add_argument("--schedulers", nargs="+", choices=list(sd_generate.SCHEDULERS),
                      default=["dpmsolver", "euler", "euler_a", "pndm"], help="week-3 schedulers beside ours")
    grid.add_argument("--n", type=cli.positive_int, default=4, help="images per cell for the fidelity score")
    grid.add_argument("--out", default=str(OUT / "compare.png"), help="grid PNG; the JSON result is written beside it")
    for p in (one, grid):
        p.add_argument("--prompt", required=True, help="what to draw")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--guidance", type=float, default=5.0)
    noising = sub.add_parser("forward", help="x_0 -> x_t over t for each schedule, and SNR curves")
    noising.add_argument("--image", required=True, help="a PNG or JPEG file")
    noising.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    noising.add_argument("--seed", type=int, default=0)
    noising.add_argument("--out", default=str(OUT / "forward.png"))
    for p in (check, one, grid, noising):
        p.add_argument("--model", default="tiny", help="a Stable Diffusion pipeline: 'tiny', a hub id or a folder")
        p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command in ("sample", "compare"):
        sd_generate.check_prompt(args.prompt)
    if args.command == "check":
        checks.emit(run_checks(args.model), args.json)
    elif args.command == "sample":
        start = time.perf_counter()
        result = sample_command(zoo.load_sd(args.model, "cpu"), args.prompt, args.seed, args.steps, args.sampler,
                                args.eta, args.guidance, args.out)
        result["seconds"] = round(time.perf_counter() - start, 2)
        cli.emit(result, args.json, lambda r: print(
            f"from-scratch {r['sampler']} vs the pipeline: max pixel difference {r['max_pixel_diff']} "
            f"(0-255); picture: {r['picture']}"))
    elif args.command == "compare":
        result = compare(zoo.load_sd(args.model, "cpu"), args.prompt, args.seed, args.step_counts, args.n,
                         args.guidance, args.schedulers, args.out)
        cli.emit(result, args.json, print_compare)
    else:
        cli.emit(forward(args.image, args.out, args.schedules, args.model, args.seed), args.json, print_forward)


if __name__ == "__main__":
    cli.run(main)
