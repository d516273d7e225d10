# %% [markdown]
# # Week 4 — Attention, opened up
#
# Stage 2 rebuilds the black boxes of weeks 1–3. `stage2_fundamentals/attention.py` writes scaled
# dot-product attention and multi-head attention one formula per line, `decoder.py` stacks them into
# BLIP-2's OPT decoder, and `transformer.py` completes "Attention Is All You Need" §3. This notebook
# runs the project's proofs that they equal torch and transformers, then draws what attends where:
# CLIP's ViT over image patches, and the BLIP-2 decoder over the image queries while it writes.
# The week's page: [docs/week04.md](../docs/week04.md).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # a folder of your own photos (on Colab, upload them into /content/images)
PROMPT = "a photo of"  # text the decoder continues in the second picture

# %%
from pathlib import Path

import torch
from IPython.display import Image, display

from curriculum import checks, colab, shapesworld
from stage1_demos.blip2_caption import fit_new_tokens
from stage2_fundamentals import attention_lab
from stage2_fundamentals.attention import scaled_dot_product_attention

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week04")
print(f"profile {PROFILE}: CLIP = {MODELS['clip']}, BLIP-2 = tiny (see below)")

# %% [markdown]
# ## Which models, and why BLIP-2 stays tiny
#
# The checks copy a library layer's weights into the from-scratch module and compare the two in
# float32 on the CPU, at a tolerance of 1e-5. CLIP ViT-B/32 fits that easily (600 MB), so the hub
# profile checks and draws the real CLIP. BLIP-2 OPT-2.7b in float32 needs about 15 GB of memory,
# more than a free Colab's 12.7 GB, and half precision would drown a 1e-5 comparison, so the BLIP-2
# parts use the bundled tiny model (the same `Blip2ForConditionalGeneration` class) in both profiles.

# %% [markdown]
# ## Attention in one line: softmax(Q Kᵀ / √d + M) V
#
# Four random tokens attending to each other with a causal mask: row i is query i, and it may only
# look at keys 0..i, so the upper triangle is zero and every row sums to 1.

# %%
q, k, v = torch.randn(3, 1, 4, 8, generator=torch.Generator().manual_seed(0))
_, weights = scaled_dot_product_attention(q, k, v, causal=True)
print(weights[0].numpy().round(2))

# %% [markdown]
# ## Proof: the from-scratch modules equal the libraries
#
# Each line compares one module with the library it re-derives on real inputs: torch's SDPA and
# `nn.MultiheadAttention`, a CLIP attention layer, the tiny BLIP-2's OPT attention and its whole
# decoder's logits, the Transformer encoder and decoder layers, the sinusoidal positions.

# %%
result = attention_lab.run_checks(MODELS["clip"], "tiny")
checks.print_checks(result)
assert all(c["ok"] for c in result["checks"]), "a from-scratch module no longer matches its library"

# %% [markdown]
# ## What attends where
#
# Each layer's input is replayed through the from-scratch module (proved equal above) to read its
# weights. Top row: where the ViT's `[CLS]` token looks, layer by layer, over the patches. Bottom:
# the decoder's last layer while it writes the caption, one row per word, over the image queries
# `q1…` and the words before it. In the hub profile the top row is the real CLIP over a photo, and
# the tiny BLIP-2, which only knows ShapesWorld, guesses a shapes caption: its attention is still
# real. The second picture uses a ShapesWorld image and continues `PROMPT`.

# %%
files = colab.gallery(PROFILE, 2, IMAGES)
shapes = shapesworld.export("test", 3, OUT / "gallery") / "test_00002.png"
for name, image, prompt in (("attention", files[-1], ""), ("attention_prompt", shapes, PROMPT)):
    new_tokens = fit_new_tokens("tiny", "transformers", [prompt], attention_lab.SHOW_NEW_TOKENS)
    shown = attention_lab.show(image, OUT / f"{name}.png", MODELS["clip"], "tiny", prompt, new_tokens)
    print(f"caption: {shown['caption']!r}; the [CLS] token's favourite patch per layer: {shown['cls_peak_patch']}")
    display(Image(filename=shown["out"]))
