# %% [markdown]
# # Week 2 — BLIP-2: captions, prompts and questions
#
# BLIP-2 joins a frozen image encoder to a frozen language model through a small Q-Former: its
# learned query tokens read the image patches and become a short "visual prompt" that the decoder
# (OPT) continues like text. Here the project's `stage1_demos.blip2_caption` captions a gallery,
# steers the caption with prompts, answers questions, changes the generation settings and prints
# every tensor shape on the way. The hub profile runs `Salesforce/blip2-opt-2.7b` in half precision
# on the GPU. The week's page: [docs/week02.md](../docs/week02.md).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # a folder of your own photos (on Colab, upload them into /content/images)
N_IMAGES = 8  # images to caption
PROMPTS = None  # your own prompts to compare (a list of strings); None: the profile's examples
QUESTION = None  # your own question about the first image; None: the profile's example
N_EVAL = 100  # ShapesWorld test images for the accuracy table (tiny profile; the docs use 500)

# %%
from pathlib import Path

import torch
from IPython.display import Image, display

from curriculum import colab, viz, zoo
from curriculum.images import load_image
from curriculum.tiny_blip2 import qa_prompt
from stage1_demos import blip2_caption

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week02")
print(f"profile {PROFILE}: BLIP-2 = {MODELS['blip2']}")

# %% [markdown]
# ## Load once, caption a gallery
#
# `zoo.load_blip2` picks the device (a GPU if there is one) and the precision (half on a GPU, float32
# on a CPU) and pads prompts on the left, so that a batch of prompts ends where the caption starts.
# `caption_images` calls `generate()` and keeps only the new tokens.

# %%
model, processor = zoo.load_blip2(MODELS["blip2"])
print(f"{sum(p.numel() for p in model.parameters()):,} parameters on {model.device}, {model.dtype}")
files = colab.gallery(PROFILE, N_IMAGES, IMAGES)
images = [load_image(f) for f in files]
captions = blip2_caption.caption_images(model, processor, images, [""] * len(images))
display(Image(filename=viz.image_grid(images, captions, OUT / "captions.png")))

# %% [markdown]
# ## A prompt is text for the decoder to continue
#
# The same image under several prompts. "a photo of" asks for a completion; "Question: … Answer:"
# (BLIP-2's own VQA format) asks for an answer. The tiny model learned a few prompt styles and only
# guesses at a prompt it never saw (the last one); the real OPT-2.7b continues whatever text it gets.
# `fit_new_tokens` lowers the caption length to what the decoder's positions leave after a prompt.

# %%
EXAMPLES = {
    "tiny": blip2_caption.PROMPTS + ["Describe the image in one sentence."],
    "hub": [
        "",
        "a photo of",
        qa_prompt("what is in the picture?"),
        qa_prompt("how many animals are there?"),
        "Describe the image in one sentence.",
    ],
}
prompts = PROMPTS or EXAMPLES[PROFILE]
settings = blip2_caption.GREEDY | {
    "max_new_tokens": blip2_caption.fit_new_tokens(MODELS["blip2"], "transformers", prompts, 40)
}
answers = blip2_caption.caption_images(model, processor, [images[0]] * len(prompts), prompts, settings)
lines = [f"{p or '(no prompt)'} -> {a}" for p, a in zip(prompts, answers)]
print("\n".join(lines))
display(Image(filename=viz.captioned_image(images[0], lines, OUT / "prompts.png")))

# %% [markdown]
# ## Ask a question

# %%
question = QUESTION or {"tiny": "how many shapes are there?", "hub": "what colour is the biggest object?"}[PROFILE]
answer = blip2_caption.caption_images(model, processor, [images[0]], [qa_prompt(question)], blip2_caption.QA)[0]
print(f"Q: {question}\nA: {answer}")

# %% [markdown]
# ## Generation settings
#
# Greedy decoding takes the most likely token each step; beam search keeps the 3 best partial
# captions; sampling draws each token from the distribution, flattened by a temperature above 1 and
# cut to the smallest set holding `top_p` of the mass. Week 5 rebuilds each of these loops.

# %%
variants = {
    "greedy": blip2_caption.GREEDY,
    "3 beams": blip2_caption.GREEDY | {"num_beams": 3},
    "sampling, T 1.3, top-p 0.9": blip2_caption.GREEDY | {"do_sample": True, "temperature": 1.3, "top_p": 0.9},
    "repetition_penalty 2": blip2_caption.GREEDY | {"repetition_penalty": 2.0},
}
for name, variant in variants.items():
    torch.manual_seed(0)  # what sampling draws from
    print(f"{name:<28} {blip2_caption.caption_images(model, processor, images[:1], [''], variant)[0]}")

# %% [markdown]
# ## How the image meets the text
#
# `explain` runs one image and a question through the model stage by stage (ViT patches → the
# Q-Former's queries → projection into the decoder's embedding size → joined with the prompt's
# tokens) and prints each real tensor shape beside `Salesforce/blip2-opt-2.7b`'s.

# %%
journey = blip2_caption.explain(model, processor, images[0], qa_prompt(question))
blip2_caption.print_explain(journey, MODELS["blip2"])

# %% [markdown]
# ## Accuracy on ShapesWorld (tiny profile)
#
# The score parses captions in ShapesWorld's own grammar ("a small red circle in the top left and
# ..."), which only the tiny model speaks: a real BLIP-2 describes the same picture in its own words
# and would score near zero for that reason alone, so the hub profile skips this cell. Held-out
# colour-shape pairs show what the tiny model has not learned.

# %%
if PROFILE == "tiny":
    accuracy = blip2_caption.evaluate(MODELS["blip2"], "test", N_EVAL)
    blip2_caption.print_eval_table(accuracy)
else:
    print("skipped: the accuracy table scores ShapesWorld's caption grammar, which only the tiny model writes")
