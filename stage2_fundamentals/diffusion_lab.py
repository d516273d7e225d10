"""Week 8's lab: the forward and reverse processes of diffusion.py checked against diffusers'
schedulers step by step, the week-3 pipeline sampled with them, samplers × steps, and the
forward process in pictures.

    python -m stage2_fundamentals.diffusion_lab check [--json]
    python -m stage2_fundamentals.diffusion_lab mistakes [--json]    # can the checks fail? each mistake swapped in
    python -m stage2_fundamentals.diffusion_lab sample --prompt "a large red circle in the top left" --seed 0
    python -m stage2_fundamentals.diffusion_lab compare --prompt "a large green triangle in the bottom right" --seed 0
    python -m stage2_fundamentals.diffusion_lab forward --image outputs/week8/gallery/test_00001.png
"""

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from curriculum import checks, cli, viz, zoo
from curriculum.images import load_image
from stage1_demos import sd_generate
from stage1_demos.fidelity import Judge
from stage2_fundamentals.diffusion import (
    SCHEDULE_CONFIGS,
    SCHEDULES,
    SPACINGS,
    Config,
    add_noise,
    alphas_cumprod,
    betas,
    ddim_alpha_prev,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    draw_noise,
    reverse,
    snr,
    timesteps,
)

ATOL = 1e-5
OUT = Path("outputs/week8")
STEPS_HELP = "up to the scheduler's training timesteps (1000 for the tiny SD)"


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
    # drawn on the CPU in the UNet's dtype, then moved, as diffusers' randn_tensor does on a GPU
    like = torch.empty(len(generators), channels, size, size, dtype=pipe.unet.dtype)
    return draw_noise(like, generators).to(pipe.device), generators


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
    theirs = pipe(
        [prompt],
        num_inference_steps=steps,
        guidance_scale=guidance,
        eta=eta,
        generator=[torch.Generator("cpu").manual_seed(seed)],
    ).images
    diff = pixel_diff(ours, theirs)
    viz.image_grid(ours + theirs, [f"from scratch ({sampler})", f"pipeline + {sampler.upper()}Scheduler"], out)
    return {
        "prompt": prompt,
        "seed": seed,
        "steps": steps,
        "sampler": sampler,
        "eta": eta,
        "guidance": guidance,
        "max_pixel_diff": diff,
        "picture": str(out),
    }


# ---------------------------------------------------------------- check
def check_name(label, sampler, steps, eta):
    return f"{label}: {sampler.upper()} {steps} steps" + (f", η={eta}" if sampler == "ddim" else "")


CHECK_CONFIGS = [
    # (label, config or None for the tiny SD's own, [(sampler, steps, eta)])
    (
        "tiny SD's config (scaled_linear, leading, offset 1, ᾱ_final = ᾱ_0)",
        None,
        [("ddpm", 25, 0.0), ("ddim", 25, 0.0), ("ddim", 25, 1.0)],
    ),
    ("same with set_alpha_to_one", "set_alpha_to_one", [("ddim", 25, 0.0)]),
    (
        "linear, trailing, clip_sample, fixed_large",
        Config(timestep_spacing="trailing", variance_type="fixed_large"),
        [("ddpm", 20, 0.0), ("ddim", 20, 0.5)],
    ),
    (
        "squaredcos_cap_v2, linspace, v_prediction",
        Config(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", prediction_type="v_prediction"),
        [("ddpm", 20, 0.0), ("ddim", 20, 0.0)],
    ),
    (
        "scaled_linear, trailing, sample prediction, no clipping",
        Config(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing="trailing",
            prediction_type="sample",
            clip_sample=False,
        ),
        [("ddpm", 10, 0.0), ("ddim", 10, 1.0)],
    ),
    ("linear, leading, 100 steps", Config(), [("ddpm", 100, 0.0), ("ddim", 100, 0.0)]),
]


def steps_record(name, ours, theirs):
    """Every step of two sampling loops: the worst difference over all of them."""
    worst = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    return {"name": name, "max_abs_diff": worst, "ok": worst <= ATOL and len(ours) == len(theirs)}


def schedule_checks(sd):
    """The schedules, the forward process and the timestep spacings (`sd`: the pipeline's config)."""
    results = []
    for schedule, c in SCHEDULE_CONFIGS.items():
        ours, theirs = betas(c), c.library(DDPMScheduler).betas
        results.append(
            steps_record(
                f"betas and ᾱ, {schedule}", [ours, alphas_cumprod(c)], [theirs, c.library(DDPMScheduler).alphas_cumprod]
            )
        )
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 3, 8, 8)
    results.append(
        steps_record(
            "forward q(x_t | x_0) vs DDPMScheduler.add_noise, 4 timesteps",
            [add_noise(x0, noise, t, alphas_cumprod(sd))],
            [sd.library(DDPMScheduler).add_noise(x0, noise, t)],
        )
    )
    for spacing in SPACINGS:
        c = replace(sd, timestep_spacing=spacing)
        scheduler = c.library(DDIMScheduler)
        scheduler.set_timesteps(30)
        results.append(
            steps_record(
                f"timesteps, {spacing} spacing, 30 steps", [timesteps(c, 30).float()], [scheduler.timesteps.float()]
            )
        )
    return results


