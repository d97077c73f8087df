"""Is a PPL difference real? Two checkpoints (or two groups of training seeds) on the same windows, and a paired bootstrap.

Every checkpoint is measured on the same non-overlapping validation windows (those of
:mod:`~phasegpt_ckpt.models.evaluate`; when the block sizes differ, windows of the shortest for all).
Each window gets its mean NLL per model; PPL is exp of the token-weighted mean over the windows, and
the relative change is ``ppl_b / ppl_a - 1`` (positive: B is worse).

The 95 % interval of that change is a percentile interval from a *paired* bootstrap: each resample
draws window indices with replacement and scores both sides on the same draw, so the windows'
difficulty (which both models share) cancels and only how differently the two models fare per window
makes the interval wide. With several checkpoints per side (one per training seed) the resample
first draws seeds, within each side, with replacement, then the windows (a crossed, two-level
bootstrap); the interval then carries seed-to-seed variation too.

What the interval is not: the windows are consecutive pieces of one text, not independent draws of
all text (and neighbouring windows are alike, which the bootstrap treats as independent); a single
training seed per side says nothing about how much another seed would move the number; and it is a
statement about this validation split.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.normal(1.5, 0.3, 400)                     # per-window mean NLL of A
>>> b = a + 0.02 + rng.normal(0, 0.05, 400)           # B: about 2 % higher PPL
>>> low, high = bootstrap_interval(a, b, resamples=2000, seed=0)
>>> bool(0 < low < high), round(high - low, 3) < 0.02
(True, True)
>>> bootstrap_interval(a, a, resamples=100)           # a model against itself
(0.0, 0.0)
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from model import GPT2Model
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.checkpoint import LoadedCheckpoint
from phasegpt_ckpt.models.data import CharDataset, ContiguousWindows, Windows
from phasegpt_ckpt.models.device import inference_autocast, pick_device
from phasegpt_ckpt.models.evaluate import block_size_of
from phasegpt_ckpt.reporting import Progress, report

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
CHUNK_ELEMENTS = 1 << 18  # window draws per bootstrap chunk: small enough to stay in cache, whatever the split's size


@dataclass
class Comparison:
    """Two sides measured on the same validation windows, and what a paired bootstrap says of the difference."""

    a: list[str]  # the checkpoints of side A (one per training seed), as named
    b: list[str]
    ppl_a: float  # exp of the token-weighted mean NLL (several seeds: of the mean over seeds)
    ppl_b: float
    loss_a: float  # that mean NLL, nats per token
    loss_b: float
    relative_change: float  # ppl_b / ppl_a - 1
    ci95: tuple[float, float]  # percentile interval of relative_change
    significant: bool  # the interval excludes 0
    windows: int
    window_length: int
    tokens: int  # per checkpoint
    resamples: int
    seed: int  # of the bootstrap's random draws
    seeds_a: int  # checkpoints (training seeds) on each side
    seeds_b: int
    interval_includes_seed_variation: bool  # both sides have two or more seeds
    ppl_a_per_seed: list[float] = field(default_factory=list)
    ppl_b_per_seed: list[float] = field(default_factory=list)
    coupling_modes_a: list[str] = field(default_factory=list)
    coupling_modes_b: list[str] = field(default_factory=list)
    block_sizes_a: list[int] = field(default_factory=list)  # each checkpoint's own window length
    block_sizes_b: list[int] = field(default_factory=list)
    corpus: str = ""
    # per window, B's mean NLL minus A's (nats per token; several seeds: of each side's mean over its seeds)
    nll_differences: list[float] = field(default_factory=list, repr=False)

    @property
    def shortened(self) -> list[str]:
        """Checkpoints measured on windows shorter than their own block size (so their PPL is not their claim's)."""
        return list(dict.fromkeys(name for name, size in zip(self.a + self.b, self.block_sizes_a + self.block_sizes_b)
                                  if size > self.window_length))

    def window_note(self) -> str:
        """Which windows were used, and why when they are shorter than a checkpoint's own."""
        note = f"{self.windows} validation windows of {self.window_length} characters"
        if self.shortened:
            note += (f" (the shortest block size among the checkpoints; {', '.join(self.shortened)} "
                     f"measured on shorter windows than its own, so its PPL is not the one it claims)")
        return note

    def explanation(self) -> str:
        """One sentence on what the numbers mean."""
        low, high = self.ci95
        if low == high == self.relative_change == 0.0:
            return "A and B score every window identically: there is no difference to explain."
        direction = "higher (worse)" if self.relative_change > 0 else "lower (better)"
        variation = ("window-to-window and seed-to-seed variation" if self.interval_includes_seed_variation
                     else "window-to-window variation")
        if self.significant:
            sentence = (f"B's PPL is {direction} than A's and the 95 % interval excludes 0: on this validation split "
                        f"the difference is larger than {variation} explains")
        else:
            sentence = (f"the 95 % interval includes 0: on this validation split the difference is within what "
                        f"{variation} explains, so it is no evidence that B's PPL is {direction.split()[0]}")
        if self.interval_includes_seed_variation:
            sentence += f" ({self.seeds_a} and {self.seeds_b} seeds)."
        elif self.seeds_a == self.seeds_b == 1:
            sentence += "; one training seed per side, so seed-to-seed noise is not in the interval."
        else:
            single = "A" if self.seeds_a == 1 else "B"
            sentence += f"; {single} has one training seed, so its seed-to-seed noise is not in the interval."
        return sentence[0].upper() + sentence[1:]

    def to_dict(self) -> dict:
        document = asdict(self)
        document["ci95"] = list(self.ci95)
        document.update(shortened=self.shortened, window_note=self.window_note(), explanation=self.explanation())
        return document


def compare(
    a: Sequence[LoadedCheckpoint],
    b: Sequence[LoadedCheckpoint],
    corpus: str | Path,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: Optional[Progress] = None,
    labels_a: Optional[Sequence[str]] = None,
    labels_b: Optional[Sequence[str]] = None,
) -> Comparison:
    """Measure every checkpoint of ``a`` and ``b`` on the same validation windows of ``corpus`` and compare.

    Each side is one checkpoint or several (one per training seed). The windows are the
    non-overlapping windows of the validation split (last 10 %), as long as the shortest
    :func:`~phasegpt_ckpt.models.evaluate.block_size_of` of all checkpoints. A side's NLL is the mean
    over its seeds of each seed's token-weighted mean NLL; ``ppl = exp(NLL)``, and the relative change
    is ``ppl_b / ppl_a - 1``. Its interval comes from :func:`bootstrap_interval`: windows resampled with
    the same indices for A and B, and, where a side has several seeds, the seeds resampled within
    each side first (so the interval carries seed-to-seed variation as well).

    A checkpoint given on both sides is measured once. ``labels_a``/``labels_b`` name the checkpoints in
    the result (default: their paths). ``progress`` hears of the windows measured per checkpoint.
    Raises ``BadInput`` for checkpoints with different vocabularies, a side naming one checkpoint twice,
    or a validation split shorter than one window.

    >>> result = compare([store.load("phasegpt-tiny")], [store.load("runs/other/best_model.pt")],
    ...                  store.corpus())                                      # doctest: +SKIP
    >>> result.relative_change, result.ci95, result.significant              # doctest: +SKIP
    """
    a, b = list(a), list(b)
    labels_a = [str(c.path) for c in a] if labels_a is None else list(labels_a)
    labels_b = [str(c.path) for c in b] if labels_b is None else list(labels_b)
    if not a or not b:
        raise BadInput("compare needs at least one checkpoint on each side")
    if len(labels_a) != len(a) or len(labels_b) != len(b):
        raise BadInput("compare needs one label per checkpoint")
    if type(resamples) is not int or resamples < 1:
        raise BadInput(f"resamples must be a whole number of at least 1, not {resamples!r}")
    for side, ckpts, labels in (("A", a, labels_a), ("B", b, labels_b)):
        seen: dict[object, str] = {}
        for ckpt, label in zip(ckpts, labels):
            key = _identity(ckpt)
            if key in seen:
                raise BadInput(f"side {side} names the same checkpoint twice ({seen[key]} and {label}); "
                               "each seed of a side must be its own checkpoint")
            seen[key] = label
    everything = list(zip(a + b, labels_a + labels_b))
    first, first_label = everything[0]
    for ckpt, label in everything[1:]:
        if ckpt.vocab != first.vocab:
            raise BadInput(f"{first_label} and {label} have different vocabularies ({_vocab_difference(first.vocab, ckpt.vocab)}): "
                           "their PPLs are over different tokens and cannot be compared")
    sizes = [block_size_of(ckpt) for ckpt, _ in everything]
    length = min(sizes)
    corpus = Path(corpus)
    loader = _validation_windows(corpus, first.vocab, length, batch_size)
    device = pick_device(device)

    measured: dict[int, torch.Tensor] = {}  # id(ckpt) -> per-window mean NLL
    for ckpt, label in everything:
        if id(ckpt) not in measured:
            measured[id(ckpt)] = window_nll(ckpt.model, loader, device=device, progress=progress, task=f"measuring {label}")
    nll_a = np.stack([measured[id(c)].numpy() for c in a])
    nll_b = np.stack([measured[id(c)].numpy() for c in b])
    windows = nll_a.shape[1]
    loss_a, loss_b = float(nll_a.mean(1).mean()), float(nll_b.mean(1).mean())  # equal windows: token-weighted
    low, high = bootstrap_interval(nll_a, nll_b, resamples=resamples, seed=seed)
    change = math.expm1(loss_b - loss_a)
    result = Comparison(
        a=labels_a, b=labels_b, ppl_a=math.exp(loss_a), ppl_b=math.exp(loss_b), loss_a=loss_a, loss_b=loss_b,
        relative_change=change, ci95=(low, high), significant=bool(low > 0.0 or high < 0.0),
        windows=windows, window_length=length, tokens=windows * length, resamples=resamples, seed=seed,
        seeds_a=len(a), seeds_b=len(b), interval_includes_seed_variation=len(a) > 1 and len(b) > 1,
        ppl_a_per_seed=[math.exp(float(row.mean())) for row in nll_a],
        ppl_b_per_seed=[math.exp(float(row.mean())) for row in nll_b],
        coupling_modes_a=[c.coupling_mode for c in a], coupling_modes_b=[c.coupling_mode for c in b],
        block_sizes_a=sizes[:len(a)], block_sizes_b=sizes[len(a):], corpus=str(corpus),
        nll_differences=(nll_b.mean(0) - nll_a.mean(0)).tolist(),
    )
    if result.shortened:
        log.warning(f"{', '.join(result.shortened)} measured on windows of {length} characters, shorter than its "
                    f"own block size: its PPL here is not the one it claims")
    log.debug(f"compared on {result.window_note()}: PPL {result.ppl_a:.4f} vs {result.ppl_b:.4f}, change "
             f"{change:+.4%} (95 % interval {low:+.4%} to {high:+.4%})")
    return result


def _vocab_difference(one: str, other: str) -> str:
    if len(one) != len(other):
        return f"{len(one)} and {len(other)} characters"
    if sorted(one) == sorted(other):
        return f"the same {len(one)} characters in another order"
    return f"{len(one)} characters each, not the same ones"


def _identity(ckpt: LoadedCheckpoint) -> object:
    """What makes two entries of a side the same checkpoint: the same object, or the same file."""
    try:
        return ckpt.path.resolve()
    except (OSError, AttributeError):
        return id(ckpt)


def _validation_windows(corpus: Path, vocab: str, length: int, batch_size: int) -> DataLoader:
    """The non-overlapping validation windows of ``corpus`` (as :func:`~phasegpt_ckpt.models.evaluate.validation_loader`)."""
    _, ids = CharDataset(corpus, vocab=vocab).split()
    if len(ids) < length + 1:
        raise BadInput(f"the validation split of {corpus} (its last 10 %, {len(ids)} characters) is shorter than one "
                       f"window of {length + 1} characters; pass --data with a longer corpus")
    windows = Windows(ids, length)
    return DataLoader(windows, batch_size=batch_size, sampler=ContiguousWindows(windows))


def window_nll(model: GPT2Model, loader: DataLoader, device: str | torch.device = "cpu",
               progress: Optional[Progress] = None, task: str = "measuring") -> torch.Tensor:
    """Mean NLL (nats per token) of each window of ``loader``, float64 on the CPU, in the loader's order.

    As :func:`~phasegpt_ckpt.models.evaluate.measure` runs it: eval mode (restored after), bf16 autocast on CUDA.
    """
    device = pick_device(device)
    was_training = model.training
    model.to(device).eval()
    rows, done = [], 0
    with torch.no_grad(), inference_autocast(device):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)[0]
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            rows.append(nll.double().mean(1).cpu())
            done += x.shape[0]
            report(progress, task, done, len(loader.sampler), unit="windows")
    model.train(was_training)
    return torch.cat(rows)


