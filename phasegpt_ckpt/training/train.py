"""Train and resume PhaseGPT models: the published recipe, exact continuation, atomic checkpoints.

The optimizer and schedule are those of PHASEGPT_FORMAT.md §3 (AdamW 0.9/0.999/1e-8 in two weight
decay groups; linear warmup, then cosine floored at 0.1 of the base rate). A checkpoint holds
everything the next step depends on — weights, AdamW moments, scheduler, the python/torch/CUDA RNG
states and the data sampler's position — so a run resumed from its own checkpoint continues bit for
bit as if it had never stopped (CPU, dropout on).

    >>> result = train("tiny", epochs=3, save_dir="runs/tiny", data="input.txt", device="cpu")  # doctest: +SKIP
    >>> result = resume("runs/tiny/epoch_2.pt", epochs=3, save_dir="runs/again")                # doctest: +SKIP

The seed's "Resume Training" snippet runs with its imports mapped::

    trainer = Trainer(model, train_loader, val_loader, checkpoint["config"], optimizer=optimizer,
                      scheduler=scheduler, save_dir="checkpoints/my_run")
    trainer.train(start_epoch=checkpoint["epoch"] + 1, total_epochs=50)

but its one-group ``AdamW(model.parameters())`` cannot take a checkpoint's two-group optimizer
state: build it with :func:`~phasegpt_ckpt.training.schedule.build_optimizer` (or leave ``optimizer`` out, as
``resume`` does).

Under ``torchrun --nproc_per_node=K -m phasegpt_ckpt train ...`` the same code runs
DistributedDataParallel: ``training.batch_size`` stays the global micro-batch, split evenly across
ranks, so K processes compute what one would (gradients averaged over the same windows), and a
checkpoint resumes on any number of processes.

The parts live beside this module: configs in :mod:`.run_config`, optimizer and schedule in
:mod:`.schedule`, process placement in :mod:`.distributed`, RNG state in :mod:`.rng`, progress,
metrics and the plot in :mod:`.progress`, the metadata JSON in :mod:`.metadata`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model import GPT2Model
from phasegpt_ckpt import __version__
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.checkpoint import load_checkpoint, save_checkpoint
from phasegpt_ckpt.models.data import corpus_or_bundled, get_dataloaders
from phasegpt_ckpt.models.device import (
    inference_autocast as autocast,  # bf16 on CUDA; the phase trigonometry stays float32
)
from phasegpt_ckpt.models.device import pick_device
from phasegpt_ckpt.models.evaluate import measure
from phasegpt_ckpt.proof.digest import hash_file
from phasegpt_ckpt.proof.metadata import build_info, info_path, provenance, save_info
from phasegpt_ckpt.reporting import Progress
from phasegpt_ckpt.training.distributed import Placement, placement
from phasegpt_ckpt.training.progress import (
    EpochProgress,
    epoch_line,
    plot_metrics,
    read_metrics,
    require_matplotlib,
    write_metrics,
)
from phasegpt_ckpt.training.rng import restore_rng, rng_neutral_iter, rng_state
from phasegpt_ckpt.training.run_config import RunConfig, load_config
from phasegpt_ckpt.training.schedule import WarmupCosine, build_optimizer, build_scheduler, schedule_note

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


@dataclass
class RunResult:
    """What a training run ended with (printed by ``train``/``resume``)."""

    save_dir: Path
    epoch: int
    global_step: int
    best_val_loss: float
    best_val_ppl: Optional[float]
    last: dict  # the last epoch's metrics row
    files: list[str] = field(default_factory=list)
    schedule: Optional[str] = None  # schedule_note(), when the horizon was extended

    def to_json(self) -> dict:
        return {"save_dir": str(self.save_dir), "epoch": self.epoch, "global_step": self.global_step,
                "best_val_loss": self.best_val_loss, "best_val_ppl": self.best_val_ppl, "last_epoch": self.last,
                "files": self.files, "schedule": self.schedule}


class Trainer:
    """Epochs of the published recipe, with checkpoints, metrics and the metadata JSON in ``save_dir``.

    ``config`` is a whole config (dict or :class:`RunConfig`); ``optimizer`` and ``scheduler`` default
    to §3's (:func:`build_optimizer`, :func:`build_scheduler`). The train loader's sampler must be a
    :class:`~phasegpt_ckpt.models.data.RandomWindows`; its batch size is the per-process share of
    ``training.batch_size``.

    >>> trainer = Trainer(model, train_loader, val_loader, load_config("tiny"), save_dir="runs/x")  # doctest: +SKIP
    >>> trainer.train(start_epoch=1, total_epochs=3)                                              # doctest: +SKIP
    """

    def __init__(self, model: GPT2Model, train_loader, val_loader, config: RunConfig | dict, *,
                 device: str | torch.device = "cpu", save_dir: str | Path = "checkpoints",
                 optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None,
                 compile: bool = False, plot: bool = False, progress: Optional[Progress] = None):
        self.run = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        self.device = pick_device(device)
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.save_dir = Path(save_dir)
        self.plot, self.progress = plot, progress
        if plot:
            require_matplotlib()
        self.train_loader, self.val_loader = train_loader, val_loader
        self.sampler = train_loader.sampler
        self.vocab = train_loader.char_dataset.chars
        self.raw_model = model.to(self.device).train()
        self.model = torch.compile(self.raw_model) if compile else self.raw_model
        if self.world_size > 1:
            # Buffers (the constant causal mask, the last-R statistic) need no syncing every step.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=device_ids, broadcast_buffers=False)
        t = self.run.training
        self.accumulation = t.gradient_accumulation_steps
        self.windows_per_step = t.batch_size * t.gradient_accumulation_steps
        self.steps_per_epoch = t.steps_per_epoch or self.sampler.per_epoch // self.windows_per_step
        if self.steps_per_epoch < 1:
            raise BadInput(f"one epoch of the corpus holds {self.sampler.per_epoch} windows, fewer than the "
                           f"{self.windows_per_step} of one optimizer step; lower training.batch_size")
        self.optimizer = optimizer or build_optimizer(self.raw_model, t, self.device)
        total_steps = self.steps_per_epoch * t.max_epochs
        self.scheduler = scheduler or build_scheduler(self.optimizer, t.warmup_steps, total_steps)
        self.schedule = {"planned_epochs": t.max_epochs, "steps_per_epoch": self.steps_per_epoch,
                         "warmup_steps": t.warmup_steps, "total_steps": total_steps, "extensions": []}
        self.global_step = 0
        self.best_val_loss = math.inf
        self.best_val_ppl: Optional[float] = None
        self.training_time_s = 0.0
        self.resume_position: Optional[dict] = None  # sampler state of a checkpoint saved mid-epoch
        self.metrics: list[dict] = []
        self.files: list[str] = []
        self._stop_signal: Optional[int] = None

    # -- resuming -------------------------------------------------------------------------------

    def restore(self, checkpoint: dict) -> int:
        """Load a training checkpoint's state; return the epoch to start from.

        What the checkpoint lacks (a published one has no RNG or sampler state) is named in one
        warning; training goes on without it.
        """
        lost = []
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            for group in self.optimizer.param_groups:  # the kernel follows this machine, not the saving one
                group["fused"] = self.device.type == "cuda"
        except (KeyError, TypeError, ValueError) as err:
            lost.append(f"optimizer state ({str(err).splitlines()[0] or 'absent'}; AdamW starts afresh)")
        self.global_step = int(checkpoint.get("global_step") or 0)
        self.schedule = {**self.schedule, **(checkpoint.get("schedule") or {})}
        if not self._load_scheduler(checkpoint.get("scheduler_state_dict")):
            lost.append("scheduler state (rebuilt from the config at this step)")
        self.best_val_loss = float(checkpoint.get("best_val_loss", math.inf))
        self.best_val_ppl = checkpoint.get("best_val_ppl")
        self.training_time_s = float(checkpoint.get("training_time_s") or 0.0)
        saved_rng = checkpoint.get("rng_state") or {}
        if self.rank == 0:
            lost += restore_rng(saved_rng, self.device)
        else:  # other ranks draw their own dropout masks, as a fresh run's do
            torch.manual_seed(self.run.experiment.seed + self.rank + self.global_step)
        start_epoch = int(checkpoint.get("epoch") or 0) + 1
        sampler = saved_rng.get("sampler")
        if sampler is None:
            lost.append("data sampler position (the epoch's windows are drawn afresh)")
        elif sampler["epoch"] == start_epoch:
            self.resume_position = sampler
        if lost and self.rank == 0:
            log.warning(f"could not restore from the checkpoint: {'; '.join(lost)}")
        self.metrics = [row for row in read_metrics(self.save_dir / METRICS_FILE) if row["epoch"] < start_epoch]
        return start_epoch

    def _load_scheduler(self, state: Optional[dict]) -> bool:
        """Load our LambdaLR state; a missing or foreign one is rebuilt at ``global_step`` (False)."""
        loaded = isinstance(state, dict) and "lr_lambdas" in state and "last_epoch" in state
        if loaded:
            # A published LambdaLR saved a closure (None in lr_lambdas): our factor keeps the
            # horizon built from the config, everything else (step, base rates) is the file's.
            self.scheduler.load_state_dict(dict(state))
        else:
            self.scheduler.last_epoch = self.global_step
        # The next step's rate as LambdaLR computes it: the same float AdamW's saved state carries,
        # and the right one when that state could not be restored.
        step = self.scheduler.last_epoch
        rates = [base * fn(step) for base, fn in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        self.scheduler._last_lr = rates
        return loaded

    def extend_schedule(self, total_epochs: int) -> None:
        """Stretch the cosine to ``total_epochs`` from the current step (see :meth:`WarmupCosine.extend`)."""
        planned = self.schedule["planned_epochs"]
        total_steps = total_epochs * self.steps_per_epoch
        factors = {id(fn): fn for fn in getattr(self.scheduler, "lr_lambdas", [])}.values()
        if not factors or not all(isinstance(fn, WarmupCosine) for fn in factors):
            if self.rank == 0:
                log.warning(f"the given scheduler is not the published warmup-cosine one; it runs on unchanged "
                             f"past the {planned} epochs it was planned for")
            return
        for fn in factors:
            fn.extend(self.global_step, total_steps)
        self.schedule["extensions"] = [*self.schedule["extensions"],
                                       {"from_epochs": planned, "to_epochs": total_epochs, "at_step": self.global_step}]
        self.schedule.update(planned_epochs=total_epochs, total_steps=total_steps)
        if self.rank == 0:
            log.info(f"{schedule_note({'extensions': self.schedule['extensions'][-1:]})}: the cosine now runs "
                        f"from lr {self.optimizer.param_groups[0]['lr']:.3g} to its floor at step {total_steps}")

    # -- the loop --------------------------------------------------------------------------------

    def train(self, start_epoch: int = 1, total_epochs: Optional[int] = None) -> RunResult:
        """Run epochs ``start_epoch`` .. ``total_epochs`` (default: the planned total), inclusive.

        A total beyond the planned one extends the schedule first. SIGINT/SIGTERM finish the current
        optimizer step, save ``interrupted.pt`` and raise KeyboardInterrupt (the CLI exits 130).
        """
        total_epochs = total_epochs or self.schedule["planned_epochs"]
        if total_epochs > self.schedule["planned_epochs"]:
            self.extend_schedule(total_epochs)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with self._stop_on_signals():
            if self.rank == 0:
                log.info(f"training {self.run.experiment.name}: epochs {start_epoch}..{total_epochs}, "
                            f"{self.steps_per_epoch} steps of {self.windows_per_step} × {self.run.block_size} "
                            f"tokens each, on {self.device}"
                            + (f" × {self.world_size} processes" if self.world_size > 1 else ""))
            for epoch in range(start_epoch, total_epochs + 1):
                started = time.perf_counter()
                train_loss, tokens_per_s = self._train_epoch(epoch, total_epochs)
                row = {"epoch": epoch, "step": self.global_step, "train_loss": train_loss, **self.validate(),
                       "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_per_s,
                       "time_s": time.perf_counter() - started}
                self.training_time_s += row["time_s"]
                self._end_epoch(epoch, total_epochs, row)
        if self.plot and self.rank == 0:
            plot_metrics(self.metrics, self.save_dir / PLOT_FILE)
            self.files.append(PLOT_FILE)
        return self.result()

    def _train_epoch(self, epoch: int, total_epochs: int) -> tuple[Optional[float], float]:
        """One epoch of optimizer steps: (mean training loss over all processes, training tokens/s).

        The loss is None when a run stopped after the epoch's last step resumes with none left.
        """
        position = self.resume_position["position"] if self.resume_position else 0
        self.resume_position = None
        self.sampler.set_epoch(epoch, position)
        batches = rng_neutral_iter(self.train_loader)
        first_step = position // self.windows_per_step
        tokens_per_step = self.windows_per_step * self.run.block_size  # all processes together
        loss_sum = torch.zeros((), device=self.device)
        started = tick = time.perf_counter()
        progress = EpochProgress(epoch, total_epochs, self.steps_per_epoch, self.run.logging.log_interval,
                                 self.rank == 0, self.progress)
        for step_in_epoch in range(first_step + 1, self.steps_per_epoch + 1):
            loss, R = self.step(batches)
            loss_sum += loss
            now = time.perf_counter()
            progress.update(step_in_epoch, loss.item(), self.optimizer.param_groups[0]["lr"],
                            tokens_per_step / max(now - tick, 1e-9), R)
            tick = now
            if self._stop_requested():
                self._save_interrupted(epoch, step_in_epoch)
        steps = self.steps_per_epoch - first_step
        if self.world_size > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        tokens_per_s = steps * tokens_per_step / max(time.perf_counter() - started, 1e-9)
        return (loss_sum.item() / steps if steps else None), tokens_per_s

    def step(self, batches: Iterator) -> tuple[torch.Tensor, Optional[float]]:
        """One optimizer step from ``gradient_accumulation_steps`` micro-batches of ``batches``.

        Returns the step's mean micro-batch loss (a detached tensor) and the mean order parameter R
        of its last micro-batch (None without phase layers).
        """
        total = torch.zeros((), device=self.device)
        for micro in range(self.accumulation):
            x, y = (t.to(self.device, non_blocking=True) for t in next(batches))
            sync = micro == self.accumulation - 1 or self.world_size == 1
            with (contextlib.nullcontext() if sync else self.model.no_sync()), autocast(self.device):
                _, loss, Rs = self.model(x, y, return_R=True)
            (loss / self.accumulation).backward()
            total += loss.detach()
        if self.run.training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.run.training.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        R = torch.stack([r.float().mean() for r in Rs]).mean().item() if Rs else None
        return total / self.accumulation, R

    def validate(self) -> dict:
        """Validation loss, PPL, order parameter R (mean and spread) and tokens, measured as ``evaluate`` does.

        PPL is exp of the token-weighted mean loss — the number ``verify --eval`` reproduces from the
        metadata JSON. Runs on the plain module (no DDP, no compile) inside its own RNG fork, so
        validating never changes what training draws next.
        """
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return measure(self.raw_model, self.val_loader, device=self.device).summary()

    # -- what goes to disk -----------------------------------------------------------------------

    def _end_epoch(self, epoch: int, total_epochs: int, row: dict) -> None:
        improved = row["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_val_ppl = row["val_loss"], row["val_ppl"]
        self.metrics.append(row)
        if self.rank == 0:
            log.info(epoch_line(row, total_epochs, improved))
            write_metrics(self.metrics, self.save_dir / METRICS_FILE)
            windows = self.steps_per_epoch * self.windows_per_step
            sampler = {**self.sampler.state_dict(), "epoch": epoch, "position": windows}
            checkpoint = self.checkpoint(epoch, sampler, row)
            t = self.run.training
            if improved and t.save_best:
                self._write_info(checkpoint, self._save(checkpoint, "best_model.pt"))
            if epoch % t.save_interval == 0:
                self._save(checkpoint, f"epoch_{epoch}.pt")
            if epoch == total_epochs and t.save_final:
                self._save(checkpoint, "final_model.pt")

    def checkpoint(self, epoch: int, sampler: dict, metrics: Optional[dict] = None) -> dict:
        """The seed's checkpoint dict plus what exact resumption and ``info`` need.

        ``epoch`` counts finished epochs; ``rng_state["sampler"]`` says where the data stands
        (``position`` windows into sampler epoch ``epoch``), so a mid-epoch save resumes mid-epoch.
        """
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "model_state_dict": self.raw_model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "best_val_loss": self.best_val_loss,
            "best_val_ppl": self.best_val_ppl,
            "config": self.run.to_dict(),
            "rng_state": {**rng_state(self.device), "sampler": sampler},
            "coupling_mode": self.raw_model.config.coupling_mode,
            "vocab": self.vocab,
            "schedule": self.schedule,
            "metrics": metrics,
            "training_time_s": self.training_time_s,
            "provenance": provenance(self.device, self.world_size),
            "tool_version": __version__,
        }

    def _save(self, checkpoint: dict, name: str) -> Path:
        path = save_checkpoint(checkpoint, self.save_dir / name)
        if name not in self.files:
            self.files.append(name)
        return path

    def _save_interrupted(self, epoch: int, step_in_epoch: int) -> None:
        if self.rank == 0:
            position = step_in_epoch * self.windows_per_step
            sampler = {**self.sampler.state_dict(), "epoch": epoch, "position": position}
            path = self._save(self.checkpoint(epoch - 1, sampler), "interrupted.pt")
            log.info(f"stopped at epoch {epoch}, step {self.global_step}; state saved to {path} "
                        f"(continue: phasegpt-ckpt resume --model {path} --epochs {self.schedule['planned_epochs']})")
        raise KeyboardInterrupt

    def _write_info(self, checkpoint: dict, path: Path) -> None:
        """The seed's ``best_model_info.json`` for the checkpoint just written at ``path``."""
        facts = hash_file(path)
        info = build_info(self.run.experiment.name, self.raw_model.config, checkpoint, size=facts.size,
                          sha256=facts.sha256)
        info_file = save_info(info, info_path(path))
        if info_file.name not in self.files:
            self.files.append(info_file.name)

    def result(self) -> RunResult:
        last = self.metrics[-1] if self.metrics else {}
        return RunResult(self.save_dir, last.get("epoch", 0), self.global_step, self.best_val_loss,
                         self.best_val_ppl, last, [str(self.save_dir / f) for f in self.files],
                         schedule_note(self.schedule))

    # -- stopping on a signal ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """First SIGINT/SIGTERM: finish the step, save, stop. A second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def request_stop(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.rank == 0:
                log.info("stopping after this step to save interrupted.pt (signal again to stop at once)")

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        stop = self._stop_signal is not None
        if self.world_size > 1:  # all ranks stop at the same step, or the others would hang
            flag = torch.tensor(float(stop), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop


# ---------------------------------------------------------------------------------------------
# The two jobs the CLI runs


def train(config: str | Path | RunConfig, *, data: str | Path | None = None, epochs: Optional[int] = None,
          save_dir: str | Path | None = None, device: str = "auto", plot: bool = False, compile: bool = False,
          progress: Optional[Progress] = None) -> RunResult:
    """Train a config (shipped NAME, YAML PATH or :class:`RunConfig`) from scratch on the corpus ``data``.

    ``data`` defaults to the corpus bundled with the package; ``epochs`` overrides ``training.max_epochs``;
    ``save_dir`` defaults to ``checkpoints/<experiment name>``; ``progress`` hears every step.
    """
    run = config if isinstance(config, RunConfig) else load_config(config)
    if epochs is not None:
        run.training.max_epochs = epochs
    save_dir = Path(save_dir) if save_dir else Path("checkpoints") / run.experiment.name
    corpus = corpus_or_bundled(data)
    with placement(device) as where:
        _warn_unused(run, where)
        trainer = build_trainer(run, corpus, where, save_dir, compile=compile, plot=plot, progress=progress)
        return trainer.train(1, run.training.max_epochs)


def resume(checkpoint: str | Path, *, epochs: int, data: str | Path | None = None, save_dir: str | Path | None = None,
           device: str = "auto", plot: bool = False, compile: bool = False,
           progress: Optional[Progress] = None) -> RunResult:
    """Continue the checkpoint file ``checkpoint`` to ``epochs`` in total, on the corpus ``data``.

    Restores weights, AdamW state, scheduler, RNG and data position; ``epochs`` beyond the planned
    total extends the schedule. ``save_dir`` defaults to the checkpoint's own directory; ``data`` to
    the corpus bundled with the package. (``Store.resume`` takes an artifact NAME as well.)
    """
    checkpoint = Path(checkpoint)
    corpus = corpus_or_bundled(data)
    save_dir = Path(save_dir) if save_dir is not None else checkpoint.parent
    with placement(device) as where:
        loaded = load_checkpoint(checkpoint, data=corpus, device=where.device, load_training_state=True)
        state = loaded.training_state
        done = int(state.get("epoch") or 0)
        if epochs <= done:
            raise BadInput(f"{checkpoint} has already trained {done} epochs; pass --epochs greater than {done}")
        run = RunConfig.from_dict({**loaded.full_config, "model": loaded.config.to_dict()},
                                  source=f"the config in {checkpoint}")
        if run.training.steps_per_epoch is None and "schedule" not in state and done and state.get("global_step"):
            # A published checkpoint: keep the epoch length it was trained with (3240 steps / 18 = 180).
            run.training.steps_per_epoch = int(state["global_step"]) // done
        _warn_unused(run, where)
        trainer = build_trainer(run, corpus, where, save_dir, model=loaded.model, vocab=loaded.vocab,
                                compile=compile, plot=plot, progress=progress)
        start_epoch = trainer.restore(state)
        return trainer.train(start_epoch, epochs)


def build_trainer(run: RunConfig, corpus: str | Path, where: Placement, save_dir: Path, *,
                  model: Optional[GPT2Model] = None, vocab: Optional[str] = None,
                  compile: bool = False, plot: bool = False, progress: Optional[Progress] = None) -> Trainer:
    """Loaders, model (fresh from ``experiment.seed`` unless given) and :class:`Trainer` for one process."""
    t = run.training
    if t.batch_size % where.world_size:
        raise BadInput(f"training.batch_size {t.batch_size} does not split evenly over {where.world_size} processes")
    windows_per_step = t.batch_size * t.gradient_accumulation_steps
    train_loader, val_loader = get_dataloaders(
        corpus, block_size=run.block_size, batch_size=t.batch_size // where.world_size, seed=run.experiment.seed,
        rank=where.rank, world_size=where.world_size, vocab=vocab,
        num_samples=t.steps_per_epoch * windows_per_step if t.steps_per_epoch else None, val_batch_size=t.batch_size)
    settings = run.model_settings
    chars = train_loader.char_dataset.chars
    if len(chars) != settings.vocab_size:
        raise BadInput(f"the corpus {corpus} has {len(chars)} distinct characters but the model's vocab_size "
                       f"is {settings.vocab_size}; set model.vocab_size to {len(chars)}")
    if run.block_size > settings.max_seq_len:
        raise BadInput(f"data.block_size {run.block_size} is longer than model.max_seq_len {settings.max_seq_len}")
    seed = run.experiment.seed
    random.seed(seed)
    torch.manual_seed(seed)
    if model is None:
        model = GPT2Model(config=settings)
    if where.rank:  # every rank starts from rank 0's weights (DDP broadcasts them); dropout differs
        torch.manual_seed(seed + where.rank)
    return Trainer(model, train_loader, val_loader, run, device=where.device, save_dir=save_dir,
                   compile=compile, plot=plot, progress=progress)


def _warn_unused(run: RunConfig, where: Placement) -> None:
    unused = run.unused_keys()
    if unused and where.is_main:
        log.warning(f"config keys this trainer does not use (kept, ignored): {', '.join(unused)}")
