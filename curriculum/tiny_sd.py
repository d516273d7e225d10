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

    python -m curriculum.tiny_sd --out data/models/tiny-sd      (or: make tiny-models)
"""
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextModel

from curriculum import MODELS_DIR, cli, runtime, shapesworld, training, viz, zoo

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
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
                         down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels),
                         block_out_channels=channels, layers_per_block=1, norm_num_groups=8)


def build_unet(cross_attention_dim, channels=(64, 128)):
    """SD's UNet2DConditionModel with two resolutions (8x8, 4x4), cross-attention to the text at both."""
    return UNet2DConditionModel(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=channels,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16)


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


def train_vae(vae, images, steps, batch_size, lr, rng, device):
    """L = mean(w * |decode(z) - x|) + KL_WEIGHT * KL(q(z|x) || N(0, I)), z ~ q(z|x)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = training.warmup_cosine(optimizer, steps)
    losses = []
    bar = tqdm(range(steps), desc="train tiny-sd VAE")
    for _ in bar:
        x = to_vae_range(images[rng.choice(len(images), batch_size, replace=False)]).to(device)
        with runtime.training_autocast(device):
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
        loss = (foreground_weights(x) * (reconstruction.float() - x).abs()).mean() + KL_WEIGHT * posterior.kl().mean()
        training.step(loss, optimizer, schedule, vae.parameters(), losses, bar)
    return losses


@torch.no_grad()
def encode(vae, images, device, batch_size=256):
    """Latents of every image, drawn once from q(z|x), unscaled."""
    with runtime.training_autocast(device):
        chunks = [vae.encode(to_vae_range(images[i:i + batch_size]).to(device)).latent_dist.sample().float()
                  for i in tqdm(range(0, len(images), batch_size), desc="encode latents")]
    return torch.cat(chunks)


def min_snr_weight(noise_schedule, t, gamma=MIN_SNR_GAMMA):
    """Min-SNR-gamma loss weight for noise prediction: min(SNR_t, gamma) / SNR_t, SNR_t = abar_t / (1 - abar_t).
    Nearly clean latents (high SNR) are easy and pull the gradient their own way; capping their
    weight lets the noisy steps, where layout and colours are decided, be learned sooner."""
    alpha_bar = noise_schedule.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def train_unet(unet, text_encoder, tokenizer, latents, objects, steps, batch_size, lr, rng, device):
    """DDPM's noise-prediction loss, Min-SNR weighted:
    L = w_t || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, text) ||^2."""
    noise_schedule = DDPMScheduler(**SD_SCHEDULE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    schedule = training.warmup_cosine(optimizer, steps)
    losses = []
    bar = tqdm(range(steps), desc="train tiny-sd UNet")
    for _ in bar:
        idx = rng.choice(len(latents), batch_size, replace=False)
        prompts = ["" if rng.random() < UNCONDITIONAL_SHARE else
                   shapesworld.caption_en(objects[i], int(rng.integers(len(shapesworld.EN_TEMPLATES))))
                   for i in idx]
        # the pipeline pads every prompt to the tokenizer's full length, so training does too
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            text = text_encoder(ids).last_hidden_state
        z0 = latents[idx]
        eps = torch.randn_like(z0)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch_size,), device=device)
        # bf16 pays for the VAE's convolutions on AVX512-BF16 CPUs; this UNet's small matmuls run
        # slower in bf16 there (measured 0.77 vs 1.19 s/step), so it trains in fp32 on CPUs
        with runtime.training_autocast(device, on_cpu=False):
            prediction = unet(noise_schedule.add_noise(z0, eps, t), t, encoder_hidden_states=text).sample
        per_sample = (prediction.float() - eps).pow(2).mean(dim=(1, 2, 3))
        loss = (min_snr_weight(noise_schedule, t) * per_sample).mean()
        training.step(loss, optimizer, schedule, unet.parameters(), losses, bar)
    return losses


def frozen_text_encoder(clip):
    """The tiny CLIP's text tower as a standalone CLIPTextModel, as SD ships OpenAI CLIP's."""
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())  # transformers 5: no .text_model wrapper
    return text_encoder.eval().requires_grad_(False)


def train(out, vae_steps=1500, unet_steps=2200, vae_batch_size=64, batch_size=64, pool=30_000, seed=0,
          device="auto"):
    runtime.seed_everything(seed)
    device = runtime.pick_device(device)
    clip, processor = zoo.load_clip("tiny", device="cpu")
    text_encoder = frozen_text_encoder(clip).to(device)
    data = shapesworld.generate("train", pool, seed=seed, size=IMAGE_SIZE, progress=True)
    images = np.stack([np.asarray(s.image) for s in data])
    rng = np.random.default_rng(seed)
    start = time.time()

    vae = build_vae().to(device)
    vae_losses = train_vae(vae, images, vae_steps, vae_batch_size, lr=1e-3, rng=rng, device=device)
    vae.eval().requires_grad_(False)
    latents = encode(vae, images, device)
    # SD's scaling factor (0.18215 for SD 1.x) makes the latents unit-variance, as the noise is
    vae.register_to_config(scaling_factor=round(1 / latents.std().item(), 5))
    latents = latents * vae.config.scaling_factor

    unet = build_unet(text_encoder.config.hidden_size).to(device)
    unet_losses = train_unet(unet, text_encoder, processor.tokenizer, latents, [s.objects for s in data],
                             unet_steps, batch_size, lr=1e-3, rng=rng, device=device)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=processor.tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    viz.curve(vae_losses, f"{out}/vae_loss.png", "tiny SD VAE: weighted L1 + KL")
    training.save(out, [pipe], unet_losses, "tiny SD UNet: noise-prediction MSE", start, device,
                  vae_steps=vae_steps, unet_steps=unet_steps, vae_batch_size=vae_batch_size, batch_size=batch_size,
                  pool=pool, seed=seed, vae_final_loss=float(np.mean(vae_losses[-50:])),
                  scaling_factor=vae.config.scaling_factor)


def main(argv=None):
    # 2,200 steps of 64 beat 1,100 of 128 in the same time: colour right 0.97 against 0.85 (more, smaller updates)
    p = training.parser(__doc__, MODELS_DIR / "tiny-sd", steps=2200, batch_size=64, batch_help="UNet batch")
    p.add_argument("--vae-steps", type=cli.positive_int, default=1500, help="VAE optimiser steps (default 1500)")
    p.add_argument("--pool", type=cli.positive_int, default=30_000, help="ShapesWorld training images (default 30000)")
    args = p.parse_args(argv)
    train(args.out, vae_steps=args.vae_steps, unet_steps=args.steps, batch_size=args.batch_size, pool=args.pool,
          seed=args.seed, device=args.device)


if __name__ == "__main__":
    cli.run(main)
