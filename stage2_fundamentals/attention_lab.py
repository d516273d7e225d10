"""Week 4's lab: attention from scratch (attention.py, decoder.py) proved equal to the libraries
the demos ran on, and pictures of what attends where.

    python -m stage2_fundamentals.attention_lab check [--json]
    python -m stage2_fundamentals.attention_lab show --image outputs/week2/gallery/test_00001.png --out attn.png

`check` loads weights copied from torch.nn.MultiheadAttention (with and without biases), one
CLIPAttention of the bundled tiny CLIP and one OPT attention of the bundled tiny BLIP-2, and
compares outputs on real inputs; then the from-scratch decoder of `decoder.py` reproduces the tiny
BLIP-2 language model's logits, and the encoder and decoder layers and positional encoding of
`transformer.py` ("Attention Is All You Need" §3) equal torch's and XLM's. `show` draws what
attends where: the ViT's [CLS] token over the image patches, layer by layer, and the BLIP-2
decoder's tokens over the image queries and the words before them.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.xlm.modeling_xlm import create_sinusoidal_embeddings

from curriculum import checks, cli, shapesworld, viz, zoo
from curriculum.images import load_image
from stage1_demos.blip2_caption import fit_new_tokens
from stage2_fundamentals.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention
from stage2_fundamentals.decoder import Decoder, blip2_decoder_inputs
from stage2_fundamentals.transformer import DecoderLayer, EncoderLayer, sinusoidal_positions


def additive(mask):
    """Boolean mask (True = may attend) -> 0 / -∞ (the most negative float), the form transformers
    layers take."""
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


@torch.no_grad()
def check_sdpa(gen):
    q, k, v = (torch.randn(2, 4, 7, 16, generator=gen) for _ in range(3))
    pad = padding_mask([7, 4], 7)
    additive_mask = torch.randn(2, 4, 7, 7, generator=gen)
    cases = [
        ("no mask", {}, {}),
        ("causal", {"causal": True}, {"is_causal": True}),
        ("padding (boolean)", {"mask": pad}, {"attn_mask": pad}),
        ("additive float mask", {"mask": additive_mask}, {"attn_mask": additive_mask}),
    ]
    return [
        checks.record(
            f"scaled_dot_product_attention, {label} vs torch SDPA",
            scaled_dot_product_attention(q, k, v, **ours)[0],
            F.scaled_dot_product_attention(q, k, v, **theirs),
        )
        for label, ours, theirs in cases
    ]


@torch.no_grad()
def check_torch_mha(gen, bias=True):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, bias=bias, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(mha)
    x = torch.randn(2, 6, 32, generator=gen)
    lengths = [6, 3]
    key_padding = ~padding_mask(lengths, 6)[:, 0, 0]  # torch: True = ignore
    theirs, their_weights = mha(
        x, x, x, key_padding_mask=key_padding, attn_mask=~causal_mask(6, 6), average_attn_weights=False
    )
    out, weights = ours(x, mask=padding_mask(lengths, 6), causal=True)
    label = "torch.nn.MultiheadAttention" + ("" if bias else " (bias=False)")
    return [
        checks.record(f"MultiHeadAttention vs {label} (causal + padding), output", out, theirs),
        checks.record(f"MultiHeadAttention vs {label}, attention weights", weights, their_weights),
    ]


def sample_images(n=2, split="test"):
    return [s.image for s in shapesworld.generate(split, n)]


@torch.no_grad()
def check_clip(clip, processor):
    """Layer 0 of the tiny CLIP's ViT (no mask) and of its text encoder (causal + padding), on the
    hidden states a real image and real captions produce at that point."""
    vision, text = clip.vision_model, clip.text_model
    pixel_values = processor(images=sample_images(), return_tensors="pt").pixel_values
    x = vision.encoder.layers[0].layer_norm1(vision.pre_layrnorm(vision.embeddings(pixel_values)))
    layer = vision.encoder.layers[0].self_attn
    vision_check = checks.record(
        "MultiHeadAttention vs tiny CLIP vision CLIPAttention (layer 0)",
        MultiHeadAttention.from_hf(layer)(x)[0],
        layer(x)[0],
    )
    tokens = processor(
        text=["a red circle", "a small blue square in the bottom right"], padding=True, return_tensors="pt"
    )
    t = tokens.input_ids.shape[1]
    allowed = causal_mask(t, t) & tokens.attention_mask.bool()[:, None, None, :]
    x = text.encoder.layers[0].layer_norm1(text.embeddings(tokens.input_ids))
    layer = text.encoder.layers[0].self_attn
    real = tokens.attention_mask.bool()  # padded query rows are never read, so compare real tokens
    return [
        vision_check,
        checks.record(
            "MultiHeadAttention vs tiny CLIP text CLIPAttention (layer 0, causal + padding)",
            MultiHeadAttention.from_hf(layer)(x, mask=allowed)[0],
            layer(x, additive(allowed))[0],
            where=real,
        ),
    ]


@torch.no_grad()
def check_blip2(model, processor):
    prompts = ["", "Question: what shape is it? Answer:"]
    embeds, attention_mask, _ = blip2_decoder_inputs(model, processor, sample_images(), prompts)
    lm = model.language_model
    t = embeds.shape[1]
    real = attention_mask.bool()  # left padding: compare the rows of real tokens
    allowed = causal_mask(t, t) & real[:, None, None, :]
    hf_decoder = lm.model.decoder
    positions = hf_decoder.embed_positions(attention_mask)
    x = hf_decoder.layers[0].self_attn_layer_norm(embeds + positions)
    layer = hf_decoder.layers[0].self_attn
    ours = Decoder.from_opt(lm)
    logits = ours(embeds, attention_mask).logits
    return [
        checks.record(
            "MultiHeadAttention vs tiny BLIP-2 OPTAttention (layer 0, causal + left padding)",
            MultiHeadAttention.from_hf(layer)(x, mask=allowed)[0],
            layer(x, attention_mask=additive(allowed))[0],
            where=real,
        ),
        checks.record(
            "from-scratch Decoder vs tiny BLIP-2 OPTForCausalLM, logits on image + prompt",
            logits,
            lm(inputs_embeds=embeds, attention_mask=attention_mask).logits,
            where=real,
        ),
    ]


@torch.no_grad()
def check_transformer_layers(gen):
    """§3 complete: the encoder and decoder layers of transformer.py vs torch's, in the paper's
    post-norm order and in the pre-norm order, with padding in the encoder's input."""
    x, memory = torch.randn(2, 6, 32, generator=gen), torch.randn(2, 5, 32, generator=gen)
    lengths = [5, 3]
    results = []
    for norm_first in (False, True):
        order = "pre-norm" if norm_first else "post-norm, as in the paper"
        torch.manual_seed(0)
        encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
        decoder = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
        ignore = ~padding_mask(lengths, 5)[:, 0, 0]  # torch: True = ignore
        real = padding_mask(lengths, 5)[:, 0, 0]  # padded rows are never read
        results += [
            checks.record(
                f"EncoderLayer vs torch.nn.TransformerEncoderLayer ({order}, padding)",
                EncoderLayer.from_torch(encoder)(memory, mask=padding_mask(lengths, 5)),
                encoder(memory, src_key_padding_mask=ignore),
                where=real,
            ),
            checks.record(
                f"DecoderLayer vs torch.nn.TransformerDecoderLayer ({order}, causal + cross-attention)",
                DecoderLayer.from_torch(decoder)(x, memory, memory_mask=padding_mask(lengths, 5)),
                decoder(x, memory, tgt_mask=~causal_mask(6, 6), memory_key_padding_mask=ignore),
            ),
        ]
    return results


