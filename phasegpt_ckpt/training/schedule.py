"""The published optimizer and learning-rate schedule (PHASEGPT_FORMAT.md §3), and its extension.

AdamW(betas 0.9/0.999, eps 1e-8) in two weight-decay groups; LambdaLR with a linear warmup, then a
cosine floored at 0.1 of the base rate. ``resume --epochs 50`` after a run planned for 20 stretches
the cosine from where it stands (:meth:`WarmupCosine.extend`), and the checkpoint records it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # an annotation only: checkpoint loading imports this module, and pydantic costs 0.2 s
    from phasegpt_ckpt.training.run_config import TrainingSection

NO_DECAY = ("bias", "norm", "embedding")  # the published rule, as substrings of parameter names
LR_FLOOR = 0.1  # the cosine never goes below 0.1 of the base rate (§3)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The published two groups: decay on names containing none of bias/norm/embedding.

    The rule is applied literally. Our LayerNorms carry the published names ``ln1``, ``ln2`` and
    ``ln_f``, none of which contains "norm", so LayerNorm *weights* are decayed (their biases are
    not) — exactly what the published runs did, and what an optimizer state resumed from them holds.

    >>> from model import GPT2Model
    >>> model = GPT2Model(vocab_size=65, d_model=32, n_layers=1, n_heads=2, max_seq_len=8)
    >>> [len(group["params"]) for group in param_groups(model, 0.1)]
    [7, 9]
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if any(word in name for word in NO_DECAY) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, training: TrainingSection, device: torch.device) -> torch.optim.AdamW:
    """AdamW(betas 0.9/0.999, eps 1e-8) over :func:`param_groups`; the fused kernel on CUDA."""
    return torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.learning_rate,
                             betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda")


class WarmupCosine:
    """The LambdaLR factor of §3: linear warmup over ``warmup_steps``, then cosine floored at 0.1.

    A callable object, not a closure, because LambdaLR saves a callable object's ``__dict__`` in
    its ``state_dict``: the horizon travels with the scheduler and comes back on resume.

    >>> f = WarmupCosine(warmup_steps=100, total_steps=1100)
    >>> f(0), f(50), f(100), f(600), f(1100)
    (0.0, 0.5, 1.0, 0.5, 0.1)

    :meth:`extend` moves the horizon mid-run (``resume --epochs 50`` after 20).
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_step = warmup_steps  # where the current cosine starts ...
        self.start_factor = 1.0  # ... its factor there ...
        self.extended = False  # ... and whether it is an extension's (see extend)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        # Held at the floor past the horizon (the published code let the cosine rise again there).
        progress = min(1.0, (step - self.start_step) / max(1, self.total_steps - self.start_step))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.extended:
            return LR_FLOOR + (self.start_factor - LR_FLOOR) * cosine
        return max(LR_FLOOR, cosine)

    def extend(self, at_step: int, total_steps: int) -> None:
        """A new horizon from ``at_step`` on: a cosine recomputed over the remaining steps.

        The new cosine starts from the factor the old schedule has at ``at_step`` (so the rate is
        continuous at the joint) and comes down to the floor exactly at ``total_steps``. A run that
        already sits on the floor stays there; a run still warming up finishes its warmup and then
        follows the §3 cosine over the new horizon, as if planned that long from the start.

        >>> f = WarmupCosine(0, 100); before = f(50); f.extend(50, 200)
        >>> f(50) == before, f(125) == 0.1 + (before - 0.1) / 2, f(200)
        (True, True, 0.1)
        """
        if at_step > self.warmup_steps:
            self.start_step, self.start_factor, self.extended = at_step, self(at_step), True
        self.total_steps = total_steps


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))


def schedule_note(schedule: Optional[dict]) -> Optional[str]:
    """What ``info`` says about a checkpoint's schedule when it was extended, else None.

    >>> schedule_note({"extensions": [{"from_epochs": 20, "to_epochs": 50, "at_step": 3240}]})
    'schedule extended from 20 to 50 epochs at step 3240'
    """
    extensions = (schedule or {}).get("extensions") or []
    return "; ".join(f"schedule extended from {e['from_epochs']} to {e['to_epochs']} epochs at step {e['at_step']}"
                     for e in extensions) or None

