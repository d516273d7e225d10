# %% [markdown]
# # Week 5 — Decoding, from scratch
#
# A language model only scores the next token; decoding is the loop around it: greedy, sampling
# with temperature, top-k and top-p, beam search with a length penalty, repetition penalties, and a
# KV cache that keeps the keys and values of the tokens already written.
# `stage2_fundamentals/decoding.py` writes each loop on week 4's from-scratch decoder, and
# `decoding_lab.py` proves them token-identical to transformers' `generate()`. This notebook runs
# those checks, then the plan's exercise: one image, many settings, and the repeated-text problem.
# The week's page: [docs/week05.md](../docs/week05.md).

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # a ShapesWorld-like image of your own for the sweep (the tiny model knows only shapes)
PROMPT = ""  # text the decoder continues in the sweep
SEED = 0  # for the sampling settings
FULL_CHECK = False  # True: decoding_lab's full check (20 cases x 10 searches, minutes on a CPU); False: 2 x 3

# %%
from pathlib import Path

from IPython.display import Image, display

from curriculum import checks, colab, shapesworld, viz
from curriculum.images import load_image
from stage1_demos.blip2_caption import fit_new_tokens
from stage2_fundamentals import decoding_lab
from stage2_fundamentals.decoding import Settings

PROFILE = colab.choose_profile(PROFILE)
OUT = Path("outputs/notebooks/week05")
print(f"profile {PROFILE}: BLIP-2 = tiny in both profiles (see below)")

# %% [markdown]
# ## Why the tiny BLIP-2, in both profiles
#
# Every loop here runs the from-scratch decoder in float32 on the CPU, so that it can be compared
# token for token with `generate()`. BLIP-2 OPT-2.7b in float32 needs about 15 GB of memory, more
# than a free Colab's 12.7 GB, and its Python loops would take minutes per caption. The tiny model is
# the same `Blip2ForConditionalGeneration` class; week 2 ran the settings on the real one through
# `generate()`.

# %% [markdown]
# ## One caption, written token by token
#
# `Captioner` is BLIP-2 with its decoder swapped for the from-scratch one (same weights): the image
# half (ViT → Q-Former → projection) gives the first "words", the prompt follows, and
# `decoding.decode` runs the loop that `Settings` describes.

# %%
captioner = decoding_lab.load_captioner("tiny")
image = shapesworld.sample("test", 1).image
examples = {
    "greedy": Settings(),
    "beam search, 3 beams": Settings(num_beams=3),
    "sampling, temperature 1.5": Settings(do_sample=True, temperature=1.5),
}
for name, settings in examples.items():
    tokens, seconds = decoding_lab.timed_decode(captioner, image, "", settings, SEED)
    print(f"{name:<26} {len(tokens):>3} tokens in {seconds * 1000:4.0f} ms: {captioner.text(tokens)}")

# %% [markdown]
# ## Proof: token-identical to `generate()`
#
# Each logits processor is compared with its transformers class on the same real logits, and each
# search with `generate()` under the same settings, with and without the KV cache. "differ from
# greedy" shows the setting mattered. The full check (`FULL_CHECK = True`, or
# `python -m stage2_fundamentals.decoding_lab check`) runs 20 cases (two test images, where the model
# is sure of itself, and three it never saw, noise and blank grey, where it is not, × 4 prompts) for
# 9 searches and takes minutes on a CPU; the quick one runs a test image and the blank grey one
# through greedy, beam search and sampling.

# %%
if FULL_CHECK:
    result = decoding_lab.run_checks("tiny")
else:
    test_image, *_, grey = decoding_lab.check_images()  # a test image (sure) and a blank grey one (unsure)
    images = [test_image, grey]
    cases = [(im, "") for im in images]
    greedy = [captioner.generate(im, prompt, Settings()) for im, prompt in cases]
    quick = ("greedy", "beam search, 3 beams", "sampling (T 1.3, top-k 20, top-p 0.9), same seed")
    searches = [(name, s) for name, s in decoding_lab.SEARCH_CHECKS if name in quick]
    library = {name: decoding_lab.library_outputs(captioner, cases, s) for name, s in searches}  # generate()'s
    result = {
        "checks": decoding_lab.check_processors(captioner, images)
        + [decoding_lab.check_search(captioner, cases, greedy, library[name], name, s) for name, s in searches]
    }
checks.print_checks(result)
assert all(c["ok"] for c in result["checks"]), "a decoding loop no longer matches generate()"

# %% [markdown]
# ## The plan's exercise: one image, many settings
#
# A confident model gives the same caption under greedy and beam search. Temperature trades
# fidelity for variety; top-k and top-p cut the noisy tail that a high temperature lets in.

# %%
path = colab.gallery("tiny", 2, IMAGES)[-1]
room = fit_new_tokens("tiny", "transformers", [PROMPT], max(s.max_new_tokens for _, s in decoding_lab.SWEEP))
sweep = decoding_lab.sweep(path, PROMPT, SEED, "tiny", room)
decoding_lab.print_sweep(sweep)
lines = [f"{r['setting']}: {r['text']}" for r in sweep["rows"]]
display(Image(filename=viz.captioned_image(load_image(path), lines, OUT / "sweep.png", width=640)))

# %% [markdown]
# ## Repeated text, and what fixes it
#
# Does the captioner repeat by itself? The measurement searches settings a learner would use
# (greedy, beams, sampling, the detail prompt; `</s>` always allowed) and counts, over test scenes,
# the share of captions whose repeated 3-gram rate is above their scene's true caption's, beside the
# attribute scores of week 2. The bundled model learned to stop; an early checkpoint of the same
# recipe (`--early-steps 150` on the command line, trained in a few minutes) often names its first
# object again for the second. Asked for a longer caption than its own (`min_new_tokens`), the
# bundled model loops. Each problem gets each remedy (repetition penalty, no-repeat-n-gram, sampling,
# beams, length), and the fix is the remedy that removes the repetition with the best exact score.
# Here a small budget (a few scenes, greedy only, three remedies, no early checkpoint); docs/week05.md
# has the full run.

# %%
decoding_lab.print_repetition(decoding_lab.repetition(n=6, seed=SEED, early_steps=0, quick=True))

# %% [markdown]
# ## The KV cache
#
# Without a cache, step t re-runs all t tokens: n tokens cost O(n²) token passes, against O(n) with
# one. On the tiny decoder Python overhead dominates, so the gain is small and moves between runs;
# `make bench` adds an OPT-125m-shaped decoder, where it is about 5×.

# %%
prefix, _ = captioner.inputs(image, "")
for use_cache in (True, False):
    speed = decoding_lab.tokens_per_second(captioner.decoder, prefix, 48, use_cache, captioner.eos)
    print(f"{'with' if use_cache else 'without'} the KV cache: {speed:,.0f} tokens/s (48 new tokens, greedy)")
