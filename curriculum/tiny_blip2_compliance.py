"""Teach the bundled tiny BLIP-2 to judge compliance: "is there a red cross?" answered by looking.

Asked directly, the bundled model answers "no" to every scene (week 9): in its training mix the
existence question named a random colour-shape pair, one of 24, so "no" was right 96% of the
time and the model learned that prior instead of looking. This fine-tune (vision tower still
frozen) keeps half of the bundled model's mix, so that it still captions, and makes the other
half existence questions balanced between the answers, with the "no"s mostly near misses:

    yes   a colour-shape pair that is in the scene                 is there a red cross?     yes
    no    2 in 3: one attribute of a present object changed        is there a red circle?    no   (a red cross is there)
                                                                   is there a blue cross?    no
          1 in 3: any pair that is absent                          is there a green square?  no

A near miss cannot be told from the truth by one word of the question: the answer has to bind
the colour to the shape, which is exactly where a caption rule's false positives come from.
Questions never name a held-out pair (week 1's zero-shot test pairs, never drawn in training):
"no" would be their only answer, a shortcut the test scenes would punish.

    python -m curriculum.tiny_blip2_compliance           writes outputs/train/tiny-blip2-compliance
    python -m curriculum.tiny_blip2_compliance --out data/models/tiny-blip2-compliance --force   (make tiny-models)

A new folder beside the bundled one, as tiny-blip2-prompts: the reference numbers measured on
data/models/tiny-blip2 stay valid. Week 9 measures its answers against the policy's categories.
"""

from dataclasses import dataclass

from curriculum import OUTPUTS_DIR, cli, shapesworld, training, zoo
from curriculum.tiny_blip2 import fit_captions, qa_prompt, training_example

# every pair a question may name: the held-out ones are never in a training scene
ASKABLE = [
    (color, shape)
    for color in shapesworld.COLORS
    for shape in shapesworld.SHAPES
    if (color, shape) not in shapesworld.HELDOUT_COMBINATIONS
]
NEAR_MISS_SHARE = 2 / 3  # of the "no" questions


def existence_question(question_pair):
    return f"is there a {question_pair[0]} {question_pair[1]}?"


def compliance_question(objects, rng):
    """(question, 'yes' | 'no'), each answer half the time; a 'no' changes one attribute of a
    present object NEAR_MISS_SHARE of the time, and names any absent askable pair otherwise."""
    present = sorted({(o.color, o.shape) for o in objects})
    if rng.random() < 0.5:
        return existence_question(present[int(rng.integers(len(present)))]), "yes"
    if rng.random() < NEAR_MISS_SHARE:
        o = objects[int(rng.integers(len(objects)))]
        candidates = [(c, o.shape) for c in shapesworld.COLORS] + [(o.color, s) for s in shapesworld.SHAPES]
    else:
        candidates = ASKABLE
    absent = [p for p in candidates if p in ASKABLE and p not in present]
    return existence_question(absent[int(rng.integers(len(absent)))]), "no"


def example(objects, rng):
    """(prompt, target): a compliance question half the time, the bundled model's own mix otherwise."""
    if rng.random() < 0.5:
        return training_example(objects, rng)
    question, answer = compliance_question(objects, rng)
    return qa_prompt(question), answer


@dataclass(frozen=True)
class Config:
    """What is learnt (a resumed checkpoint must match it)."""

    # Measured on 600 test scenes (red cross precision / recall at p(yes) >= 0.5): 600 steps at 3e-4
    # 0.13 / 0.84 (it says yes to red things), 2,000 at 3e-4 0.55 / 0.93, 2,000 at 1e-3 0.71 / 1.00,
    # 4,000 at 1e-3 0.88 / 1.00; 8,000 at 1e-3 on 30,000 images 0.84 / 1.00. From 4,000 on, nearly
    # every false positive is a scene with a held-out pair, and more steps do not remove them.
    steps: int = 4000
    batch_size: int = 64
    pool: int = 10_000
    lr: float = 1e-3
    warmup: bool = True  # linear warm-up over the first 5% of steps, then cosine decay (week 6's sweep)
    seed: int = 0
    base: str = "tiny"  # the BLIP-2 fine-tuned (its vision tower stays frozen)


def train(out, config=Config(), options=training.Options()):
    trainer = training.Trainer("tiny-blip2-compliance", out, config, options)
    model, processor = zoo.load_blip2(config.base, "cpu")
    model = model.float().train()
    model.vision_model.requires_grad_(False)
    model = fit_captions(
        trainer,
        model,
        processor,
        config,
        example,
        lambda optimizer: training.warmup_cosine(optimizer, config.steps, warmup=config.warmup),
        options,
    )
    trainer.save([model, processor], "tiny BLIP-2, fine-tuned on compliance questions: captioning loss")
    return trainer


def build_parser():
    p = training.parser(
        __doc__,
        OUTPUTS_DIR / "train" / "tiny-blip2-compliance",
        Config,
        "images per step",
        prog="python -m curriculum.tiny_blip2_compliance",
    )
    p.add_argument(
        "--lr",
        type=cli.Number(1e-7, 1.0),
        default=Config.lr,
        help=f"peak learning rate, 1e-7 to 1 (default {Config.lr:g})",
    )
    p.add_argument("--no-warmup", action="store_true", help="start at the peak rate (default: 5%% linear warm-up)")
    return p


def config_from_args(args):
    """The Config a command line asks for (provenance checks what `make tiny-models` would train)."""
    return Config(
        steps=args.steps,
        batch_size=args.batch_size,
        pool=args.pool,
        lr=args.lr,
        warmup=not args.no_warmup,
        seed=args.seed,
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    train(
        args.out,
        config_from_args(args),
        training.Options.from_args(args, __spec__.name, argv),
    )


if __name__ == "__main__":
    cli.run(main)
