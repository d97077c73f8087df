"""The phase layer's dynamics written the published way, with the [B, H, T, T, N] pairwise tensor.

Straight from PHASEGPT_FORMAT.md §2 and nothing else: it is the yardstick the mean-field layer in
``model/model.py`` is checked against (tests/test_model.py) and timed against (benchmarks/phase_layer.py).
It lives here only; the model never builds this tensor.
"""
from __future__ import annotations

import math

import torch


def pairwise_phase_forward(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``layer``'s parameters through §2 with explicit pairwise differences; returns (output, R [B, H]).

    Mode "original": c[a] = K · mean over all b of sin(θ_a − θ_b).
    Mode "causal":   c[a] = K · mean over b <= a of sin(θ_b − θ_a).
    """
    B, T, _ = x.shape
    H, N = layer.n_heads, layer.num_oscillators
    theta = torch.tanh(layer.to_phase(x).view(B, T, H, N).transpose(1, 2)) * math.pi  # [B, H, T, N]
    omega = layer.natural_freq[:, None, :]  # [H, 1, N]
    earlier_or_same = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[:, :, None]  # [a, b, 1]
    for _ in range(layer.phase_iterations):
        diff = theta.unsqueeze(3) - theta.unsqueeze(2)  # [B, H, a, b, N] = θ_a − θ_b
        if layer.coupling_mode == "original":
            coupling = torch.sin(diff).mean(dim=3)
        else:
            coupling = (torch.sin(-diff) * earlier_or_same).sum(dim=3) / earlier_or_same.sum(dim=1)
        theta = theta + 0.1 * (omega + layer.coupling_matrix * coupling)
        theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    R = torch.exp(1j * theta.to(torch.complex64)).mean(dim=(2, 3)).abs()
    out = layer.dropout(layer.from_phase(theta.transpose(1, 2).reshape(B, T, H * N)))
    return out, R
