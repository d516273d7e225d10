"""Week 7: cross-lingual CLIP, the plan's suggested innovation: Chinese queries, English CLIP.

The Multilingual-CLIP recipe (Carlsson et al. 2022): keep CLIP frozen, and teach a new text
encoder (the student) to put a Chinese caption where CLIP's own text tower (the teacher) puts
the parallel English caption:

    L = ‖ student(caption_zh) - teacher(caption_en) ‖²        (mean squared error per dimension)

No images are needed for training, only parallel text; afterwards Chinese text lands in the
space the image tower already shares with English, so one image index serves both languages.
Here the parallel text is ShapesWorld's: full captions in every template, partial ones
("红色圆形" / "a red circle") as people type them, and sides of the image, which English
ShapesWorld never says: "左边的红色圆形" (the red circle on the left) learns the mean of the
teacher's "a red circle in the top left" and "... in the bottom left". The student is a real
CLIPTextModelWithProjection with a character-level tokenizer (a Chinese character is a word).

    python -m stage2_fundamentals.crosslingual train [--steps 2000] [--nproc 2]   (writes outputs/train/tiny-clip-zh)
    python -m stage2_fundamentals.crosslingual train --out data/models/tiny-clip-zh --force   (make tiny-models)
    python -m stage2_fundamentals.crosslingual eval [--json]
    python -m stage1_demos.clip_retrieval search --index IDX --text "左边的红色圆形"
"""

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

from curriculum import OUTPUTS_DIR, cli, shapesworld, training, zoo
from stage1_demos.clip_retrieval import embed_images, embed_texts, embed_texts_zh, recall_table

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_TOKENS = 48
PARTIAL = 0.3  # share of pairs that leave size and/or position unsaid, as tiny_clip's training does
SIDE = 0.1  # share of pairs that name a side of the image, e.g. 左边的红色圆形 (the red circle on the left)
# side -> the quadrants it covers; English captions have no sides, so the teacher's target for a
# side is the mean of its embeddings for the two quadrants
SIDES = {
    "左边": ("top left", "bottom left"),
    "右边": ("top right", "bottom right"),
    "上边": ("top left", "top right"),
    "下边": ("bottom left", "bottom right"),
}


def parallel_pair(objects, rng):
    """(a Chinese caption, the English captions whose mean embedding it should get): full
    captions, partial ones, or one object on a side of the image."""
    r = rng.random()
    if r < SIDE:
        o = objects[int(rng.integers(len(objects)))]
        side = [s for s, quadrants in SIDES.items() if o.position in quadrants][int(rng.integers(2))]
        o = replace(o, size=o.size if rng.random() < 0.5 else None)
        zh = f"{side}的" + shapesworld.describe_zh(replace(o, position=None))
        return zh, [shapesworld.describe_en(replace(o, position=q)) for q in SIDES[side]]
    if r < SIDE + PARTIAL:
        named = objects if rng.random() < 0.5 else [objects[int(rng.integers(len(objects)))]]
        named = [
            replace(o, size=o.size if rng.random() < 0.5 else None, position=o.position if rng.random() < 0.5 else None)
            for o in named
        ]
        return (
            "，".join(shapesworld.describe_zh(o) for o in named),
            [" and ".join(shapesworld.describe_en(o) for o in named)],
        )
    return (
        shapesworld.caption_zh(objects, int(rng.integers(len(shapesworld.ZH_TEMPLATES)))),
        [shapesworld.caption_en(objects, int(rng.integers(len(shapesworld.EN_TEMPLATES))))],
    )


def build_tokenizer(texts):
    """BERT-style, one token per Chinese character (as Chinese BERT does); [SEP] ends the text and
    is where the CLIP text tower pools."""
    chars = sorted({ch for text in texts for ch in text})
    with tempfile.TemporaryDirectory() as folder:  # BertTokenizer reads its vocabulary from a file
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(SPECIALS + chars) + "\n", encoding="utf-8")
        return BertTokenizer(str(vocab_file), tokenize_chinese_chars=True, model_max_length=MAX_TOKENS)


def build_student(tokenizer, teacher_config, hidden=64, layers=2, heads=2):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=teacher_config.projection_dim,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return CLIPTextModelWithProjection(config)


@dataclass(frozen=True)
class Config:
    """What is learnt (a resumed checkpoint must match it)."""

    steps: int = 2000
    batch_size: int = 256
    pool: int = 30_000
    lr: float = 2e-3
    seed: int = 0


