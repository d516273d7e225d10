"""Week 4: attention, written plainly and proved equal to the libraries the demos ran on.

Scaled dot-product attention, for queries Q (T_q × d), keys K and values V (T_k × d):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V

where M is 0 where a query may look and -∞ where it may not (a causal mask hides the future, a
padding mask hides padding). Multi-head attention runs h of these side by side on d/h-wide
slices of learned projections, then mixes the heads with one more projection:

    head_i = Attention(X W_Qi, X W_Ki, X W_Vi)        MHA(X) = [head_1 … head_h] W_O

    python -m stage2_fundamentals.attention check [--json]
    python -m stage2_fundamentals.attention show --image outputs/week2/gallery/test_00001.png --out attn.png

`check` loads weights copied from torch.nn.MultiheadAttention, one CLIPAttention of the bundled
tiny CLIP and one OPT attention of the bundled tiny BLIP-2, and compares outputs on real inputs;
then the from-scratch decoder of `decoder.py` reproduces the tiny BLIP-2 language model's logits.
`show` draws what attends where: the ViT's [CLS] token over the image patches, layer by layer,
and the BLIP-2 decoder's tokens over the image queries and the words before them.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from curriculum import checks, cli, shapesworld, viz, zoo
from curriculum.images import load_image



# ---------------------------------------------------------------- attention from scratch
def causal_mask(t_q, t_k, device=None):
    """True where query i may see key j: j ≤ i. Aligned to the end, so the T_q newest queries
    against T_k ≥ T_q keys (a KV cache holds the older ones) see everything before them."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i