def loops(sd, configs):
    """Every sampling loop of `configs` (CHECK_CONFIGS' form): (check name, config, sampler, steps, η)."""
    for label, c, runs in configs:
        c = sd if c is None else replace(sd, set_alpha_to_one=True) if c == "set_alpha_to_one" else c
        for sampler, steps, eta in runs:
            yield check_name(label, sampler, steps, eta) + ", every step", c, sampler, steps, eta


def library_loop(model, x_t, c, sampler, steps, eta):
    library = c.library(DDPMScheduler if sampler == "ddpm" else DDIMScheduler)
    return library_reverse(model, x_t, library, steps, eta, torch.Generator().manual_seed(7))


def our_loop(model, x_t, c, sampler, steps, eta, step=None):
    return reverse(model, x_t, c, steps, sampler, eta, torch.Generator().manual_seed(7), step)


def pipeline_check_model(model_name):
    """What the loops are checked on: the pipeline's UNet with guidance, one x_T, and its scheduler config."""
    pipe = zoo.load_sd(model_name, "cpu")
    model = pipeline_model(pipe, ["a large red circle in the top left"], guidance=5.0)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    x_t = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    return model, x_t, Config.of(pipe.scheduler.config)


@torch.no_grad()
def run_checks(model_name="tiny", configs=CHECK_CONFIGS):
    """Schedules, the forward process and timesteps, then every sampling loop of `configs`
    (CHECK_CONFIGS' form; a notebook passes a short one)."""
    model, x_t, sd = pipeline_check_model(model_name)
    results = schedule_checks(sd)
    for name, *run in loops(sd, configs):
        results.append(steps_record(name, our_loop(model, x_t, *run), library_loop(model, x_t, *run)))
    return {"checks": results}


# ---------------------------------------------------------------- mistakes: can the checks fail?
def with_settings(step, **wrong):
    """`step` run with some settings replaced: a step that ignores what the config asked for."""
    return lambda c, *rest: step(replace(c, **wrong), *rest)


def ddim_one_timestep_too_far(c, alpha_bar, t, t_prev, *rest):
    """The jump lands on t' - 1: an off-by-one in t' = t - T // steps."""
    return ddim_step(c, alpha_bar, t, t_prev - 1, *rest)


def ddim_without_sigma_in_direction(c, alpha_bar, t, t_prev, model_output, x_t, eta, generator):
    """√ᾱ_t' x̂_0 + √(1-ᾱ_t') ε̂ + σ z: the direction term forgets the σ² the noise takes."""
    x_prev, x0 = ddim_step(c, alpha_bar, t, t_prev, model_output, x_t, 0.0, generator)  # η = 0: σ = 0, no z
    if eta > 0:
        sigma = ddim_sigma(alpha_bar[t], ddim_alpha_prev(c, alpha_bar, t_prev), eta)
        x_prev = x_prev + sigma * draw_noise(x_t, generator)
    return x_prev, x0


# each mistake: the wrong step it swaps in, per sampler (a sampler it leaves out keeps the right step)
MISTAKES = {
    "ignoring set_alpha_to_one (ᾱ after the last DDIM step always 1)": {
        "ddim": with_settings(ddim_step, set_alpha_to_one=True)
    },
    "stepping DDIM back one timestep too far": {"ddim": ddim_one_timestep_too_far},
    "dropping σ² from DDIM's direction term": {"ddim": ddim_without_sigma_in_direction},
    "skipping the clipping": {
        "ddpm": with_settings(ddpm_step, clip_sample=False),
        "ddim": with_settings(ddim_step, clip_sample=False),
    },
    "fixed_small variance where fixed_large was asked": {"ddpm": with_settings(ddpm_step, variance_type="fixed_small")},
}


