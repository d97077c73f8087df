"""Synchronisation of the phase layers: the order parameter R per layer and head on validation text.

R = |mean over positions and oscillators of e^{iθ}| of a head's final phases: 1 when they all agree,
near 0 when they spread. Each head's learned coupling K is shown beside it, since its sign decides
whether the published layer pulls phases together (K < 0) or pushes them apart (K > 0).

R is measured on ``windows`` consecutive stretches of ``num_tokens`` validation characters, each run
on its own. The means and standard deviations run over those windows, so the std says how much a
head's synchronisation varies with the text it reads (one window would make it 0 by construction).

``R_by_iteration`` follows R through the layer's Euler iterations (how synchronisation builds up): the
layer's input is caught on the forward pass and its iterations are run again here, one at a time,
with the model's own dynamics (``evolve_original``/``evolve_causal``); iteration 0 is the initial
phases θ0, the last one the final phases whose R is the layer's ``R_mean``.

>>> from phasegpt_ckpt.models.analyze import analyze_checkpoint                                     # doctest: +SKIP
>>> R_stats = analyze_checkpoint(checkpoint_path="best_model.pt", num_tokens=512, device="cuda")  # doctest: +SKIP
>>> print(f"Mean R: {R_stats['R_mean']:.4f}")                                                # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from model import GPT2Config, GPT2Model
from model.model import evolve_causal, evolve_original
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.checkpoint import load_checkpoint
from phasegpt_ckpt.models.data import CharDataset, corpus_or_bundled
from phasegpt_ckpt.models.device import inference_autocast, pick_device

log = logging.getLogger(__name__)

DEFAULT_WINDOWS = 16


def analyze(model: GPT2Model, windows: torch.Tensor, device: str | torch.device = "cpu") -> dict:
    """R statistics of every phase layer over the token windows [W, T] (T ≤ ``max_seq_len``).

    Per head: mean and population std over windows of its R. Per layer: the same for the layer's R
    (the mean over its heads); for the model (``R_mean``, ``R_std``): for the mean over its layers.
    Each layer's ``R_by_iteration`` lists, for iteration 0 (θ0) to ``phase_iterations`` (the final
    phases), the same statistics of the layer's R and of each head's.
    """
    device = pick_device(device)
    was_training = model.training
    model.to(device).eval()
    inputs: dict[int, torch.Tensor] = {}  # phase layer -> the input of its attention (after ln1)
    hooks = [model.blocks[index].attention.register_forward_pre_hook(_keep_input(inputs, index))
             for index in model.config.phase_layers]
    try:
        with torch.no_grad(), inference_autocast(device):
            _, _, Rs = model(windows.to(device), return_R=True)  # per layer: R [W, H]
            by_iteration = {index: _R_by_iteration(model.blocks[index].attention, x) for index, x in inputs.items()}
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    per_layer = [R.float().cpu() for R in Rs]
    layers = []
    for index, R in zip(model.config.phase_layers, per_layer):
        K = model.blocks[index].attention.coupling_matrix.detach().float().flatten().cpu()
        heads = [{"head": h, **_stats(R[:, h]), "K": K[h].item()} for h in range(R.shape[1])]
        steps = [{"iteration": i, **_stats(Ri.mean(dim=1)),
                  "heads": [{"head": h, **_stats(Ri[:, h])} for h in range(Ri.shape[1])]}
                 for i, Ri in enumerate(by_iteration[index])]
        layers.append({"layer": index, **_stats(R.mean(dim=1)), "heads": heads, "R_by_iteration": steps})
    overall = _stats(torch.stack([R.mean(dim=1) for R in per_layer]).mean(dim=0)) if per_layer else {
        "R_mean": None, "R_std": None}
    return {"num_tokens": windows.shape[1], "windows": windows.shape[0], "coupling_mode": model.config.coupling_mode,
            **overall, "layers": layers}


def _keep_input(inputs: dict, index: int):
    def hook(module, args):
        inputs[index] = args[0].detach()
    return hook


def _R_by_iteration(attention, x: torch.Tensor) -> torch.Tensor:
    """R [iterations + 1, W, H] of a phase layer's phases at θ0 and after each Euler iteration, on its input ``x``.

    Read-only: the layer's own initial phases, ω, K and dynamics, stepped one iteration at a time (each
    iteration's coupling depends on that iteration's phases only, so this is the layer's forward).
    """
    theta = attention._initial_phases(x)
    omega, K = attention._frequencies_and_coupling()
    causal = attention.coupling_mode == "causal"
    Rs = [_order_parameter(theta)]
    for _ in range(attention.phase_iterations):
        theta = evolve_causal(theta, omega, K, 1)[0] if causal else evolve_original(theta, omega, K, 1)
        Rs.append(_order_parameter(theta))
    return torch.stack(Rs).float().cpu()


def _order_parameter(theta: torch.Tensor) -> torch.Tensor:
    """R [B, H] of phases θ [B, H, T, N], as the phase layer computes it."""
    return torch.hypot(theta.cos().mean(dim=(2, 3)), theta.sin().mean(dim=(2, 3)))


def _stats(values: torch.Tensor) -> dict[str, float]:
    """Mean and population std of one R per window."""
    return {"R_mean": values.mean().item(), "R_std": values.std(correction=0).item()}


def analyze_checkpoint(
    checkpoint_path: str | Path,
    num_tokens: int = 512,
    device: str | torch.device = "auto",
    *,
    windows: int = DEFAULT_WINDOWS,
    data: str | Path | None = None,
    config: GPT2Config | dict | str | Path | None = None,
) -> dict:
    """R statistics of a checkpoint over ``windows`` stretches of ``num_tokens`` validation characters.

    The seed's ``analyze_checkpoint``: the result has at least ``R_mean`` and ``R_std`` (None for a
    model without phase layers), plus ``layers`` with each layer's and head's mean, std and K (and
    ``R_by_iteration``, see :func:`analyze`). The
    windows are consecutive from the start of the validation split; one longer than the model's
    ``max_seq_len`` is cut to it (logged). ``data`` is the corpus (default: the copy bundled with the
    package); ``config`` is for a bare state dict whose shapes do not tell its model (as
    :func:`~phasegpt_ckpt.models.checkpoint.load_checkpoint`).
    """
    corpus = corpus_or_bundled(data)
    ckpt = load_checkpoint(checkpoint_path, config=config, data=corpus, device=device)
    _, val_ids = CharDataset(corpus, vocab=ckpt.vocab).split()
    length = _window_length(num_tokens, ckpt.config.max_seq_len)
    if windows < 1 or windows * length > len(val_ids):
        raise BadInput(f"--windows must be between 1 and {len(val_ids) // length} ({len(val_ids)} validation "
                       f"characters in windows of {length}), got {windows}")
    stretches = val_ids[: windows * length].view(windows, length)
    return {"path": str(checkpoint_path), **analyze(ckpt.model, stretches, device=ckpt.device)}


def _window_length(num_tokens: int, max_seq_len: int) -> int:
    if num_tokens < 1:
        raise BadInput(f"--num-tokens must be at least 1, got {num_tokens}")
    if num_tokens > max_seq_len:
        log.info(f"note: windows of {max_seq_len} tokens, the model's max_seq_len, not {num_tokens}")
        return max_seq_len
    return num_tokens
