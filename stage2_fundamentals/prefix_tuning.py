"""Week 7: prefix tuning from scratch, on the from-scratch decoder of week 4.

Prefix tuning (Li & Liang 2021) leaves every weight of the language model frozen and learns, for
each attention layer, the keys and values of N "virtual tokens" that sit before the real input:

    head = softmax(Q [P_K ; K]ᵀ / √d) [P_V ; V]        P_K, P_V: N × d per layer and head, learned

Every real token can attend to them, so they steer the model like a prompt would, but they are
free vectors rather than words. In week 4's decoder they are exactly a pre-filled KV cache.
Optionally the prefix is reparameterised: an embedding per virtual token through a small MLP,
which trains more stably than the raw keys and values (the paper's trick; PEFT's
prefix_projection=True). The layout below is PEFT's, so PEFT's weights load into it as they are.

finetuning_lab.py proves it equal to PEFT's (`python -m stage2_fundamentals.finetuning_lab check`).
"""
import torch
from torch import nn

from stage2_fundamentals.attention import KVCache


class Prefix(nn.Module):
    def __init__(self, layers, heads, head_dim, virtual_tokens, projection_dim=None):
        super().__init__()
        self.layers, self.heads, self.head_dim, self.n = layers, heads, head_dim, virtual_tokens
        width = layers * 2 * heads * head_dim  # a key and a value for every layer
        if projection_dim:
            self.embedding = nn.Embedding(virtual_tokens, heads * head_dim)
            self.transform = nn.Sequential(nn.Linear(heads * head_dim, projection_dim), nn.Tanh(),
                                           nn.Linear(projection_dim, width))
        else:
            self.embedding = nn.Embedding(virtual_tokens, width)
            self.transform = None

    @classmethod
    def for_decoder(cls, decoder, virtual_tokens, projection_dim=None):
        attention = decoder.layers[0].self_attn
        return cls(len(decoder.layers), attention.heads, attention.head_dim, virtual_tokens, projection_dim)

    def cache(self, batch):
        """A KV cache that already holds the N virtual tokens of every layer."""
        p = self.embedding.weight
        if self.transform is not None:
            p = self.transform(p)                                        # P = MLP(E): reparameterised
        p = p.view(self.n, 2 * self.layers, self.heads, self.head_dim).permute(1, 2, 0, 3)  # (2L, h, N, d)
        cache = KVCache(self.layers)
        for i, slot in enumerate(cache.slots):
            slot.append(p[2 * i].expand(batch, -1, -1, -1), p[2 * i + 1].expand(batch, -1, -1, -1))  # P_K, P_V
        return cache


class PrefixedDecoder(nn.Module):
    """A frozen decoder with a prefix in front: decoding.py drives it like the plain one. An
    attention_mask, when given, covers the real tokens only; the prefix is always visible."""

    def __init__(self, decoder, prefix):
        super().__init__()
        self.decoder, self.prefix = decoder.requires_grad_(False), prefix
        self.embed_tokens = decoder.embed_tokens

    def new_cache(self, batch=1):
        return self.prefix.cache(batch)

    def forward(self, embeds, attention_mask=None, cache=None):
        b = embeds.shape[0]
        if cache is None:
            cache = self.new_cache(b)
        if attention_mask is not None:
            attention_mask = torch.cat([torch.ones(b, self.prefix.n, dtype=attention_mask.dtype), attention_mask], 1)
        return self.decoder(embeds, attention_mask, cache)
