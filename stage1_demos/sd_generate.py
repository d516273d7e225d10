"""Week 3: Stable Diffusion with diffusers: text -> image, samplers, step counts, the latent
journey, and how the UNet's cross-attention ties words to places.

    python -m stage1_demos.sd_generate generate --prompt "a large red circle in the top left" --n 4
    python -m stage1_demos.sd_generate compare --prompt "a large red circle in the top left" --seed 0
    python -m stage1_demos.sd_generate explain --prompt "a large red circle in the top left"
    python -m stage1_demos.sd_generate attention --prompt "a large red circle in the top left" --token red
    python -m stage1_demos.sd_generate eval --split test

--model tiny (default) is the bundled data/models/tiny-sd, trained on ShapesWorld: 64 px images,
8x8x4 latents, prompts in ShapesWorld's words ("a small blue square in the bottom right and ...").
Any SD 1.x / 2.x hub id or pipeline folder works the same way, e.g.
--model stable-diffusion-v1-5/stable-diffusion-v1-5 (512 px; download it first, on a GPU ideally).
Prompt fidelity is judged by the bundled tiny CLIP, so it is only meaningful for ShapesWorld prompts.
"""

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.models.attention_processor import AttnProcessor
from tqdm import tqdm
from transformers import CLIPTokenizer

from curriculum import cli, shapesworld, viz, zoo
from stage1_demos.fidelity import Judge, fidelity