@torch.no_grad()
def check_positions():
    """§3.5 vs XLM's sinusoidal embeddings in transformers (the paper's interleaved sin/cos layout)."""
    theirs = torch.empty(50, 64)
    create_sinusoidal_embeddings(50, 64, theirs)
    return [
        checks.record(
            "sinusoidal_positions vs transformers XLM sinusoidal embeddings", sinusoidal_positions(50, 64), theirs
        )
    ]


def run_checks(clip_name="tiny", blip2_name="tiny"):
    gen = torch.Generator().manual_seed(0)
    clip, clip_processor = zoo.load_clip(clip_name, "cpu")
    blip2, blip2_processor = zoo.load_blip2(blip2_name, "cpu")
    return {
        "checks": check_sdpa(gen)
        + check_torch_mha(gen)
        + check_torch_mha(gen, bias=False)
        + check_clip(clip.float(), clip_processor)
        + check_blip2(blip2.float(), blip2_processor)
        + check_transformer_layers(gen)
        + check_positions()
    }


# ---------------------------------------------------------------- show
SHOW_NEW_TOKENS = 20  # the longest caption `show` writes


class Recorder:
    """Forward pre-hooks that keep the input of each attention layer, to replay it through the
    from-scratch module (proved equal by `check`) and read its weights."""

    def __init__(self, layers):
        self.inputs = []
        self.hooks = [layer.register_forward_pre_hook(self.keep, with_kwargs=True) for layer in layers]

    def keep(self, module, args, kwargs):
        self.inputs.append(args[0] if args else kwargs["hidden_states"])

    def remove(self):
        for hook in self.hooks:
            hook.remove()


