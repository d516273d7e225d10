"""Week 7's fine-tuning lab: LoRA (lora.py) and prefix tuning (prefix_tuning.py) proved equal to PEFT
on the tiny CLIP and BLIP-2, and a colour the tiny BLIP-2 never saw taught with full fine-tuning,
LoRA at a few ranks and prefix tuning, on the same data and step budget (new_concept.py).

    python -m stage2_fundamentals.finetuning_lab check [--json]
    python -m stage2_fundamentals.finetuning_lab experiment [--steps 300] [--json]   (or: make lora)
"""

from collections import OrderedDict

import torch
from torch import nn

from curriculum import checks, cli, shapesworld, training, zoo
from stage2_fundamentals import new_concept
from stage2_fundamentals.decoder import Decoder, decoder_embeds
from stage2_fundamentals.lora import BLIP2_TARGETS, CLIP_TARGETS, add_lora, lora_layers, merge_all, trainable_parameters
from stage2_fundamentals.prefix_tuning import Prefix, PrefixedDecoder

ATOL = 1e-5
MAX_RANK = 128  # the tiny BLIP-2's target layers are at most 128 wide: a higher rank is no more than a full update


# ---------------------------------------------------------------- LoRA vs PEFT
def peft_copy(model, ours, targets, r, alpha):
    """PEFT's LoRA on `model` with the adapter weights of `ours` copied in."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            theirs = peft_model.base_model.model.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(layer.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(layer.lora_B.weight)
    return peft_model.eval()


def randomise_b(model, seed=0):
    """B starts at zero; a check with B = 0 would compare the base model with itself."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.1)


def check_pair(label, make_model, targets, r, alpha, run):
    """Ours vs PEFT on two fresh copies of the same model: outputs, trainable-parameter counts,
    and merged weights; ours merged vs unmerged."""
    ours = make_model()
    add_lora(ours, targets, r, alpha)
    randomise_b(ours)
    theirs = peft_copy(make_model(), ours, targets, r, alpha)
    counts = trainable_parameters(ours), trainable_parameters(theirs)
    with torch.no_grad():
        base, out, their_out = run(make_model().eval()), run(ours.eval()), run(theirs)
        merge_all(ours)
        merged = run(ours)
        their_merged = theirs.merge_and_unload()
        weights = max(
            float((layer.base.weight - their_merged.get_submodule(name).weight).abs().max())
            for name, layer in lora_layers(ours).items()
        )
        their_merged_out = run(their_merged)
    output = checks.record(f"{label}: output vs PEFT LoRA", out, their_out)
    output["update"] = float((out - base).abs().max())  # how far the adapter moved the output
    return [
        output,
        {
            "name": f"{label}: trainable parameters, {counts[0]:,} vs PEFT's {counts[1]:,}",
            "max_abs_diff": abs(counts[0] - counts[1]),
            "ok": counts[0] == counts[1],
        },
        {"name": f"{label}: merged weights vs PEFT merge_and_unload", "max_abs_diff": weights, "ok": weights <= ATOL},
        checks.record(f"{label}: merged output vs PEFT's merged model", merged, their_merged_out),
        # W x + B A x and (W + B A) x round differently in float32: equal to 1e-4, not 1e-5
        checks.record(f"{label}: merged vs unmerged output (float32 rounding, 1e-4)", merged, out, atol=1e-4),
    ]


def one_linear():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(proj=nn.Linear(32, 16)))


# ---------------------------------------------------------------- prefix tuning vs PEFT
def peft_prefix(lm, virtual_tokens, projection_dim=None):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=virtual_tokens,
        prefix_projection=projection_dim is not None,
        encoder_hidden_size=projection_dim or lm.config.hidden_size,
    )
    return get_peft_model(lm, config).eval()


