"""Week 6: CLIP's contrastive loss (InfoNCE), derived from cross-entropy, and why it needs negatives.

A batch holds N images and their N captions. Embed both, normalise to unit length, and score
every caption against every image by cosine similarity, divided by a temperature τ:

    s_ij = cos(t_i, v_j) / τ                  (CLIP learns log(1/τ) as `logit_scale`)

Caption i should pick image i out of the N: that is an N-way classification whose logits are
row i of s and whose right answer is i, so its loss is plain cross-entropy,

    L_t→v = -1/N Σ_i log( e^{s_ii} / Σ_j e^{s_ij} )

and symmetrically for each image picking its caption (columns); CLIP averages the two. The
denominator sums over all N pairs of the row, the positive included; the N - 1 others are the
negatives: they push non-matching pairs apart. Without them the loss only pulls pairs together,
and everything can collapse onto one point.

infonce_lab.py proves it equal to CLIP's own loss, trains a tiny CLIP with it and measures what
the negatives and the temperature do (`python -m stage2_fundamentals.infonce_lab check`).
"""
import torch
import torch.nn.functional as F


def info_nce(image_embeds, text_embeds, logit_scale):
    image = F.normalize(image_embeds, dim=-1)                          # v / |v|: dot products are cosines
    text = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp() * text @ image.T                        # s_ij = cos(t_i, v_j) / τ
    targets = torch.arange(len(logits), device=logits.device)          # caption i goes with image i: the diagonal
    text_to_image = F.cross_entropy(logits, targets)                   # -mean_i log softmax_j(s_ij)[i]
    image_to_text = F.cross_entropy(logits.T, targets)                 # the same down the columns
    return (text_to_image + image_to_text) / 2


def positives_only(image_embeds, text_embeds):
    """The loss without its denominator: pull each pair together, push nothing apart."""
    return -(F.normalize(image_embeds, dim=-1) * F.normalize(text_embeds, dim=-1)).sum(-1).mean()  # -mean cos(t_i, v_i)