@torch.no_grad()
def vision_cls_maps(clip, processor, image):
    """[CLS] -> patch attention of every ViT layer, averaged over heads, as a grid of patches."""
    vision = clip.vision_model
    layers = [layer.self_attn for layer in vision.encoder.layers]
    recorder = Recorder(layers)
    try:
        vision(processor(images=[image], return_tensors="pt").pixel_values)
    finally:
        recorder.remove()
    side = vision.config.image_size // vision.config.patch_size
    maps = []
    for i, (layer, x) in enumerate(zip(layers, recorder.inputs)):
        weights = MultiHeadAttention.from_hf(layer)(x)[1]  # (1, h, 1 + P, 1 + P)
        maps.append((f"layer {i + 1}", weights[0, :, 0, 1:].mean(0).view(side, side).numpy()))
    return maps


@torch.no_grad()
def decoder_attention(model, processor, image, prompt="", max_new_tokens=SHOW_NEW_TOKENS):
    """The caption the model writes, then the last decoder layer's attention (mean over heads)
    of every caption token over the image queries and the text before it."""
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    new = generated[0, inputs.input_ids.shape[1] :]
    new = new[new != processor.tokenizer.pad_token_id]
    embeds, attention_mask, input_ids = blip2_decoder_inputs(model, processor, [image], [prompt])
    full = torch.cat([embeds, model.get_input_embeddings()(new)[None]], dim=1)
    weights = Decoder.from_opt(model.language_model)(full).weights[-1][0].mean(0)  # (T, T)
    ids = input_ids[0].tolist() + new.tolist()
    n_query = int((input_ids[0] == model.config.image_token_id).sum())
    labels = [f"q{i + 1}" for i in range(n_query)] + processor.tokenizer.convert_ids_to_tokens(ids[n_query:])
    labels = [label.replace("Ġ", "") for label in labels]
    # row i is the position that predicted new token i; the last token is never read, so no column
    rows = slice(len(ids) - len(new) - 1, len(ids) - 1)
    caption = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    return weights[rows, : rows.stop].numpy(), labels[rows.start + 1 :], labels[: rows.stop], caption


def show(image_path, out, clip_name="tiny", blip2_name="tiny", prompt="", max_new_tokens=SHOW_NEW_TOKENS):
    image = load_image(image_path)
    clip, clip_processor = zoo.load_clip(clip_name, "cpu")
    blip2, blip2_processor = zoo.load_blip2(blip2_name, "cpu")
    maps = vision_cls_maps(clip.float(), clip_processor, image)
    matrix, row_labels, col_labels, caption = decoder_attention(
        blip2.float(), blip2_processor, image, prompt, max_new_tokens
    )
    viz.attention_figure(
        image,
        maps,
        matrix,
        row_labels,
        col_labels,
        out,
        top_title="tiny CLIP ViT: where the [CLS] token looks, layer by layer (mean over heads)",
        bottom_title=f"tiny BLIP-2 decoder, last layer (mean over heads): writing {caption!r},\n"
        "each word (row) looks at the image queries and the words before it",
    )
    return {
        "image": str(image_path),
        "caption": caption,
        "out": str(out),
        "cls_peak_patch": [int(m.argmax()) for _, m in maps],
    }


# ---------------------------------------------------------------- command line
def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.attention_lab", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove the from-scratch attention equal to torch and transformers")
    p = sub.add_parser("show", help="attention heatmaps for one image")
    p.add_argument("--image", type=cli.InImage(), required=True, help="a PNG or JPEG file")
    p.add_argument(
        "--prompt",
        type=cli.Text(blank=True),
        default="",
        help="text the decoder continues (default: none, a plain caption); one that leaves the decoder's "
        "positions no room for a caption is refused, one that leaves less than 20 tokens shortens the caption",
    )
    p.add_argument(
        "--out",
        type=cli.OutFile(".png"),
        default="outputs/week4/attention.png",
        help="PNG to write (default %(default)s)",
    )
    for p in (check, p):
        p.add_argument(
            "--clip", type=cli.Model("clip"), default="tiny", help="CLIP: 'tiny' (bundled), a hub id or a folder"
        )
        p.add_argument(
            "--blip2",
            type=cli.Model("blip2"),
            default="tiny",
            help="BLIP-2 OPT: 'tiny' (bundled), a hub id or a folder",
        )
        p.add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "check":
        checks.emit(run_checks(args.clip, args.blip2), args.json)
    else:
        new_tokens = fit_new_tokens(args.blip2, "transformers", [args.prompt], SHOW_NEW_TOKENS)  # before the load
        result = show(args.image, args.out, args.clip, args.blip2, args.prompt, new_tokens)
        cli.emit(result, args.json, lambda r: print(f"caption: {r['caption']}\npicture: {r['out']}"))


if __name__ == "__main__":
    cli.run(main)