@torch.no_grad()
def run_mistakes(model, x_t, sd, configs=CHECK_CONFIGS, mistakes=MISTAKES):
    """`check` again with each mistake swapped into the from-scratch steps: which checks fail, by how much.
    The schedule checks use no step, so a step's mistake cannot fail them; they count in the total."""
    runs = list(loops(sd, configs))
    theirs = [library_loop(model, x_t, *run) for _, *run in runs]
    total = len(schedule_checks(sd)) + len(runs)
    found = []
    for mistake, wrong_steps in mistakes.items():
        records = [
            steps_record(name, our_loop(model, x_t, c, sampler, n, eta, wrong_steps.get(sampler)), library)
            for (name, c, sampler, n, eta), library in zip(runs, theirs)
        ]
        failed = [r for r in records if not r["ok"]]
        found.append({"mistake": mistake, "checks": total, "failed": len(failed), "failures": failed})
    return {"atol": ATOL, "mistakes": found}


def print_mistakes(result):
    for m in result["mistakes"]:
        diffs = [f["max_abs_diff"] for f in m["failures"]]
        by = f", off by {min(diffs):.1e} to {max(diffs):.1e}" if diffs else ""
        print(f"{m['mistake']}: {m['failed']} of {m['checks']} checks fail{by}")
        for f in m["failures"]:
            print(f"    {f['name']}  {f['max_abs_diff']:.1e}")