def bootstrap_interval(nll_a, nll_b, *, tokens=None, resamples: int = 10_000, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of ``ppl_b / ppl_a - 1`` from a paired (and, for several seeds, two-level) bootstrap.

    ``nll_a``, ``nll_b``: per-window mean NLL, shape ``(windows,)`` for one checkpoint or
    ``(seeds, windows)`` for one checkpoint per training seed, the windows the same for both sides
    and every seed; ``tokens``: tokens per window (default: all windows alike). A side's NLL is the
    mean over its seeds of each seed's token-weighted mean NLL.

    Each of ``resamples`` draws (seeded by ``seed``, reproducible):

    1. seeds: for each side, as many seeds as it has, drawn with replacement from its own (a side
       with one seed keeps it);
    2. windows: as many as there are, drawn with replacement, **the same draw for A and B** (paired:
       what the windows share, their difficulty, cancels in the difference).

    The change is computed on each draw; the interval is the ``(1 ± confidence) / 2`` quantiles of
    those changes. Resampling seeds and windows independently is the crossed ("pigeonhole")
    bootstrap for a seeds × windows design. A bootstrap of S seeds shrinks the seed mean's variance
    by (S - 1) / S, so a drawn seed mean's distance from the mean of all seeds is widened by
    sqrt(S / (S - 1)). Even so, a handful of seeds estimates the seed level only roughly: in
    simulation (seed offsets larger than the window noise) the 95 % interval covered the true change
    about 83 % of the time with 2 seeds per side, 87 % with 3 and 94 % with 5 or more. A side with a
    single seed contributes no seed variation at all. Vectorised (numpy, in chunks that stay in the
    CPU cache): 10,000 resamples of a thousand windows take about a tenth of a second.
    """
    A, B = np.atleast_2d(np.asarray(nll_a, dtype=np.float64)), np.atleast_2d(np.asarray(nll_b, dtype=np.float64))
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1] or A.shape[1] == 0 or 0 in (len(A), len(B)):
        raise BadInput(f"per-window NLL of shapes {A.shape} and {B.shape}: both sides need the same windows, at least one")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise BadInput("per-window NLL is not finite (a model's loss overflowed): no interval can be drawn")
    if type(resamples) is not int or resamples < 1:
        raise BadInput(f"resamples must be a whole number of at least 1, not {resamples!r}")
    if not 0 < confidence < 1:
        raise BadInput(f"confidence must lie between 0 and 1, not {confidence!r}")
    windows = A.shape[1]
    n = np.ones(windows) if tokens is None else np.asarray(tokens, dtype=np.float64)
    if n.shape != (windows,) or (n <= 0).any():
        raise BadInput(f"tokens must give a positive count for each of the {windows} windows")
    A_sums, B_sums = A * n, B * n  # NLL summed over each window's tokens
    rng = np.random.default_rng(seed)
    changes = np.empty(resamples)
    chunk = max(1, CHUNK_ELEMENTS // windows)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        seeds_a, seeds_b = _seed_weights(rng, len(A), r), _seed_weights(rng, len(B), r)
        drawn = rng.integers(0, windows, size=(r, windows))
        counts = np.bincount((drawn + windows * np.arange(r)[:, None]).ravel(), minlength=r * windows)
        counts = counts.reshape(r, windows).astype(np.float64)  # how often each window was drawn
        tokens_drawn = counts @ n
        loss_a = _side_loss(counts @ A_sums.T, seeds_a) / tokens_drawn
        loss_b = _side_loss(counts @ B_sums.T, seeds_b) / tokens_drawn
        changes[start:start + r] = np.expm1(loss_b - loss_a)
    low, high = np.quantile(changes, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _side_loss(per_seed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A side's summed NLL on each window draw, (draws, seeds) -> (draws,): the mean over the drawn seeds,
    its spread about the mean of all seeds widened by sqrt(S / (S - 1)) — a bootstrap of S seeds
    otherwise gives the seed mean a variance (S - 1) / S of what S seeds' sample variance says."""
    seeds = per_seed.shape[1]
    if seeds == 1:
        return per_seed[:, 0]
    everyone = per_seed.mean(1)
    return everyone + math.sqrt(seeds / (seeds - 1)) * ((per_seed * weights).sum(1) - everyone)


def _seed_weights(rng: np.random.Generator, seeds: int, draws: int) -> np.ndarray:
    """(draws, seeds): the share of each seed in a resample of ``seeds`` seeds drawn with replacement."""
    if seeds == 1:
        return np.ones((draws, 1))
    return rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=draws) / seeds