# name -> (scheduler class, settings on top of the model's own scheduler config)
SCHEDULERS = {
    "dpmsolver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}
OUT = Path("outputs/week3")


def use_scheduler(pipe, name):
    """Swap the sampler, keeping the model's noise schedule. `from_config(pipe.scheduler.config)`
    carries the betas the model was trained with (and settings such as clip_sample=False); a bare
    `DDIMScheduler()` would use another schedule and produce noise-soaked images."""
    cls, settings = SCHEDULERS[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **settings)
    return pipe


def check_before_loading(model, texts, step_counts):
    """Refuse what the model cannot do from its tokenizer and scheduler config, before the weights
    load: a prompt longer than the text encoder's positions (refused rather than cut, so that the
    image is of the whole prompt), or more steps than the noise schedule has (as diffusers spaces them).
    texts: {argument name: its text}."""
    path = zoo.resolve(model, "sd")
    # CLIPTokenizer, as the pipeline loads it: AutoTokenizer first looks for a config.json, which a hub
    # pipeline's tokenizer/ folder lacks, and fails offline even when the checkpoint is in the cache
    tokenizer = zoo.from_pretrained(CLIPTokenizer, path, subfolder="tokenizer")
    for name, text in texts.items():
        tokens = len(tokenizer(text, verbose=False).input_ids)  # with the start and end tokens
        if tokens > tokenizer.model_max_length:
            raise cli.UserError(
                f"{name} is {tokens} tokens and this model's text encoder reads {tokenizer.model_max_length} "
                "(start and end included): shorten it"
            )
    schedule = zoo.from_pretrained(DDIMScheduler, path, subfolder="scheduler")
    last = schedule.config.num_train_timesteps - 1
    for steps in step_counts:
        too_many = steps > last + 1
        if not too_many:  # "leading" spacing shifted by steps_offset can pass the last timestep: an IndexError
            schedule.set_timesteps(steps)
            too_many = int(schedule.timesteps.max()) > last
        if too_many:
            offset = schedule.config.steps_offset
            raise cli.UserError(
                f"{steps} steps would start past timestep {last}, the last this model was trained on (its "
                f"schedule adds steps_offset {offset}): use at most {last + 1 - offset}"
            )


@torch.no_grad()
def generate(
    pipe, prompts, steps=25, scheduler="dpmsolver", guidance=5.0, seeds=(0,), negative_prompt=None, on_step=None
):
    """One image per (prompt, seed) pair. Image i starts from the noise of its own generator seeded
    with seeds[i], so it is the same whatever else is in the batch. on_step(done, total) is called
    after each denoising step (a progress bar: the web app's)."""
    use_scheduler(pipe, scheduler)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    negative = None if negative_prompt is None else [negative_prompt] * len(prompts)

    def step_end(pipe, step, timestep, tensors):  # diffusers' callback_on_step_end: must hand the tensors back
        on_step(step + 1, pipe.num_timesteps)
        return tensors

    return pipe(
        list(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance,
        negative_prompt=negative,
        generator=generators,
        callback_on_step_end=step_end if on_step else None,
    ).images


def generate_command(pipe, prompt, negative_prompt, steps, scheduler, guidance, seed, n, out):
    start = time.perf_counter()
    images = generate(pipe, [prompt] * n, steps, scheduler, guidance, range(seed, seed + n), negative_prompt)
    seconds = time.perf_counter() - start
    out = Path(out)
    paths = [out.with_name(f"{out.stem}_{i}.png") for i in range(n)]
    with cli.atomic_paths(out, *paths) as (grid, *singles):  # the grid and its images appear together
        for image, path in zip(images, singles):
            image.save(path)
        viz.image_grid(images, [f"seed {seed + i}" for i in range(n)], grid)
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "scheduler": scheduler,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "seconds": round(seconds, 3),
        "grid": str(out),
        "images": [str(p) for p in paths],
    }


# ---------------------------------------------------------------- compare
def scheduler_sampler(pipe, name, guidance):
    """A sampler for `compare`: (prompts, steps, seeds) -> images, through the pipeline and a scheduler."""
    return lambda prompts, steps, seeds: generate(pipe, prompts, steps, name, guidance, seeds)


def compare(samplers, prompt, seed, steps_list, n, judge):
    """Every sampler ({name: (prompts, steps, seeds) -> images}) x step count from the same seeds:
    the first image of each cell in a grid, seconds per image, and the tiny CLIP's verdict on all n
    images of the cell."""
    cells, tiles, labels = [], [], []
    next(iter(samplers.values()))([prompt], 2, [seed])  # warm-up, so the first cell's time is fair
    for name, sample in tqdm(samplers.items(), desc="samplers"):
        for steps in steps_list:
            start = time.perf_counter()
            images = sample([prompt] * n, steps, range(seed, seed + n))
            seconds = (time.perf_counter() - start) / n
            score = fidelity(judge(images, [prompt] * n))
            cells.append({"scheduler": name, "steps": steps, "seconds_per_image": round(seconds, 4), "fidelity": score})
            tiles.append(images[0])
            labels.append(
                f"{name} {steps} steps, {seconds:.2f} s/img, colour {share(score['color'])} "
                f"shape {share(score['shape'])}"
            )
    return cells, tiles, labels


def share(value):
    """A fidelity share for people; n/a when the prompt names no ShapesWorld object to judge."""
    return "n/a" if value is None else f"{value:.2f}"


def print_compare(result):
    print(
        f"prompt {result['prompt']!r}, seeds {result['seed']}..{result['seed'] + result['n'] - 1}; "
        "each cell: colour / shape right (tiny CLIP), seconds per image"
    )
    width = max(10, *(len(name) + 1 for name in result["schedulers"]))
    print(f"{'scheduler':<{width}}" + "".join(f"{f'{s} steps':>22}" for s in result["steps"]))
    for name in result["schedulers"]:
        row = [c for c in result["cells"] if c["scheduler"] == name]
        print(
            f"{name:<{width}}"
            + "".join(
                f"{share(c['fidelity']['color']):>6} / {share(c['fidelity']['shape']):<4}"
                f"{c['seconds_per_image']:>9.3f}s"
                for c in row
            )
        )
    if result.get("grid"):
        print(f"grid (rows: schedulers, columns: steps): {result['grid']}")


# ---------------------------------------------------------------- explain
# Stable Diffusion 1.5's sizes, from its configs: CLIP ViT-L/14 text tower, 512 px, f = 8, 4 latent channels.
SD15 = {"max_tokens": 77, "text_hidden": 768, "latent_channels": 4, "latent_size": 64, "vae_factor": 8}


def model_sizes(pipe):
    return {
        "max_tokens": pipe.tokenizer.model_max_length,
        "text_hidden": pipe.text_encoder.config.hidden_size,
        "latent_channels": pipe.unet.config.in_channels,
        "latent_size": pipe.unet.config.sample_size,
        "vae_factor": pipe.vae_scale_factor,
    }


def journey_shapes(m):
    """(stage, shape) for one prompt and one image with classifier-free guidance, from sizes alone."""
    latent = (m["latent_channels"], m["latent_size"], m["latent_size"])
    side = m["latent_size"] * m["vae_factor"]
    return [
        ("token ids (padded)", cli.shape_text(1, m["max_tokens"])),
        ("text embeddings (cond + uncond)", cli.shape_text(2, m["max_tokens"], m["text_hidden"])),
        ("initial latent noise", cli.shape_text(1, *latent)),
        ("UNet input (latent twice)", cli.shape_text(2, *latent)),
        ("UNet output: predicted noise", cli.shape_text(2, *latent)),
        ("latent after the last step", cli.shape_text(1, *latent)),
        ("VAE decode: image", cli.shape_text(1, 3, side, side)),
    ]


@torch.no_grad()
def explain(pipe, prompt, steps, guidance, seed):
    """The pipeline's loop written out (DDIM, classifier-free guidance), recording real shapes and
    the model's current guess of the clean image x0 at every step."""
    device = pipe.device
    tokenizer, scheduler = pipe.tokenizer, DDIMScheduler.from_config(pipe.scheduler.config)
    ids = tokenizer(
        [prompt, ""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    text = pipe.text_encoder(ids).last_hidden_state  # [cond, uncond]
    size = pipe.unet.config.sample_size
    latents = torch.randn(
        (1, pipe.unet.config.in_channels, size, size), generator=torch.Generator("cpu").manual_seed(seed)
    ).to(device, text.dtype)
    initial = latents * scheduler.init_noise_sigma
    latents = initial
    scheduler.set_timesteps(steps, device=device)
    guesses = []
    for t in scheduler.timesteps:
        unet_in = torch.cat([latents, latents])
        noise_cond, noise_uncond = pipe.unet(unet_in, t, encoder_hidden_states=text).sample.chunk(2)
        # classifier-free guidance: eps = eps_uncond + w (eps_cond - eps_uncond)
        noise = noise_uncond + guidance * (noise_cond - noise_uncond)
        out = scheduler.step(noise, t, latents)
        latents = out.prev_sample
        guesses.append((int(t), out.pred_original_sample))
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    real = [ids[:1], text, initial, unet_in, torch.cat([noise_cond, noise_uncond]), latents, image]
    stages = [
        {"stage": name, "shape": cli.shape_text(*t.shape), "from_config": cfg, "sd15": ref}
        for t, (name, cfg), (_, ref) in zip(real, journey_shapes(model_sizes(pipe)), journey_shapes(SD15))
    ]
    decode = [
        pipe.image_processor.postprocess(pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample)[0]
        for _, x0 in guesses
    ]
    tokens = tokenizer.convert_ids_to_tokens(ids[0][ids[0] != tokenizer.pad_token_id])
    return {
        "prompt": prompt,
        "tokens": tokens,
        "steps": steps,
        "timesteps": [t for t, _ in guesses],
        "stages": stages,
    }, decode


def print_explain(result, model_name):
    print(f"prompt {result['prompt']!r} -> {len(result['tokens'])} tokens {result['tokens']}")
    print(f"\n{'stage':<34} {model_name:<16} {'SD 1.5':<16}")
    for s in result["stages"]:
        print(f"{s['stage']:<34} {s['shape']:<16} {s['sd15']:<16}")
    print(f"\nDDIM timesteps ({result['steps']} steps): {result['timesteps']}")
    print(JOURNEY_NOTE)
    if result.get("picture"):
        print(f"the model's guess of the final image at each step: {result['picture']}")


JOURNEY_NOTE = """
Why latents: the UNet never sees pixels. The VAE squeezes each 8x8 pixel patch into one latent
position (f = 8), so SD 1.5 denoises 4x64x64 numbers instead of 3x512x512: 48 times fewer. Each step
the UNet predicts the noise in the current latent, twice (with the prompt and with the empty prompt,
for guidance); the scheduler turns that prediction into a slightly cleaner latent. Fewer steps mean
bigger jumps along the same path, which is why the picture changes with num_inference_steps."""


# ---------------------------------------------------------------- attention
class RecordCrossAttention(AttnProcessor):
    """diffusers' plain attention processor, with cross-attention written out so that its
    probabilities can be read: softmax(Q K^T / sqrt(d)), Q from the latent pixels, K from the tokens.
    Each call appends to `maps` how much every pixel of the prompted half of the batch attended to
    the tokens at `positions` (averaged over heads): small, even for SD 1.5's 4096 pixels x 77 tokens."""

    def __init__(self, positions, maps):
        super().__init__()
        self.positions, self.maps = positions, maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:  # self-attention: nothing to record
            return super().__call__(attn, hidden_states, None, attention_mask, temb)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (batch*heads, H*W, d): one per latent pixel
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (batch*heads, tokens, d)
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # each pixel's softmax over the tokens
        # with guidance the pipeline batches [unprompted, prompted]; the prompted one is last either way
        prompted = probs.view(-1, attn.heads, *probs.shape[1:])[-1]
        self.maps.append(prompted[:, :, self.positions].sum(-1).mean(0).float().cpu())
        out = attn.batch_to_head_dim(torch.bmm(probs, value))  # each pixel takes a mix of token values
        return attn.to_out[1](attn.to_out[0](out))


def token_positions(tokenizer, prompt, word):
    """Indices (after the start token) of `word`'s tokens in the tokenized prompt."""
    prompt_ids = tokenizer(prompt, truncation=True).input_ids
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    for i in range(len(prompt_ids) - len(word_ids) + 1):
        if word_ids and prompt_ids[i : i + len(word_ids)] == word_ids:
            return list(range(i, i + len(word_ids)))
    words = [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(prompt_ids[1:-1])]
    raise cli.UserError(f"the token {word!r} is not in the prompt; its tokens are: {', '.join(words)}")


@torch.no_grad()
def attention_maps(pipe, prompt, word, steps, guidance, seed, scheduler="dpmsolver", on_step=None):
    """(image, {side: map}, overall map): how much each latent pixel attended to `word`, averaged
    over heads, the layers of each resolution and all steps; overall = all resolutions, upsampled."""
    positions = token_positions(pipe.tokenizer, prompt, word)
    maps, default = [], pipe.unet.attn_processors
    pipe.unet.set_attn_processor({name: RecordCrossAttention(positions, maps) for name in default})
    try:
        image = generate(pipe, [prompt], steps, scheduler, guidance, [seed], on_step=on_step)[0]
    finally:
        pipe.unet.set_attn_processor(default)
    by_resolution = {}
    for heat in maps:
        side = int(heat.numel() ** 0.5)
        by_resolution.setdefault(side, []).append(heat.view(side, side))
    by_resolution = {side: torch.stack(h).mean(0) for side, h in sorted(by_resolution.items(), reverse=True)}
    top = max(by_resolution)
    overall = torch.stack(
        [F.interpolate(h[None, None], size=(top, top), mode="bilinear")[0, 0] for h in by_resolution.values()]
    ).mean(0)
    return image, by_resolution, overall


def attention_picture(image, by_resolution, overall, prompt, token, out):
    """{label: map} of `attention_maps`' maps, each layer resolution and all of them upsampled, and the
    image with each map laid over it, written to `out`."""
    maps = {f"{side}x{side} layers": heat for side, heat in by_resolution.items()}
    maps["all layers, upsampled"] = overall
    picture = viz.heatmap_overlays(
        image, [(label, heat.numpy()) for label, heat in maps.items()], out, f"cross-attention to {token!r}: {prompt}"
    )
    return maps, picture


def quadrant_shares(heat):
    """Share of the map's mass in each ShapesWorld position."""
    side = heat.shape[0] // 2
    mass = {
        p: heat[int(fy > 0.5) * side : (int(fy > 0.5) + 1) * side, int(fx > 0.5) * side : (int(fx > 0.5) + 1) * side]
        .sum()
        .item()
        for p, ((fx, fy), _) in shapesworld.POSITIONS.items()
    }
    total = sum(mass.values())
    return {p: round(m / total, 3) for p, m in mass.items()}


def print_attention(result):
    print(f"share of the attention to {result['token']!r} in each quadrant:")
    for label, shares in result["quadrant_shares"].items():
        print(f"  {label:<24}" + "  ".join(f"{p} {v:.2f}" for p, v in shares.items()))
    print(f"picture: {result['picture']}")


# ---------------------------------------------------------------- eval
def evaluate(
    pipe, split="test", n=200, steps=25, scheduler="dpmsolver", guidance=5.0, seed=0, batch_size=50, judge=None
):
    """Generate one image per caption of the split (seed + i for caption i) and judge every asked
    object; fidelity overall and split by whether the object's colour-shape pair was seen in training."""
    judge = judge or Judge()
    samples = shapesworld.generate(split, n)
    prompts = [s.caption_en for s in samples]
    pipe.set_progress_bar_config(disable=True)
    images, records = [], []
    for i in tqdm(range(0, n, batch_size), desc=f"generate {split} prompts"):
        batch_prompts = prompts[i : i + batch_size]
        seeds = range(seed + i, seed + i + len(batch_prompts))
        batch = generate(pipe, batch_prompts, steps, scheduler, guidance, seeds)
        records += [{**r, "image": r["image"] + i} for r in judge(batch, batch_prompts)]
        images += batch
    pipe.set_progress_bar_config(disable=False)
    objects_in_prompt = [len(samples[r["image"]].objects) for r in records]
    result = {
        "split": split,
        "prompts": n,
        "scheduler": scheduler,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "fidelity": fidelity(records),
        "seen_pairs": fidelity([r for r in records if not r["heldout"]]),
        "heldout_pairs": fidelity([r for r in records if r["heldout"]]),
        "one_object_prompts": fidelity([r for r, k in zip(records, objects_in_prompt) if k == 1]),
        "two_object_prompts": fidelity([r for r, k in zip(records, objects_in_prompt) if k == 2]),
    }
    return result, images, prompts


def print_eval(result):
    print(
        f"{result['prompts']} {result['split']} prompts, {result['scheduler']} {result['steps']} steps, "
        f"guidance {result['guidance']}; share of asked objects the tiny CLIP sees right:"
    )
    print(f"{'objects':<22}{'n':>6}{'colour':>9}{'shape':>8}{'both':>8}")
    for key in ("fidelity", "seen_pairs", "heldout_pairs", "one_object_prompts", "two_object_prompts"):
        f = result[key]
        if f["objects"]:
            print(
                f"{key.replace('fidelity', 'all'):<22}{f['objects']:>6}{f['color']:>9.3f}{f['shape']:>8.3f}"
                f"{f['both']:>8.3f}"
            )


# ---------------------------------------------------------------- command line
STEPS = cli.Count(1, 10_000)  # and at most the model's training timesteps (check_before_loading)
GUIDANCE = cli.Number(minimum=0, maximum=50)


def add_sampling_args(p, steps=25):
    p.add_argument(
        "--prompt",
        type=cli.Text(),
        required=True,
        help="what to draw; a prompt longer than the text encoder reads (32 tokens for tiny, 77 for SD) is refused",
    )
    if steps:  # compare takes --step-counts instead
        p.add_argument(
            "--steps",
            type=STEPS,
            default=steps,
            help=f"denoising steps (default {steps}), up to the model's training timesteps less its steps_offset "
            "(999 for tiny and SD 1.5)",
        )
    p.add_argument(
        "--guidance", type=GUIDANCE, default=5.0, help="classifier-free guidance scale w, 0 to 50 (default 5)"
    )
    p.add_argument("--seed", type=cli.Seed(), default=0, help="noise seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    cli.add_model_args(p, "sd")


def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.sd_generate", description=__doc__, formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    schedulers = list(SCHEDULERS)

    p = sub.add_parser("generate", help="text -> images", description="Generate --n images from one prompt.")
    add_sampling_args(p)
    p.add_argument(
        "--negative-prompt",
        type=cli.Text(blank=True),
        help="what to steer away from (replaces the empty prompt of guidance)",
    )
    p.add_argument("--scheduler", choices=schedulers, default="dpmsolver", help="sampler (default dpmsolver)")
    p.add_argument(
        "--n", type=cli.Count(1, 64), default=4, help="images, seeds seed..seed+n-1, one batch (default 4, up to 64)"
    )
    p.add_argument(
        "--out",
        type=cli.OutFile(".png"),
        default=str(OUT / "generate.png"),
        help="grid PNG; the images are saved beside it as NAME_0.png ..., all written together at the end",
    )

    p = sub.add_parser("compare", help="schedulers x step counts from one seed, judged by the tiny CLIP")
    add_sampling_args(p, steps=None)
    p.add_argument(
        "--schedulers",
        nargs="+",
        choices=schedulers,
        default=["dpmsolver", "ddim", "euler", "pndm"],
        help="samplers to compare (default dpmsolver ddim euler pndm)",
    )
    p.add_argument(
        "--step-counts",
        nargs="+",
        type=STEPS,
        default=[5, 10, 25, 50],
        help="step counts to compare (default 5 10 25 50), each up to 999 (as --steps)",
    )
    p.add_argument(
        "--n",
        type=cli.Count(1, 64),
        default=4,
        help="images per cell for the fidelity score (default 4, up to 64)",
    )
    p.add_argument("--out", type=cli.OutFile(".png"), default=str(OUT / "compare.png"), help="grid PNG")

    p = sub.add_parser("explain", help="the journey tokens -> text embeddings -> latents -> UNet -> VAE, with shapes")
    add_sampling_args(p, steps=10)
    p.add_argument(
        "--out",
        type=cli.OutFile(".png"),
        default=str(OUT / "journey.png"),
        help="PNG of the model's x0 guess at each step",
    )

    p = sub.add_parser("attention", help="cross-attention maps of one prompt token over the image")
    add_sampling_args(p)
    p.add_argument("--token", type=cli.Text(), required=True, help="a word of the prompt, e.g. red")
    p.add_argument("--out", type=cli.OutFile(".png"), default=str(OUT / "attention.png"), help="PNG")

    p = sub.add_parser("eval", help="prompt fidelity over a ShapesWorld split (the quality test)")
    p.add_argument("--split", choices=list(shapesworld.SPLITS), default="test", help="which split (default test)")
    p.add_argument("--n", type=cli.Count(1, 10_000), default=200, help="prompts (default 200, up to 10,000)")
    p.add_argument(
        "--steps", type=STEPS, default=25, help="denoising steps (default 25), up to 999 (as generate --steps)"
    )
    p.add_argument("--scheduler", choices=schedulers, default="dpmsolver", help="sampler (default dpmsolver)")
    p.add_argument("--guidance", type=GUIDANCE, default=5.0, help="guidance scale, 0 to 50 (default 5)")
    p.add_argument("--seed", type=cli.Seed(), default=0, help="noise seed of the first prompt (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--out",
        type=cli.OutFile(".json"),
        help="also write the result JSON here, and a grid of the first 16 images beside it (.png)",
    )
    cli.add_model_args(p, "sd")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    texts = {} if args.command == "eval" else {"--prompt": args.prompt}  # eval's: ShapesWorld captions, which fit
    if args.command == "generate" and args.negative_prompt:
        texts["--negative-prompt"] = args.negative_prompt
    check_before_loading(args.model, texts, args.step_counts if args.command == "compare" else [args.steps])
    pipe = zoo.load_sd(args.model, args.device)
    if args.command == "generate":
        result = generate_command(
            pipe,
            args.prompt,
            args.negative_prompt,
            args.steps,
            args.scheduler,
            args.guidance,
            args.seed,
            args.n,
            args.out,
        )
        cli.emit(
            result,
            args.json,
            lambda r: print(
                f"{len(r['images'])} images in {r['seconds']:.1f} s ({r['scheduler']}, {r['steps']} steps): {r['grid']}"
            ),
        )
    elif args.command == "compare":
        pipe.set_progress_bar_config(disable=True)
        samplers = {name: scheduler_sampler(pipe, name, args.guidance) for name in args.schedulers}
        cells, tiles, labels = compare(samplers, args.prompt, args.seed, args.step_counts, args.n, Judge())
        grid = viz.image_grid(tiles, labels, args.out, cols=len(args.step_counts))
        result = {
            "prompt": args.prompt,
            "seed": args.seed,
            "n": args.n,
            "guidance": args.guidance,
            "schedulers": args.schedulers,
            "steps": args.step_counts,
            "cells": cells,
            "grid": str(grid),
        }
        cli.emit(result, args.json, print_compare)
    elif args.command == "explain":
        result, guesses = explain(pipe, args.prompt, args.steps, args.guidance, args.seed)
        result["picture"] = str(
            viz.image_grid(guesses, [f"step {i + 1}: t={t}" for i, t in enumerate(result["timesteps"])], args.out)
        )
        cli.emit(result, args.json, lambda r: print_explain(r, args.model))
    elif args.command == "attention":
        image, by_resolution, overall = attention_maps(
            pipe, args.prompt, args.token, args.steps, args.guidance, args.seed
        )
        maps, picture = attention_picture(image, by_resolution, overall, args.prompt, args.token, args.out)
        result = {
            "prompt": args.prompt,
            "token": args.token,
            "seed": args.seed,
            "steps": args.steps,
            "resolutions": list(by_resolution),
            "quadrant_shares": {label: quadrant_shares(heat) for label, heat in maps.items() if heat.shape[0] >= 2},
            "picture": str(picture),
        }
        cli.emit(result, args.json, print_attention)
    else:
        result, images, prompts = evaluate(
            pipe, args.split, args.n, args.steps, args.scheduler, args.guidance, args.seed
        )
        if args.out:
            with cli.atomic_paths(args.out, cli.beside(args.out, ".png")) as (json_temp, grid_temp):  # together
                viz.image_grid(images[:16], prompts[:16], grid_temp)
                cli.write_json(result, json_temp)
        cli.emit(result, args.json, print_eval)


if __name__ == "__main__":
    cli.run(main)
