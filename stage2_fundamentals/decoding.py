"""Week 5: how a decoder writes text, one token at a time, from scratch.

A language model gives, for the text so far, a score (logit) z_v for every word piece v of the
vocabulary; softmax turns them into the next token's distribution p(v) = exp(z_v) / Σ exp(z_u).
Decoding is the loop around it: pick a token, append it, ask again, until </s> or a length limit.

    greedy         y = argmax z                      (one path: always the likeliest next token)
    sampling       y ~ softmax(z / T)                 temperature T < 1 sharpens, > 1 flattens
    top-k / top-p  sample only among the k likeliest / the smallest set holding probability p
    beam search    keep the B likeliest partial texts by Σ log p; a finished text scores
                   Σ log p / length^α (α = length_penalty: > 0 favours longer texts)
    repetition     a token already in the text gets its logit divided by θ (multiplied if < 0)
    no-repeat-n    a token that would repeat an n-gram already in the text is forbidden
    KV cache       keys and values of earlier tokens are kept, so each step runs the new token only

On BLIP-2 the "text so far" starts with the image: the Q-Former's queries, projected into the
decoder's embedding space, then the prompt. The image half comes from transformers (week 2); the
decoder is the from-scratch one of week 4, and every loop here is checked against `generate()`.

decoding_lab.py checks every loop against `generate()` and runs the sweep, the repetition fix and
the KV-cache benchmark (`python -m stage2_fundamentals.decoding_lab check`).
"""
from dataclasses import asdict, dataclass

import torch

from curriculum import cli

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 30
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1: off
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # 0: off
    min_new_tokens: int = 0        # </s> is forbidden before this many tokens
    length_penalty: float = 1.0
    early_stopping: bool = False
    use_cache: bool = True

    def generate_kwargs(self):
        """The same settings as `generate()` arguments."""
        kwargs = asdict(self)
        kwargs.pop("min_new_tokens")
        return kwargs | {"min_new_tokens": self.min_new_tokens or None, "top_k": self.top_k or None}

    def validate(self):
        if self.max_new_tokens <= 0 or self.num_beams <= 0:
            raise cli.UserError("max_new_tokens and num_beams must be positive")
        if not self.temperature > 0:
            raise cli.UserError(f"temperature must be above 0, got {self.temperature} (it divides the logits)")
        if not 0 < self.top_p <= 1:
            raise cli.UserError(f"top_p must be in (0, 1], got {self.top_p} (1 keeps every token)")
        if self.repetition_penalty <= 0 or self.top_k < 0 or self.no_repeat_ngram_size < 0:
            raise cli.UserError("repetition_penalty must be above 0; top_k and no_repeat_ngram_size 0 or more")
        if self.num_beams > 1 and self.do_sample:
            raise cli.UserError("beam search here is deterministic: use --num-beams 1 with sampling")
        return self


# ---------------------------------------------------------------- logits processors
# Each takes scores (rows, vocab) and the token ids so far (rows, T), and returns new scores.
def apply_repetition_penalty(scores, context, penalty):
    seen = scores.gather(1, context)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)        # z / θ if z > 0, z · θ if z < 0
    return scores.scatter(1, context, seen)


def apply_no_repeat_ngram(scores, context, n):
    """Forbid every token that would complete an n-gram the context already holds."""
    scores = scores.clone()
    for row, ids in enumerate(context.tolist()):
        prefix = ids[len(ids) - n + 1:]  # the last n-1 tokens: the start of the n-gram being written
        banned = {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == prefix}
        scores[row, list(banned)] = NEG_INF
    return scores


def apply_temperature(scores, temperature):
    return scores / temperature                                         # p ∝ exp(z / T)


def apply_top_k(scores, k):
    kth = scores.topk(min(k, scores.shape[-1])).values[..., -1:]
    return scores.masked_fill(scores < kth, NEG_INF)                     # keep the k likeliest


