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

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

COUPLING_MODES = ("original", "causal")
# Keys of the published YAML model sections that the published training code never read (§3): they are
# accepted so that GPT2Model(**checkpoint["config"]["model"]) works, recorded, and change nothing.
IGNORED_KEYS = ("type", "natural_freq", "dt", "n_sync_steps")
DT = 0.1  # Euler step of the published phase layer, whatever the YAML's `dt` says
MAX_CONFIG_BYTES = 2**16  # a config.json is a few hundred bytes
CONFIG_NAME = "config.json"  # what save_pretrained writes: GPT2Config.to_dict() ...
WEIGHTS_NAME = "model.safetensors"  # ... and the state dict, the tied head stored once; never a pickle


# Upper bounds on the sizes a config may claim, far above any PhaseGPT run (the published model: vocab 65,
# d_model 768, 12 layers, 512 positions), so a config from an untrusted file cannot make the model allocate
# terabytes: the causal mask alone is max_seq_len**2 floats.
SIZE_LIMITS = {"vocab_size": 2**20, "d_model": 2**14, "n_layers": 1024, "n_heads": 1024, "d_ff": 2**16,
               "max_seq_len": 2**14, "num_oscillators": 2**12, "phase_iterations": 10**4}
MAX_NUMBERS = 2**32  # weights and causal masks together (16 GiB in float32); GPT-2 XL has 1.5e9 parameters


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
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"model config {name} must be a positive integer, got {value!r}")
            if value > limit:  # checked before any tensor is allocated: a claimed size is not trusted
                raise ValueError(f"model config {name} {value} is over the limit of {limit}")
        numbers = self._numbers()
        if numbers > MAX_NUMBERS:
            raise ValueError(f"model config describes a model of about {numbers:.1e} numbers (weights and causal "
                             f"masks), over the limit of {MAX_NUMBERS:.1e}")
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

    def _numbers(self) -> int:
        """About how many numbers a model of this config allocates: embeddings, each layer's attention and
        FFN weights and its max_seq_len² causal mask.

        >>> GPT2Config()._numbers() > 85_000_000
        True
        """
        per_layer = 4 * self.d_model**2 + 2 * self.d_model * self.d_ff + self.max_seq_len**2
        return (self.vocab_size + self.max_seq_len) * self.d_model + self.n_layers * per_layer

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


