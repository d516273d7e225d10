"""Week 12: tensor fluency drills, each checked: attention with torch.einsum, and friends.

Interviewers ask for attention "on the whiteboard, batched, with masks". With einsum the index
letters carry the meaning: b batch, h head, q query position, k key position, d feature.

    scores[b,h,q,k] = Σ_d Q[b,h,q,d] K[b,h,k,d] / √d         einsum("bhqd,bhkd->bhqk", Q, K)
    out[b,h,q,d]    = Σ_k A[b,h,q,k] V[b,h,k,d]              einsum("bhqk,bhkd->bhqd", A, V)

    python -m interview.einsum_attention check [--json]
"""
import math

import torch
import torch.nn.functional as F

from curriculum import checks, cli
from stage2_fundamentals.attention import MultiHeadAttention, causal_mask, padding_mask


def einsum_attention(x, w_q, w_k, w_v, w_o, heads, key_mask=None, causal=False):
    """Multi-head self-attention of x (b, t, D) with weight matrices (D, D) as nn.Linear stores
    them (out × in) and biases left out; key_mask (b, t) True for real tokens."""
    b, t, dim = x.shape
    d = dim // heads
    q = torch.einsum("btc,oc->bto", x, w_q).view(b, t, heads, d)       # X W_Qᵀ, split into heads
    k = torch.einsum("btc,oc->bto", x, w_k).view(b, t, heads, d)
    v = torch.einsum("btc,oc->bto", x, w_v).view(b, t, heads, d)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)       # Q Kᵀ / √d per head
    allowed = torch.ones(t, t, dtype=torch.bool)
    if causal:
        allowed = allowed & causal_mask(t, t)
    allowed = allowed[None, None] if key_mask is None else allowed & key_mask[:, None, None, :]
    weights = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, dim)  # A V, heads merged
    return torch.einsum("btc,oc->bto", out, w_o)                         # … W_Oᵀ


def cosine_matrix(a, b):
    """(n, d), (m, d) -> (n, m) cosine similarities, as CLIP scores every caption against every image."""
    return torch.einsum("nd,md->nm", F.normalize(a, dim=-1), F.normalize(b, dim=-1))


def batched_cosine(a, b):
    """(B, n, d), (B, m, d) -> (B, n, m): one cosine matrix per batch element."""
    return torch.einsum("bnd,bmd->bnm", F.normalize(a, dim=-1), F.normalize(b, dim=-1))


def topk_gather(scores, values, k):
    """For each row of scores (n, m), the rows of values (m, d) with the k highest scores: (n, k, d)."""
    return values[scores.topk(k, dim=-1).indices]


def stable_softmax(x):
    """softmax without overflow: subtract the row maximum first (exp(1000) is inf, exp(0) is not)."""
    e = (x - x.max(dim=-1, keepdim=True).values).exp()
    return e / e.sum(dim=-1, keepdim=True)


@torch.no_grad()
def run_checks():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, bias=False)
    x = torch.randn(2, 6, 32, generator=gen)
    keys = padding_mask([6, 4], 6)
    weights = [mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight, mha.out_proj.weight]
    ours = einsum_attention(x, *weights, heads=4, key_mask=keys[:, 0, 0], causal=True)
    week4 = mha(x, mask=keys, causal=True)[0]
    q, k, v = (mha.split_heads(p(x)) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=keys & causal_mask(6, 6))
    sdpa = mha.out_proj(sdpa.transpose(1, 2).reshape(2, 6, 32))
    real = keys[:, 0, 0]
    a, b = torch.randn(5, 8, generator=gen), torch.randn(7, 8, generator=gen)
    batch_a, batch_b = torch.randn(3, 5, 8, generator=gen), torch.randn(3, 7, 8, generator=gen)
    loop = torch.stack([F.cosine_similarity(batch_a[i][:, None], batch_b[i][None], dim=-1) for i in range(3)])
    scores, values = torch.randn(4, 10, generator=gen), torch.randn(10, 3, generator=gen)
    by_loop = torch.stack([values[row.argsort(descending=True)[:2]] for row in scores])
    big = torch.randn(4, 9, generator=gen) * 1000
    return {"checks": [
        checks.record("einsum attention (causal + padding) vs week-4 MultiHeadAttention", ours, week4, where=real),
        checks.record("einsum attention vs torch scaled_dot_product_attention", ours, sdpa, where=real),
        checks.record("cosine matrix vs F.cosine_similarity", cosine_matrix(a, b),
                      F.cosine_similarity(a[:, None], b[None], dim=-1)),
        checks.record("batched cosine vs a loop over the batch", batched_cosine(batch_a, batch_b), loop),
        checks.record("causal mask vs torch.tril", causal_mask(5, 5).float(), torch.ones(5, 5).tril()),
        checks.record("top-k gather vs sorting each row", topk_gather(scores, values, 2), by_loop),
        checks.record("stable softmax of logits ~1000 vs torch.softmax", stable_softmax(big), big.softmax(-1)),
    ]}


def build_parser():
    parser = cli.Parser(prog="python -m interview.einsum_attention", description=__doc__,
                        formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="run every drill against its reference").add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    checks.emit(run_checks(), args.json)


if __name__ == "__main__":
    cli.run(main)