def apply_top_p(scores, p):
    """Nucleus: keep the likeliest tokens until their probability reaches p (at least one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs                          # Σ p of the tokens ranked above
    remove = mass_before >= p
    return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def process(scores, context, s, generated, eos):
    """The settings' processors, in generate()'s order: penalties first, then the sampling warpers."""
    if s.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, context, s.repetition_penalty)
    if s.no_repeat_ngram_size:
        scores = apply_no_repeat_ngram(scores, context, s.no_repeat_ngram_size)
    if generated < s.min_new_tokens:
        scores = scores.clone()
        scores[:, eos] = NEG_INF
    if s.do_sample:
        if s.temperature != 1.0:
            scores = apply_temperature(scores, s.temperature)
        if s.top_k:
            scores = apply_top_k(scores, s.top_k)
        if s.top_p < 1.0:
            scores = apply_top_p(scores, s.top_p)
    return scores


# ---------------------------------------------------------------- search loops
class Stepper:
    """Feeds the decoder: the whole sequence every step (no cache) or only the new tokens (cache)."""

    def __init__(self, decoder, prefix, use_cache):
        self.decoder, self.embeds = decoder, prefix
        self.cache = decoder.new_cache(prefix.shape[0]) if use_cache else None
        self.pending = prefix  # what the decoder has not seen yet

    def logits(self):
        inputs = self.pending if self.cache is not None else self.embeds
        self.pending = None
        return self.decoder(inputs, cache=self.cache).logits[:, -1].float()

    def append(self, tokens, rows=None):
        """Add one token per row; `rows` first picks which rows continue (beam search)."""
        if rows is not None:
            self.embeds = self.embeds[rows]
            if self.cache is not None:
                self.cache.reorder(rows)
        self.pending = self.decoder.embed_tokens(tokens)[:, None]
        self.embeds = torch.cat([self.embeds, self.pending], dim=1)


@torch.no_grad()
def greedy_or_sample(decoder, prefix, context, s, eos):
    """Greedy (argmax) or, with do_sample, one draw from the processed distribution per step."""
    stepper, tokens = Stepper(decoder, prefix, s.use_cache), []
    for step in range(s.max_new_tokens):
        scores = process(stepper.logits(), context, s, step, eos)
        if s.do_sample:
            token = torch.multinomial(scores.softmax(dim=-1), 1)[:, 0]  # y ~ softmax(z')
        else:
            token = scores.argmax(dim=-1)                               # y = argmax z'
        tokens.append(int(token))
        if tokens[-1] == eos:
            break
        context = torch.cat([context, token[:, None]], dim=1)
        stepper.append(token)
    return tokens


class BeamRules:
    """Three rules of beam search that generate() fixes and a from-scratch one easily gets wrong
    while still writing sensible text. decoding_lab's `mistakes` breaks each in turn and counts the
    checks that catch it."""

    def may_finish(self, rank, n):
        return rank < n  # only a top-n candidate may finish (as in generate()); the rest are spares

    def length(self, new_tokens, prefix_length):
        return new_tokens  # the tokens written, </s> included; not the image's queries and the prompt

    def stop(self, s, best_running, worst_finished):
        """Once n texts have finished (scores already divided by length^length_penalty):
        early_stopping stops at once; generate()'s default stops when the best running beam, at its
        current length, can no longer beat the worst finished text."""
        return s.early_stopping or best_running <= worst_finished


GENERATE_RULES = BeamRules()


@torch.no_grad()
def beam_search(decoder, prefix, context, s, eos, rules=GENERATE_RULES):
    """Keep the num_beams likeliest partial texts; return the best finished one. A candidate
    finishes with </s> (or at the length limit) and is scored Σ log p / length^length_penalty."""
    n = s.num_beams
    stepper = Stepper(decoder, prefix.expand(n, -1, -1), s.use_cache)
    context = context.expand(n, -1)
    beams = [[] for _ in range(n)]
    # all beams start as the same text: only the first may expand, or step 1 would pick n copies
    beam_scores = torch.tensor([0.0] + [-1e9] * (n - 1))
    finished = []  # (score, tokens), best first, at most n
    for step in range(s.max_new_tokens):
        log_probs = process(stepper.logits().log_softmax(dim=-1), context, s, step, eos)
        totals = (beam_scores[:, None] + log_probs).view(-1)           # log p(beam) + log p(y | beam)
        vocab = log_probs.shape[-1]
        top_scores, top_index = totals.topk(2 * n)  # 2n: even if n of them end, n can continue
        last = step == s.max_new_tokens - 1
        penalty = rules.length(step + 1, prefix.shape[1]) ** s.length_penalty  # length^α
        continuing = []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            beam, token = divmod(index, vocab)
            if token == eos or last:
                if rules.may_finish(rank, n):
                    finished.append((score / penalty, beams[beam] + [token]))      # Σ log p / length^α
            elif len(continuing) < n:
                continuing.append((beam, token, score))
        finished = sorted(finished, key=lambda f: f[0], reverse=True)[:n]
        if last:
            break
        rows = torch.tensor([b for b, _, _ in continuing])
        tokens = torch.tensor([t for _, t, _ in continuing])
        beams = [beams[b] + [t] for b, t, _ in continuing]
        beam_scores = torch.tensor([score for _, _, score in continuing])
        context = torch.cat([context[rows], tokens[:, None]], dim=1)
        stepper.append(tokens, rows)
        if len(finished) == n and rules.stop(s, beam_scores[0] / penalty, finished[-1][0]):
            break
    return finished[0][1]


def decode(decoder, prefix, context, s, eos, rules=GENERATE_RULES):
    """The new tokens (ending in </s> unless the length limit came first); `rules` are beam search's."""
    if s.validate().num_beams > 1:
        return beam_search(decoder, prefix, context, s, eos, rules)
    return greedy_or_sample(decoder, prefix, context, s, eos)
