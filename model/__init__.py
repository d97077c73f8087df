"""The PhaseGPT model: GPT-2 with Kuramoto phase-coupled attention layers (see model/model.py)."""
from .model import GPT2Config, GPT2Model, KVCache, PhaseAttention, PhaseState, StandardAttention

__all__ = ["GPT2Config", "GPT2Model", "StandardAttention", "PhaseAttention", "KVCache", "PhaseState"]
