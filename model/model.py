"""PhaseGPT: a GPT-2 whose attention in chosen layers is a Kuramoto phase-coupled oscillator layer.

One file in the spirit of nanoGPT's model.py. The state-dict keys and shapes are those of the published
PhaseGPT checkpoints (see PHASEGPT_FORMAT.md §1), so their ``model_state_dict`` loads with ``strict=True``:

>>> import torch
>>> model = GPT2Model(vocab_size=65, d_model=64, n_layers=2, n_heads=4, max_seq_len=32,
...                   use_phase_attention=True, phase_layer_idx=[1], num_oscillators=8)
>>> logits, loss = model(torch.zeros(1, 16, dtype=torch.long))
>>> logits.shape
torch.Size([1, 16, 65])

Incremental decoding (a KV cache for standard layers, running cos/sin sums for causal phase layers):

>>> model = GPT2Model(vocab_size=65, d_model=64, n_layers=2, n_heads=4, max_seq_len=32, dropout=0.0,
...                   use_phase_attention=True, phase_layer_idx=[1], num_oscillators=8,
...                   coupling_mode="causal").eval()
>>> ids = torch.randint(0, 65, (1, 10))
>>> logits, cache = model.step(ids[:, :6])             # prompt
>>> last, cache = model.step(ids[:, 6:7], cache)       # one more token
>>> torch.allclose(last[:, -1], model(ids[:, :7])[0][:, -1], atol=1e-5)
True
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

COUPLING_MODES = ("original", "causal")
# Keys of the published YAML model sections that the published training code never read (§3): they are
# accepted so that GPT2Model(**checkpoint["config"]["model"]) works, recorded, and change nothing.
IGNORED_KEYS = ("type", "natural_freq", "dt", "n_sync_steps")
DT = 0.1  # Euler step of the published phase layer, whatever the YAML's `dt` says


@dataclass
class GPT2Config:
    """Hyperparameters of a PhaseGPT model; the defaults are the Phase A runs'.

    >>> GPT2Config(use_phase_attention=True, phase_layer_idx=[7]).d_ff
    3072
    >>> GPT2Config.from_dict({"n_layers": 2, "n_sync_steps": 5}).ignored
    {'n_sync_steps': 5}
    """

    vocab_size: int = 65
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int | None = None  # None means 4 * d_model
    max_seq_len: int = 512
    dropout: float = 0.1
    use_phase_attention: bool = False
    phase_layer_idx: list[int] | None = None  # None means []
    num_oscillators: int = 32
    coupling_strength: float = 1.0
    natural_freq_std: float = 0.1
    phase_iterations: int = 10
    coupling_mode: str = "original"  # "original": published, sees the future; "causal": running means
    ignored: dict = field(default_factory=dict, init=False, compare=False)  # the IGNORED_KEYS given

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.phase_layer_idx is None:
            self.phase_layer_idx = []
        if not isinstance(self.phase_layer_idx, (list, tuple)):
            raise ValueError(f"model config phase_layer_idx must be a list of layer numbers, "
                             f"got {self.phase_layer_idx!r}")
        self.phase_layer_idx = list(self.phase_layer_idx)
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
                     "num_oscillators", "phase_iterations"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"model config {name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model config d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"model config dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_number(self.natural_freq_std) or self.natural_freq_std < 0:
            raise ValueError(f"model config natural_freq_std must be >= 0, got {self.natural_freq_std!r}")
        if not _is_number(self.coupling_strength):
            raise ValueError(f"model config coupling_strength must be a number, got {self.coupling_strength!r}")
        if not isinstance(self.use_phase_attention, bool):
            raise ValueError(f"model config use_phase_attention must be true or false, "
                             f"got {self.use_phase_attention!r}")
        if self.coupling_mode not in COUPLING_MODES:
            raise ValueError(f"model config coupling_mode must be one of {', '.join(COUPLING_MODES)}, "
                             f"got {self.coupling_mode!r}")
        bad = [i for i in self.phase_layer_idx if not _is_int(i) or not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"model config phase_layer_idx {bad} out of range: layers are 0..{self.n_layers - 1}")
        if len(set(self.phase_layer_idx)) != len(self.phase_layer_idx):
            raise ValueError(f"model config phase_layer_idx {self.phase_layer_idx} repeats a layer")
        if self.use_phase_attention and not self.phase_layer_idx:
            raise ValueError("model config use_phase_attention is true but phase_layer_idx names no layer")

    @property
    def phase_layers(self) -> list[int]:
        """The layers that really are phase layers (none unless use_phase_attention)."""
        return sorted(self.phase_layer_idx) if self.use_phase_attention else []

    @classmethod
    def from_dict(cls, d: dict) -> GPT2Config:
        """Build from a YAML model section or a saved ``to_dict()``; an unknown key is a ValueError.

        >>> GPT2Config.from_dict({"type": "gpt2", "d_model": 64, "n_heads": 4}).d_ff
        256
        """
        known = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(d) - set(known) - set(IGNORED_KEYS))
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(map(str, unknown))}; "
                             f"known keys: {', '.join(known)}")
        config = cls(**{k: d[k] for k in known if k in d})
        config.ignored = {k: d[k] for k in IGNORED_KEYS if k in d}
        return config

    def to_dict(self) -> dict:
        """Every setting that shapes the model (coupling_mode included): what our checkpoints save."""
        d = asdict(self)
        del d["ignored"]  # they change nothing; saving them would suggest they did
        return d


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class KVCache:
    """What a StandardAttention layer keeps between ``step`` calls: keys and values [B, H, T_past, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]


