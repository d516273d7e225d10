"""Week 7: LoRA from scratch, checked against PEFT, and a new concept taught three ways.

Fine-tuning all of a model's weights W means storing a new copy of every matrix. LoRA (Hu et al.
2021) freezes W and learns a low-rank change instead:

    h = W x + (α / r) · B A x        A: r × d_in (random),  B: d_out × r (zeros)

so training starts from exactly the pretrained model (B A = 0), trains r (d_in + d_out) numbers
per matrix instead of d_in · d_out, and for inference the change folds into the weight,
W' = W + (α / r) B A, at no extra cost. r is the rank of the change; α / r scales it so that
changing r does not change the learning rate the update needs.

    python -m stage2_fundamentals.lora check [--json]
    python -m stage2_fundamentals.lora experiment [--steps 300] [--json]   (or: make lora)

`experiment` teaches the tiny BLIP-2 a colour it never saw, with full fine-tuning, LoRA at a few
ranks and prefix tuning (prefix_tuning.py), on the same data and step budget (new_concept.py).
"""
import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from curriculum import checks, cli, shapesworld, training, zoo
from stage2_fundamentals import prefix_tuning

ATOL = 1e-5


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))   # A random (PEFT's default init)
        nn.init.zeros_(self.lora_B.weight)                             # B = 0: the model starts unchanged
        self.lora_A.to(base.weight.dtype)
        self.lora_B.to(base.weight.dtype)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        out = self.base(x)                                             # W x + b
        if not self.merged:
            out = out + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling  # + (α/r) B A x
        return out

    def delta(self):
        return self.lora_B.weight @ self.lora_A.weight * self.scaling  # ΔW = (α/r) B A

    @torch.no_grad()
    def merge(self):
        """Fold the update into W: one matmul per call again, as fast as the base model."""
        if not self.merged:
            self.base.weight += self.delta()                           # W' = W + ΔW
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


