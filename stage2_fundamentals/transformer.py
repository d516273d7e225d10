"""Week 4: the rest of "Attention Is All You Need" §3, written plainly: the encoder and decoder
layers (§3.1) around multi-head attention (§3.2, attention.py), the position-wise feed-forward
network (§3.3) and the sinusoidal positional encoding (§3.5).

    encoder layer:  x = LayerNorm(x + SelfAttention(x))
                    x = LayerNorm(x + FFN(x))                       FFN(x) = max(0, x W_1 + b_1) W_2 + b_2
    decoder layer:  x = LayerNorm(x + MaskedSelfAttention(x))       (position i sees only j ≤ i)
                    x = LayerNorm(x + CrossAttention(x, memory))    (queries from x, keys and values from the encoder)
                    x = LayerNorm(x + FFN(x))

That is the paper's post-norm order, "LayerNorm(x + Sublayer(x))". `norm_first=True` is the
pre-norm order GPT-2, CLIP and OPT use, x + Sublayer(LayerNorm(x)), which trains more stably in
deep stacks. Both match torch.nn.TransformerEncoderLayer / TransformerDecoderLayer with copied
weights (`python -m stage2_fundamentals.attention_lab check`). Dropout is left out: these layers
are for reading and checking, and torch's layers are compared in eval mode, where it does nothing.
"""
import torch
from torch import nn

from stage2_fundamentals.attention import MultiHeadAttention


def sinusoidal_positions(length, dim):
    """(length, dim) positional encodings, §3.5: even channels sine, odd channels cosine, the
    wavelengths a geometric progression from 2π to 10000 · 2π."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float64)[None, :]           # 2i
    angle = pos / 10000 ** (i / dim)                                    # pos / 10000^(2i / d_model)
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)                                      # PE(pos, 2i)   = sin(·)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])                       # PE(pos, 2i+1) = cos(·)
    return pe.float()


class FeedForward(nn.Module):
    """§3.3: the same two-layer network at every position, inner width d_ff (2048 = 4 × 512 in the paper)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.linear2(torch.relu(self.linear1(x)))                # max(0, x W_1 + b_1) W_2 + b_2


class Residual(nn.Module):
    """One sub-layer wrapped in its residual connection and layer norm, in either order."""

    def __init__(self, dim, norm_first):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_first = norm_first

    def forward(self, x, sublayer):
        if self.norm_first:
            return x + sublayer(self.norm(x))                           # x + Sublayer(LayerNorm(x))
        return self.norm(x + sublayer(x))                               # LayerNorm(x + Sublayer(x))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, norm_first=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads)
        self.feed_forward = FeedForward(dim, hidden)
        self.attn_block, self.ff_block = Residual(dim, norm_first), Residual(dim, norm_first)

    def forward(self, x, mask=None):
        """x: (B, T, D); mask: True where a token may attend (e.g. not to padding)."""
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=mask)[0])
        return self.ff_block(x, self.feed_forward)

    @classmethod
    def from_torch(cls, layer):
        """The same weights as a torch.nn.TransformerEncoderLayer (batch_first, ReLU)."""
        ours = cls(layer.linear1.in_features, layer.self_attn.num_heads, layer.linear1.out_features, layer.norm_first)
        ours.self_attn = MultiHeadAttention.from_torch(layer.self_attn)
        copy_feed_forward(ours.feed_forward, layer)
        ours.attn_block.norm.load_state_dict(layer.norm1.state_dict())
        ours.ff_block.norm.load_state_dict(layer.norm2.state_dict())
        return ours


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, norm_first=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads)
        self.cross_attn = MultiHeadAttention(dim, heads)
        self.feed_forward = FeedForward(dim, hidden)
        self.self_block, self.cross_block, self.ff_block = (Residual(dim, norm_first) for _ in range(3))

    def forward(self, x, memory, memory_mask=None):
        """x: (B, T, D) the target so far; memory: (B, S, D) the encoder's output; memory_mask:
        True where a target token may look at a memory token."""
        x = self.self_block(x, lambda h: self.self_attn(h, causal=True)[0])
        x = self.cross_block(x, lambda h: self.cross_attn(h, context=memory, mask=memory_mask)[0])
        return self.ff_block(x, self.feed_forward)

    @classmethod
    def from_torch(cls, layer):
        """The same weights as a torch.nn.TransformerDecoderLayer (batch_first, ReLU)."""
        ours = cls(layer.linear1.in_features, layer.self_attn.num_heads, layer.linear1.out_features, layer.norm_first)
        ours.self_attn = MultiHeadAttention.from_torch(layer.self_attn)
        ours.cross_attn = MultiHeadAttention.from_torch(layer.multihead_attn)
        copy_feed_forward(ours.feed_forward, layer)
        blocks = (ours.self_block, ours.cross_block, ours.ff_block)
        for block, norm in zip(blocks, (layer.norm1, layer.norm2, layer.norm3)):
            block.norm.load_state_dict(norm.state_dict())
        return ours


def copy_feed_forward(ours, layer):
    ours.linear1.load_state_dict(layer.linear1.state_dict())
    ours.linear2.load_state_dict(layer.linear2.state_dict())
