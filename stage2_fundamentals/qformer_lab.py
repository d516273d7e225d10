"""Week 7's lab: what BLIP-2's Q-Former is for, measured against a plain projector (the LLaVA design).

BLIP-2 (§3) joins a frozen image encoder to a frozen language model with a Q-Former: k learned
query tokens that cross-attend to the image's patch features and come out as k vectors, which a
linear layer maps into the language model's input space. Real BLIP-2 trains it in two stages:
stage 1 (§3.2) with the frozen ViT alone, on image-text contrastive learning, image-text matching
and image-grounded text generation, so that the queries learn to pull out what text describes;
stage 2 (§3.3) puts the frozen LLM behind it and trains generation. The tiny BLIP-2 here skips
stage 1 (its decoder is not pretrained, so it learns along with the Q-Former in one stage).

LLaVA instead projects every patch token into the language model (a linear layer in LLaVA, a
2-layer MLP in LLaVA-1.5): nothing is compressed, and the decoder reads all of them.

    python -m stage2_fundamentals.qformer_lab compare [--steps 300] [--batch-size 32] [--out outputs/week7]

Each design is trained from scratch here with the same recipe (the bundled tiny CLIP's ViT,
frozen; the tiny BLIP-2's Q-Former and OPT decoder shapes; plain captions; same steps, batch,
learning rate and seed), then captions test images greedily.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import Blip2ForConditionalGeneration

from curriculum import cli, shapesworld, training, viz, zoo
from curriculum.tiny_blip2 import build_config, build_processor, caption, copy_clip_vision, init_qformer, reading_order
from curriculum.tiny_clip import pixels
from stage1_demos.blip2_caption import ATTRIBUTES, attribute_correct

OUT = "outputs/week7"


class Captioner(nn.Module):
    """Frozen ViT -> connector -> OPT decoder. The connector is BLIP-2's (query tokens, Q-Former,
    language projection: k vectors) or a linear projector of every patch token (LLaVA: 1 + P vectors)."""

    def __init__(self, blip2, projector=False):
        super().__init__()
        self.vision, self.language_model = blip2.vision_model, blip2.language_model
        if projector:
            self.projector = nn.Linear(blip2.config.vision_config.hidden_size, blip2.config.text_config.hidden_size)
        else:
            self.query_tokens, self.qformer = blip2.query_tokens, blip2.qformer
            self.language_projection = blip2.language_projection

    def prefix(self, pixel_values):
        """The vectors the decoder reads before the text: (B, k or 1 + P, D_text)."""
        patches = self.vision(pixel_values=pixel_values).last_hidden_state  # (B, 1 + P, D_vision)
        if hasattr(self, "projector"):
            return self.projector(patches)  # every patch, one linear map: H_v W
        queries = self.query_tokens.expand(patches.shape[0], -1, -1)
        ones = torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=patches, encoder_attention_mask=ones)
        return self.language_projection(out.last_hidden_state)  # k queries, whatever the image size

    def forward(self, pixel_values, input_ids, attention_mask, labels):
        """Captioning loss: next-token cross-entropy on the text, the prefix given."""
        prefix = self.prefix(pixel_values)
        n, p = prefix.shape[:2]
        embeds = torch.cat([prefix, self.language_model.get_input_embeddings()(input_ids)], dim=1)
        mask = torch.cat([torch.ones(n, p, dtype=attention_mask.dtype, device=prefix.device), attention_mask], dim=1)
        labels = torch.cat([torch.full((n, p), -100, dtype=labels.dtype, device=prefix.device), labels], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @torch.no_grad()
    def caption(self, pixel_values, bos, eos, max_new_tokens=32):
        """Greedy decoding from </s>, every row at once (no padding: all prefixes are the same length)."""
        embed = self.language_model.get_input_embeddings()
        prefix = self.prefix(pixel_values)
        ids = torch.full((prefix.shape[0], 1), bos, dtype=torch.long)
        done = torch.zeros(prefix.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits = self.language_model(inputs_embeds=torch.cat([prefix, embed(ids)], dim=1)).logits[:, -1]
            token = logits.argmax(dim=-1).masked_fill(done, eos)
            ids, done = torch.cat([ids, token[:, None]], dim=1), done | (token == eos)
            if done.all():
                break
        return ids[:, 1:]


def text_batch(tokenizer, targets):
    """input_ids = </s> target </s>, right-padded; labels = the same, -100 on the first </s> and padding."""
    rows = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in targets]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, 0] = -100
    return input_ids, attention_mask, labels


@dataclass(frozen=True)
class Design:
    """One connector, trained from scratch."""

    connector: str = "qformer"  # "qformer" or "projector"
    queries: int = 8  # Q-Former query tokens (the projector reads every patch instead)
    steps: int = 300
    batch_size: int = 32
    pool: int = 10_000
    lr: float = 1e-3
    seed: int = 0

    def label(self):
        return f"Q-Former, {self.queries} queries" if self.connector == "qformer" else "linear projector, every patch"


def new_captioner(design, processor):
    clip_vision = zoo.load_clip("tiny", "cpu")[0].vision_model
    torch.manual_seed(design.seed)
    config = build_config(processor.tokenizer, clip_vision.config)
    config.num_query_tokens = design.queries
    blip2 = Blip2ForConditionalGeneration(config)
    copy_clip_vision(clip_vision, blip2.vision_model)
    blip2.vision_model.requires_grad_(False)  # frozen, as BLIP-2 freezes its ViT
    init_qformer(blip2)
    return Captioner(blip2, projector=design.connector == "projector")


def train(design, options=training.Options()):
    """Returns (captioner, processor, losses)."""
    trainer = training.Trainer(design.label(), None, design, options)
    processor = build_processor()
    model = new_captioner(design, processor)
    data = shapesworld.generate("train", design.pool, seed=design.seed)
    images = np.stack([np.asarray(s.image) for s in data])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=design.lr, weight_decay=0.05, betas=(0.9, 0.98))
    model, optimizer = trainer.prepare(model, optimizer, training.warmup_cosine(optimizer, design.steps))
    for _ in trainer.steps(design.steps):
        idx = trainer.rng.choice(design.pool, design.batch_size, replace=False)
        input_ids, attention_mask, labels = text_batch(processor.tokenizer, [caption(data[i].objects) for i in idx])
        total = int((labels != -100).sum())
        for rows in trainer.micro_batches(design.batch_size):
            loss = model(
                pixels(images[idx[rows]], processor.image_processor).to(trainer.device),
                input_ids[rows].to(trainer.device),
                attention_mask[rows].to(trainer.device),
                labels[rows].to(trainer.device),
            )
            # a mean over target tokens, and rows hold different numbers of them
            trainer.backward(trainer.share_of_mean(loss, int((labels[rows] != -100).sum()), total))
    return trainer.unwrap().eval().cpu(), processor, trainer.progress.losses


def caption_accuracy(model, processor, samples, batch_size=100):
    """Greedy captions of the samples; share naming each attribute right, and all four, seen vs held-out pairs."""
    tokenizer = processor.tokenizer
    captions = []
    for i in range(0, len(samples), batch_size):
        chunk = np.stack([np.asarray(s.image) for s in samples[i : i + batch_size]])
        ids = model.caption(pixels(chunk, processor.image_processor), tokenizer.bos_token_id, tokenizer.eos_token_id)
        captions += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    groups = {}
    for name, keep in (("seen", False), ("heldout", True)):
        rows = [i for i, s in enumerate(samples) if s.heldout == keep]
        parsed = {i: shapesworld.parse_caption(captions[i]) for i in rows}
        groups[name] = {
            a: round(float(np.mean([attribute_correct(samples[i].objects, parsed[i], a) for i in rows])), 4)
            for a in ATTRIBUTES
        } | {
            "exact": round(
                float(np.mean([reading_order(parsed[i]) == reading_order(samples[i].objects) for i in rows])), 4
            ),
            "n": len(rows),
        }
    return groups, captions


def compare(steps=300, batch_size=32, n_test=300, out=OUT, options=training.Options()):
    designs = [
        Design("qformer", 8, steps, batch_size),
        Design("qformer", 2, steps, batch_size),
        Design("projector", 8, steps, batch_size),
    ]
    training.start(options, "qformer designs", [batch_size])
    samples = shapesworld.generate("test", n_test)
    rows, curves = [], {}
    for design in designs:
        model, processor, losses = train(design, options)
        if not training.is_main_process():
            continue
        groups, captions = caption_accuracy(model, processor, samples)
        prefix = model.prefix(torch.zeros(1, 3, 64, 64)).shape[1]
        caption_tokens = float(np.mean([len(processor.tokenizer(c).input_ids) + 1 for c in captions]))
        curves[design.label()] = losses
        rows.append(
            {
                "design": design.label(),
                "connector": design.connector,
                "queries": design.queries if design.connector == "qformer" else None,
                "prefix_tokens": prefix,
                "decoder_input_tokens": round(prefix + caption_tokens, 1),
                "connector_parameters": sum(
                    p.numel() for n, p in model.named_parameters() if not n.startswith(("vision.", "language_model."))
                ),
                **forward_flops(model, processor, samples[0]),
                "final_loss": round(float(np.mean(losses[-20:])), 4),
                "seen": groups["seen"],
                "heldout": groups["heldout"],
                "example": captions[0],
            }
        )
    if not training.is_main_process():
        return None
    plot = f"{out}/qformer.png"
    result = {"steps": steps, "batch_size": batch_size, "n_test": n_test, "rows": rows, "plot": plot}
    result["truth_example"] = samples[0].caption_en
    with cli.atomic_paths(plot, f"{out}/qformer.json") as (plot_file, json_file):  # both or neither
        viz.lines(curves, plot_file, f"Q-Former vs projector: {steps} steps × {batch_size}", "step", "loss")
        cli.write_json(result, json_file)
    return result


def forward_flops(model, processor, sample):
    """Compute, counted rather than timed (a shared machine's speed drifts): the forward pass of one
    image and its caption, split into the connector (Q-Former or projector) and the decoder.
    The frozen ViT costs the same in every design and is left out."""
    pixel_values = pixels(np.asarray(sample.image)[None], processor.image_processor)
    input_ids, attention_mask, labels = text_batch(processor.tokenizer, [caption(sample.objects)])
    with FlopCounterMode(display=False) as whole:
        model(pixel_values, input_ids, attention_mask, labels)
    with FlopCounterMode(display=False) as vision:
        model.vision(pixel_values=pixel_values)
    with FlopCounterMode(display=False) as connector:
        model.prefix(pixel_values)
    connector_flops = connector.get_total_flops() - vision.get_total_flops()
    decoder_flops = whole.get_total_flops() - connector.get_total_flops()
    return {"connector_mflops": round(connector_flops / 1e6, 2), "decoder_mflops": round(decoder_flops / 1e6, 2)}


def print_compare(result):
    print(f"{result['steps']} steps × {result['batch_size']} each; greedy captions of {result['n_test']} test images\n")
    print(f"{'design':<32}{'prefix':>7}{'dec. len':>9}{'params':>9}{'MFLOPs':>8}{'colour':>8}{'shape':>7}", end="")
    print(f"{'position':>9}{'all':>6}{'held-out all':>13}")
    for r in result["rows"]:
        s, flops = r["seen"], r["connector_mflops"] + r["decoder_mflops"]
        print(
            f"{r['design']:<32}{r['prefix_tokens']:>7}{r['decoder_input_tokens']:>9.1f}{r['connector_parameters']:>9,}"
            f"{flops:>8.1f}{s['color']:>8.3f}{s['shape']:>7.3f}{s['position']:>9.3f}{s['exact']:>6.3f}"
            f"{r['heldout']['exact']:>13.3f}"
        )
    print(f"\nplot: {result['plot']}")


def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.qformer_lab", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "compare", help="Q-Former (8 and 2 queries) vs a linear projector of every patch: accuracy, cost"
    )
    p.add_argument(
        "--steps",
        type=cli.Count(1, training.MAX_STEPS),
        default=300,
        help=f"training steps per design, up to {training.MAX_STEPS:,} (default 300)",
    )
    p.add_argument(
        "--batch-size",
        type=cli.Count(1, training.MAX_BATCH),
        default=32,
        help=f"images per step, up to {training.MAX_BATCH:,} (default 32)",
    )
    # seen and held-out pairs are scored apart: the test split's first held-out pair is its third image
    p.add_argument(
        "--n-test", type=cli.Count(3, 10_000), default=300, help="test images captioned, 3 to 10,000 (default 300)"
    )
    p.add_argument(
        "--out", type=cli.OutFolder(), default=OUT, help=f"folder for qformer.json and qformer.png (default {OUT})"
    )
    p.add_argument("--json", action="store_true")
    training.add_run_args(p, checkpoints=False)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = training.Options.from_args(args, __spec__.name, argv)
    result = compare(args.steps, args.batch_size, args.n_test, args.out, options)
    if result is not None:
        cli.emit(result, args.json, print_compare)


if __name__ == "__main__":
    cli.run(main)
