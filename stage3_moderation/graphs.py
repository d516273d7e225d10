"""Week 9: what becomes an ONNX graph, and where an export lives. The exporter (export_onnx.py)
traces these modules; the engines (engines.py) run them in PyTorch or load their exports; the
graphs' inputs and outputs are listed in export_onnx.py.

The language model in the two decoder graphs is week 4's from-scratch `Decoder` (proven equal to
OPT there) with week 5's KV cache: its cache is a list of tensors, so it crosses the graph
boundary as two inputs and two outputs, where transformers' Cache objects would not.
"""

import json
from pathlib import Path

import torch

from curriculum import OUTPUTS_DIR
from stage1_demos.clip_retrieval import l2_normalize
from stage2_fundamentals.attention import KVCache
from stage2_fundamentals.decoder import Decoder

GRAPHS = ("clip_image", "clip_text", "blip2_image", "blip2_prefill", "blip2_step")
EMBED_TOKENS = "blip2_embed_tokens.npy"
MANIFEST = "manifest.json"


def default_dir(clip_name, blip2_name):
    """outputs/onnx/tiny for the bundled models, else a folder named after both models."""
    if clip_name == blip2_name == "tiny":
        return OUTPUTS_DIR / "onnx" / "tiny"
    slug = "__".join(Path(n).name if Path(n).is_dir() else n.replace("/", "--") for n in (clip_name, blip2_name))
    return OUTPUTS_DIR / "onnx" / slug


def is_exported(folder):
    """All graphs there, and a manifest with the parity verdict: an interrupted export, or one
    from before the manifest recorded image_token_id, is redone."""
    folder = Path(folder)
    return (
        (folder / MANIFEST).exists()
        and {"fp32_parity_ok", "image_token_id"} <= json.loads((folder / MANIFEST).read_text()).keys()
        and all((folder / f"{g}.onnx").exists() for g in GRAPHS)
    )


# ---------------------------------------------------------------- the modules
class ClipImage(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        return l2_normalize(self.clip.get_image_features(pixel_values=pixel_values).pooler_output)


class ClipText(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids, attention_mask):
        features = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return l2_normalize(features.pooler_output)


class Blip2Image(torch.nn.Module):
    """Vision encoder -> Q-Former -> language projection: the LM-ready image queries."""

    def __init__(self, blip2):
        super().__init__()
        self.blip2 = blip2

    def forward(self, pixel_values):
        return self.blip2.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output


def stacked(cache):
    """A KVCache as two tensors (layers, B, heads, T, head_dim): keys, values."""
    return torch.stack([slot.k for slot in cache.slots]), torch.stack([slot.v for slot in cache.slots])


class Blip2Prefill(torch.nn.Module):
    """The whole prompt (image queries + text) at once: last position's logits and the cache."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, attention_mask):
        cache = self.decoder.new_cache()
        logits = self.decoder(inputs_embeds, attention_mask, cache).logits[:, -1]
        return (logits, *stacked(cache))


class Blip2Step(torch.nn.Module):
    """One new token per row against the cached keys and values of everything before it."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, attention_mask, past_keys, past_values):
        cache = KVCache(len(past_keys))
        for slot, k, v in zip(cache.slots, past_keys, past_values):
            slot.k, slot.v = k, v
        logits = self.decoder(inputs_embeds, attention_mask, cache).logits[:, -1]
        return (logits, *stacked(cache))


def decoder_modules(blip2):
    """(prefill, step) around one from-scratch Decoder holding the BLIP-2 language model's weights."""
    decoder = Decoder.from_opt(blip2.language_model)
    return Blip2Prefill(decoder), Blip2Step(decoder)