def _read_config(path: str | os.PathLike) -> GPT2Config:
    """The GPT2Config a ``config.json`` from ``save_pretrained`` holds; ValueError naming the file otherwise."""
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)  # never more: the file came from a Hub repository, any size
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB: not a model config")
    try:
        d = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, a number of 5000 digits, nested too deep
        raise ValueError(f"{path} is not a JSON model config ({type(err).__name__})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object of model settings, not {type(d).__name__}")
    missing = [f.name for f in fields(GPT2Config) if f.init and f.name not in d]
    if missing:  # defaults would build a model of another shape than the weights saved with it
        raise ValueError(f"{path} lacks model config key(s): {', '.join(missing)}")
    try:
        return GPT2Config.from_dict(d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class KVCache:
    """What a StandardAttention layer keeps between ``step`` calls: keys and values of the positions seen.

    The buffers [B, H, max_seq_len, head_dim] are allocated once, so a step writes only its new
    positions instead of copying the whole past (``torch.cat`` would make decoding quadratic). A step
    extends the cache in place: the one it returns is the one it was given.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0  # positions held

    @classmethod
    def empty_like(cls, k: torch.Tensor, capacity: int) -> KVCache:
        """A cache for keys/values shaped like ``k`` [B, H, T, head_dim], room for ``capacity`` positions."""
        B, H, _, D = k.shape
        return cls(k.new_empty(B, H, capacity, D), k.new_empty(B, H, capacity, D))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys and values; returns those of every position held, as views."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


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
        return self._attend(*self._heads(x), past=0)

    def step(self, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Attend from the new positions ``x`` [B, T_new, d_model] to the cached ones and themselves.

        Returns the output for the new positions and the cache, extended by them; ``cache=None``
        starts a sequence. Feeding a sequence in pieces gives the same outputs as ``forward`` on the whole.
        """
        q, k, v = self._heads(x)
        if cache is None:
            cache = KVCache.empty_like(k, self.causal_mask.shape[-1])
        past = cache.length
        return self._attend(q, *cache.append(k, v), past=past), cache

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of ``x`` [B, T, d_model], each [B, H, T, head_dim] (published order: q, k, v)."""
        B, T, C = x.shape
        q, k, v = self.qkv_proj(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """Queries of positions past.. against keys of positions 0..; the output projected back to d_model."""
        B, H, T, D = q.shape
        # a single new position may see everything before it; several see the mask's slice
        mask = None if past == 0 or T == 1 else self.causal_mask[0, 0, past:past + T, :past + T].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0 and T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(B, T, H * D)))


def _euler_step(theta: torch.Tensor, coupling: torch.Tensor, omega: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """θ + dt·(ω + K·coupling), wrapped into [-π, π); computed in ``coupling``'s storage, which it returns."""
    return coupling.mul_(K).add_(omega).mul_(DT).add_(theta).add_(math.pi).remainder_(2 * math.pi).sub_(math.pi)


def evolve_original(theta: torch.Tensor, omega: torch.Tensor, K: torch.Tensor, iterations: int,
                    saved: list | None = None) -> torch.Tensor:
    """The published dynamics of θ [B, H, T, N]: coupling = mean over every position b of sin(θ_a − θ_b).

    ``omega`` [H, 1, N] and ``K`` [H, 1, 1] are float32. Each iteration's cos θ and sin θ are appended
    to ``saved`` when given (what the backward needs). In-place arithmetic: call without autograd.
    """
    for _ in range(iterations):
        cos, sin = theta.cos(), theta.sin()
        # mean_b sin(θ_a − θ_b) over every position b, the future included (the published sign)
        coupling = torch.mul(sin, cos.mean(dim=2, keepdim=True)).sub_(cos * sin.mean(dim=2, keepdim=True))
        if saved is not None:
            saved += (cos, sin)
        theta = _euler_step(theta, coupling, omega, K)
    return theta


def evolve_causal(theta: torch.Tensor, omega: torch.Tensor, K: torch.Tensor, iterations: int,
                  state: PhaseState | None = None, saved: list | None = None) -> tuple[torch.Tensor, PhaseState]:
    """Causal dynamics of new positions θ [B, H, T, N] after those in ``state``: running means over b <= a.

    Returns θ and the state extended by these positions. ``saved`` as in :func:`evolve_original`.
    """
    past = 0 if state is None else state.length
    count = _positions(past, theta)
    cos_sums, sin_sums = [], []
    for i in range(iterations):
        cos, sin = theta.cos(), theta.sin()
        cos_sum, sin_sum = cos.cumsum(dim=2), sin.cumsum(dim=2)  # sums over b <= a in this chunk
        if state is not None:
            cos_sum += state.cos_sum[i][:, :, None]
            sin_sum += state.sin_sum[i][:, :, None]
        cos_sums.append(cos_sum[:, :, -1])
        sin_sums.append(sin_sum[:, :, -1])
        if saved is not None:
            saved += (cos, sin)
        # mean_{b<=a} sin(θ_b − θ_a) = cos θ_a · mean sin θ_b − sin θ_a · mean cos θ_b (textbook sign)
        coupling = torch.mul(cos, sin_sum).sub_(sin * cos_sum).div_(count)
        theta = _euler_step(theta, coupling, omega, K)
    return theta, PhaseState(torch.stack(cos_sums), torch.stack(sin_sums), past + theta.shape[2])


def _positions(past: int, theta: torch.Tensor) -> torch.Tensor:
    """How many positions each running mean covers: past+1 .. past+T, as a [T, 1] column."""
    T = theta.shape[2]
    return torch.arange(past + 1, past + T + 1, device=theta.device, dtype=theta.dtype)[:, None]


class PhaseDynamics(torch.autograd.Function):
    """The Euler iterations with a hand-written backward, so training keeps two tensors per iteration.

    Autograd through :func:`evolve_original` would keep every intermediate of every iteration and run
    about twice as many elementwise kernels backwards. Here the backward walks the iterations in
    reverse with the chain rule of the mean-field step, from the cos θ and sin θ saved by the forward
    (derivation in the comments of ``_original_backward`` and ``_causal_backward``). The forward is
    the very same arithmetic, so outputs are bit for bit those of the plain functions.

    ``PhaseDynamics.apply(theta, omega, K, iterations, causal)`` -> θ after ``iterations`` steps.
    """

    @staticmethod
    def forward(ctx, theta, omega, K, iterations: int, causal: bool):
        saved: list[torch.Tensor] = []
        if causal:
            theta, _ = evolve_causal(theta, omega, K, iterations, saved=saved)
        else:
            theta = evolve_original(theta, omega, K, iterations, saved=saved)
        ctx.causal = causal
        ctx.save_for_backward(K, *saved)
        return theta

    @staticmethod
    def backward(ctx, grad):
        K, *saved = ctx.saved_tensors
        DTK = DT * K
        grad_omega, grad_K = grad.new_zeros(K.shape[0], 1, grad.shape[3]), torch.zeros_like(K)
        step_back = _causal_backward if ctx.causal else _original_backward
        for i in reversed(range(len(saved) // 2)):
            cos, sin = saved[2 * i], saved[2 * i + 1]
            # θ' = wrap(θ + dt·ω + dt·K·c(θ)): wrap has slope 1, so dL/dω and dL/dK read g = dL/dθ' directly
            grad_omega += DT * grad.sum(dim=(0, 2))[:, None, :]
            grad, coupling_grad = step_back(grad, cos, sin, DTK)
            grad_K += DT * coupling_grad
        return grad, grad_omega, grad_K, None, None


def _original_backward(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, DTK: torch.Tensor):
    """dL/dθ of one original-mode step from g = dL/dθ', and Σ g·c (what dL/dK needs, per head).

    c_a = sin_a·C̄ − cos_a·S̄ with C̄ = mean_b cos_b, S̄ = mean_b sin_b. With u = dt·K·g:
    dθ_a = g_a + u_a·(cos_a·C̄ + sin_a·S̄)            (θ_a inside c_a)
                − sin_a·Σ_b u_b sin_b / T − cos_a·Σ_b u_b cos_b / T   (θ_a inside the means)
         = g_a + cos_a·(u_a·C̄ − Q/T) + sin_a·(u_a·S̄ − P/T),  P = Σ_b u_b sin_b, Q = Σ_b u_b cos_b.
    """
    T = g.shape[2]
    mean_cos, mean_sin = cos.mean(dim=2, keepdim=True), sin.mean(dim=2, keepdim=True)
    P, Q = (g * sin).sum(dim=2, keepdim=True), (g * cos).sum(dim=2, keepdim=True)  # before the dt·K factor
    coupling_grad = (mean_cos * P - mean_sin * Q).sum(dim=(0, 3))[:, :, None]  # Σ g·c = Σ_b,n C̄·P − S̄·Q
    u = g * DTK
    along_cos = torch.mul(u, mean_cos).sub_(DTK * Q / T).mul_(cos)
    along_sin = u.mul_(mean_sin).sub_(DTK * P / T).mul_(sin)
    return along_cos.add_(g).add_(along_sin), coupling_grad


def _causal_backward(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, DTK: torch.Tensor):
    """As :func:`_original_backward` for the causal step c_a = (cos_a·Σ_{b<=a} sin_b − sin_a·Σ_{b<=a} cos_b) / n_a.

    With w = dt·K·g / n and S_a, C_a the running sums:
    dθ_b = g_b − w_b·(sin_b·S_b + cos_b·C_b)                                (θ_b inside c_b)
           + cos_b·Σ_{a>=b} w_a·cos_a + sin_b·Σ_{a>=b} w_a·sin_a            (θ_b inside later sums)
    """
    sin_sum, cos_sum = sin.cumsum(dim=2), cos.cumsum(dim=2)
    g_n = g / _positions(0, g)
    coupling = torch.mul(cos, sin_sum).sub_(sin * cos_sum)
    coupling_grad = (g_n * coupling).sum(dim=(0, 2, 3))[:, None, None]
    w = g_n.mul_(DTK)
    later_cos = _reverse_cumsum(w * cos).mul_(cos)
    later_sin = _reverse_cumsum(w * sin).mul_(sin)
    own = sin_sum.mul_(sin).add_(cos_sum.mul_(cos)).mul_(w)
    return later_cos.add_(g).sub_(own).add_(later_sin), coupling_grad


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Σ_{a >= b} x_a over positions (dim 2), as autograd differentiates a cumsum."""
    return x.flip(2).cumsum(dim=2).flip(2)


class PhaseAttention(nn.Module):
    """Kuramoto phase-coupled oscillators in place of attention (PHASEGPT_FORMAT.md §2).

    Each position gets ``num_oscillators`` phases per head, θ = π·tanh(to_phase(x)); ``phase_iterations``
    Euler steps (dt 0.1) of ``θ ← wrap(θ + dt·(ω + K·coupling))`` follow, and ``from_phase`` reads θ out.

    - ``coupling_mode="original"`` is the published layer: coupling = mean over ALL positions b of
      sin(θ_a − θ_b). It sees future positions and its sign pushes phases apart when K > 0.
    - ``coupling_mode="causal"``: coupling = mean over b <= a of sin(θ_b − θ_a), the textbook sign;
      position a never sees later ones, so ``step`` can decode incrementally.

    Both use mean_b sin(θ_a − θ_b) = sin θ_a · mean_b cos θ_b − cos θ_a · mean_b sin θ_b, which needs
    O(B·H·T·N) memory instead of the published [B, H, T, T, N] tensor, and a hand-written backward
    (:class:`PhaseDynamics`) that keeps only cos θ and sin θ per iteration. The trigonometry runs in
    float32 whatever the input dtype (bf16 phases would be off by ~0.01 rad after one step). The layer
    compiles without graph breaks (benchmarks/phase_layer.py measures ``torch.compile`` against eager).

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
        theta, omega, K = self._initial_phases(x), *self._frequencies_and_coupling()
        causal = self.coupling_mode == "causal"
        if torch.is_grad_enabled() and any(t.requires_grad for t in (theta, omega, K)):
            theta = PhaseDynamics.apply(theta, omega, K, self.phase_iterations, causal)
        elif causal:
            theta, _ = evolve_causal(theta, omega, K, self.phase_iterations)
        else:
            theta = evolve_original(theta, omega, K, self.phase_iterations)
        R = torch.hypot(theta.cos().mean(dim=(2, 3)), theta.sin().mean(dim=(2, 3)))
        self.last_R_param.copy_(R.mean().detach())
        y = self._read_out(theta, x.dtype)
        return (y, R) if return_R else y

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: PhaseState | None = None) -> tuple[torch.Tensor, PhaseState]:
        """Causal mode only: process new positions ``x`` [B, T_new, d_model] after those in ``state``.

        Returns their output and the state extended by them; ``state=None`` starts a sequence.
        Feeding a sequence in pieces gives the same outputs as ``forward`` on the whole (to float
        rounding). For decoding: no gradients flow through it. ``last_R_param`` is left alone.
        """
        if self.coupling_mode != "causal":
            raise ValueError("coupling_mode 'original' couples every position to later ones, so it cannot "
                             "run incrementally; run the whole sequence through forward() instead")
        theta, state = evolve_causal(self._initial_phases(x), *self._frequencies_and_coupling(),
                                     self.phase_iterations, state)
        return self._read_out(theta, x.dtype), state

    def _initial_phases(self, x: torch.Tensor) -> torch.Tensor:
        """θ0 = π·tanh(to_phase(x)) as float32 [B, H, T, N]."""
        B, T, _ = x.shape
        p = self.to_phase(x).float().view(B, T, self.n_heads, self.num_oscillators).transpose(1, 2)
        return torch.tanh(p) * math.pi

    def _frequencies_and_coupling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ω as [H, 1, N] and K as [H, 1, 1], float32, to broadcast against θ [B, H, T, N]."""
        return self.natural_freq.float()[:, None, :], self.coupling_matrix.float()

    def _read_out(self, theta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        B, H, T, N = theta.shape
        return self.dropout(self.from_phase(theta.transpose(1, 2).reshape(B, T, H * N).to(dtype)))


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


class GPT2Model(nn.Module, PyTorchModelHubMixin, tags=["phasegpt", "kuramoto"]):
    """GPT-2 (pre-LN, learned positions, tied head) with phase attention in ``config.phase_layers``.

    Build it from a config or from keywords, e.g. a published checkpoint's YAML model section:
    ``GPT2Model(**checkpoint["config"]["model"])`` or ``GPT2Model(config=GPT2Config(...))``.

    ``save_pretrained(folder)``, ``push_to_hub(repo_id)`` and ``GPT2Model.from_pretrained(folder_or_repo)``
    come from huggingface_hub's ``PyTorchModelHubMixin``: a folder or repo holds ``config.json`` (every
    setting, coupling_mode included) and ``model.safetensors``; loading reads no pickle.
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

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: ``model.safetensors`` and ``config.json`` (``GPT2Config.to_dict()``)."""
        from safetensors.torch import save_model  # drops the tied lm_head.weight; load_model re-ties it

        save_directory = Path(save_directory)
        save_model(self, str(save_directory / WEIGHTS_NAME))
        config = json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"
        (save_directory / CONFIG_NAME).write_text(config, encoding="utf-8")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        map_location: str = "cpu", strict: bool = True) -> GPT2Model:
        """A model from a folder that ``save_pretrained`` wrote, or from a Hub repo ``push_to_hub`` filled.

        Reads ``config.json`` (every key ``to_dict`` writes must be there) and ``model.safetensors``,
        weights-only; a ``pytorch_model.bin`` is never unpickled. Returns the model in eval mode. A
        config that is not JSON, lacks a key or holds a bad value, or weights that do not fit it, raise
        ValueError; a folder without one of the two files FileNotFoundError; Hub errors are huggingface_hub's.
        """
        source = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(source):
            def locate(filename: str) -> str:
                path = os.path.join(source, filename)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{source} holds no {filename}: a save_pretrained folder has "
                                            f"{CONFIG_NAME} and {WEIGHTS_NAME}")
                return path
        else:
            from huggingface_hub import hf_hub_download

            def locate(filename: str) -> str:
                return hf_hub_download(source, filename, revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, token=token,
                                       local_files_only=local_files_only)
        model = cls(config=_read_config(locate(CONFIG_NAME)))  # a bad config fails before any weights move
        weights = locate(WEIGHTS_NAME)
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        try:
            load_model(model, weights, strict=strict, device=map_location)
        except (RuntimeError, SafetensorError) as err:
            raise ValueError(f"{weights} does not hold weights for the model in its {CONFIG_NAME}: {err}") from None
        return model.eval()

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
        Attention layers extend their caches in place, so a cache serves one continuation: to branch
        from a shared prompt, run the prompt again. For decoding: no gradients flow through phase
        layers here. Works when every phase layer is causal; an "original" one raises ValueError.
        """
        start = 0 if cache is None else cache[0].length
        x = self.embed(ids, start)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, state = block.step(x, None if cache is None else cache[i])
            new_cache.append(state)
        return self.head(x), new_cache
