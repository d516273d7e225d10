"""Train the bundled tiny BLIP-2: the real `transformers.Blip2ForConditionalGeneration`, scaled down.

Image -> ViT (Blip2VisionModel) -> Q-Former (learned query tokens cross-attend to the patches)
-> language projection -> OPT decoder, which reads the projected queries as if they were the
first words of the text. Saved with `save_pretrained` next to a `Blip2Processor`, so scripts load
it exactly like `Salesforce/blip2-opt-2.7b`.

    python -m curriculum.tiny_blip2 [--out outputs/train/tiny-blip2] [--nproc 2] [--resume]   (docs/training.md)
    python -m curriculum.tiny_blip2 --out data/models/tiny-blip2 --force   (make tiny-models: replaces the bundled one)

It learns four prompt styles, so that prompts visibly steer it:
    (no prompt)                       a small red circle in the top left and ...
    a photo of                        a red circle and a blue square
    Describe the image in detail.     two shapes: in the top left there is a small red circle and ...
    Question: what colour is the shape? Answer:      red

Real BLIP-2 starts from a pretrained CLIP-style ViT (EVA-CLIP) and a pretrained OPT, freezes both
and trains only the Q-Former. Here the ViT is the bundled tiny CLIP's vision tower (week 1),
frozen the same way; there is no pretrained tiny OPT, so the decoder learns with the Q-Former.
Freezing matters here too: with the ViT trained along (copied or from scratch), the captions
stayed at chance on where the shapes are (the quadrants a caption names right in 0.26 of them
after 800 steps, a looser score than week 2's position, which binds each place to its object);
frozen, 0.92 after the same 800 steps.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    GPT2Tokenizer,
)

from curriculum import OUTPUTS_DIR, bpe, cli, shapesworld, training, zoo
from curriculum.tiny_clip import pixels

IMAGE_SIZE = 64
NUM_QUERY_TOKENS = 8
MAX_TOKENS = 64  # decoder positions: query tokens + prompt + answer

PHOTO_PROMPT = "a photo of"
DETAIL_PROMPT = "Describe the image in detail."
COUNTS = {1: "one", 2: "two"}
ORDER = list(shapesworld.POSITIONS)  # captions name objects in reading order


def qa_prompt(question):
    """BLIP-2's own VQA format: the answer is the continuation."""
    return f"Question: {question} Answer:"


def reading_order(objects):
    return sorted(objects, key=lambda o: ORDER.index(o.position))


def caption(objects):
    """What the model says with no prompt."""
    return shapesworld.caption_en(reading_order(objects), 0)


def photo_caption(objects):
    """The continuation of 'a photo of': what is there, not where or how big."""
    return " and ".join(shapesworld.describe_en(replace(o, size=None, position=None)) for o in reading_order(objects))


def detailed_caption(objects):
    n = len(objects)
    return f"{COUNTS[n]} shape{'s' * (n > 1)}: " + shapesworld.caption_en(reading_order(objects), 1)


def question_answer(objects, rng):
    """One question about the image in the forms the model is trained on, and its answer."""
    if len(objects) == 1:
        (o,) = objects
        kinds = {
            "what colour is the shape?": o.color,
            "what shape is it?": o.shape,
            "what size is the shape?": o.size,
            "where is the shape?": o.position,
        }
    else:
        o = objects[int(rng.integers(len(objects)))]
        unique = sum((p.color, p.shape) == (o.color, o.shape) for p in objects) == 1
        kinds = {
            f"what colour is the shape in the {o.position}?": o.color,
            f"what shape is in the {o.position}?": o.shape,
        }
        if unique:
            kinds |= {
                f"where is the {o.color} {o.shape}?": o.position,
                f"what size is the {o.color} {o.shape}?": o.size,
            }
    empty = [p for p in ORDER if p not in {x.position for x in objects}]
    if empty:
        kinds[f"what shape is in the {empty[int(rng.integers(len(empty)))]}?"] = "nothing"
    color, shape = str(rng.choice(list(shapesworld.COLORS))), str(rng.choice(list(shapesworld.SHAPES)))
    present = any((x.color, x.shape) == (color, shape) for x in objects)
    kinds[f"is there a {color} {shape}?"] = "yes" if present else "no"
    kinds["how many shapes are there?"] = COUNTS[len(objects)]
    question = list(kinds)[int(rng.integers(len(kinds)))]
    return question, kinds[question]


