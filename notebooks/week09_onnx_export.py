# %% [markdown]
# # Week 9 — ONNX export with parity, and the moderation policy
#
# Stage 3 puts weeks 1 and 2 behind a moderation API. This week builds its two foundations: the
# models exported to ONNX (five graphs with a dynamic batch axis, plus int8 copies), proved to
# compute what PyTorch computes, and the moderation policy, a YAML file whose decisions are a pure
# function of CLIP scores and BLIP-2 captions, measured on labelled scenes. Last, the plan's
# alternative to a rule on the caption: ask BLIP-2 a yes/no question and read p(yes).
# The week's page: [docs/week09.md](../docs/week09.md).
#
# This week runs the tiny models in both profiles. Exporting BLIP-2 OPT-2.7b traces the whole
# model in float32, which needs about 15 GB of RAM or more, over a free Colab's 12.7 GB; the
# exporter takes the CLIP and the BLIP-2 together, so the real export is for a bigger machine
# (`python -m stage3_moderation.export_onnx --clip openai/clip-vit-base-patch32 --blip2 Salesforce/blip2-opt-2.7b`).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week: the policy is measured on labelled ShapesWorld scenes
N_PARITY = 16  # test images for the caption parity check (`make export`: 100)
N_SCENES = 100  # labelled scenes for the policy and the visual question (docs: 600)

# %%
from pathlib import Path

from IPython.display import Image, display

from curriculum import colab, viz
from stage3_moderation import engines, export_onnx, policy, vqa_rule

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week09")
print(f"profile {PROFILE}; this week exports and measures the bundled tiny CLIP and BLIP-2")

# %% [markdown]
# ## Export, then prove parity
#
# `export` traces five modules with `torch.export`: the CLIP image and text towers (to unit
# embeddings), BLIP-2's image side (vision encoder + Q-Former + projection, one graph), and week 4's
# decoder as a prefill graph and a one-token step graph whose KV cache crosses the graph boundary
# as plain tensors. Each gets a dynamically quantised int8 copy. Then parity: the cosine of every
# ONNX embedding to PyTorch's (target ≥ 0.9999) and greedy captions against `generate()`. fp32
# should be exact; int8 trades a little cosine for smaller, faster weights.

# %%
manifest = export_onnx.export("tiny", "tiny", OUT / "onnx", n=N_PARITY)
export_onnx.print_report(manifest)
sizes = {p.name: f"{p.stat().st_size / 1e6:.2f} MB" for p in sorted((OUT / "onnx").glob("*.onnx"))}
print("\n" + "\n".join(f"{name:<26}{size:>10}" for name, size in sizes.items()))

# %% [markdown]
# ## The policy is data
#
# Each category names the inputs it judges, CLIP concept prompts with a threshold for images, and
# words or patterns for the user's text and the image's caption. Deciding is a pure function, so it
# can be tried without any model: text rules read the text as a person sees it (NFKC, invisible
# characters removed, look-alike letters mapped), so full-width or Cyrillic spellings are caught too.

# %%
demo = policy.load()
policy.print_policy(demo)
cyrillic_e = "\u0435"  # looks like e
for text in ["a blue circle", "a red cross", "ｒｅｄ ｃｒｏｓｓ", f"a r{cyrillic_e}d cross (Cyrillic е)"]:
    decided = policy.decide(demo, text=text)
    print(f"{text:<32} flagged: {decided['flagged']!s:<6} {[k for k, v in decided['categories'].items() if v]}")

# %% [markdown]
# ## The policy measured on labelled scenes
#
# Generated test scenes whose truth is known (does the scene hold a red cross? a purple cross?), run
# through the exported fp32 engine exactly as the service will run them: CLIP concept scores, the
# BLIP-2 caption under the same text rules, and the mismatch flag (an image sent with another
# scene's caption).

# %%
engine = engines.load("onnx-fp32", onnx_dir=OUT / "onnx")
policy.print_evaluation(policy.evaluate(engine, demo, n=N_SCENES))

# %% [markdown]
# ## A rule on the caption, or a question to BLIP-2?
#
# The plan's alternative asks the captioner directly, "Question: is there a red cross? Answer:",
# and reads `p(yes) = p_yes / (p_yes + p_no)` of the first answer token. Watch the visual-question
# rows: the bundled BLIP-2 and the prompt fine-tune do not look at the image to answer; each learned
# the answer's prior (the bundled one says "no" to everything), which its overall QA accuracy hid.
# The compliance fine-tune (balanced yes/no questions, most "no"s near misses such as a red circle
# beside a red cross) looks: its false positives fall on scenes with a colour-shape pair it never
# saw. The precision-recall picture draws p(yes) at every threshold: a flat curve means no threshold
# separates scenes with the symbol.

# %%
askers = {"bundled": "tiny", "prompt-tuned": str(vqa_rule.FINE_TUNED), "compliance": str(vqa_rule.COMPLIANCE)}
asked = vqa_rule.compare(n=N_SCENES, askers=askers)
vqa_rule.print_result(asked)
title = f"{N_SCENES} test scenes: the visual question at every threshold vs the fixed rules"
display(Image(filename=viz.precision_recall(asked["curves"], OUT / "vqa_rule.png", title)))

# %% [markdown]
# ## The question as a policy rule
#
# `data/policies/shapesworld-vqa.yaml` asks each cross's question of the compliance BLIP-2 and flags
# at p(yes) >= its `question_threshold`. The engines answer from the caption's own image queries (one
# more prefill per question), so the service serves it as it serves captions. Here the eager engine
# on that BLIP-2, through the same `policy.evaluate` as above:

# %%
asking = policy.load(policy.POLICIES_DIR / "shapesworld-vqa.yaml")
policy.print_policy(asking)
asking_engine = engines.load("torch-fp32", blip2_name=asking.question_model)
policy.print_evaluation(policy.evaluate(asking_engine, asking, n=N_SCENES))
