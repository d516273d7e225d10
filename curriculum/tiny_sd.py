"""Train the bundled tiny Stable Diffusion: diffusers' own components, scaled down to ShapesWorld.

    prompt --CLIPTokenizer + CLIPTextModel (frozen)--> 32 x 64 text embeddings --------.
                                                                                        | cross-attention
    64x64x3 image --AutoencoderKL encoder (f = 8)--> 8x8x4 latent --+ noise--> UNet2DConditionModel --> noise
    64x64x3 image <--AutoencoderKL decoder-------- 8x8x4 latent <-- scheduler steps <--'

As in Stable Diffusion the text encoder is a CLIP text tower, frozen: here the bundled tiny CLIP's
(week 1). The VAE is trained first (reconstruction + a small KL term), then the UNet on its latents
with DDPM's noise-prediction loss, with 10% of prompts dropped to "" so that classifier-free
guidance has an unconditional model to push away from. Saved as a `StableDiffusionPipeline` folder
(no safety checker), which loads exactly like stable-diffusion-v1-5/stable-diffusion-v1-5.

    python -m curriculum.tiny_sd [--out outputs/train/tiny-sd] [--nproc 2] [--resume]   (docs/training.md)
    python -m curriculum.tiny_sd --out data/models/tiny-sd --force   (make tiny-models: replaces the bundled one)
"""

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextModel

from curriculum import OUTPUTS_DIR, cli, shapesworld, training, zoo

IMAGE_SIZE = 64
LATENT_SIZE = IMAGE_SIZE // 8  # SD's f = 8
# Stable Diffusion 1.x's training noise schedule: beta_t from 0.00085 to 0.012, linear in sqrt(beta).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
UNCONDITIONAL_SHARE = 0.1  # prompts replaced by "" in training: the model classifier-free guidance needs
# Shape pixels are ~10% of an image; weighting their reconstruction error makes the VAE spend its
# 8x8x4 numbers on the shapes' outlines, not on the flat background (unweighted, it blurs shapes).
FOREGROUND_WEIGHT = 10.0
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"
KL_WEIGHT = 1e-6  # as SD's VAE: just enough to keep the latent smooth and near N(0, 1)-sized


def build_vae(channels=(16, 16, 32, 32)):
    """SD's AutoencoderKL: four encoder blocks, three 2x downsamplings -> 64 px to 8x8, 4 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=8,
    )


def build_unet(cross_attention_dim, channels=(64, 128)):
    """SD's UNet2DConditionModel with two resolutions (8x8, 4x4), cross-attention to the text at both."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_scheduler():
    """SD 1.5's sampler config: PNDM on the SD schedule. clip_sample=False is part of it: other
    schedulers built `from_config` of this one would otherwise clip x0 to [-1, 1], which is
    right for pixels and wrong for latents (the images come out broken)."""
    scheduler = PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def to_vae_range(images):
    """uint8 NHWC -> float NCHW in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def foreground_weights(images):
    """Per-pixel loss weight: FOREGROUND_WEIGHT on shape pixels, 1 on the background."""
    background = torch.tensor(shapesworld.BACKGROUND).view(1, 3, 1, 1) / 127.5 - 1
    shape_pixels = ((images - background).abs().sum(dim=1, keepdim=True) > 0.2).float()
    return 1 + (FOREGROUND_WEIGHT - 1) * shape_pixels


class VAETraining(torch.nn.Module):
    """The VAE's training pass as one forward (DDP synchronises what goes through forward): encode,
    draw a latent, decode. The noise comes from outside, drawn for the global batch."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x, eps):
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * eps  # z = μ + σ·ε ~ q(z|x): reparameterised
        return self.vae.decode(z).sample, posterior.kl()


