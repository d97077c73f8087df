"""Tiny PhaseGPT checkpoints written the ways the world writes them, for the loading/eval/generate tests.

- :func:`save_published`: the published training dict (PHASEGPT_FORMAT.md §4) — ``model_state_dict``,
  a real AdamW ``optimizer_state_dict`` after one step, the YAML config sections with the keys the
  published code never read (``type``, ``natural_freq``, ``dt``, ``n_sync_steps``), no vocabulary,
  no coupling mode;
- :func:`save_ours`: the same plus the ``vocab`` and ``coupling_mode`` our trainer embeds;
- :func:`manifest_for`: a manifest naming a checkpoint and the corpus by ``local`` mirrors.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml

from model import GPT2Config, GPT2Model
from phasegpt_ckpt.models.data import CharDataset

TINY = dict(vocab_size=65, d_model=32, n_layers=2, n_heads=2, max_seq_len=64, use_phase_attention=True,
            phase_layer_idx=[1], num_oscillators=4)


def tiny_model(mode: str = "original", seed: int = 0, **overrides) -> GPT2Model:
    """A random tiny model (dropout off, eval mode), the same for the same seed."""
    torch.manual_seed(seed)
    return GPT2Model(config=GPT2Config(**{**TINY, "dropout": 0.0, "coupling_mode": mode, **overrides})).eval()


def yaml_sections(model: GPT2Model) -> dict:
    """Config sections as the published YAML has them: no coupling mode, unread keys included."""
    section = {k: v for k, v in model.config.to_dict().items() if k != "coupling_mode"}
    section.update(type="gpt2", natural_freq=1.0, dt=0.01, n_sync_steps=5)
    return {"model": section,
            "training": {"batch_size": 32, "learning_rate": 3e-4, "epochs": 20},
            "data": {"dataset": "shakespeare"}}


def training_dict(model: GPT2Model) -> dict:
    """The published checkpoint layout, with a real AdamW state (exp_avg, exp_avg_sq per parameter)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.train()
    ids = torch.randint(model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    model(ids, ids)[1].backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    return {"epoch": 18, "global_step": 3240, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": None,
            "best_val_loss": 1.5788, "config": yaml_sections(model)}


def save_published(model: GPT2Model, path: Path) -> Path:
    torch.save(training_dict(model), path)
    return path


def save_ours(model: GPT2Model, path: Path, corpus: Path) -> Path:
    checkpoint = training_dict(model)
    checkpoint["config"]["model"]["coupling_mode"] = model.config.coupling_mode
    checkpoint.update(vocab=CharDataset(corpus).chars, coupling_mode=model.config.coupling_mode, best_val_ppl=4.85)
    torch.save(checkpoint, path)
    return path


def manifest_for(tmp_path: Path, checkpoint: Path, corpus: Path, claims: dict | None = None) -> Path:
    """A manifest with artifact ``tiny`` (the checkpoint, pinned, with ``claims``) and ``tinyshakespeare``."""
    def local(path: Path, kind: str) -> dict:
        data = path.read_bytes()
        return {"kind": kind, "filename": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "mirrors": [{"type": "local", "path": str(path)}]}

    artifacts = {"tiny": {**local(checkpoint, "checkpoint"), "claims": claims or {}},
                 "tinyshakespeare": local(corpus, "dataset")}
    manifest = tmp_path / f"manifest-{len(list(tmp_path.glob('manifest-*')))}.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "default": "tiny", "artifacts": artifacts}))
    return manifest