# ---------------------------------------------------------------- compare and determinism
# the from-scratch samplers in `compare`: name -> (sampler, η)
OURS = {"ddpm": ("ddpm", 0.0), "ddim eta=0": ("ddim", 0.0), "ddim eta=0.5": ("ddim", 0.5), "ddim eta=1": ("ddim", 1.0)}


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
    """The grid, the determinism pair beside it (_determinism.png) and the JSON result (.json),
    written together once all of them are computed."""
    pipe.set_progress_bar_config(disable=True)
    samplers = {name: our_sampler(pipe, *OURS[name], guidance) for name in OURS}
    samplers |= {name: sd_generate.scheduler_sampler(pipe, name, guidance) for name in schedulers}
    cells, tiles, labels = sd_generate.compare(samplers, prompt, seed, steps_list, n, Judge())
    steps = steps_list[len(steps_list) // 2]
    diffs, images = determinism(pipe, prompt, seed, steps, guidance)
    out = Path(out)
    pair_out = out.with_name(out.stem + "_determinism.png")
    result = {
        "prompt": prompt,
        "seed": seed,
        "n": n,
        "guidance": guidance,
        "schedulers": list(samplers),
        "steps": steps_list,
        "cells": cells,
        "grid": str(out),
        "determinism": {"steps": steps, "max_pixel_diff": diffs, "picture": str(pair_out)},
    }
    pair_labels = [f"{name}, noise draw {k}" for name in ("DDIM eta=0", "DDPM") for k in (1, 2)]
    with cli.atomic_paths(out, pair_out, cli.beside(out, ".json")) as (grid_file, pair_file, json_file):
        viz.image_grid(tiles, labels, grid_file, cols=len(steps_list))
        viz.image_grid(images, pair_labels, pair_file)
        cli.write_json(result, json_file)
    return result


def print_compare(result):
    sd_generate.print_compare(result)
    d = result["determinism"]
    print(
        f"\nsame seed, two draws of the step noise ({d['steps']} steps): max pixel difference "
        + ", ".join(f"{name} {diff}" for name, diff in d["max_pixel_diff"].items())
        + f"\n(DDIM eta=0 adds no noise: one path from x_T; DDPM adds fresh noise every step) {d['picture']}"
    )


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
    curves = {name: snr(alphas_cumprod(c)).log10().tolist() for name, c in configs.items()}
    grid, snr_plot = Path(out), Path(out).with_name(Path(out).stem + "_snr.png")
    with cli.atomic_paths(grid, snr_plot) as (grid_file, snr_file):  # the two pictures appear together
        viz.image_grid(tiles, labels, grid_file, cols=len(FORWARD_T))
        viz.lines(curves, snr_file, "signal-to-noise ratio ᾱ/(1-ᾱ) of each schedule", "timestep t", "log10 SNR")
    table = {
        name: {str(s): float(f"{float(snr(alphas_cumprod(c))[s]):.4g}") for s in FORWARD_T}
        for name, c in configs.items()
    }
    return {
        "image": str(image_path),
        "timesteps": list(FORWARD_T),
        "snr": table,
        "grid": str(grid),
        "snr_plot": str(snr_plot),
    }


def print_forward(result):
    print("SNR = ᾱ/(1-ᾱ) at each t (1: as much signal as noise)")
    print(f"{'schedule':<20}" + "".join(f"{f't={t}':>11}" for t in result["timesteps"]))
    for name, row in result["snr"].items():
        print(f"{name:<20}" + "".join(f"{v:>11.4g}" for v in row.values()))
    print(f"\nx_0 -> x_t: {result['grid']}\nSNR curves: {result['snr_plot']}")


# ---------------------------------------------------------------- command line
def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.diffusion_lab", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove the schedules and the DDPM / DDIM loops equal to diffusers")
    mistakes = sub.add_parser(
        "mistakes", help="run check's loops with each named mistake swapped into the steps: which checks fail"
    )
    one = sub.add_parser("sample", help="the from-scratch loop on the tiny SD vs the pipeline's image")
    one.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    one.add_argument(
        "--eta",
        type=cli.Number(minimum=0, maximum=1),
        default=0.0,
        help="DDIM's noise: 0 (default) none, 1 as much as DDPM",
    )
    one.add_argument(
        "--steps", type=cli.Count(1, 10_000), default=25, help=f"denoising steps; {STEPS_HELP} (default 25)"
    )
    one.add_argument("--out", type=cli.OutFile(".png"), default=str(OUT / "sample.png"), help="PNG to write")
    grid = sub.add_parser("compare", help="DDPM vs DDIM (η 0, 0.5, 1) vs week-3 schedulers x step counts")
    grid.add_argument(
        "--step-counts", nargs="+", type=cli.Count(1, 10_000), default=[10, 25, 50, 100], help=f"each {STEPS_HELP}"
    )
    grid.add_argument(
        "--schedulers",
        nargs="+",
        choices=list(sd_generate.SCHEDULERS),
        default=["dpmsolver", "euler", "euler_a", "pndm"],
        help="week-3 schedulers beside ours",
    )
    grid.add_argument(
        "--n", type=cli.Count(1, 100), default=4, help="images per cell for the fidelity score, up to 100 (default 4)"
    )
    grid.add_argument(
        "--out",
        type=cli.OutFile(".png"),
        default=str(OUT / "compare.png"),
        help="grid PNG; the JSON result and the determinism pair are written beside it",
    )
    for p in (one, grid):
        p.add_argument(
            "--prompt",
            type=cli.Text(),
            required=True,
            help="what to draw; a prompt longer than the text encoder reads (32 tokens for tiny) is refused",
        )
        p.add_argument("--seed", type=cli.Seed(), default=0, help="noise seed (default 0)")
        p.add_argument(
            "--guidance",
            type=cli.Number(minimum=0, maximum=50),
            default=5.0,
            help="classifier-free guidance scale, 0 to 50 (default 5)",
        )
    noising = sub.add_parser("forward", help="x_0 -> x_t over t for each schedule, and SNR curves")
    noising.add_argument("--image", type=cli.InImage(), required=True, help="a PNG or JPEG file")
    noising.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    noising.add_argument("--seed", type=cli.Seed(), default=0, help="noise seed (default 0)")
    noising.add_argument(
        "--out",
        type=cli.OutFile(".png"),
        default=str(OUT / "forward.png"),
        help="grid PNG; _snr.png is written beside it",
    )
    for p in (check, mistakes, one, grid, noising):
        p.add_argument(
            "--model",
            type=cli.Model("sd"),
            default="tiny",
            help="a Stable Diffusion pipeline: 'tiny', a hub id or a folder",
        )
        p.add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in ("sample", "compare"):  # the prompt's length and the steps, from the configs
        steps = [args.steps] if args.command == "sample" else args.step_counts
        sd_generate.check_before_loading(args.model, {"--prompt": args.prompt}, steps)
    if args.command == "check":
        checks.emit(run_checks(args.model), args.json)
    elif args.command == "mistakes":
        result = run_mistakes(*pipeline_check_model(args.model))
        cli.emit(result, args.json, print_mistakes)
        if not all(m["failed"] for m in result["mistakes"]):  # a mistake no check notices: the checks fall short
            sys.exit(1)
    elif args.command == "sample":
        start = time.perf_counter()
        result = sample_command(
            zoo.load_sd(args.model, "cpu"),
            args.prompt,
            args.seed,
            args.steps,
            args.sampler,
            args.eta,
            args.guidance,
            args.out,
        )
        result["seconds"] = round(time.perf_counter() - start, 2)
        cli.emit(
            result,
            args.json,
            lambda r: print(
                f"from-scratch {r['sampler']} vs the pipeline: max pixel difference {r['max_pixel_diff']} "
                f"(0-255); picture: {r['picture']}"
            ),
        )
    elif args.command == "compare":
        result = compare(
            zoo.load_sd(args.model, "cpu"),
            args.prompt,
            args.seed,
            args.step_counts,
            args.n,
            args.guidance,
            args.schedulers,
            args.out,
        )
        cli.emit(result, args.json, print_compare)
    else:
        cli.emit(forward(args.image, args.out, args.schedules, args.model, args.seed), args.json, print_forward)


if __name__ == "__main__":
    cli.run(main)
