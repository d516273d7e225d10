"""Week 4: attention, written plainly: the primitives every Transformer here is built from.

Scaled dot-product attention, for queries Q (T_q × d), keys K and values V (T_k × d):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V

where M is 0 where a query may look and -∞ where it may not (a causal mask hides the future, a
padding mask hides padding). Multi-head attention runs h of these side by side on d/h-wide
slices of learned projections, then mixes the heads with one more projection:

    head_i = Attention(X W_Qi, X W_Ki, X W_Vi)        MHA(X) = [head_1 … head_h] W_O

A KV cache keeps the keys and values of the tokens a decoder has already seen (week 5).
decoder.py builds BLIP-2's language model from these; attention_lab.py proves them equal to torch
and transformers (`python -m stage2_fundamentals.attention_lab check`) and draws what attends where.
"""
import math

import torch
from torch import nn


def causal_mask(t_q, t_k, device=None):
    """True where query i may see key j: j ≤ i. Aligned to the end, so the T_q newest queries
    against T_k ≥ T_q keys (a KV cache holds the older ones) see everything before them."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i


def scaled_dot_product_attention(q, k, v, mask=None, causal=False):
    """q: (..., T_q, d), k and v: (..., T_k, d); mask broadcasts to (..., T_q, T_k) and is either
    boolean (True = may attend) or additive (0 or -∞). Returns (output, attention weights)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # S = Q Kᵀ / √d
    # -∞ in the formula; the most negative float here, so that a row with nothing to see (a padding
    # query) gets uniform weights instead of NaN, which would leak into real rows through 0 × NaN
    hidden = torch.finfo(scores.dtype).min
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), hidden)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, hidden)                      # M = -∞ where not allowed
    elif mask is not None:
        scores = scores + mask                                          # S + M
    weights = scores.softmax(dim=-1)                                    # A = softmax(S + M), rows sum to 1
    return weights @ v, weights                                         # O = A V


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with h heads. The projection names match CLIP's and OPT's
    (q_proj, k_proj, v_proj, out_proj), so their state dicts load as they are."""

    def __init__(self, dim, heads, bias=True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def split_heads(self, x):
        """(B, T, D) -> (B, h, T, D/h): each head sees its own slice of the features."""
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, mask=None, causal=False, cache=None):
        """x: (B, T, D) queries; context: (B, S, D) keys/values (None: self-attention). `cache` is
        a KVCache slot: this call's keys and values are appended to it and attention runs over
        all of them. Returns (output (B, T, D), weights (B, h, T, S))."""
        source = x if context is None else context
        q = self.split_heads(self.q_proj(x))                            # Q_i = X W_Qi
        k = self.split_heads(self.k_proj(source))                       # K_i = X W_Ki
        v = self.split_heads(self.v_proj(source))                       # V_i = X W_Vi
        if cache is not None:
            k, v = cache.append(k, v)
        out, weights = scaled_dot_product_attention(q, k, v, mask, causal)
        b, _, t, _ = out.shape
        merged = out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)  # [head_1 … head_h]
        return self.out_proj(merged), weights                           # … W_O

    @classmethod
    def from_torch(cls, mha):
        """The same weights as a torch.nn.MultiheadAttention, whose q, k, v projections are one
        stacked (3D, D) matrix."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError("from_torch copies a MultiheadAttention with kdim = vdim = embed_dim and no add_bias_kv")
        dim = mha.embed_dim
        ours = cls(dim, mha.num_heads, bias=mha.in_proj_bias is not None)
        projections = (ours.q_proj, ours.k_proj, ours.v_proj)
        with torch.no_grad():
            for proj, w in zip(projections, mha.in_proj_weight.split(dim)):
                proj.weight.copy_(w)
            if mha.in_proj_bias is not None:
                for proj, b in zip(projections, mha.in_proj_bias.split(dim)):
                    proj.bias.copy_(b)
            ours.out_proj.load_state_dict(mha.out_proj.state_dict())
        return ours

    @classmethod
    def from_hf(cls, layer):
        """The same weights as a transformers attention layer with q/k/v/out_proj (CLIP, OPT)."""
        dim = layer.q_proj.in_features
        ours = cls(dim, dim // layer.head_dim, bias=layer.q_proj.bias is not None)
        ours.load_state_dict(layer.state_dict())
        return ours.to(layer.q_proj.weight.dtype)


class KVCache:
    """Keys and values of the tokens already seen, one slot per layer: a decoder step then
    projects only the new token instead of the whole sequence again."""

    def __init__(self, layers):
        self.slots = [KVSlot() for _ in range(layers)]

    @property
    def length(self):
        """Tokens held. A property, not __len__: len() must return a plain int, which would freeze
        the length into a graph traced by torch.export (stage 3 exports the decoder with a cache)."""
        return 0 if self.slots[0].k is None else self.slots[0].k.shape[-2]

    def reorder(self, rows):
        """Keep batch rows `rows` (beam search continues some beams twice and drops others)."""
        for slot in self.slots:
            slot.k, slot.v = slot.k[rows], slot.v[rows]


class KVSlot:
    def __init__(self):
        self.k = self.v = None

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


def padding_mask(lengths, t):
    """(B, 1, 1, T): True for the first `length` keys of each row, False for right padding."""
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
