"""What the tiny-model trainers share: one optimiser step, the saved checkpoint with its record,
and the command line. Each trainer keeps its own data, loss and learning-rate schedule."""
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from curriculum import cli, runtime, viz


def step(loss, optimizer, schedule, params, losses, bar, max_grad_norm=1.0):
    """Backward, clip, update, advance the schedule; log the loss to `losses` and the progress bar."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    bar.set_postfix(loss=f"{loss.item():.3f}")


def warmup_cosine(optimizer, steps):
    """Learning rate: linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps))))


def save(out, parts, losses, title, start, device, **settings):
    """save_pretrained each part (model, processor, pipeline) into `out`, plus loss.png and
    training.json (settings, final loss, minutes; a setting such as bf16_autocast=False overrides
    what the device would do)."""
    minutes = (time.time() - start) / 60
    out = Path(out)
    for part in parts:
        part.save_pretrained(out)
    curve_png = viz.curve(losses, out / "loss.png", title)
    final_loss = float(np.mean(losses[-50:]))
    bf16 = settings.pop("bf16_autocast", runtime.trains_in_bf16(device))
    (out / "training.json").write_text(json.dumps(
        {**settings, "final_loss": final_loss, "train_minutes": round(minutes, 2), "device": str(device),
         "bf16_autocast": bf16}, indent=2) + "\n")
    print(f"saved {out} ({minutes:.1f} min, final loss {final_loss:.3f}); loss curve: {curve_png}")


def parser(doc, default_out, steps, batch_size, batch_help):
    """--out, --steps, --batch-size, --seed, --device."""
    p = cli.Parser(description=doc, formatter_class=cli.RawHelp)
    p.add_argument("--out", default=str(default_out), help="checkpoint folder")
    p.add_argument("--steps", type=cli.positive_int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=cli.positive_int, default=batch_size,
                   help=f"{batch_help} (default {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    cli.add_device_arg(p)
    return p
