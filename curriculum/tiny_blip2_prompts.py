"""Teach the bundled tiny BLIP-2 the plan's prompt exercise: a short fine-tune, saved beside it.

The bundled model learned "Describe the image in detail." but never a request for brevity, and
no Chinese prompt, so the plan's comparison ("请详细描述" vs "用一句话描述") could not be seen.
This continues its training (vision tower still frozen) on a mix of what it already knew and
five new things:

    Describe the image in one sentence.   a red circle and a blue square         (what, not where or how big)
    请详细描述                              two shapes: in the top left there is ...  (the detailed answer)
    用一句话描述                             a red circle and a blue square
    Question: is there a red cross? Answer:   yes / no, asked about a shape in the image half the time

Answers stay English: the tokenizer's merges were learned from English, so Chinese is read byte
by byte (three tokens a character) and the decoder never learned to write it. The existence
questions are balanced because the original mix drew a colour-shape pair at random, so "yes"
was rare and the model learned to answer "no" without looking (week 9's visual-question rule);
this short fine-tune moves that prior but does not ground the answer (week 9 measures it).

    python -m curriculum.tiny_blip2_prompts           writes outputs/train/tiny-blip2-prompts
    python -m curriculum.tiny_blip2_prompts --out data/models/tiny-blip2-prompts --force   (make tiny-blip2-prompts)

A new folder, not the bundled one: every other week's reference numbers (parity, decoding,
ONNX, benchmarks) were measured on data/models/tiny-blip2 and stay valid.
"""

from dataclasses import dataclass

from curriculum import OUTPUTS_DIR, cli, shapesworld, training, zoo
from curriculum.tiny_blip2 import (
    DETAIL_PROMPT,
    detailed_caption,
    fit_captions,
    photo_caption,
    qa_prompt,
    training_example,
)

ONE_SENTENCE_PROMPT = "Describe the image in one sentence."
DETAIL_PROMPT_ZH = "请详细描述"
ONE_SENTENCE_PROMPT_ZH = "用一句话描述"
# prompt -> what it asks for; the comparison of week 2 runs these four
PROMPT_STYLES = {
    DETAIL_PROMPT: "detail",
    ONE_SENTENCE_PROMPT: "one sentence",
    DETAIL_PROMPT_ZH: "detail",
    ONE_SENTENCE_PROMPT_ZH: "one sentence",
}


def existence_question(objects, rng):
    """'is there a <colour> <shape>?', about a shape in the image half the time: (question, yes/no)."""
    if rng.random() < 0.5:
        o = objects[int(rng.integers(len(objects)))]
        color, shape = o.color, o.shape
    else:
        color, shape = str(rng.choice(list(shapesworld.COLORS))), str(rng.choice(list(shapesworld.SHAPES)))
    present = any((x.color, x.shape) == (color, shape) for x in objects)
    return f"is there a {color} {shape}?", "yes" if present else "no"


def example(objects, rng):
    """(prompt, target): the new styles 40% of the time, the bundled model's own mix otherwise."""
    style = rng.choice(["old", "new prompt", "exists"], p=[0.6, 0.3, 0.1])
    if style == "old":
        return training_example(objects, rng)
    if style == "exists":
        question, answer = existence_question(objects, rng)
        return qa_prompt(question), answer
    prompt = list(PROMPT_STYLES)[int(rng.integers(len(PROMPT_STYLES)))]
    return prompt, detailed_caption(objects) if PROMPT_STYLES[prompt] == "detail" else photo_caption(objects)


@dataclass(frozen=True)
class Config:
    """What is learnt (a resumed checkpoint must match it)."""

    steps: int = 400
    batch_size: int = 64
    pool: int = 10_000
    lr: float = 3e-4
    seed: int = 0
    base: str = "tiny"  # the BLIP-2 fine-tuned (its vision tower stays frozen)


def train(out, config=Config(), options=training.Options()):
    trainer = training.Trainer("tiny-blip2-prompts", out, config, options)
    model, processor = zoo.load_blip2(config.base, "cpu")
    model = model.float().train()
    model.vision_model.requires_grad_(False)
    model = fit_captions(
        trainer,
        model,
        processor,
        config,
        example,
        lambda optimizer: training.warmup_cosine(optimizer, config.steps),
        options,
    )
    trainer.save([model, processor], "tiny BLIP-2, fine-tuned on the prompt exercise: captioning loss")
    return trainer


def build_parser():
    return training.parser(
        __doc__,
        OUTPUTS_DIR / "train" / "tiny-blip2-prompts",
        Config,
        "images per step",
        prog="python -m curriculum.tiny_blip2_prompts",
    )


def config_from_args(args):
    """The Config a command line asks for (provenance checks what `make tiny-models` would train)."""
    return Config(steps=args.steps, batch_size=args.batch_size, pool=args.pool, seed=args.seed)


def main(argv=None):
    args = build_parser().parse_args(argv)
    train(
        args.out,
        config_from_args(args),
        training.Options.from_args(args, __spec__.name, argv),
    )


if __name__ == "__main__":
    cli.run(main)
