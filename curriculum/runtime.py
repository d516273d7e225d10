"""Where and how tensors run: device choice, dtype per device, seeding, bf16 capability."""

import random

import numpy as np
import torch

from curriculum.cli import UserError


def pick_device(name="auto"):
    """auto picks cuda > mps > cpu; an explicit device that is absent is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name.split(":")[0] not in available:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    if not available[name.split(":")[0]]:
        raise UserError(f"device {name!r} is not available on this machine: use --device auto or cpu")
    return torch.device(name)


def inference_dtype(device):
    """Half precision where the hardware is built for it; fp32 on CPUs (small models, exact checks)."""
    if device.type == "cuda":
        # native bf16 only (Ampere and newer): a T4 emulates it, far slower than its fp16 tensor cores
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def cpu_has_fast_bf16():
    """True on CPUs with AMX or AVX512-BF16; elsewhere bf16 matmuls are emulated and far slower."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def trains_in_bf16(device):
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_fast_bf16()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
