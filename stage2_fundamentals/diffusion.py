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

diffusion_lab.py checks every step against diffusers' schedulers, samples Stable Diffusion with
these loops and draws the pictures (`python -m stage2_fundamentals.diffusion_lab check`).
"""
import inspect
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from curriculum import cli

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
VARIANCES = ("fixed_small", "fixed_large")


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
    """z ~ N(0, I) shaped like `like`; a list of generators draws one row each (diffusers' way).
    CPU generators draw on the CPU and the noise moves to `like`'s device, as diffusers does."""
    if isinstance(generator, list) and len(generator) > 1:
        z = torch.cat([torch.randn((1, *like.shape[1:]), generator=g, dtype=like.dtype) for g in generator])
        return z.to(like.device)
    generator = generator[0] if isinstance(generator, list) else generator
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


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


def ddim_alpha_prev(c, alpha_bar, t_prev):
    """ᾱ_t' of the timestep DDIM jumps to; after the last step (t' < 0), 1 with set_alpha_to_one, else ᾱ_0."""
    if t_prev >= 0:
        return alpha_bar[t_prev]
    return torch.tensor(1.0) if c.set_alpha_to_one else alpha_bar[0]


def ddim_sigma(a_t, a_prev, eta):
    return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5  # σ = η √((1-ᾱ_t')/(1-ᾱ_t) · β)


def ddim_step(c, alpha_bar, t, t_prev, model_output, x_t, eta, generator):
    """x_t -> x_t' (t' < 0 after the last step). Returns (x_t', x̂_0)."""
    a_t, a_prev = alpha_bar[t], ddim_alpha_prev(c, alpha_bar, t_prev)
    x0, eps = predict_x0_eps(c, model_output, x_t, a_t)
    sigma = ddim_sigma(a_t, a_prev, eta)
    x_prev = a_prev ** 0.5 * x0 + (1 - a_prev - sigma ** 2) ** 0.5 * eps  # √ᾱ_t' x̂_0 + √(1-ᾱ_t'-σ²) ε̂
    if eta > 0:
        x_prev = x_prev + sigma * draw_noise(x_t, generator)             # + σ z
    return x_prev, x0


@torch.no_grad()
def reverse(model, x, c, steps, sampler="ddim", eta=0.0, generator=None, step=None):
    """Run the reverse process from x = x_T; model(x_t, t) is the network's prediction; `step`
    replaces the sampler's step function (diffusion_lab's `mistakes` swaps in wrong ones).
    Returns the sample after every step (the last one is x_0)."""
    alpha_bar, ts = alphas_cumprod(c), timesteps(c.validate(), steps)
    step = step or (ddpm_step if sampler == "ddpm" else ddim_step)
    states = []
    for i, t in enumerate(ts):
        out = model(x, t)
        if sampler == "ddpm":  # to the schedule's next timestep
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x, _ = step(c, alpha_bar, t, t_prev, out, x, generator)
        else:  # diffusers' DDIM steps back by T // steps whatever the spacing
            x, _ = step(c, alpha_bar, t, t - c.num_train_timesteps // steps, out, x, eta, generator)
        states.append(x)
    return states
