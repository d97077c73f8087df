"""Validation numbers for a model and the check of what its authors claim about them.

PPL is exp of the token-weighted mean negative log-likelihood over the non-overlapping validation
windows, so every validation character counts once. The windows are as long as the checkpoint was
validated with: its config's ``data.block_size``, else the model's ``max_seq_len``. (The published
code reported the mean over batches of exp(batch loss), which is never lower.)

The causality audit asks whether that PPL is one a text generator can reach: it perturbs the end of a
few windows and watches the logits before the change; where they move (original coupling mode), it
also scores each position from its prefix alone — what generation sees.

>>> from phasegpt_ckpt.models.evaluate import evaluate                         # doctest: +SKIP
>>> val_ppl = evaluate(model, val_loader, device="cuda")                 # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from model import GPT2Model
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.checkpoint import LoadedCheckpoint, load_checkpoint
from phasegpt_ckpt.models.data import corpus_or_bundled, get_dataloaders
from phasegpt_ckpt.models.device import inference_autocast, pick_device
from phasegpt_ckpt.models.generate import recomputed_from
from phasegpt_ckpt.proof.claims import Claim, check_claims
from phasegpt_ckpt.reporting import Progress, report

DEPENDENCE_THRESHOLD = 1e-4  # |Δlogit| above float32 rounding: the earlier positions saw the change


@dataclass
class LayerR:
    """Order parameter R of one phase layer over all validation windows and heads."""

    layer: int
    mean: float
    std: float  # population std over (window, head) values


@dataclass
class Measurement:
    loss: float  # mean NLL per token (nats)
    ppl: float  # exp(loss)
    tokens: int
    windows: int
    R: list[LayerR] = field(default_factory=list)

    @property
    def R_mean(self) -> Optional[float]:
        """Mean R over every phase layer (the published models have one)."""
        return sum(layer.mean for layer in self.R) / len(self.R) if self.R else None

    @property
    def R_std(self) -> Optional[float]:
        """Population std of every (layer, window, head) value: each layer's spread plus the spread
        between layers (each layer holds as many values, so its variance and offset weigh alike)."""
        if not self.R:
            return None
        mean = self.R_mean
        return math.sqrt(sum(layer.std**2 + (layer.mean - mean) ** 2 for layer in self.R) / len(self.R))

    def summary(self) -> dict:
        """The numbers as a metrics row names them (the trainer's rows, the metadata JSON's source)."""
        return {"val_loss": self.loss, "val_ppl": self.ppl, "R": self.R_mean, "R_std": self.R_std,
                "val_tokens": self.tokens}


@dataclass
class CausalityAudit:
    windows: int
    cut: int  # tokens from this position on were replaced
    max_logit_change: float  # largest |Δlogit| at positions before the cut
    full_sequence_ppl: float  # on the audited windows, every position seeing the whole window
    generation_consistent_ppl: Optional[float]  # the same windows, every position seeing its prefix only

    @property
    def depends_on_future(self) -> bool:
        return self.max_logit_change > DEPENDENCE_THRESHOLD

    def explanation(self) -> str:
        if not self.depends_on_future:
            return (f"logits at a position do not change when later tokens do (max |Δlogit| "
                    f"{self.max_logit_change:.1e}): the full-sequence PPL is the one generation sees")
        return (f"logits at a position change when later tokens do (max |Δlogit| {self.max_logit_change:.3g}): "
                f"the full-sequence PPL {self.full_sequence_ppl:.4g} sees the future; predicting each position "
                f"from its prefix only, as a generator must, gives {self.generation_consistent_ppl:.4g}")


def evaluate(model: GPT2Model, val_loader: DataLoader, device: str | torch.device = "cpu") -> float:
    """Validation perplexity: exp of the token-weighted mean NLL over ``val_loader``.

    >>> _, val_loader = get_dataloaders("input.txt", block_size=512)       # doctest: +SKIP
    >>> evaluate(model, val_loader, device="cuda")                           # doctest: +SKIP
    4.85...
    """
    return measure(model, val_loader, device=device).ppl


def measure(model: GPT2Model, val_loader: DataLoader, device: str | torch.device = "cpu",
            progress: Optional[Progress] = None) -> Measurement:
    """Loss, PPL, token count and R per phase layer over ``val_loader`` (bf16 autocast on CUDA).

    The model is moved to ``device`` and run in eval mode; its train/eval mode is restored after.
    ``progress`` hears of every batch (windows measured of all).
    """
    device = pick_device(device)
    was_training = model.training
    model.to(device).eval()
    nll, tokens, windows = 0.0, 0, 0
    Rs: list[list[torch.Tensor]] = [[] for _ in model.config.phase_layers]
    with torch.no_grad(), inference_autocast(device):
        for x, y in val_loader:
            x, y = x.to(device), y.to(device)
            logits, _, layer_Rs = model(x, return_R=True)
            nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens, windows = tokens + y.numel(), windows + x.shape[0]
            report(progress, "validation", windows, len(val_loader.sampler), unit="windows")
            for kept, R in zip(Rs, layer_Rs):
                kept.append(R.float().flatten().cpu())
    model.train(was_training)
    loss = nll / tokens
    layers = [LayerR(i, torch.cat(r).mean().item(), torch.cat(r).std(correction=0).item())
              for i, r in zip(model.config.phase_layers, Rs)]
    return Measurement(loss=loss, ppl=math.exp(loss), tokens=tokens, windows=windows, R=layers)


def audit_causality(model: GPT2Model, val_loader: DataLoader, *, windows: int = 4,
                    device: str | torch.device = "cpu", seed: int = 0) -> CausalityAudit:
    """Does position t see tokens after t? And if so, the PPL generation can reach (float32).

    The second half of the first ``windows`` validation windows is replaced by random tokens and the
    logits before it compared. For a model whose logits move, each position is then predicted from
    its prefix only: the causal blocks below the first original phase layer run once over the
    window, the blocks from it up once per prefix length (all windows of a length in one batch).
    """
    device = pick_device(device)
    was_training = model.training
    model.to(device).eval()
    x, y = _first_windows(val_loader, windows)
    x, y = x.to(device), y.to(device)
    cut = x.shape[1] // 2
    g = torch.Generator().manual_seed(seed)
    perturbed = x.clone()
    perturbed[:, cut:] = torch.randint(model.config.vocab_size, (x.shape[0], x.shape[1] - cut), generator=g).to(device)
    with torch.no_grad():
        logits = model(x)[0]
        change = (logits[:, :cut] - model(perturbed)[0][:, :cut]).abs().max().item()
        full_nll = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
        audit = CausalityAudit(x.shape[0], cut, change, math.exp(full_nll), None)
        if audit.depends_on_future:
            audit.generation_consistent_ppl = math.exp(_prefix_only_nll(model, x, y))
    model.train(was_training)
    return audit


def _first_windows(val_loader: DataLoader, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys, have = [], [], 0
    for x, y in val_loader:
        xs.append(x), ys.append(y)
        have += x.shape[0]
        if have >= count:
            break
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


def _prefix_only_nll(model: GPT2Model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean NLL when position t is predicted by a forward over tokens 0..t only."""
    split = recomputed_from(model)
    hidden = model.embed(x)
    for block in model.blocks[:split]:  # causal: a prefix's values are the full window's, cut short
        hidden = block(hidden)
    nll = 0.0
    for length in range(1, x.shape[1] + 1):
        h = hidden[:, :length]
        for block in model.blocks[split:]:
            h = block(h)
        nll += F.cross_entropy(model.head(h[:, -1]).float(), y[:, length - 1], reduction="sum").item()
    return nll / y.numel()


