"""The decoder-only language model inside BLIP-2 (OPT), from scratch, on week 4's attention.

A stack of pre-LayerNorm Transformer blocks over token (and image-query) embeddings plus learned
positions; each block is

    x ← x + MHA(LN(x))            (causal: token i sees tokens ≤ i)
    x ← x + W₂ ReLU(W₁ LN(x))     (a two-layer MLP applied to every position)

and the last hidden state, layer-normed, times the word-embedding matrix gives the logits of the
next token. `Decoder.from_opt` loads an OPTForCausalLM's weights (the tiny BLIP-2's or
facebook/opt-*'s), so `attention check` can prove the logits equal and `decoding.py` can drive
it with its own search loops and KV cache. `decoder_embeds` builds what it reads in BLIP-2: the
projected image queries where the processor put its <image> placeholders, words elsewhere.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from curriculum.cli import UserError
from stage2_fundamentals.attention import KVCache, MultiHeadAttention, causal_mask

POSITION_OFFSET = 2  # OPT's learned positions start at index 2 (a fairseq legacy)


@dataclass
class DecoderOutput:
    logits: torch.Tensor   # (B, T, vocab)
    cache: KVCache         # the same cache object, now holding these T tokens too (None without one)
    weights: list          # per layer, (B, heads, T, all tokens so far)


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, ffn_dim):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)

    def forward(self, x, mask, cache=None):
        attended, weights = self.self_attn(self.self_attn_layer_norm(x), mask=mask, cache=cache)
        x = x + attended                                                # x + MHA(LN(x))
        x = x + self.fc2(F.relu(self.fc1(self.final_layer_norm(x))))   # x + W₂ ReLU(W₁ LN(x))
        return x, weights


class Decoder(nn.Module):
    def __init__(self, vocab_size, dim, layers, heads, ffn_dim, max_positions, embed_dim=None):
        super().__init__()
        embed_dim = embed_dim or dim
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim)
        self.embed_positions = nn.Embedding(max_positions + POSITION_OFFSET, dim)
        # OPT-350m embeds words in 512-d and runs its blocks in 1024-d; the others use one width
        self.project_in = nn.Linear(embed_dim, dim, bias=False) if embed_dim != dim else nn.Identity()
        self.project_out = nn.Linear(dim, embed_dim, bias=False) if embed_dim != dim else nn.Identity()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim) for _ in range(layers))
        self.final_layer_norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied: logits = h · Eᵀ

    def new_cache(self, batch=None):
        """An empty cache (`batch` matters only to decoders that start it with something, e.g. a prefix)."""
        return KVCache(len(self.layers))

    def forward(self, embeds, attention_mask=None, cache=None):
        """embeds: (B, T, embed_dim), the new tokens' embeddings (image queries included);
        attention_mask: (B, all tokens so far), 1 = real, 0 = padding; cache: a KVCache holding
        the earlier tokens, or None to see only `embeds`."""
        b, t = embeds.shape[:2]
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long, device=embeds.device)
        # position = number of real tokens before this one, so left padding does not shift the text
        positions = (attention_mask.cumsum(1) * attention_mask - 1)[:, past:]
        x = self.project_in(embeds) + self.embed_positions(positions + POSITION_OFFSET)
        allowed = causal_mask(t, past + t, embeds.device) & attention_mask.bool()[:, None, None, :]
        weights = []
        for i, layer in enumerate(self.layers):
            x, w = layer(x, allowed, cache.slots[i] if cache is not None else None)
            weights.append(w)
        logits = self.lm_head(self.project_out(self.final_layer_norm(x)))
        return DecoderOutput(logits, cache, weights)

    @classmethod
    def from_opt(cls, lm):
        """The same weights as a transformers OPTForCausalLM (pre-LayerNorm OPTs: all but 350m)."""
        c = lm.config
        if c.model_type != "opt" or not c.do_layer_norm_before or c.activation_function != "relu":
            raise UserError(f"the from-scratch decoder re-derives pre-LayerNorm OPT with ReLU; this language model "
                            f"is {c.model_type} (do_layer_norm_before={getattr(c, 'do_layer_norm_before', None)}); "
                            "use --model tiny or a BLIP-2 OPT checkpoint such as Salesforce/blip2-opt-2.7b")
        ours = cls(c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.ffn_dim,
                   c.max_position_embeddings, c.word_embed_proj_dim)
        state = {k.removeprefix("model.decoder."): v for k, v in lm.state_dict().items()}
        ours.load_state_dict(state)
        dtype = next(lm.parameters()).dtype
        return ours.to(lm.device, dtype).eval()


# ---------------------------------------------------------------- BLIP-2's inputs to it
def decoder_embeds(model, pixel_values, input_ids):
    """What the BLIP-2 language model reads: the projected image queries where the processor put
    its <image> placeholders, word embeddings everywhere else."""
    embeds = model.get_input_embeddings()(input_ids)
    queries = model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
    is_image = (input_ids == model.config.image_token_id)[..., None]
    return embeds.masked_scatter(is_image, queries.to(embeds.dtype))


def blip2_decoder_inputs(model, processor, images, prompts):
    """(decoder input embeddings, attention mask, token ids) for images and prompts."""
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    return decoder_embeds(model, inputs.pixel_values, inputs.input_ids), inputs.attention_mask, inputs.input_ids
