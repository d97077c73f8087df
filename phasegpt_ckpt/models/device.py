"""Device choice shared by every command (``auto`` means cuda, then mps, then cpu), and its precision."""
from __future__ import annotations

import contextlib

import torch

from phasegpt_ckpt.errors import BadInput

CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``--device`` into a ``torch.device``, refusing one this machine lacks.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    if isinstance(name, torch.device):
        return name
    kind = name.split(":")[0]
    if kind not in CHOICES:
        raise BadInput(f"unknown device {name!r}; use one of {', '.join(CHOICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--device mps asked for, but this machine has no MPS backend; use --device cpu")
    return torch.device(name)


def inference_autocast(device: torch.device):
    """bf16 autocast on a CUDA device that supports it (the phase trigonometry stays float32 in the
    model); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
