# %% [markdown]
# # Week 12 — the interview sprint, backed by this repository
#
# Three things to rehearse with. Attention "on the whiteboard, batched, with masks", written with
# `torch.einsum` and checked against week 4's module and torch's own kernel. The plan's theory
# questions, each answered in a few sentences that name the command showing the answer. And STAR
# write-ups (Situation, Task, Action, Result) of the projects you built, every number read from the
# results the weeks wrote. The week's page: [docs/week12.md](../docs/week12.md).
#
# Nothing here needs a big model: both profiles run the same cells.

# %% tags=["parameters"]
PROFILE = None  # None: "hub" on Colab with a GPU, "tiny" elsewhere; or force "tiny" / "hub"
IMAGES = None  # not used this week
N_QUESTIONS = 2  # drill questions to show with their answers
SEED = None  # their order; None: a new one each run

# %%
from pathlib import Path

import torch
from IPython.display import Markdown, display

from curriculum import checks, cli, colab
from interview import drill, einsum_attention, star

PROFILE = colab.choose_profile(PROFILE)
MODELS = colab.models(PROFILE)
OUT = Path("outputs/notebooks/week12")
print(f"profile {PROFILE}; no model is loaded this week")

# %% [markdown]
# ## Attention with einsum
#
# The index letters carry the meaning: b batch, h head, q query position, k key position, d feature.
# `scores[b,h,q,k] = Σ_d Q[b,h,q,d] K[b,h,k,d] / √d`, then `out[b,h,q,d] = Σ_k A[b,h,q,k] V[b,h,k,d]`.
# First the shapes on a small batch with a causal mask and one padded sequence, then the checks:
# against week 4's `MultiHeadAttention`, torch's `scaled_dot_product_attention`, and four more drills
# (a cosine matrix, a batched one, the causal mask, a top-k gather, an overflow-safe softmax).

# %%
x = torch.randn(2, 5, 16)  # 2 sequences, 5 tokens, 16 features
w_q, w_k, w_v, w_o = (torch.randn(16, 16) / 4 for _ in range(4))
real_tokens = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # the second sequence is padded
out = einsum_attention.einsum_attention(x, w_q, w_k, w_v, w_o, heads=4, key_mask=real_tokens, causal=True)
print(f"x {tuple(x.shape)} -> attention output {tuple(out.shape)} (4 heads of 4 features each)\n")
checks.print_checks(einsum_attention.run_checks())

# %% [markdown]
# ## Drill: a question or two
#
# `interview/questions.md` holds the plan's theory questions and the usual follow-ups. Say your own
# answer first (out loud helps), then read the repository's, and run its demo in a terminal. The
# interactive quiz is `python -m interview.drill`; here are `N_QUESTIONS` of them, then the full list.

# %%
questions = drill.load()
for question in drill.order(questions, SEED, N_QUESTIONS):
    demo = f"\n\nDemo: `{question.demo}`" if question.demo else ""
    display(Markdown(f"### {question.text}\n\n{question.answer}{demo}"))
print("\n".join(f"{i:>2}. {q.text}" for i, q in enumerate(questions, 1)))

# %% [markdown]
# ## STAR write-ups from your results
#
# `star.write_up` reads every number from the JSON files the weeks' `make` targets wrote under
# `outputs/`; a result you have not measured yet names the target that measures it. On a fresh clone
# that is all of them, so the reference run's write-ups (`results/`, the numbers the docs show) follow:
# use them as the model, and your own once you have run the weeks.

# %%
mine, todo = star.write_up(star.Results("outputs"))
cli.write_text(mine + "\n", OUT / "star.md")
if todo:
    print(f"not measured in outputs/ yet: run `make {' '.join(todo)}`, then this cell again")
display(Markdown(mine))

# %% [markdown]
# The reference run's write-ups (each result names the file under `outputs/` that your own run of
# its target writes; the numbers here come from the same file under `results/`):

# %%
reference, _ = star.write_up(star.Results("results"))
display(Markdown(reference))
