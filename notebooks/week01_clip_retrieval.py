# %% [markdown]
# # Week 1 — CLIP: search images by text and by image
#
# CLIP has two encoders, one for images and one for text, trained so that a photo and its caption
# land close together in one vector space. Embed a gallery once, and every query is one encoder pass
# plus a dot product. This notebook indexes a gallery, runs text and image queries, measures recall
# on ShapesWorld and classifies zero-shot, all with the project's own `stage1_demos` functions.
# The week's page: [docs/week01.md](../docs/week01.md).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # a folder of your own photos (on Colab, upload them into /content/images)
N_IMAGES = 100  # gallery size (the hub profile has 6 photos unless IMAGES holds more)
QUERIES = None  # your own text queries (a list of strings); None: the profile's examples
K = 5  # hits per query
N_EVAL = 300  # ShapesWorld test images for the recall table (the docs use 1,000)
N_ZEROSHOT = 200  # single-object test images for zero-shot classification (the docs use 600)
N_PROBE = 400  # train images for the linear probe (the docs use 2,000)

# %%
from pathlib import Path

from IPython.display import Image, display

from curriculum import colab
from stage1_demos import clip_retrieval, clip_zeroshot

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week01")
print(f"profile {PROFILE}: CLIP = {MODELS['clip']}")

# %% [markdown]
# ## Index a gallery
#
# `build_index` runs every image through the image tower once, L2-normalises the vectors (so cosine
# similarity is a plain dot product) and stores them in a FAISS inner-product index beside a
# `meta.json` naming the model. The tiny profile indexes ShapesWorld test images; the hub profile a
# handful of COCO photos (or your `IMAGES` folder, all of it).

# %%
files = colab.gallery(PROFILE, N_IMAGES, IMAGES)
meta = clip_retrieval.build_index(files[0].parent, OUT / "index", MODELS["clip"])
print(f"indexed {len(meta['paths'])} images, {meta['dim']}-d vectors, model {meta['model']}")

# %% [markdown]
# ## Text → image
#
# Each query goes through the text tower only; its score against an image is the cosine between the
# two vectors. Look at how the scores fall off after the matching images, and try a query that names
# something the gallery does not hold.

# %%
EXAMPLES = {
    "tiny": [
        "a red circle",
        "a large blue square in the bottom right",
        "a small yellow cross at the top left and a large green triangle at the bottom right",
    ],
    "hub": ["two cats lying on a couch", "a stop sign", "a tennis player swinging a racket"],
}
for i, query in enumerate(QUERIES or EXAMPLES[PROFILE]):
    result = clip_retrieval.search(OUT / "index", text=query, k=K)
    display(Image(filename=clip_retrieval.save_hits_picture(result, OUT / f"text_{i}.png")))

# %% [markdown]
# ## Image → image
#
# The same index answers an image query: the query image goes through the image tower, and its
# nearest neighbours come back. The first hit is the query itself, with a score of 1.

# %%
result = clip_retrieval.search(OUT / "index", image=files[min(7, len(files) - 1)], k=K)
display(Image(filename=clip_retrieval.save_hits_picture(result, OUT / "image_query.png")))

# %% [markdown]
# ## How good is it? Recall@k on ShapesWorld
#
# A hit counts when the retrieved image holds the same objects as the query's caption. Held-out
# combinations are colour-shape pairs the tiny model never saw in training: CLIP composes them from
# parts it knows. The real CLIP never saw ShapesWorld at all, so its table is a zero-shot transfer.

# %%
recall = clip_retrieval.evaluate(MODELS["clip"], "test", N_EVAL)
clip_retrieval.print_eval_table(recall)

# %% [markdown]
# ## Zero-shot classification (the CLIP paper, §3.1)
#
# Each class name goes into a prompt; the text embeddings act as the weights of a linear classifier.
# One template, an ensemble of templates, and a linear probe trained on labelled image features: the
# probe scores 0 on the colour-shape pairs its training set never held, because a classifier trained
# on labels has no weight for them, while zero-shot builds its weights from text.

# %%
zeroshot = clip_zeroshot.evaluate(MODELS["clip"], N_ZEROSHOT, N_PROBE)
clip_zeroshot.print_result(zeroshot)
display(Image(filename=clip_zeroshot.picture(zeroshot, OUT / "zeroshot.png")))
