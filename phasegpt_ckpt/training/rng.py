"""The random number generators a training step draws from, saved and restored for exact resumption.

Everything is kept as plain lists and tensors, so a checkpoint holding it loads weights-only.
"""
from __future__ import annotations

import random
from typing import Iterator

import torch


def rng_state(device: torch.device) -> dict:
    """Every RNG a training step draws from, as plain lists and tensors (weights-only loadable)."""
    version, internal, gauss = random.getstate()
    state = {"python": {"version": version, "state": list(internal), "gauss": gauss},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> list[str]:
    """Put back what :func:`rng_state` saved; returns the names of the states that were missing."""
    missing = []
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    else:
        missing.append("python RNG")
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    else:
        missing.append("torch RNG")
    if device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), device)
        else:
            missing.append("CUDA RNG")
    return missing


def rng_neutral_iter(loader) -> Iterator:
    """``iter(loader)`` without touching the global torch RNG.

    DataLoader draws a worker base seed from the global RNG on every ``iter()``. Our loaders run
    in-process and never use it, so the draw is kept off the training stream: a run resumed mid-epoch
    (which calls ``iter()`` where the uninterrupted run did not) then draws the same dropout masks.
    """
    with torch.random.fork_rng(devices=[]):
        return iter(loader)