def scaled_dot_product_attention(q, k, v, mask=None, causal=False):
    """q: (..., T_q, d), k and v: (..., T_k, d); mask broadcasts to (..., T_q, T_k) and is either
    boolean (True = may attend) or additive (0 or -∞). Returns (output, attention weights)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # S = Q Kᵀ / √d
    # -∞ in the formula; the most negative float here, so that a row with nothing to see (a padding
    # query) gets uniform weights instead of NaN, which would leak into real rows through 0 × NaN
    hidden = torch.finfo(scores.dtype).min
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), hidden)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, hidden)                      # M = -∞ where not allowed
    elif mask is not None:
        scores = scores + mask                                          # S + M
    weights = scores.softmax(dim=-1)                                    # A = softmax(S + M), rows sum to 1
    return weights @ v, weights                                         # O = A V


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with h heads. The projection names match CLIP's and OPT's
    (q_proj, k_proj, v_proj, out_proj), so their state dicts load as they are."""

    def __init__(self, dim, heads, bias=True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def split_heads(self, x):
        """(B, T, D) -> (B, h, T, D/h): each head sees its own slice of the features."""
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, mask=None, causal=False, cache=None):
        """x: (B, T, D) queries; context: (B, S, D) keys/values (None: self-attention). `cache` is
        a KVCache slot: this call's keys and values are appended to it and attention runs over
        all of them. Returns (output (B, T, D), weights (B, h, T, S))."""
        source = x if context is None else context
        q = self.split_heads(self.q_proj(x))                            # Q_i = X W_Qi
        k = self.split_heads(self.k_proj(source))                       # K_i = X W_Ki
        v = self.split_heads(self.v_proj(source))                       # V_i = X W_Vi
        if cache is not None:
            k, v = cache.append(k, v)
        out, weights = scaled_dot_product_attention(q, k, v, mask, causal)
        b, _, t, _ = out.shape
        merged = out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)  # [head_1 … head_h]
        return self.out_proj(merged), weights                           # … W_O

    @classmethod
    def from_torch(cls, mha):
        """The same weights as a torch.nn.MultiheadAttention, whose q, k, v projections are one
        stacked (3D, D) matrix."""
        dim = mha.embed_dim
        ours = cls(dim, mha.num_heads, bias=mha.in_proj_bias is not None)
        with torch.no_grad():
            for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), mha.in_proj_weight.split(dim),
                                  mha.in_proj_bias.split(dim)):
                proj.weight.copy_(w)
                proj.bias.copy_(b)
            ours.out_proj.load_state_dict(mha.out_proj.state_dict())
        return ours

    @classmethod
    def from_hf(cls, layer):
        """The same weights as a transformers attention layer with q/k/v/out_proj (CLIP, OPT)."""
        dim = layer.q_proj.in_features
        ours = cls(dim, dim // layer.head_dim, bias=layer.q_proj.bias is not None)
        ours.load_state_dict(layer.state_dict())
        return ours.to(layer.q_proj.weight.dtype)


class KVCache:
    """Keys and values of the tokens already seen, one slot per layer: a decoder step then
    projects only the new token instead of the whole sequence again."""

    def __init__(self, layers):
        self.slots = [KVSlot() for _ in range(layers)]

    @property
    def length(self):
        """Tokens held. A property, not __len__: len() must return a plain int, which would freeze
        the length into a graph traced by torch.export (stage 3 exports the decoder with a cache)."""
        return 0 if self.slots[0].k is None else self.slots[0].k.shape[-2]

    def reorder(self, rows):
        """Keep batch rows `rows` (beam search continues some beams twice and drops others)."""
        for slot in self.slots:
            slot.k, slot.v = slot.k[rows], slot.v[rows]


class KVSlot:
    def __init__(self):
        self.k = self.v = None

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


# ---------------------------------------------------------------- check
def additive(mask):
    """Boolean mask (True = may attend) -> 0 / -∞ (the most negative float), the form transformers
    layers take."""
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


def padding_mask(lengths, t):
    """(B, 1, 1, T): True for the first `length` keys of each row, False for right padding."""
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


@torch.no_grad()
def check_sdpa(gen):
    q, k, v = (torch.randn(2, 4, 7, 16, generator=gen) for _ in range(3))
    pad = padding_mask([7, 4], 7)
    additive_mask = torch.randn(2, 4, 7, 7, generator=gen)
    cases = [("no mask", {}, {}),
             ("causal", {"causal": True}, {"is_causal": True}),
             ("padding (boolean)", {"mask": pad}, {"attn_mask": pad}),
             ("additive float mask", {"mask": additive_mask}, {"attn_mask": additive_mask})]
    return [checks.record(f"scaled_dot_product_attention, {label} vs torch SDPA",
                    scaled_dot_product_attention(q, k, v, **ours)[0], F.scaled_dot_product_attention(q, k, v, **theirs))
            for label, ours, theirs in cases]


@torch.no_grad()
def check_torch_mha(gen):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(mha)
    x = torch.randn(2, 6, 32, generator=gen)
    lengths = [6, 3]
    key_padding = ~padding_mask(lengths, 6)[:, 0, 0]  # torch: True = ignore
    theirs, their_weights = mha(x, x, x, key_padding_mask=key_padding, attn_mask=~causal_mask(6, 6),
                                average_attn_weights=False)
    out, weights = ours(x, mask=padding_mask(lengths, 6), causal=True)
    return [checks.record("MultiHeadAttention vs torch.nn.MultiheadAttention (causal + padding), output", out, theirs),
            checks.record("MultiHeadAttention vs torch.nn.MultiheadAttention, attention weights", weights,
                          their_weights)]


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
    vision_check = checks.record("MultiHeadAttention vs tiny CLIP vision CLIPAttention (layer 0)",
                                 MultiHeadAttention.from_hf(layer)(x)[0], layer(x)[0])
    tokens = processor(text=["a red circle", "a small blue square in the bottom right"], padding=True,
                       return_tensors="pt")
    t = tokens.input_ids.shape[1]
    allowed = causal_mask(t, t) & tokens.attention_mask.bool()[:, None, None, :]
    x = text.encoder.layers[0].layer_norm1(text.embeddings(tokens.input_ids))
    layer = text.encoder.layers[0].self_attn
    real = tokens.attention_mask.bool()  # padded query rows are never read, so compare real tokens
    return [vision_check,
            checks.record("MultiHeadAttention vs tiny CLIP text CLIPAttention (layer 0, causal + padding)",
                          MultiHeadAttention.from_hf(layer)(x, mask=allowed)[0], layer(x, additive(allowed))[0],
                          where=real)]


def decoder_embeds(model, pixel_values, input_ids):
    """What the BLIP-2 language model reads: the projected image queries where the processor put
    its <image> placeholders, word embeddings everywhere else."""
    embeds = model.get_input_embeddings()(input_ids)
    queries = model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
    is_image = (input_ids == model.config.image_token_id)[..., None]
    return embeds.masked_scatter(is_image, queries.to(embeds.dtype))


def blip2_decoder_inputs(model, processor, images, prompts):
    """(decoder input embeddings, attention mask, token ids) for images and prompts."""
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    return decoder_embeds(model, inputs.pixel_values, inputs.input_ids), inputs.attention_mask, inputs.input_ids


@torch.no_grad()
def check_blip2(model, processor):
    from stage2_fundamentals.decoder import Decoder  # here, not at the top: decoder.py builds on this module

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
    return [checks.record("MultiHeadAttention vs tiny BLIP-2 OPTAttention (layer 0, causal + left padding)",
                    MultiHeadAttention.from_hf(layer)(x, mask=allowed)[0],
                    layer(x, attention_mask=additive(allowed))[0], where=real),
            checks.record("from-scratch Decoder vs tiny BLIP-2 OPTForCausalLM, logits on image + prompt",
                    logits, lm(inputs_embeds=embeds, attention_mask=attention_mask).logits, where=real)]


def run_checks(clip_name="tiny", blip2_name="tiny"):
    gen = torch.Generator().manual_seed(0)
    clip, clip_processor = zoo.load_clip(clip_name, "cpu")
    blip2, blip2_processor = zoo.load_blip2(blip2_name, "cpu")
    return {"checks": check_sdpa(gen) + check_torch_mha(gen) + check_clip(clip.float(), clip_processor)
            + check_blip2(blip2.float(), blip2_processor)}


# ---------------------------------------------------------------- show
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
        weights = MultiHeadAttention.from_hf(layer)(x)[1]               # (1, h, 1 + P, 1 + P)
        maps.append((f"layer {i + 1}", weights[0, :, 0, 1:].mean(0).view(side, side).numpy()))
    return maps


@torch.no_grad()
def decoder_attention(model, processor, image, prompt="", max_new_tokens=20):
    """The caption the model writes, then the last decoder layer's attention (mean over heads)
    of every caption token over the image queries and the text before it."""
    from stage2_fundamentals.decoder import Decoder  # here, not at the top: decoder.py builds on this module

    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    new = generated[0, inputs.input_ids.shape[1]:]
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
    return weights[rows, :rows.stop].numpy(), labels[rows.start + 1:], labels[:rows.stop], caption


def show(image_path, out, clip_name="tiny", blip2_name="tiny", prompt=""):
    image = load_image(image_path)
    clip, clip_processor = zoo.load_clip(clip_name, "cpu")
    blip2, blip2_processor = zoo.load_blip2(blip2_name, "cpu")
    maps = vision_cls_maps(clip.float(), clip_processor, image)
    matrix, row_labels, col_labels, caption = decoder_attention(blip2.float(), blip2_processor, image, prompt)
    viz.attention_figure(image, maps, matrix, row_labels, col_labels, out,
                         top_title="tiny CLIP ViT: where the [CLS] token looks, layer by layer (mean over heads)",
                         bottom_title=f"tiny BLIP-2 decoder, last layer (mean over heads): writing {caption!r},\n"
                                      "each word (row) looks at the image queries and the words before it")
    return {"image": str(image_path), "caption": caption, "out": str(out),
            "cls_peak_patch": [int(m.argmax()) for _, m in maps]}


# ---------------------------------------------------------------- command line
def main(argv=None):
    parser = cli.Parser(prog="python -m stage2_fundamentals.attention", description=__doc__,
                        formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove the from-scratch attention equal to torch and transformers")
    p = sub.add_parser("show", help="attention heatmaps for one image")
    p.add_argument("--image", required=True, help="a PNG or JPEG file")
    p.add_argument("--prompt", default="", help="text the decoder continues (default: none, a plain caption)")
    p.add_argument("--out", default="outputs/week4/attention.png")
    for p in (check, p):
        p.add_argument("--clip", default="tiny", help="CLIP: 'tiny' (bundled), a hub id or a folder")
        p.add_argument("--blip2", default="tiny", help="BLIP-2 OPT: 'tiny' (bundled), a hub id or a folder")
        p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "check":
        checks.emit(run_checks(args.clip, args.blip2), args.json)
    else:
        result = show(args.image, args.out, args.clip, args.blip2, args.prompt)
        cli.emit(result, args.json, lambda r: print(f"caption: {r['caption']}\npicture: {r['out']}"))


if __name__ == "__main__":
    cli.run(main)
