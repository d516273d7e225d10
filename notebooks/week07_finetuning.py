# %% [markdown]
# # Week 7 — projection heads, Chinese queries, LoRA and prefix tuning
#
# Three ways to change what a pretrained multimodal model does without starting over. First, what
# CLIP's projection heads are for (remove them and measure). Second, a Chinese text tower distilled
# into the English CLIP's space, so one image index answers queries in both languages. Third, LoRA
# and prefix tuning written from scratch, proved equal to PEFT, then used to teach the tiny BLIP-2 a
# colour it never saw. The week's page, with the full measured tables:
# [docs/week07.md](../docs/week07.md).
#
# This week runs on the bundled tiny models in both profiles: it trains, and the Chinese tower is
# distilled into the tiny CLIP only. On a Colab GPU you can raise `STEPS` to 300 and `RANKS` to
# `[1, 4, 16]` to run the docs' full experiment (the same tiny BLIP-2, in a minute or two).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week: the experiments need ShapesWorld's captions (English and Chinese)
N_TEST = 300  # ShapesWorld test images for the projection-head ablation and the Chinese recall (docs: 1,000)
N_GALLERY = 300  # images in the index that the Chinese query searches
STEPS = 20  # training steps per fine-tuning method in the new-colour experiment (docs: 300)
RANKS = [4]  # LoRA ranks to try (docs: 1 4 16)
N_TRAIN = 300  # pink training images (docs: 3,000)
N_NEW, N_OLD = 20, 40  # pink test images, old test images (docs: 100, 200)

# %%
import json
from pathlib import Path

from IPython.display import Image, display

from curriculum import checks, colab, shapesworld, training
from stage1_demos import clip_retrieval
from stage2_fundamentals import crosslingual, finetuning_lab, new_concept, projection, qformer_lab

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week07")
REFERENCE = Path("results/week7")  # the committed reference run the docs' tables are made from
print(f"profile {PROFILE}; this week uses the bundled tiny CLIP, tiny-clip-zh and tiny BLIP-2")

# %% [markdown]
# ## What the projection heads are for
#
# CLIP's towers end in their own feature spaces; one linear head per tower (`visual_projection`,
# `text_projection`) maps both into the shared space where the contrastive loss works. Below, the
# bundled model's heads are removed, replaced by random matrices, or swapped, and retrieval is
# measured again. Removing any trained layer breaks a model, so read the second table too: trained
# from scratch *without* heads (the reference run: 2 × 400 steps of 256, about two minutes on a CPU,
# so it is read from `results/`), the towers learn to meet directly and land within a few points.
# The real reason for heads is the last line: ViT-B/32's towers do not even have the same width.

# %%
ablation = {
    "inference": projection.inference_ablation(n=N_TEST),
    "training": json.loads((REFERENCE / "projection.json").read_text())["training"],
    "vit_b32": projection.vit_b32_shapes(),
}
projection.print_result(ablation)

# %% [markdown]
# ## Chinese queries on the English CLIP
#
# `crosslingual.py` trained a small Chinese text encoder (a real `CLIPTextModelWithProjection`, one
# token per character) to put each Chinese caption where the frozen English CLIP puts the parallel
# English one: `L = ‖student(caption_zh) − teacher(caption_en)‖²`. No images were needed, yet Chinese
# text now lands in the space the image tower shares with English. First the recall of both
# languages on the same gallery of image embeddings:

# %%
recall = crosslingual.evaluate(n=N_TEST)
crosslingual.print_eval(recall)

# %% [markdown]
# One index built by the English tiny CLIP, queried in both languages. `search` sees Chinese
# characters and embeds the query with tiny-clip-zh. "左边的红色圆形" means "the red circle on the
# left", and English ShapesWorld has no word for a side: look whether every hit has a red circle on
# the left. (The picture's font has no CJK glyphs, so the query tile shows boxes.)

# %%
gallery = shapesworld.export("test", N_GALLERY, OUT / "gallery")
clip_retrieval.build_index(gallery, OUT / "index", "tiny")  # tiny-clip-zh was distilled into this CLIP only
for name, query in [("zh", "左边的红色圆形"), ("en", "a red circle")]:
    hits = clip_retrieval.search(OUT / "index", text=query, k=5)
    print(f"{query} ({hits['query']['lang']}):", [h["caption"] for h in hits["results"]])
    display(Image(filename=clip_retrieval.save_hits_picture(hits, OUT / f"search_{name}.png")))

# %% [markdown]
# ## LoRA and prefix tuning, checked against PEFT
#
# `lora.py` wraps a frozen linear layer W with a low-rank update, `W x + (α/r) B A x`, where A is
# random and B zero, so training starts from the unchanged model. `prefix_tuning.py` learns keys and
# values for N virtual tokens in every decoder layer (exactly a pre-filled KV cache). The check puts
# our adapter weights into PEFT's `LoraConfig` / `PrefixTuningConfig` models on copies of the same
# model (B set random first, so the update really moves the output) and compares outputs, trainable
# parameter counts and merged weights.

# %%
checked = finetuning_lab.run_checks()
checks.print_checks(checked)

# %% [markdown]
# ## A new colour, taught three ways (a short version)
#
# Every training image holds one pink object, a colour the tiny BLIP-2 never saw. Full fine-tuning,
# LoRA and prefix tuning get the same batches and are scored on new pink images ("pink: colours")
# and on the old test split (what they forgot). This run is deliberately tiny, `STEPS` steps per
# method, so it finishes in seconds on a CPU: it shows the mechanics (same batches, trainable
# counts, the adapter saved alone and reloaded), not the result. At the default length no method
# has learnt pink yet; the reference run below (300 steps × 32, ranks 1/4/16) is the one to read.

# %%
short = new_concept.experiment(
    STEPS, RANKS, n_train=N_TRAIN, n_new=N_NEW, n_old=N_OLD, out=OUT, options=training.Options(progress=False)
)
new_concept.print_table(short)
display(Image(filename=short["loss_plot"]))

# %% [markdown]
# The reference run (`make lora`). With q/v adapters at ranks 1 to 16, LoRA never made the decoder
# write " pink": its word pieces' embeddings were never trained and are tied to the output layer.
# Training those 4 embedding rows too (512 numbers) lets LoRA r=16 learn pink almost as well as full
# fine-tuning, with a twentieth of the trainable parameters and less forgetting; with adapters on
# every linear layer (`lora_all_layers`) LoRA learns it without the embeddings. (The files it names
# are where `make lora` writes them.)

# %%
new_concept.print_table(json.loads((REFERENCE / "new_concept.json").read_text()))
display(Image(filename="docs/img/week7/new_concept_loss.png"))

# %% [markdown]
# ## What the Q-Former is for
#
# BLIP-2's Q-Former hands the language model a fixed, short set of vectors (32 queries) however many
# patches the image has; LLaVA instead projects every patch. `qformer_lab.py` trains three connectors
# on one recipe (8 queries, 2 queries, a linear projector of every patch). Training them takes a few
# minutes on a CPU (`make qformer`), so here is the reference run: the projector captions best and
# is the cheapest connector, but makes the decoder read every patch.

# %%
qformer_lab.print_compare(json.loads((REFERENCE / "qformer.json").read_text()))