def linear_names(model):
    """The last name part of every nn.Linear in the model: what `targets` can name."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def target_linears(model, targets):
    """Names of the nn.Linear layers whose name is, or ends with, one of `targets` (PEFT's
    target_modules rule); none is an error that lists what there is."""
    matches = lambda name: any(name == t or name.endswith("." + t) for t in targets)  # noqa: E731
    chosen = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and matches(name)]
    if not chosen:
        raise cli.UserError(f"no nn.Linear named {', '.join(targets)} in {type(model).__name__}; "
                            f"its linear layers are: {', '.join(linear_names(model))}")
    return chosen


def add_lora(model, targets, r=8, alpha=16, dropout=0.0):
    """Freeze the model and wrap each target nn.Linear in a LoRALinear. Returns the names wrapped."""
    if r <= 0:
        raise cli.UserError(f"the LoRA rank r must be a positive integer, got {r}")
    chosen = target_linears(model, targets)
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def lora_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_all(model):
    for layer in lora_layers(model).values():
        layer.merge()
    return model


# ---------------------------------------------------------------- adapters on disk
def save_adapter(model, folder, settings):
    """Only the LoRA weights (kilobytes), and how to re-create them: the base model stays as it is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if ".lora_" in k},
              folder / "adapter.safetensors")
    (folder / "adapter.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def load_adapter(model, folder):
    """Wrap `model` as the adapter's settings say and load its weights."""
    folder = Path(folder)
    if not (folder / "adapter.json").exists():
        raise cli.UserError(f"no LoRA adapter in {folder} (expected adapter.json and adapter.safetensors)")
    settings = json.loads((folder / "adapter.json").read_text())
    add_lora(model, settings["targets"], settings["r"], settings["alpha"])
    missing = set(lora_keys(model)) - set(weights := load_file(folder / "adapter.safetensors"))
    if missing:
        raise cli.UserError(f"the adapter in {folder} lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
    model.load_state_dict(weights, strict=False)
    return settings


def lora_keys(model):
    return [k for k in model.state_dict() if ".lora_" in k]


# ---------------------------------------------------------------- check against PEFT
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
        weights = max(float((layer.base.weight - their_merged.get_submodule(name).weight).abs().max())
                      for name, layer in lora_layers(ours).items())
        their_merged_out = run(their_merged)
    output = checks.record(f"{label}: output vs PEFT LoRA", out, their_out)
    output["update"] = float((out - base).abs().max())  # how far the adapter moved the output
    return [output,
            {"name": f"{label}: trainable parameters, {counts[0]:,} vs PEFT's {counts[1]:,}",
             "max_abs_diff": abs(counts[0] - counts[1]), "ok": counts[0] == counts[1]},
            {"name": f"{label}: merged weights vs PEFT merge_and_unload", "max_abs_diff": weights,
             "ok": weights <= ATOL},
            checks.record(f"{label}: merged output vs PEFT's merged model", merged, their_merged_out),
            # W x + B A x and (W + B A) x round differently in float32: equal to 1e-4, not 1e-5
            checks.record(f"{label}: merged vs unmerged output (float32 rounding, 1e-4)", merged, out, atol=1e-4)]


def one_linear():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(proj=nn.Linear(32, 16)))


CLIP_TARGETS = ["q_proj", "v_proj"]
BLIP2_TARGETS = ["q_proj", "v_proj", "query", "value"]  # the OPT decoder's and the Q-Former's attention


def run_checks():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    samples = shapesworld.generate("test", 4)
    images, captions = [s.image for s in samples], [s.caption_en for s in samples]
    clip_inputs = zoo.load_clip("tiny", "cpu")[1](text=captions, images=images, padding=True, return_tensors="pt")
    blip2_inputs = zoo.load_blip2("tiny", "cpu")[1](images=images, text=captions, padding=True, return_tensors="pt")
    results = check_pair("one nn.Linear(32, 16), r=4", one_linear, ["proj"], 4, 8, lambda m: m(x))
    results += check_pair("tiny CLIP, q_proj + v_proj, r=4", lambda: zoo.load_clip("tiny", "cpu")[0],
                          CLIP_TARGETS, 4, 8, lambda m: m(**clip_inputs).logits_per_image)
    results += check_pair("tiny BLIP-2, q_proj v_proj query value, r=8", lambda: zoo.load_blip2("tiny", "cpu")[0],
                          BLIP2_TARGETS, 8, 16, lambda m: m(**blip2_inputs).logits)
    return {"checks": results + prefix_tuning.run_checks()}


# ---------------------------------------------------------------- command line
def main(argv=None):
    parser = cli.Parser(prog="python -m stage2_fundamentals.lora", description=__doc__, formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove LoRA and prefix tuning equal to PEFT's on the tiny models")
    run = sub.add_parser("experiment", help="teach the tiny BLIP-2 a new colour: full fine-tuning vs LoRA vs prefix")
    run.add_argument("--steps", type=cli.positive_int, default=300, help="training steps per method (default 300)")
    run.add_argument("--ranks", nargs="+", type=int, default=[1, 4, 16], help="LoRA ranks to try (default 1 4 16)")
    run.add_argument("--targets", nargs="+", default=BLIP2_TARGETS,
                     help=f"LoRA target modules (default {' '.join(BLIP2_TARGETS)})")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="outputs/week7", help="folder for the table, plot and adapter")
    training.add_run_args(run, checkpoints=False)
    for p in (check, run):
        p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "check":
        checks.emit(run_checks(), args.json)
    else:
        from stage2_fundamentals import new_concept  # here, not at the top: new_concept builds on this module

        result = new_concept.experiment(args.steps, args.ranks, args.targets, args.seed, args.out,
                                        options=training.Options.from_args(args, __spec__.name, argv))
        if result is not None:  # the main process's
            cli.emit(result, args.json, new_concept.print_table)


if __name__ == "__main__":
    cli.run(main)
