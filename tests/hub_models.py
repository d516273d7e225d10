"""Random-weight stand-ins for the real checkpoints, built from their published configs, for tests
that cannot download them: openai/clip-vit-base-patch32, Salesforce/blip2-opt-2.7b and
stable-diffusion-v1-5/stable-diffusion-v1-5.

Widths, heads, image sizes, patch sizes, query counts and schedules are the real ones, depth
shrunk to fit a test on 2 cores; Stable Diffusion also needs narrower channels and smaller images
(SD15_NARROW), and tests that only need the layout shrink every width (BLIP2_NARROW, SD15_TINY).
The real vocabularies cannot be downloaded either, so the bundled tiny tokenizers stand in (their
ids fit inside the real CLIP vocabulary; BLIP-2's decoder, which writes tokens, gets the stand-in's
own vocabulary size).

`hub_cache` lays folders out as the Hugging Face cache does (models--org--name/refs/main and
snapshots/<commit>/), so that code loads them by hub id with HF_HUB_OFFLINE=1 and HF_HUB_CACHE
pointing there, exactly as it would load a downloaded checkpoint.
"""

import hashlib
from pathlib import Path

import torch

from curriculum import MODELS_DIR, colab, tiny_sd

CLIP_MAX_TOKENS = 77  # openai/clip-vit-base-patch32's and SD 1.5's text length


def clip_tokenizer():
    """The bundled tiny CLIP's BPE, laid out like OpenAI's (ids < 49408), read up to 77 tokens."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(MODELS_DIR / "tiny-clip", model_max_length=CLIP_MAX_TOKENS)


def clip_vit_b32(folder):
    """openai/clip-vit-base-patch32: CLIPConfig()'s defaults are its architecture, whole (151M parameters)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=clip_tokenizer()).save_pretrained(folder)
    return Path(folder)


# Salesforce/blip2-opt-2.7b's config.json: an EVA ViT-g (39 layers), a 12-layer Q-Former with 32
# queries, OPT-2.7b (32 layers), 224 px images in 14 px patches.
BLIP2_OPT_2_7B = {
    "vision": dict(hidden_size=1408, intermediate_size=6144, num_attention_heads=16, image_size=224, patch_size=14),
    "qformer": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, cross_attention_frequency=2),
    "text": dict(hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240, num_attention_heads=32),
}
# Every width 32: the layout alone, for tests that load and run it many times.
BLIP2_NARROW = {
    "vision": dict(hidden_size=32, intermediate_size=64, num_attention_heads=2),
    "qformer": dict(hidden_size=32, intermediate_size=64, num_attention_heads=2),
    "text": dict(hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_attention_heads=2),
}


def blip2_opt_2_7b(folder, layers=(1, 1, 1), shrink=None):
    """Salesforce/blip2-opt-2.7b with `layers` (ViT, Q-Former, OPT) instead of (39, 12, 32), and the
    config values in `shrink` (e.g. BLIP2_NARROW) replaced. The processor pads on the right, as the
    checkpoint's does."""
    from transformers import (
        AutoTokenizer,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessorPil,
    )

    vision, qformer, text = ({**BLIP2_OPT_2_7B[k], **(shrink or {}).get(k, {})} for k in ("vision", "qformer", "text"))
    tokenizer = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-blip2")
    tokenizer.padding_side = "right"
    config = Blip2Config(
        vision_config=dict(**vision, num_hidden_layers=layers[0]),
        qformer_config=dict(**qformer, encoder_hidden_size=vision["hidden_size"], num_hidden_layers=layers[1]),
        text_config=dict(
            model_type="opt",
            **text,
            num_hidden_layers=layers[2],
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessorPil(size={"height": 224, "width": 224})
    Blip2Processor(image_processor, tokenizer, num_query_tokens=32).save_pretrained(folder)
    return Path(folder)


# stable-diffusion-v1-5's text_encoder (CLIP ViT-L/14's text tower), unet and vae configs.
SD15 = {
    "text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12),
    "unet": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    "vae": dict(
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
    ),
}
# Depth alone is not enough for SD: with the real channels one step at 512 px takes ~30 s on 2
# cores, and a notebook takes dozens. Narrow channels and 128 px images (16x16 latents), the rest
# (levels, cross-attention in three of them, 8 heads, the 768-wide text) as published.
SD15_NARROW = {
    "unet": dict(sample_size=16, block_out_channels=(32, 64, 128, 128)),
    "vae": dict(sample_size=128, block_out_channels=(32, 64, 128, 128)),
}
# Every width 8 to 32 and 64 px images: the layout alone, for tests that sample it many times.
SD15_TINY = {
    "text": dict(hidden_size=32, intermediate_size=64, num_attention_heads=2),
    "unet": dict(sample_size=8, block_out_channels=(8, 16, 16, 16), cross_attention_dim=32, norm_num_groups=4),
    "vae": dict(sample_size=64, block_out_channels=(8, 8, 16, 16), norm_num_groups=4),
}


def sd15(folder, text_layers=1, layers_per_block=1, shrink=SD15_NARROW):
    """stable-diffusion-v1-5 with `text_layers` of the text encoder's 12 and `layers_per_block` of
    the UNet's and the VAE's 2, and the config values in `shrink` replaced; SD 1.5's PNDM scheduler."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text, unet, vae = ({**SD15[k], **(shrink or {}).get(k, {})} for k in ("text", "unet", "vae"))
    torch.manual_seed(0)
    StableDiffusionPipeline(
        vae=AutoencoderKL(**vae, layers_per_block=layers_per_block),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(**text, num_hidden_layers=text_layers, max_position_embeddings=CLIP_MAX_TOKENS)
        ),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel(**unet, layers_per_block=layers_per_block),
        scheduler=tiny_sd.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return Path(folder)


# What each of curriculum.colab's hub ids stands for here, small enough for 2 cores.
BUILDERS = {"clip": clip_vit_b32, "blip2": blip2_opt_2_7b, "sd": sd15}


def hub_cache(cache, families=tuple(BUILDERS)):
    """Build each family's stand-in into `cache` under its hub id (colab.HUB_MODELS), laid out as the
    Hugging Face cache: models--org--name/refs/main names a commit, snapshots/<commit>/ holds the files."""
    cache = Path(cache)
    for family in families:
        hub_id = colab.HUB_MODELS[family]
        repo = cache / f"models--{hub_id.replace('/', '--')}"
        commit = hashlib.sha1(hub_id.encode()).hexdigest()
        BUILDERS[family](repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return cache
