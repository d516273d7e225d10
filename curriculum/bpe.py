"""Byte-level BPE merges learned from ShapesWorld text, for the tiny models' real tokenizers."""

import json

from tokenizers import pre_tokenizers, trainers


def learn_merges(scratch_tokenizer, texts, end_of_word_suffix=""):
    """Train `scratch_tokenizer`'s backend on `texts`; return its merges as (left, right) pairs.

    The scratch tokenizer only lends its normaliser and pre-tokeniser (CLIP's or GPT-2's), so
    the merges fit the real tokenizer class they are handed to."""
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=end_of_word_suffix,
        show_progress=False,
    )
    scratch_tokenizer.backend_tokenizer.train_from_iterator(texts, trainer=trainer)
    return [tuple(m) for m in json.loads(scratch_tokenizer.backend_tokenizer.to_str())["model"]["merges"]]


def byte_alphabet():
    """The 256 printable stand-ins byte-level BPE uses for raw bytes, in a fixed order."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())
