# %% [markdown]
# # Week 6 — The contrastive loss, from cross-entropy
#
# Week 1 asked why one similarity score works across modalities. CLIP's loss is plain
# cross-entropy: in a batch of N images and N captions, caption i must pick image i out of N, with
# scaled cosine similarities as the logits, and the same for each image picking its caption. The
# N − 1 wrong pairs of each row are the negatives. `stage2_fundamentals/infonce.py` writes it in a
# few lines; this notebook proves it equal to CLIP's own loss, trains a tiny CLIP from scratch with it,
# and takes the negatives away to see what they were for.
# The week's page: [docs/week06.md](../docs/week06.md).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week: training draws ShapesWorld images
STEPS = 100  # training steps of each run (the docs' model: 1,200 steps of 256)
BATCH = 64  # contrastive batch: each caption's negatives are the other BATCH - 1 images
POOL = 2000  # ShapesWorld training images to draw batches from (the docs: 30,000)
N_EVAL = 300  # test images for recall@1 (the docs: 1,000)

# %%
import math
from pathlib import Path

import torch
from IPython.display import Image, display

from curriculum import checks, colab, shapesworld, training, viz, zoo
from stage2_fundamentals import infonce_lab
from stage2_fundamentals.infonce import info_nce

PROFILE = colab.choose_profile(PROFILE)
OUT = Path("outputs/notebooks/week06")
print(f"profile {PROFILE}: a tiny CLIP, trained here from scratch, in both profiles (see below)")

# %% [markdown]
# ## Why tiny, in both profiles
#
# This week trains a CLIP from scratch, and that is only possible small: CLIP ViT-B/32 learned from
# 400 million image-text pairs on hundreds of GPUs, and even fine-tuning it with a useful batch of
# negatives is beyond a free Colab's T4 and time limits. The tiny CLIP (the bundled model's
# architecture, 0.4 M parameters) learns ShapesWorld in minutes on a CPU, and on a GPU if the
# runtime has one.

# %% [markdown]
# ## The loss, on a toy batch
#
# Unrelated embeddings score every candidate alike, so each row's cross-entropy is log N: guessing.
# Matching pairs (the caption vector close to its image's) drive it towards 0, and a larger
# `logit_scale` (a colder temperature τ, log(1/τ) = logit_scale) sharpens the softmax.

# %%
gen = torch.Generator().manual_seed(0)
image = torch.randn(BATCH, 16, generator=gen)
unrelated = torch.randn(BATCH, 16, generator=gen)
matching = image + 0.3 * torch.randn(BATCH, 16, generator=gen)
print(f"log N = {math.log(BATCH):.3f}")
for log_inv_tau in (0.0, math.log(1 / 0.07)):
    scale = torch.tensor(log_inv_tau)
    print(
        f"τ = {math.exp(-log_inv_tau):.2f}: unrelated pairs {info_nce(image, unrelated, scale):.3f}, "
        f"matching pairs {info_nce(image, matching, scale):.3f}"
    )

# %% [markdown]
# ## Proof: `info_nce` is CLIP's loss
#
# Against `CLIPModel(..., return_loss=True).loss` on the bundled tiny CLIP with 64 real ShapesWorld
# pairs, transformers' contrastive loss on random embeddings, and week 1's multi-positive loss.

# %%
result = infonce_lab.run_checks()
checks.print_checks(result)
assert all(c["ok"] for c in result["checks"]), "info_nce no longer matches CLIP's loss"

# %% [markdown]
# ## Train a tiny CLIP with it
#
# `infonce_lab.train` builds the bundled model's architecture with fresh weights and trains it in its
# own loop: each step draws `BATCH` images and a fresh caption for each, embeds both, and minimises
# `info_nce` (AdamW, warm-up then cosine decay). The loss starts at log N (guessing) and falls as
# matching pairs move together. A short run learns a little; the bundled model had 12 times the
# steps and 4 times the batch.

# %%
options = training.Options(progress=False)
samples = shapesworld.generate("test", N_EVAL)
model, processor, losses, seconds = infonce_lab.train(infonce_lab.Run(STEPS, BATCH), POOL, options)
ours = infonce_lab.evaluate(model, processor, samples=samples)
bundled = infonce_lab.evaluate(*zoo.load_clip("tiny", "cpu"), samples=samples)
print(f"trained {STEPS} steps x {BATCH} in {seconds:.1f} s; R@1 on {N_EVAL} test images:")
for name, r in (("trained here", ours), ("bundled", bundled)):
    print(f"  {name:<13} text->image {r['text_to_image_R@1']:.3f}   image->text {r['image_to_text_R@1']:.3f}")
display(Image(filename=viz.curve(losses, OUT / "infonce_loss.png", f"tiny CLIP, info_nce, {STEPS} x {BATCH}")))

# %% [markdown]
# ## Take the negatives away
#
# `positives_only` is the loss without its denominator: it pulls each pair together and pushes
# nothing apart. It reaches its minimum, −1 (a perfect cosine for every pair), by mapping every image
# and caption onto one point: the mean cosine between different images goes to 1 and retrieval falls
# to chance. The negatives are what make the space informative. `make week6` adds the sweeps over
# batch size, temperature, learning rate and a CNN image tower.

# %%
collapsed, _, no_negative_losses, _ = infonce_lab.train(infonce_lab.Run(STEPS, BATCH, negatives=False), POOL, options)
rows = {
    "with negatives": (losses, ours),
    "no negatives": (no_negative_losses, infonce_lab.evaluate(collapsed, processor, samples=samples)),
}
print(f"{'run':<16}{'final loss':>11}{'t->i R@1':>10}{'mean cos between images':>25}")
for name, (run_losses, r) in rows.items():
    final = sum(run_losses[-10:]) / 10
    print(f"{name:<16}{final:>11.3f}{r['text_to_image_R@1']:>10.3f}{r['mean_cos_between_images']:>25.3f}")