@torch.no_grad()
def check_prefix(label, virtual_tokens, projection_dim):
    """PEFT's prefix tuning on one copy of the tiny BLIP-2 decoder, ours on another, with PEFT's
    (random) prefix weights copied into ours: logits on real images and prompts."""
    model, processor = zoo.load_blip2("tiny", "cpu")
    samples = shapesworld.generate("test", 2)
    inputs = processor(images=[s.image for s in samples], text=["", "a photo of"], padding=True, return_tensors="pt")
    embeds = decoder_embeds(model, inputs.pixel_values, inputs.input_ids)
    ours = PrefixedDecoder(
        Decoder.from_opt(model.language_model),
        Prefix.for_decoder(Decoder.from_opt(model.language_model), virtual_tokens, projection_dim),
    )
    theirs = peft_prefix(zoo.load_blip2("tiny", "cpu")[0].language_model, virtual_tokens, projection_dim)
    ours.prefix.load_state_dict(theirs.prompt_encoder["default"].state_dict())
    counts = trainable_parameters(ours), trainable_parameters(theirs)
    mask = inputs.attention_mask
    real = mask.bool()
    logits = ours(embeds, mask).logits
    plain = model.language_model(inputs_embeds=embeds, attention_mask=mask).logits
    output = checks.record(
        f"prefix tuning, {label}: logits vs PEFT",
        logits,
        theirs(inputs_embeds=embeds, attention_mask=mask).logits,
        where=real,
    )
    output["update"] = float((logits - plain)[real].abs().max())  # the prefix does change the output
    return [
        output,
        {
            "name": f"prefix tuning, {label}: trainable parameters, {counts[0]:,} vs PEFT's {counts[1]:,}",
            "max_abs_diff": abs(counts[0] - counts[1]),
            "ok": counts[0] == counts[1],
        },
    ]


def run_checks():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    samples = shapesworld.generate("test", 4)
    images, captions = [s.image for s in samples], [s.caption_en for s in samples]
    clip_inputs = zoo.load_clip("tiny", "cpu")[1](text=captions, images=images, padding=True, return_tensors="pt")
    blip2_inputs = zoo.load_blip2("tiny", "cpu")[1](images=images, text=captions, padding=True, return_tensors="pt")
    results = check_pair("one nn.Linear(32, 16), r=4", one_linear, ["proj"], 4, 8, lambda m: m(x))
    results += check_pair(
        "tiny CLIP, q_proj + v_proj, r=4",
        lambda: zoo.load_clip("tiny", "cpu")[0],
        CLIP_TARGETS,
        4,
        8,
        lambda m: m(**clip_inputs).logits_per_image,
    )
    results += check_pair(
        "tiny BLIP-2, q_proj v_proj query value, r=8",
        lambda: zoo.load_blip2("tiny", "cpu")[0],
        BLIP2_TARGETS,
        8,
        16,
        lambda m: m(**blip2_inputs).logits,
    )
    results += check_prefix("8 virtual tokens", 8, None) + check_prefix("8 virtual tokens through a 64-d MLP", 8, 64)
    return {"checks": results}


# ---------------------------------------------------------------- command line
def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.finetuning_lab", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove LoRA and prefix tuning equal to PEFT's on the tiny models")
    run = sub.add_parser("experiment", help="teach the tiny BLIP-2 a new colour: full fine-tuning vs LoRA vs prefix")
    run.add_argument(
        "--steps",
        type=cli.Count(1, training.MAX_STEPS),
        default=300,
        help=f"training steps per method, up to {training.MAX_STEPS:,} (default 300)",
    )
    run.add_argument(
        "--ranks",
        nargs="+",
        type=cli.Count(1, MAX_RANK),
        default=[1, 4, 16],
        help=f"LoRA ranks to try, 1 to {MAX_RANK} (default 1 4 16)",
    )
    run.add_argument(
        "--targets",
        nargs="+",
        type=cli.Text(),
        default=BLIP2_TARGETS,
        help=f"LoRA target modules (default {' '.join(BLIP2_TARGETS)})",
    )
    run.add_argument("--seed", type=cli.Seed(), default=0, help="random seed (default 0)")
    run.add_argument(
        "--out",
        type=cli.OutFolder(),
        default="outputs/week7",
        help="folder for new_concept.json, its plots and the adapter (default outputs/week7)",
    )
    training.add_run_args(run, checkpoints=False)
    for p in (check, run):
        p.add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "check":
        checks.emit(run_checks(), args.json)
    else:
        result = new_concept.experiment(
            args.steps,
            args.ranks,
            args.targets,
            args.seed,
            args.out,
            options=training.Options.from_args(args, __spec__.name, argv),
        )
        if result is not None:  # the main process's
            cli.emit(result, args.json, new_concept.print_table)


if __name__ == "__main__":
    cli.run(main)