@dataclass
class EvalReport:
    """What ``verify --eval`` shows: the measurement, the claims table, the causality audit."""

    path: Path
    coupling_mode: str
    measurement: Measurement
    checks: list[Claim]
    causality: Optional[CausalityAudit] = None

    @property
    def passed(self) -> bool:
        return all(check.verdict != "FAIL" for check in self.checks)

    def to_dict(self) -> dict:
        m = self.measurement
        document = {
            "path": str(self.path),
            "coupling_mode": self.coupling_mode,
            "validation_loss": m.loss,
            "validation_ppl": m.ppl,
            "tokens": m.tokens,
            "windows": m.windows,
            "order_parameter_R": [asdict(layer) for layer in m.R],
            "claims": [check.to_dict() for check in self.checks],
            "passed": self.passed,
        }
        if self.causality is not None:
            audit = self.causality
            document["causality"] = {**asdict(audit), "depends_on_future": audit.depends_on_future,
                                     "explanation": audit.explanation()}
        return document


def evaluate_checkpoint(
    path: str | Path,
    *,
    claims: Optional[list[Claim]] = None,
    data: str | Path | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 16,
    causality: bool = False,
    causality_windows: int = 4,
    config=None,
    progress: Optional[Progress] = None,
) -> EvalReport:
    """Load ``path``, measure it on the validation split of ``data``, check ``claims``, audit causality if asked.

    ``data`` is the corpus (default: the copy bundled with the package); windows are
    :func:`block_size_of` the checkpoint; ``config`` is as for :func:`~phasegpt_ckpt.models.checkpoint.load_checkpoint`.

    >>> report = evaluate_checkpoint("best_model.pt", data="input.txt",
    ...                              claims=[Claim("validation_ppl", "manifest", 4.85, 0.05)])  # doctest: +SKIP
    >>> report.passed, report.measurement.ppl                                                   # doctest: +SKIP
    """
    device = pick_device(device)
    corpus = corpus_or_bundled(data)
    ckpt = load_checkpoint(path, config=config, data=corpus, device=device)
    val_loader = validation_loader(ckpt, corpus, batch_size)
    measurement = measure(ckpt.model, val_loader, device=device, progress=progress)
    audit = audit_causality(ckpt.model, val_loader, windows=causality_windows, device=device) if causality else None
    return EvalReport(Path(path), ckpt.coupling_mode, measurement, check_claims(claims or [], measurement), audit)


def validation_loader(ckpt: LoadedCheckpoint, corpus: str | Path, batch_size: int = 16) -> DataLoader:
    """The validation windows of ``corpus`` a checkpoint is measured on: :func:`block_size_of` it, its vocabulary."""
    _, val_loader = get_dataloaders(corpus, block_size=block_size_of(ckpt), batch_size=batch_size, vocab=ckpt.vocab)
    return val_loader


def block_size_of(ckpt: LoadedCheckpoint) -> int:
    """The window length the checkpoint was validated with: its config's ``data.block_size``, else
    the model's ``max_seq_len`` — its claims were measured so, and only so do they reproduce."""
    data = ckpt.full_config.get("data")
    block_size = data.get("block_size") if isinstance(data, dict) else None
    if block_size is None:
        return ckpt.config.max_seq_len
    if type(block_size) is not int or not 1 <= block_size <= ckpt.config.max_seq_len:
        raise BadInput(f"{ckpt.path}: data.block_size {block_size!r} is not a window length from 1 to the "
                       f"model's max_seq_len {ckpt.config.max_seq_len}")
    return block_size