@dataclass
class PhaseState:
    """What a causal PhaseAttention layer keeps between ``step`` calls.

    In causal mode position a's coupling at iteration i is built from the running means of cos θ and
    sin θ over positions b <= a at that same iteration, so the state is, per iteration, the sums over
    the positions already processed: ``cos_sum`` and ``sin_sum`` of shape [iterations, B, H, N].
    """

    cos_sum: torch.Tensor
    sin_sum: torch.Tensor
    length: int  # positions summed so far


class StandardAttention(nn.Module):
    """Causal multi-head self-attention (fused ``scaled_dot_product_attention``)."""

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)
        # Published checkpoints hold this mask in every standard layer; SDPA's is_causal replaces it
        # for full sequences, and step() slices it when new positions follow cached ones.
        self.register_buffer("causal_mask", torch.ones(1, 1, max_seq_len, max_seq_len).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], each position attending to itself and earlier ones."""
        return self.step(x)[0]

    def step(self, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Attend from the new positions ``x`` [B, T_new, d_model] to the cached ones and themselves.

        Returns the output for the new positions and the cache extended by them; ``cache=None`` starts
        a sequence. Feeding a sequence in pieces gives the same outputs as ``forward`` on the whole.
        """
        B, T, C = x.shape
        q, k, v = self.qkv_proj(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
        past = k.shape[2] - T
        mask = None if past == 0 else self.causal_mask[0, 0, past:past + T, :past + T].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.out_proj(y)), KVCache(k, v)