def train(out, config=Config(), options=training.Options()):
    trainer = training.Trainer("tiny-clip-zh", out, config, options)
    teacher, processor = zoo.load_clip("tiny", "cpu")
    rng = np.random.default_rng(config.seed)  # the parallel corpus: the same whatever the process count
    data = shapesworld.generate("train", config.pool, seed=config.seed, progress=trainer.is_main and options.progress)
    pairs = [parallel_pair(s.objects, rng) for s in data]
    zh = [p[0] for p in pairs]
    tokenizer = build_tokenizer(zh + [s.caption_zh for s in shapesworld.generate("val", 200)])
    # the teacher is frozen: its targets are computed once, for each distinct English caption
    english = sorted({text for _, texts in pairs for text in texts})
    embedded = np.concatenate(
        [teacher_embeddings(teacher, processor, english[i : i + 1024]) for i in range(0, len(english), 1024)]
    )
    row = {text: i for i, text in enumerate(english)}
    targets = torch.from_numpy(np.stack([embedded[[row[t] for t in texts]].mean(0) for _, texts in pairs]))
    student = build_student(tokenizer, teacher.config)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.01)
    student, optimizer = trainer.prepare(student, optimizer, training.warmup_cosine(optimizer, config.steps))
    for _ in trainer.steps(config.steps):
        idx = trainer.rng.choice(config.pool, config.batch_size, replace=False)
        for rows in trainer.micro_batches(config.batch_size):
            tokens = tokenizer([zh[i] for i in idx[rows]], padding=True, return_tensors="pt").to(trainer.device)
            # ‖student(zh) - teacher(en)‖², a mean over the rows
            trainer.backward(F.mse_loss(student(**tokens).text_embeds, targets[idx[rows]].to(trainer.device)))
    trainer.save([student, tokenizer], "tiny-clip-zh: distillation loss (MSE to the English CLIP)", teacher="tiny-clip")
    return trainer


@torch.no_grad()
def teacher_embeddings(teacher, processor, texts):
    inputs = processor.tokenizer(texts, padding=True, return_tensors="pt")
    return teacher.get_text_features(**inputs).pooler_output.numpy()


def evaluate(n=1000, seed=0):
    """text->image recall on the test split: English captions through the tiny CLIP, the same
    images' Chinese captions through tiny-clip-zh, one gallery of image embeddings."""
    clip, processor = zoo.load_clip("tiny", "cpu")
    samples = shapesworld.generate("test", n, seed=seed)
    images = embed_images(clip, processor, [s.image for s in samples])
    en = recall_table(samples, images, embed_texts(clip, processor, [s.caption_en for s in samples]))
    zh = recall_table(
        samples, images, embed_texts_zh(*zoo.load_clip_zh("tiny", "cpu"), [s.caption_zh for s in samples])
    )
    return {
        "n": n,
        "en": {**en["text_to_image"], "heldout_R@1": en["heldout_combinations"]["R@1"]},
        "zh": {**zh["text_to_image"], "heldout_R@1": zh["heldout_combinations"]["R@1"]},
        "gap_R@1": round(en["text_to_image"]["R@1"] - zh["text_to_image"]["R@1"], 4),
    }


def print_eval(result):
    print(f"text -> image on {result['n']} ShapesWorld test images (one gallery, the tiny CLIP's image embeddings)")
    print(f"{'query language':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'held-out R@1':>14}")
    for lang in ("en", "zh"):
        r = result[lang]
        print(f"{lang:<16}{r['R@1']:>8.3f}{r['R@5']:>8.3f}{r['R@10']:>8.3f}{r['heldout_R@1']:>14.3f}")
    print(f"gap (en - zh) R@1: {result['gap_R@1']:+.3f}")


def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.crosslingual", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # the command line every trainer has (--out and --force, --steps, --batch-size, --pool, --seed, the run flags)
    trainer = training.parser(None, OUTPUTS_DIR / "train" / "tiny-clip-zh", Config, "parallel caption pairs")
    sub.add_parser(
        "train", parents=[trainer], add_help=False, help="distil a Chinese text tower into the tiny CLIP's space"
    )
    score = sub.add_parser("eval", help="zh->image vs en->image recall on the test split")
    score.add_argument("--out", type=cli.OutFile(".json"), help="also write the result as JSON here")
    score.add_argument("--json", action="store_true")
    return parser


def config_from_args(args):
    """The Config a command line asks for (provenance checks what `make tiny-models` would train)."""
    return Config(steps=args.steps, batch_size=args.batch_size, pool=args.pool, seed=args.seed)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train":
        train(
            args.out,
            config_from_args(args),
            training.Options.from_args(args, __spec__.name, argv),
        )
    else:
        result = evaluate()
        if args.out:
            cli.write_json(result, args.out)
        cli.emit(result, args.json, print_eval)


if __name__ == "__main__":
    cli.run(main)