def train_vae(trainer, vae, images, config):
    """L = mean(w * |decode(z) - x|) + KL_WEIGHT * KL(q(z|x) || N(0, I)), z ~ q(z|x)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    model, optimizer = trainer.prepare(VAETraining(vae), optimizer, training.warmup_cosine(optimizer, config.vae_steps))
    for _ in trainer.steps(config.vae_steps):
        x = to_vae_range(images[trainer.rng.choice(len(images), config.vae_batch_size, replace=False)])
        eps = torch.randn(config.vae_batch_size, 4, LATENT_SIZE, LATENT_SIZE)  # every process: the whole batch's
        for rows in trainer.micro_batches(config.vae_batch_size):
            reconstruction, kl = model(x[rows].to(trainer.device), eps[rows].to(trainer.device))
            target = x[rows].to(trainer.device)
            loss = (foreground_weights(target) * (reconstruction.float() - target).abs()).mean() + KL_WEIGHT * kl.mean()
            trainer.backward(loss)
    return trainer.unwrap().vae.eval().requires_grad_(False)


@torch.no_grad()
def encode(trainer, vae, images, batch_size=256):
    """Latents of every image, drawn once from q(z|x), unscaled (every process encodes them all)."""
    with trainer.accelerator.autocast():
        chunks = [
            vae.encode(to_vae_range(images[i : i + batch_size]).to(trainer.device)).latent_dist.sample().float()
            for i in tqdm(
                range(0, len(images), batch_size),
                desc="encode latents",
                disable=not (trainer.is_main and trainer.options.progress),
            )
        ]
    return torch.cat(chunks)


def min_snr_weight(noise_schedule, t, gamma=MIN_SNR_GAMMA):
    """Min-SNR-gamma loss weight for noise prediction: min(SNR_t, gamma) / SNR_t, SNR_t = abar_t / (1 - abar_t).
    Nearly clean latents (high SNR) are easy and pull the gradient their own way; capping their
    weight lets the noisy steps, where layout and colours are decided, be learned sooner."""
    alpha_bar = noise_schedule.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def train_unet(trainer, unet, text_encoder, tokenizer, latents, objects, config):
    """DDPM's noise-prediction loss, Min-SNR weighted:
    L = w_t || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, text) ||^2."""
    noise_schedule = DDPMScheduler(**SD_SCHEDULE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    unet, optimizer = trainer.prepare(unet, optimizer, training.warmup_cosine(optimizer, config.steps))
    text_encoder = text_encoder.to(trainer.device)
    for _ in trainer.steps(config.steps):
        idx = trainer.rng.choice(len(latents), config.batch_size, replace=False)
        prompts = [
            ""
            if trainer.rng.random() < UNCONDITIONAL_SHARE
            else shapesworld.caption_en(objects[i], int(trainer.rng.integers(len(shapesworld.EN_TEMPLATES))))
            for i in idx
        ]
        # every process draws the whole batch's noise and times, and keeps its rows
        eps = torch.randn(config.batch_size, *latents.shape[1:])
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (config.batch_size,))
        for rows in trainer.micro_batches(config.batch_size):
            # the pipeline pads every prompt to the tokenizer's full length, so training does too
            ids = tokenizer(
                prompts[rows],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(trainer.device)
            with torch.no_grad():
                text = text_encoder(ids).last_hidden_state
            z0, noise, steps = (x.to(trainer.device) for x in (latents[idx[rows]], eps[rows], t[rows]))
            prediction = unet(noise_schedule.add_noise(z0, noise, steps), steps, encoder_hidden_states=text).sample
            per_sample = (prediction.float() - noise).pow(2).mean(dim=(1, 2, 3))
            trainer.backward((min_snr_weight(noise_schedule, steps) * per_sample).mean())
    return trainer.unwrap()


def frozen_text_encoder(clip):
    """The tiny CLIP's text tower as a standalone CLIPTextModel, as SD ships OpenAI CLIP's."""
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())  # transformers 5: no .text_model wrapper
    return text_encoder.eval().requires_grad_(False)


@dataclass(frozen=True)
class Config:
    """What is learnt (a resumed checkpoint must match it): the VAE first, then the UNet on its latents."""

    vae_steps: int = 1500
    # UNet steps. 2,200 of 64 beat 1,100 of 128 in the same time (colour right 0.97 vs 0.85), but
    # remade with other random draws it gave 0.87; that model trained 1,100 steps more gave 0.96:
    # 2,200 was short of converged, and the two-object prompts paid for it.
    steps: int = 4000
    vae_batch_size: int = 64
    batch_size: int = 64  # UNet batch
    pool: int = 30_000
    seed: int = 0


def train(out, config=Config(), options=training.Options()):
    # bf16 pays for the VAE's convolutions on AVX512-BF16 CPUs; the UNet's small matmuls run slower
    # in bf16 there (measured 0.77 vs 1.19 s/step), so it trains in fp32 on CPUs
    vae_trainer = training.Trainer(
        "tiny-sd/vae", out, config, options, batch_size=config.vae_batch_size, bf16_on_cpu=True
    )
    clip, processor = zoo.load_clip("tiny", device="cpu")
    text_encoder = frozen_text_encoder(clip)
    data = shapesworld.generate(
        "train", config.pool, seed=config.seed, size=IMAGE_SIZE, progress=vae_trainer.is_main and options.progress
    )
    images = np.stack([np.asarray(s.image) for s in data])

    vae = train_vae(vae_trainer, build_vae(), images, config)
    latents = encode(vae_trainer, vae, images)
    # SD's scaling factor (0.18215 for SD 1.x) makes the latents unit-variance, as the noise is
    vae.register_to_config(scaling_factor=round(1 / latents.std().item(), 5))
    latents = latents * vae.config.scaling_factor

    unet_trainer = training.Trainer("tiny-sd/unet", out, config, options)
    unet = train_unet(
        unet_trainer,
        build_unet(text_encoder.config.hidden_size),
        text_encoder,
        processor.tokenizer,
        latents,
        [s.objects for s in data],
        config,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=processor.tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    vae_losses = vae_trainer.progress.losses
    unet_trainer.save(
        [pipe],
        "tiny SD UNet: noise-prediction MSE",
        curves=[("vae_loss.png", vae_losses, "tiny SD VAE: weighted L1 + KL")],
        vae_final_loss=float(np.mean(vae_losses[-50:])),
        scaling_factor=vae.config.scaling_factor,
        vae_precision=vae_trainer.precision,
        vae_train_minutes=vae_trainer.record()["train_minutes"],
    )
    return unet_trainer


def build_parser():
    p = training.parser(
        __doc__, OUTPUTS_DIR / "train" / "tiny-sd", Config, "UNet batch", prog="python -m curriculum.tiny_sd"
    )
    p.add_argument(
        "--vae-steps",
        type=cli.Count(1, training.MAX_STEPS),
        default=Config.vae_steps,
        help=f"VAE optimiser steps, up to {training.MAX_STEPS:,} (default {Config.vae_steps})",
    )
    return p


def config_from_args(args):
    """The Config a command line asks for (provenance checks what `make tiny-models` would train)."""
    return Config(
        vae_steps=args.vae_steps, steps=args.steps, batch_size=args.batch_size, pool=args.pool, seed=args.seed
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    train(
        args.out,
        config_from_args(args),
        training.Options.from_args(args, __spec__.name, argv),
    )


if __name__ == "__main__":
    cli.run(main)
