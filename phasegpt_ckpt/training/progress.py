"""What a training run shows and leaves behind besides checkpoints: live progress, metrics.jsonl, the plot.

Progress goes to stderr (a rich bar on a terminal, a line per ``log_interval`` steps otherwise);
``metrics.jsonl`` holds one row per epoch; ``--plot`` draws train/validation loss, PPL and R per
epoch into a PNG (matplotlib is an optional extra).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

from phasegpt_ckpt.atomic import atomic_path, write_text
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.reporting import Progress, report

log = logging.getLogger(__name__)


class EpochProgress:
    """Live stats of one epoch: to the caller's :class:`~phasegpt_ckpt.reporting.Progress` callback when it
    gave one (the CLI draws a bar), else a log line every ``log_interval`` steps."""

    def __init__(self, epoch: int, total_epochs: int, steps: int, log_interval: int, enabled: bool,
                 progress: Optional[Progress] = None):
        self.label = f"epoch {epoch}/{total_epochs}"
        self.steps, self.log_interval, self.enabled, self.progress = steps, log_interval, enabled, progress

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, R: Optional[float]) -> None:
        if not self.enabled:
            return
        stats = f"loss {loss:.4f} · lr {lr:.2e} · {tokens_per_s:,.0f} tok/s" + ("" if R is None else f" · R {R:.3f}")
        if self.progress is not None:
            report(self.progress, self.label, step, self.steps, unit="steps", detail=stats)
        elif step % self.log_interval == 0:
            log.info(f"{self.label} step {step}/{self.steps} · {stats}")


def epoch_line(row: dict, total_epochs: int, improved: bool) -> str:
    R = "" if row["R"] is None else f" · R {row['R']:.4f}"
    best = " (best)" if improved else ""
    train = "n/a" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    return (f"epoch {row['epoch']}/{total_epochs} · step {row['step']} · train loss {train} · "
            f"val loss {row['val_loss']:.4f} · val PPL {row['val_ppl']:.3f}{best}{R} · lr {row['lr']:.2e} · "
            f"{row['tokens_per_s']:,.0f} tok/s · {row['time_s']:.0f} s")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_metrics(rows: list[dict], path: Path) -> Path:
    """``metrics.jsonl``: one JSON row per epoch, replaced atomically."""
    return write_text("".join(json.dumps(row) + "\n" for row in rows), path)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput("--plot needs matplotlib: pip install 'phasegpt-ckpt[plot]'") from None


def plot_metrics(rows: list[dict], path: str | Path) -> Path:
    """A PNG of train/validation loss, validation PPL and R per epoch, written atomically."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    loss, ppl, R = figure.subplots(1, 3)
    loss.plot(epochs, [_or_nan(row["train_loss"]) for row in rows], marker="o", label="train")
    loss.plot(epochs, [row["val_loss"] for row in rows], marker="o", label="validation")
    loss.set(title="loss", xlabel="epoch")
    loss.legend()
    ppl.plot(epochs, [row["val_ppl"] for row in rows], marker="o", color="tab:orange")
    ppl.set(title="validation PPL", xlabel="epoch")
    if any(row["R"] is not None for row in rows):
        R.plot(epochs, [row["R"] for row in rows], marker="o", color="tab:green")
    R.set(title="order parameter R", xlabel="epoch")
    path = Path(path)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    return path


def _or_nan(value: Optional[float]) -> float:
    return math.nan if value is None else value