class PhaseAttention(nn.Module):
    """Kuramoto phase-coupled oscillators in place of attention (PHASEGPT_FORMAT.md §2).

    Each position gets ``num_oscillators`` phases per head, θ = π·tanh(to_phase(x)); ``phase_iterations``
    Euler steps (dt 0.1) of ``θ ← wrap(θ + dt·(ω + K·coupling))`` follow, and ``from_phase`` reads θ out.

    - ``coupling_mode="original"`` is the published layer: coupling = mean over ALL positions b of
      sin(θ_a − θ_b). It sees future positions and its sign pushes phases apart when K > 0.
    - ``coupling_mode="causal"``: coupling = mean over b <= a of sin(θ_b − θ_a), the textbook sign;
      position a never sees later ones, so ``step`` can decode incrementally.

    Both use mean_b sin(θ_a − θ_b) = sin θ_a · mean_b cos θ_b − cos θ_a · mean_b sin θ_b, which needs
    O(B·H·T·N) memory instead of the published [B, H, T, T, N] tensor. The trigonometry runs in float32
    whatever the input dtype (bf16 phases would be off by ~0.01 rad after one step). The code is plain
    autograd and compiles without graph breaks: ``torch.compile`` fuses each Euler step's elementwise
    chain and halves the saved activations (benchmarks/phase_layer.py).

    >>> layer = PhaseAttention(64, 4, 8, 1.0, 0.1, 10, 0.0)
    >>> y, R = layer(torch.randn(2, 5, 64), return_R=True)
    >>> y.shape, R.shape
    (torch.Size([2, 5, 64]), torch.Size([2, 4]))
    """

    def __init__(self, d_model: int, n_heads: int, num_oscillators: int, coupling_strength: float,
                 natural_freq_std: float, phase_iterations: int, dropout: float,
                 coupling_mode: str = "original"):
        super().__init__()
        if coupling_mode not in COUPLING_MODES:
            raise ValueError(f"coupling_mode must be one of {', '.join(COUPLING_MODES)}, got {coupling_mode!r}")
        self.n_heads = n_heads
        self.num_oscillators = num_oscillators
        self.phase_iterations = phase_iterations
        self.coupling_mode = coupling_mode
        self.to_phase = nn.Linear(d_model, n_heads * num_oscillators)
        self.natural_freq = nn.Parameter(torch.randn(n_heads, num_oscillators) * natural_freq_std)
        self.coupling_matrix = nn.Parameter(torch.full((n_heads, 1, 1), float(coupling_strength)))
        self.register_buffer("last_R_param", torch.tensor(0.0))
        self.from_phase = nn.Linear(n_heads * num_oscillators, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_R: bool = False):
        """[B, T, d_model] -> [B, T, d_model]; with ``return_R`` also the order parameter R [B, H].

        R = |mean over positions and oscillators of e^{iθ}| of the final phases, per batch and head;
        its mean is kept in the ``last_R_param`` buffer.
        """
        theta = self._initial_phases(x)
        if self.coupling_mode == "original":
            theta = self._evolve_original(theta)
        else:
            theta, _ = self._evolve_causal(theta, None)
        R = torch.hypot(theta.cos().mean(dim=(2, 3)), theta.sin().mean(dim=(2, 3)))
        self.last_R_param.copy_(R.mean().detach())
        y = self._read_out(theta, x.dtype)
        return (y, R) if return_R else y

    def step(self, x: torch.Tensor, state: PhaseState | None = None) -> tuple[torch.Tensor, PhaseState]:
        """Causal mode only: process new positions ``x`` [B, T_new, d_model] after those in ``state``.

        Returns their output and the state extended by them; ``state=None`` starts a sequence.
        Feeding a sequence in pieces gives the same outputs as ``forward`` on the whole (to float
        rounding). ``last_R_param`` is left alone.
        """
        if self.coupling_mode != "causal":
            raise ValueError("coupling_mode 'original' couples every position to later ones, so it cannot "
                             "run incrementally; run the whole sequence through forward() instead")
        theta, state = self._evolve_causal(self._initial_phases(x), state)
        return self._read_out(theta, x.dtype), state

    def _initial_phases(self, x: torch.Tensor) -> torch.Tensor:
        """θ0 = π·tanh(to_phase(x)) as float32 [B, H, T, N]."""
        B, T, _ = x.shape
        p = self.to_phase(x).float().view(B, T, self.n_heads, self.num_oscillators).transpose(1, 2)
        return torch.tanh(p) * math.pi

    def _read_out(self, theta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        B, H, T, N = theta.shape
        return self.dropout(self.from_phase(theta.transpose(1, 2).reshape(B, T, H * N).to(dtype)))

    def _euler_step(self, theta: torch.Tensor, coupling: torch.Tensor) -> torch.Tensor:
        """θ + dt·(ω + K·coupling), wrapped into [-π, π)."""
        omega = self.natural_freq.float()[:, None, :]  # [H, 1, N] against θ [B, H, T, N]
        theta = theta + DT * (omega + self.coupling_matrix.float() * coupling)
        return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi

    def _evolve_original(self, theta: torch.Tensor) -> torch.Tensor:
        for _ in range(self.phase_iterations):
            cos, sin = theta.cos(), theta.sin()
            # mean_b sin(θ_a − θ_b) over every position b, the future included (the published sign)
            coupling = sin * cos.mean(dim=2, keepdim=True) - cos * sin.mean(dim=2, keepdim=True)
            theta = self._euler_step(theta, coupling)
        return theta

    def _evolve_causal(self, theta: torch.Tensor, state: PhaseState | None):
        B, H, T, N = theta.shape
        past = 0 if state is None else state.length
        count = torch.arange(past + 1, past + T + 1, device=theta.device, dtype=theta.dtype)[:, None]
        cos_sums, sin_sums = [], []
        for i in range(self.phase_iterations):
            cos, sin = theta.cos(), theta.sin()
            cos_sum, sin_sum = cos.cumsum(dim=2), sin.cumsum(dim=2)  # sums over b <= a in this chunk
            if state is not None:
                cos_sum = cos_sum + state.cos_sum[i][:, :, None]
                sin_sum = sin_sum + state.sin_sum[i][:, :, None]
            cos_sums.append(cos_sum[:, :, -1])
            sin_sums.append(sin_sum[:, :, -1])
            # mean_{b<=a} sin(θ_b − θ_a) = cos θ_a · mean sin θ_b − sin θ_a · mean cos θ_b (textbook sign)
            coupling = (cos * sin_sum - sin * cos_sum) / count
            theta = self._euler_step(theta, coupling)
        return theta, PhaseState(torch.stack(cos_sums), torch.stack(sin_sums), past + T)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attention(ln1(x))``, then ``x + ffn(ln2(x))``."""

    def __init__(self, config: GPT2Config, phase: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        if phase:
            self.attention = PhaseAttention(config.d_model, config.n_heads, config.num_oscillators,
                                            config.coupling_strength, config.natural_freq_std,
                                            config.phase_iterations, config.dropout, config.coupling_mode)
        else:
            self.attention = StandardAttention(config.d_model, config.n_heads, config.max_seq_len, config.dropout)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),  # exact erf GELU, as published
            nn.Linear(config.d_ff, config.d_model),
            nn.Dropout(config.dropout),
        )

    @property
    def is_phase(self) -> bool:
        return isinstance(self.attention, PhaseAttention)

    def forward(self, x: torch.Tensor, return_R: bool = False):
        """[B, T, d_model] -> same; with ``return_R`` also R [B, H] (None in a standard block)."""
        if self.is_phase:
            y, R = self.attention(self.ln1(x), return_R=True)
        else:
            y, R = self.attention(self.ln1(x)), None
        x = x + y
        x = x + self.ffn(self.ln2(x))
        return (x, R) if return_R else x

    def step(self, x: torch.Tensor, state: KVCache | PhaseState | None = None):
        """Incremental forward of new positions; ``state`` is what the previous call returned (or None)."""
        y, state = self.attention.step(self.ln1(x), state)
        x = x + y
        return x + self.ffn(self.ln2(x)), state


class GPT2Model(nn.Module):
    """GPT-2 (pre-LN, learned positions, tied head) with phase attention in ``config.phase_layers``.

    Build it from a config or from keywords, e.g. a published checkpoint's YAML model section:
    ``GPT2Model(**checkpoint["config"]["model"])`` or ``GPT2Model(config=GPT2Config(...))``.
    """

    def __init__(self, config: GPT2Config | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = GPT2Config.from_dict(kwargs)
        elif kwargs:
            raise ValueError(f"pass either config= or keyword settings, not both (got {', '.join(kwargs)})")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i in config.phase_layers) for i in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied; both keys stay in the state dict
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        # LayerNorm keeps its 1/0 default; the phase parameters are initialised in PhaseAttention.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *, return_R: bool = False):
        """Token ids [B, T] -> (logits [B, T, vocab], loss or None[, Rs]).

        ``loss`` is the mean cross-entropy over all tokens when ``targets`` [B, T] is given. With
        ``return_R=True`` a third value lists R [B, H] for each phase layer, in layer order.
        """
        x = self.embed(ids)
        Rs = []
        for block in self.blocks:
            x, R = block(x, return_R=True)
            if R is not None:
                Rs.append(R)
        logits = self.head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return (logits, loss, Rs) if return_R else (logits, loss)

    def embed(self, ids: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Token plus position embeddings (then dropout) for ids [B, T] at positions start_pos.."""
        T = ids.shape[1]
        if start_pos + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens is longer than max_seq_len "
                             f"{self.config.max_seq_len}; keep only the last {self.config.max_seq_len}")
        pos = torch.arange(start_pos, start_pos + T, device=ids.device)
        return self.dropout(self.token_embedding(ids) + self.position_embedding(pos))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and the tied LM head: [B, T, d_model] -> logits [B, T, vocab]."""
        return self.lm_head(self.ln_f(x))

    def step(self, ids: torch.Tensor, cache: list | None = None) -> tuple[torch.Tensor, list]:
        """Incremental forward: logits for ``ids`` [B, T_new] that follow the positions in ``cache``.

        ``cache`` is the list (one state per block) the previous call returned, or None to start.
        Works when every phase layer is causal; an "original" phase layer raises ValueError.
        """
        start = 0 if cache is None else cache[0].length
        x = self.embed(ids, start)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, state = block.step(x, None if cache is None else cache[i])
            new_cache.append(state)
        return self.head(x), new_cache
