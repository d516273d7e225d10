"""Week 7: LoRA from scratch.

Fine-tuning all of a model's weights W means storing a new copy of every matrix. LoRA (Hu et al.
2021) freezes W and learns a low-rank change instead:

    h = W x + (α / r) · B A x        A: r × d_in (random),  B: d_out × r (zeros)

so training starts from exactly the pretrained model (B A = 0), trains r (d_in + d_out) numbers
per matrix instead of d_in · d_out, and for inference the change folds into the weight,
W' = W + (α / r) B A, at no extra cost. r is the rank of the change; α / r scales it so that
changing r does not change the learning rate the update needs.

finetuning_lab.py proves it (and prefix_tuning.py) equal to PEFT, and teaches the tiny BLIP-2 a new
colour with full fine-tuning, LoRA and prefix tuning (`python -m stage2_fundamentals.finetuning_lab`).
"""
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from curriculum import cli

CLIP_TARGETS = ["q_proj", "v_proj"]
BLIP2_TARGETS = ["q_proj", "v_proj", "query", "value"]  # the OPT decoder's and the Q-Former's attention


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
    """Only the LoRA weights (kilobytes), and how to re-create them: the base model stays as it is.
    The two files appear together, or neither does."""
    folder = Path(folder)
    with cli.atomic_paths(folder / "adapter.safetensors", folder / "adapter.json") as (weights, record):
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if ".lora_" in k}, weights)
        record.write_text(json.dumps(settings, indent=2) + "\n")
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
