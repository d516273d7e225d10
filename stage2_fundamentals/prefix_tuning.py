"""Week 7: prefix tuning from scratch on the tiny BLIP-2 decoder, checked against PEFT.

Prefix tuning (Li & Liang 2021) leaves every weight of the language model frozen and learns, for
each attention layer, the keys and values of N "virtual tokens" that sit before the real input:

    head = softmax(Q [P_K ; K]ᵀ / √d) [P_V ; V]        P_K, P_V: N × d per layer and head, learned

Every real token can attend to them, so they steer the model like a prompt would, but they are
free vectors rather than words. In week 4's decoder they are exactly a pre-filled KV cache.
Optionally the prefix is reparameterised: an embedding per virtual token through a small MLP,
which trains more stably than the raw keys and values (the paper's trick; PEFT's
prefix_projection=True). The layout below is PEFT's, so PEFT's weights load into it as they are.

    python -m stage2_fundamentals.prefix_tuning check [--json]
"""
import torch
from torch import nn

from curriculum import checks, cli, shapesworld, zoo
from stage2_fundamentals.attention import KVCache, decoder_embeds
from stage2_fundamentals.decoder import Decoder


class Prefix(nn.Module):
    def __init__(self, layers, heads, head_dim, virtual_tokens, projection_dim=None):
        super().__init__()
        self.layers, self.heads, self.head_dim, self.n = layers, heads, head_dim, virtual_tokens
        width = layers * 2 * heads * head_dim  # a key and a value for every layer
        if projection_dim:
            self.embedding = nn.Embedding(virtual_tokens, heads * head_dim)
            self.transform = nn.Sequential(nn.Linear(heads * head_dim, projection_dim), nn.Tanh(),
                                           nn.Linear(projection_dim, width))
        else:
            self.embedding = nn.Embedding(virtual_tokens, width)
            self.transform = None

    @classmethod
    def for_decoder(cls, decoder, virtual_tokens, projection_dim=None):
        attention = decoder.layers[0].self_attn
        return cls(len(decoder.layers), attention.heads, attention.head_dim, virtual_tokens, projection_dim)

    def cache(self, batch):
        """A KV cache that already holds the N virtual tokens of every layer."""
        p = self.embedding.weight
        if self.transform is not None:
            p = self.transform(p)                                        # P = MLP(E): reparameterised
        p = p.view(self.n, 2 * self.layers, self.heads, self.head_dim).permute(1, 2, 0, 3)  # (2L, h, N, d)
        cache = KVCache(self.layers)
        for i, slot in enumerate(cache.slots):
            slot.append(p[2 * i].expand(batch, -1, -1, -1), p[2 * i + 1].expand(batch, -1, -1, -1))  # P_K, P_V
        return cache


class PrefixedDecoder(nn.Module):
    """A frozen decoder with a prefix in front: decoding.py drives it like the plain one. An
    attention_mask, when given, covers the real tokens only; the prefix is always visible."""

    def __init__(self, decoder, prefix):
        super().__init__()
        self.decoder, self.prefix = decoder.requires_grad_(False), prefix
        self.embed_tokens = decoder.embed_tokens

    def new_cache(self, batch=1):
        return self.prefix.cache(batch)

    def forward(self, embeds, attention_mask=None, cache=None):
        b = embeds.shape[0]
        if cache is None:
            cache = self.new_cache(b)
        if attention_mask is not None:
            attention_mask = torch.cat([torch.ones(b, self.prefix.n, dtype=attention_mask.dtype), attention_mask], 1)
        return self.decoder(embeds, attention_mask, cache)


def trainable_parameters(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def peft_prefix(lm, virtual_tokens, projection_dim=None):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens,
                                prefix_projection=projection_dim is not None,
                                encoder_hidden_size=projection_dim or lm.config.hidden_size)
    return get_peft_model(lm, config).eval()


@torch.no_grad()
def check_one(label, virtual_tokens, projection_dim):
    """PEFT's prefix tuning on one copy of the tiny BLIP-2 decoder, ours on another, with PEFT's
    (random) prefix weights copied into ours: logits on real images and prompts."""
    model, processor = zoo.load_blip2("tiny", "cpu")
    samples = shapesworld.generate("test", 2)
    inputs = processor(images=[s.image for s in samples], text=["", "a photo of"], padding=True, return_tensors="pt")
    embeds = decoder_embeds(model, inputs.pixel_values, inputs.input_ids)
    ours = PrefixedDecoder(Decoder.from_opt(model.language_model),
                           Prefix.for_decoder(Decoder.from_opt(model.language_model), virtual_tokens, projection_dim))
    theirs = peft_prefix(zoo.load_blip2("tiny", "cpu")[0].language_model, virtual_tokens, projection_dim)
    ours.prefix.load_state_dict(theirs.prompt_encoder["default"].state_dict())
    counts = trainable_parameters(ours), trainable_parameters(theirs)
    mask = inputs.attention_mask
    real = mask.bool()
    logits = ours(embeds, mask).logits
    plain = model.language_model(inputs_embeds=embeds, attention_mask=mask).logits
    output = checks.record(f"prefix tuning, {label}: logits vs PEFT", logits,
                           theirs(inputs_embeds=embeds, attention_mask=mask).logits, where=real)
    output["update"] = float((logits - plain)[real].abs().max())  # the prefix does change the output
    return [output, {"name": f"prefix tuning, {label}: trainable parameters, {counts[0]:,} vs PEFT's {counts[1]:,}",
                     "max_abs_diff": abs(counts[0] - counts[1]), "ok": counts[0] == counts[1]}]


def run_checks():
    return check_one("8 virtual tokens", 8, None) + check_one("8 virtual tokens through a 64-d MLP", 8, 64)


def main(argv=None):
    parser = cli.Parser(prog="python -m stage2_fundamentals.prefix_tuning", description=__doc__,
                        formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove the from-scratch prefix equal to PEFT's")
    check.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    checks.emit({"checks": run_checks()}, args.json)


if __name__ == "__main__":
    cli.run(main)
