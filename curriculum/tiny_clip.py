"""Train the bundled tiny CLIP: the real `transformers.CLIPModel`, small enough for 2 CPU cores.

It learns ShapesWorld with CLIP's contrastive loss (several positives allowed) and is saved with
`save_pretrained`, so every script loads it exactly like `openai/clip-vit-base-patch32`.

    python -m curriculum.tiny_clip [--out outputs/train/tiny-clip] [--nproc 2] [--resume]   (docs/training.md)
    python -m curriculum.tiny_clip --out data/models/tiny-clip --force   (make tiny-models: replaces the bundled one)

The tokenizer is a real `CLIPTokenizer` (byte-level BPE, `</w>` word ends) whose merges are
learned from ShapesWorld captions, so every caption word is one token and any other text still
tokenizes, byte by byte.
"""

import itertools
from dataclasses import astuple, dataclass, replace

import numpy as np
import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from curriculum import OUTPUTS_DIR, bpe, cli, shapesworld, training

IMAGE_SIZE = 64
MAX_TOKENS = 32


def build_tokenizer(n_captions=4000):
    """BPE merges learned from ShapesWorld captions, vocabulary laid out like OpenAI's CLIP:
    256 byte symbols, the same with `</w>`, the merges, then <|startoftext|>, <|endoftext|>."""
    texts = [s.caption_en for s in shapesworld.generate("train", n_captions)]
    texts += [
        shapesworld.caption_en(s.objects, t)
        for s in shapesworld.generate("val", 200)
        for t in range(len(shapesworld.EN_TEMPLATES))
    ]
    merges = bpe.learn_merges(CLIPTokenizer(), texts, end_of_word_suffix="</w>")
    base = bpe.byte_alphabet()
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_processor():
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=build_tokenizer())


def build_config(tokenizer, hidden=64, patch=16, text_layers=2, vision_layers=4, heads=2, projection=64):
    """Same classes and wiring as ViT-B/32 CLIP, scaled down: 64 px images, 16 px patches."""
    specials = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        **specials,
    )
    vision = dict(
        image_size=IMAGE_SIZE,
        patch_size=patch,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def pixels(images, image_processor):
    """uint8 NHWC -> normalised NCHW floats: what the processor computes for IMAGE_SIZE inputs."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std


PARTIAL_CAPTIONS = 0.3  # share of training captions that leave size and/or position unsaid


def training_caption(objects, rng):
    """(caption, objects it names, whether it describes the whole image).

    Most captions are full ShapesWorld captions in a random template; the rest name one or all
    objects with size and/or position left out ('a red circle'), so short queries work too.
    """
    if rng.random() >= PARTIAL_CAPTIONS:
        template = int(rng.integers(len(shapesworld.EN_TEMPLATES)))
        return shapesworld.caption_en(objects, template), objects, True
    named = objects if rng.random() < 0.5 else [objects[int(rng.integers(len(objects)))]]
    named = [
        replace(o, size=o.size if rng.random() < 0.5 else None, position=o.position if rng.random() < 0.5 else None)
        for o in named
    ]
    return " and ".join(shapesworld.describe_en(o) for o in named), named, False


def mention_table(objects):
    """(images x mentions) booleans, and each mention's column. A mention is an object with size
    and/or position possibly unsaid (None); image i fits mention m if one of its objects does."""
    mentions = itertools.product(
        shapesworld.COLORS, shapesworld.SHAPES, [*shapesworld.SIZES, None], [*shapesworld.POSITIONS, None]
    )
    column = {m: c for c, m in enumerate(mentions)}
    table = np.zeros((len(objects), len(column)), dtype=bool)
    for i, image_objects in enumerate(objects):
        for o in image_objects:
            for size, position in itertools.product((o.size, None), (o.position, None)):
                table[i, column[(o.color, o.shape, size, position)]] = True
    return table, column


def contrastive_loss(logits_per_text, positives):
    """CLIP's symmetric InfoNCE, with several positives where a partial caption fits several images:
    L = -1/2 [ mean_i sum_j p_ij log softmax_j(s_ij) + mean_j sum_i q_ij log softmax_i(s_ij) ],
    p = positives normalised over images (rows), q = over captions (columns). With one positive
    per row and column this is exactly `CLIPModel(..., return_loss=True).loss`."""
    p = positives / positives.sum(dim=1, keepdim=True)
    q = positives / positives.sum(dim=0, keepdim=True)
    text_to_image = -(p * logits_per_text.log_softmax(dim=1)).sum(dim=1).mean()
    image_to_text = -(q * logits_per_text.log_softmax(dim=0)).sum(dim=0).mean()
    return (text_to_image + image_to_text) / 2


@dataclass(frozen=True)
class Config:
    """What is learnt (a resumed checkpoint must match it)."""

    steps: int = 1200
    batch_size: int = 256
    pool: int = 30_000
    lr: float = 1e-3
    seed: int = 0


def train(out, config=Config(), options=training.Options()):
    trainer = training.Trainer("tiny-clip", out, config, options, contrastive=True)
    processor = build_processor()
    model = CLIPModel(build_config(processor.tokenizer))
    data = shapesworld.generate(
        "train", config.pool, seed=config.seed, size=IMAGE_SIZE, progress=trainer.is_main and options.progress
    )
    images = np.stack([np.asarray(s.image) for s in data])
    objects = [s.objects for s in data]
    key_ids = {}
    keys = np.array([key_ids.setdefault(shapesworld.label_key(o), len(key_ids)) for o in objects])
    fits, column = mention_table(objects)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.1, betas=(0.9, 0.98))
    model, optimizer = trainer.prepare(model, optimizer, training.warmup_cosine(optimizer, config.steps))
    for _ in trainer.steps(config.steps):
        idx = trainer.rng.choice(config.pool, config.batch_size, replace=False)
        # a fresh caption each time an image is drawn: more text variety for free
        captions, named, whole = zip(*(training_caption(objects[i], trainer.rng) for i in idx))
        # positives[i, j]: caption i is true of image j (a partial caption can fit several images)
        batch_keys, batch_fits = keys[idx], fits[idx]
        positives = (
            torch.from_numpy(
                np.stack(
                    [
                        batch_keys == keys[i] if w else batch_fits[:, [column[astuple(o)] for o in n]].all(axis=1)
                        for i, n, w in zip(idx, named, whole)
                    ]
                )
            )
            .float()
            .to(trainer.device)
        )
        for rows in trainer.micro_batches(config.batch_size):
            text = processor.tokenizer(list(captions[rows]), padding=True, return_tensors="pt").to(trainer.device)
            out = model(**text, pixel_values=pixels(images[idx[rows]], processor.image_processor).to(trainer.device))
            # every process gathers the whole global batch and computes the full B × B loss (each the same):
            # s_ij = exp(logit_scale) · t_i · v_j over all B captions i and B images j
            text_embeds, image_embeds = trainer.gather(out.text_embeds), trainer.gather(out.image_embeds)
            logits = trainer.unwrap().logit_scale.exp() * text_embeds @ image_embeds.T
            trainer.backward(contrastive_loss(logits.float(), positives))
    trainer.save([model, processor], "tiny CLIP: contrastive loss")
    return trainer


def build_parser():
    return training.parser(
        __doc__,
        OUTPUTS_DIR / "train" / "tiny-clip",
        Config,
        "contrastive batch",
        prog="python -m curriculum.tiny_clip",
        min_batch=2,
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
