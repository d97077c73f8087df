"""Synchronisation of the phase layers: the order parameter R per layer and head on validation text.

R = |mean over positions and oscillators of e^{iθ}| of a head's final phases: 1 when they all agree,
near 0 when they spread. Each head's learned coupling K is shown beside it, since its sign decides
whether the published layer pulls phases together (K < 0) or pushes them apart (K > 0).

>>> from phasegpt_ckpt.analyze import analyze_checkpoint                                     # doctest: +SKIP
>>> R_stats = analyze_checkpoint(checkpoint_path="best_model.pt", num_tokens=512, device="cuda")  # doctest: +SKIP
>>> print(f"Mean R: {R_stats['R_mean']:.4f}")                                                # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from model import GPT2Model

from .checkpoint import corpus_path, inference_autocast, load_checkpoint
from .data import CharDataset
from .device import pick_device
from .errors import BadInput


def analyze(model: GPT2Model, ids: torch.Tensor, device: str | torch.device = "cpu") -> dict:
    """R statistics of every phase layer over the token ids [T], in windows of ``max_seq_len``.

    Means and standard deviations (population) run over every (window, head) value for a layer or
    the whole model, and over windows for one head.
    """
    device = pick_device(device)
    model.to(device).eval()
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.config.phase_layers]
    windows = ids.split(model.config.max_seq_len)
    with torch.no_grad(), inference_autocast(device):
        for window in windows:
            _, _, Rs = model(window[None].to(device), return_R=True)
            for kept, R in zip(per_layer, Rs):
                kept.append(R[0].float().cpu())  # [H]
    layers = []
    for index, values in zip(model.config.phase_layers, per_layer):
        R = torch.stack(values)  # [windows, H]
        K = model.blocks[index].attention.coupling_matrix.detach().float().flatten().cpu()
        heads = [{"head": h, "R_mean": R[:, h].mean().item(), "R_std": R[:, h].std(correction=0).item(),
                  "K": K[h].item()} for h in range(R.shape[1])]
        layers.append({"layer": index, "R_mean": R.mean().item(), "R_std": R.std(correction=0).item(), "heads": heads})
    every = torch.cat([torch.stack(values).flatten() for values in per_layer]) if per_layer else None
    return {
        "num_tokens": len(ids),
        "windows": len(windows),
        "coupling_mode": model.config.coupling_mode,
        "R_mean": every.mean().item() if every is not None else None,
        "R_std": every.std(correction=0).item() if every is not None else None,
        "layers": layers,
    }


def analyze_checkpoint(
    checkpoint_path: str | Path,
    num_tokens: int = 512,
    device: str | torch.device = "auto",
    *,
    data: str | Path | None = None,
    expected_sha256: Optional[str] = None,
    locate_options: Optional[dict] = None,
) -> dict:
    """R statistics of a checkpoint on the first ``num_tokens`` characters of the validation split.

    The seed's ``analyze_checkpoint``: the result has at least ``R_mean`` and ``R_std`` (None for a
    model without phase layers), plus ``layers`` with each layer's and head's mean, std and K.
    """
    corpus = corpus_path(data, **(locate_options or {}))
    ckpt = load_checkpoint(checkpoint_path, expected_sha256=expected_sha256, data=corpus, device=device)
    _, val_ids = CharDataset(corpus, vocab=ckpt.vocab).split()
    if not 1 <= num_tokens <= len(val_ids):
        raise BadInput(f"--num-tokens must be between 1 and {len(val_ids)} (the validation split), got {num_tokens}")
    return {"path": str(checkpoint_path), **analyze(ckpt.model, val_ids[:num_tokens], device=ckpt.device)}