def training_example(objects, rng):
    """(prompt, target): a random prompt style, weighted towards plain captions and questions."""
    style = rng.choice(["caption", "photo", "detail", "question"], p=[0.3, 0.15, 0.15, 0.4])
    if style == "caption":
        return "", caption(objects)
    if style == "photo":
        return PHOTO_PROMPT, photo_caption(objects)
    if style == "detail":
        return DETAIL_PROMPT, detailed_caption(objects)
    question, answer = question_answer(objects, rng)
    return qa_prompt(question), answer


def corpus(n=3000):
    """Texts of every style, to learn the tokenizer's merges from."""
    rng = np.random.default_rng(0)
    texts = [PHOTO_PROMPT, DETAIL_PROMPT]
    for s in shapesworld.generate("val", n):
        question, answer = question_answer(s.objects, rng)
        texts += [
            caption(s.objects),
            photo_caption(s.objects),
            detailed_caption(s.objects),
            f"{qa_prompt(question)} {answer}",
        ]
    return texts


def build_tokenizer():
    """A real GPT2Tokenizer laid out like OPT's: <s> <pad> </s> <unk>, bytes, learned merges.
    Like OPT, it starts every text with </s> as its BOS token."""
    merges = bpe.learn_merges(GPT2Tokenizer(), corpus())
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokens = specials + bpe.byte_alphabet() + ["".join(m) for m in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        padding_side="left",
        model_max_length=MAX_TOKENS,
    )


def build_processor():
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Blip2Processor(
        image_processor=image_processor, tokenizer=build_tokenizer(), num_query_tokens=NUM_QUERY_TOKENS
    )


def build_config(tokenizer, clip_vision, qformer_hidden=64, text_hidden=128):
    """BLIP-2 OPT wiring, scaled down: the tiny CLIP's ViT shape, 8 query tokens, a 3-layer OPT."""
    vision = {
        k: getattr(clip_vision, k)
        for k in (
            "image_size",
            "patch_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_act",
            "layer_norm_eps",
        )
    }
    qformer = dict(
        hidden_size=qformer_hidden,
        intermediate_size=4 * qformer_hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        cross_attention_frequency=1,
        encoder_hidden_size=clip_vision.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    text = dict(
        model_type="opt",
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        word_embed_proj_dim=text_hidden,
        ffn_dim=4 * text_hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )


@torch.no_grad()
def copy_clip_vision(clip_vision, blip2_vision):
    """Load a CLIPVisionModel's weights into a Blip2VisionModel. Two differences: BLIP-2's ViT
    (EVA's) has no LayerNorm before its first layer, so CLIP's is dropped (the features change, but
    colour, shape and place can still be read from them); and CLIP's separate q, k, v projections
    become one fused qkv."""
    c, b = clip_vision, blip2_vision
    b.embeddings.class_embedding.copy_(c.embeddings.class_embedding.view(1, 1, -1))
    b.embeddings.patch_embedding.weight.copy_(c.embeddings.patch_embedding.weight)
    b.embeddings.patch_embedding.bias.zero_()  # CLIP's patch convolution has no bias
    b.embeddings.position_embedding.copy_(c.embeddings.position_embedding.weight[None])
    for cl, bl in zip(c.encoder.layers, b.encoder.layers):
        q, k, v = cl.self_attn.q_proj, cl.self_attn.k_proj, cl.self_attn.v_proj
        bl.self_attn.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        bl.self_attn.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        bl.self_attn.projection.load_state_dict(cl.self_attn.out_proj.state_dict())
        for name in ("layer_norm1", "layer_norm2", "mlp"):
            getattr(bl, name).load_state_dict(getattr(cl, name).state_dict())
    b.post_layernorm.load_state_dict(c.post_layernorm.state_dict())


@torch.no_grad()
def init_qformer(model):
    """Initialise what hub checkpoints always overwrite. transformers zero-fills the query tokens,
    which makes all queries identical (and the Q-Former's first LayerNorm divide by ~0), so they
    get LAVIS's N(0, 0.02). Cross-attention weights get std 1/sqrt(fan_in) instead of BERT's 0.02
    (made for width 768), so the queries' attention over the patches is not uniform at the start."""
    torch.nn.init.normal_(model.query_tokens, std=0.02)
    for name, module in model.qformer.named_modules():
        if "crossattention" in name and isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)


def batch_tokens(processor, prompts, targets):
    """input_ids = [<image> x queries] </s> prompt target </s>, right-padded; labels = the target
    and its </s>, -100 elsewhere (the loss ignores image tokens, prompt and padding)."""
    tokenizer = processor.tokenizer
    image = [tokenizer.convert_tokens_to_ids("<image>")] * NUM_QUERY_TOKENS
    rows, labels = [], []
    for prompt, target in zip(prompts, targets):
        prompt_ids = tokenizer(prompt).input_ids
        ids = tokenizer(f"{prompt} {target}" if prompt else target).input_ids + [tokenizer.eos_token_id]
        rows.append(image + ids)
        labels.append([-100] * (NUM_QUERY_TOKENS + len(prompt_ids)) + ids[len(prompt_ids) :])
    width = max(map(len, rows))
    pad = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
    return (
        torch.tensor([pad(r, tokenizer.pad_token_id) for r in rows]),
        torch.tensor([pad([1] * len(r), 0) for r in rows]),
        torch.tensor([pad(r, -100) for r in labels]),
    )


@dataclass(frozen=True)
class Config:
    """What is learnt (a resumed checkpoint must match it)."""

    steps: int = 1800
    batch_size: int = 128
    pool: int = 30_000
    lr: float = 1e-3
    seed: int = 0
    clip: str = "tiny"  # whose vision tower BLIP-2 starts from, frozen


def train(out, config=Config(), options=training.Options()):
    trainer = training.Trainer("tiny-blip2", out, config, options)
    processor = build_processor()
    clip_vision = zoo.load_clip(config.clip, "cpu")[0].vision_model
    model = Blip2ForConditionalGeneration(build_config(processor.tokenizer, clip_vision.config))
    copy_clip_vision(clip_vision, model.vision_model)
    model.vision_model.requires_grad_(False)
    init_qformer(model)

    def schedule(optimizer):  # linear warm-up, then linear decay to a tenth
        warmup = max(1, config.steps // 20)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, 1 - 0.9 * min(s, config.steps) / config.steps)
        )

    model = fit_captions(trainer, model, processor, config, training_example, schedule, options)
    trainer.save([model, processor], "tiny BLIP-2: captioning loss (next-token cross-entropy)")
    return trainer


def fit_captions(trainer, model, processor, config, example, schedule, options):
    """The captioning loop of both BLIP-2 trainers: config.steps AdamW steps (the frozen parts left
    out) of config.batch_size (prompt, target) pairs that example(objects, rng) writes for scenes of
    a seeded pool of config.pool; schedule(optimizer) sets the learning rate. Returns the prepared model."""
    data = shapesworld.generate(
        "train", config.pool, seed=config.seed, size=IMAGE_SIZE, progress=trainer.is_main and options.progress
    )
    images = np.stack([np.asarray(s.image) for s in data])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.05, betas=(0.9, 0.98))
    model, optimizer = trainer.prepare(model, optimizer, schedule(optimizer))
    for _ in trainer.steps(config.steps):
        idx = trainer.rng.choice(config.pool, config.batch_size, replace=False)
        prompts, targets = zip(*(example(data[i].objects, trainer.rng) for i in idx))
        input_ids, attention_mask, labels = batch_tokens(processor, prompts, targets)
        for rows in trainer.micro_batches(config.batch_size):
            loss = model(
                pixel_values=pixels(images[idx[rows]], processor.image_processor).to(trainer.device),
                input_ids=input_ids[rows].to(trainer.device),
                attention_mask=attention_mask[rows].to(trainer.device),
                labels=labels[rows].to(trainer.device),
            ).loss
            # the loss is a mean over the target tokens, and rows hold different numbers of them
            trainer.backward(trainer.share_of_mean(loss, target_tokens(labels[rows]), target_tokens(labels)))
    return model


def target_tokens(labels):
    """How many tokens the captioning loss averages over: token i predicts label i + 1."""
    return int((labels[:, 1:] != -100).sum())


def build_parser():
    return training.parser(
        __doc__, OUTPUTS_DIR / "train" / "tiny-blip2", Config, "images per step", prog="python -m curriculum.tiny_blip2"
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
