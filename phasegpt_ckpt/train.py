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
state: build it with :func:`build_optimizer` (or leave ``optimizer`` out, as ``resume`` does).

Under ``torchrun --nproc_per_node=K -m phasegpt_ckpt train ...`` the same code runs
DistributedDataParallel: ``training.batch_size`` stays the global micro-batch, split evenly across
ranks, so K processes compute what one would (gradients averaged over the same windows), and a
checkpoint resumes on any number of processes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch
import torch.distributed as dist
import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationError, field_validator)
from torch.nn.parallel import DistributedDataParallel

from model import GPT2Config, GPT2Model

from . import __version__, configs, console
from .checkpoint import atomic_path, corpus_path, load_checkpoint
from .checkpoint import inference_autocast as autocast  # bf16 on CUDA; the phase trigonometry stays float32
from .data import get_dataloaders
from .device import pick_device
from .errors import BadInput
from .evaluate import measure

NO_DECAY = ("bias", "norm", "embedding")  # the published rule, as substrings of parameter names
LR_FLOOR = 0.1  # the cosine never goes below 0.1 of the base rate (§3)
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
INFO_FILE = "best_model_info.json"


# ---------------------------------------------------------------------------------------------
# Configs: the published YAML layout (model, training, data, logging, experiment)


class _Section(BaseModel):
    # Published configs carry keys the published code never read (patience, eval_interval, ...);
    # they are kept, saved with the run and named once in a warning, never an error.
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class TrainingSection(_Section):
    batch_size: PositiveInt = 32  # global micro-batch (split across DDP ranks)
    gradient_accumulation_steps: PositiveInt = 1
    learning_rate: PositiveFloat = 3e-4
    weight_decay: NonNegativeFloat = 0.1
    max_epochs: PositiveInt = 20
    warmup_steps: NonNegativeInt = 0
    lr_scheduler: Literal["cosine"] = "cosine"
    grad_clip: NonNegativeFloat = 1.0  # 0 turns clipping off
    steps_per_epoch: Optional[PositiveInt] = None  # an epoch's optimizer steps; None: one pass over the text
    save_interval: PositiveInt = 5  # epochs between epoch_{N}.pt files
    save_best: bool = True
    save_final: bool = True


class DataSection(_Section):
    dataset: str = "shakespeare"
    block_size: Optional[PositiveInt] = None  # None: the model's max_seq_len


class LoggingSection(_Section):
    log_interval: PositiveInt = 50  # steps between progress lines when stderr is not a terminal


class ExperimentSection(_Section):
    name: str = "phasegpt"
    seed: int = 42


class RunConfig(BaseModel):
    """A whole training config; ``model`` is checked by :class:`GPT2Config` and saved in full.

    >>> run = RunConfig.from_dict({"model": {"n_layers": 2, "d_model": 64, "n_heads": 4}})
    >>> run.training.learning_rate, run.model["d_ff"], run.block_size
    (0.0003, 256, 512)
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    model: dict
    training: TrainingSection = Field(default_factory=TrainingSection)
    data: DataSection = Field(default_factory=DataSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    experiment: ExperimentSection = Field(default_factory=ExperimentSection)

    @field_validator("model")
    @classmethod
    def _full_model_section(cls, section: dict) -> dict:
        return GPT2Config.from_dict(section).to_dict()  # every setting explicit, coupling_mode included

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> "RunConfig":
        """Validate a config mapping; any mistake is a one-line ``BadInput`` naming the field."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise BadInput(f"{source} must be a YAML mapping with a `model:` section (and training, data, ...)")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise BadInput(f"{source}: {where}: {first['msg'].removeprefix('Value error, ')}") from None

    @property
    def model_settings(self) -> GPT2Config:
        return GPT2Config.from_dict(self.model)

    @property
    def block_size(self) -> int:
        return self.data.block_size or self.model["max_seq_len"]

    def unused_keys(self) -> list[str]:
        """Keys this trainer does not read, e.g. the published ``training.patience``."""
        sections = {"training": self.training, "data": self.data, "logging": self.logging,
                    "experiment": self.experiment}
        unused = [f"{name}.{key}" for name, section in sections.items() for key in section.model_extra]
        return unused + list(self.model_extra)

    def to_dict(self) -> dict:
        return self.model_dump()


def shipped_configs() -> list[str]:
    """Names of the configs that ship with the package (``train --config NAME``)."""
    return sorted(path.stem for path in configs.DIR.glob("*.yaml"))


def load_config(ref: str | Path) -> RunConfig:
    """A shipped config by NAME (``tiny``, ``phase_a_winner``, ...) or a YAML file by PATH.

    >>> load_config("phase_a_winner").model["phase_layer_idx"]
    [7]
    """
    path = Path(ref).expanduser()
    if not path.is_file():
        shipped = configs.DIR / f"{ref}.yaml"
        if not shipped.is_file():
            raise BadInput(f"config {ref!r} is neither a file nor a shipped config ({', '.join(shipped_configs())})")
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise BadInput(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    return RunConfig.from_dict(raw, source=f"config {path}")


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule (PHASEGPT_FORMAT.md §3)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The published two groups: decay on names containing none of bias/norm/embedding.

    The rule is applied literally. Our LayerNorms carry the published names ``ln1``, ``ln2`` and
    ``ln_f``, none of which contains "norm", so LayerNorm *weights* are decayed (their biases are
    not) — exactly what the published runs did, and what an optimizer state resumed from them holds.

    >>> model = GPT2Model(vocab_size=65, d_model=32, n_layers=1, n_heads=2, max_seq_len=8)
    >>> [len(group["params"]) for group in param_groups(model, 0.1)]
    [7, 9]
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if any(word in name for word in NO_DECAY) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, training: TrainingSection, device: torch.device) -> torch.optim.AdamW:
    """AdamW(betas 0.9/0.999, eps 1e-8) over :func:`param_groups`; the fused kernel on CUDA."""
    return torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.learning_rate,
                             betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda")


class WarmupCosine:
    """The LambdaLR factor of §3: linear warmup over ``warmup_steps``, then cosine floored at 0.1.

    A callable object, not a closure, because LambdaLR saves a callable object's ``__dict__`` in
    its ``state_dict``: the horizon travels with the scheduler and comes back on resume.

    >>> f = WarmupCosine(warmup_steps=100, total_steps=1100)
    >>> f(0), f(50), f(100), f(600), f(1100)
    (0.0, 0.5, 1.0, 0.5, 0.1)

    :meth:`extend` moves the horizon mid-run (``resume --epochs 50`` after 20).
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_step = warmup_steps  # where the current cosine starts ...
        self.start_factor = 1.0  # ... its factor there ...
        self.extended = False  # ... and whether it is an extension's (see extend)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        # Held at the floor past the horizon (the published code let the cosine rise again there).
        progress = min(1.0, (step - self.start_step) / max(1, self.total_steps - self.start_step))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.extended:
            return LR_FLOOR + (self.start_factor - LR_FLOOR) * cosine
        return max(LR_FLOOR, cosine)

    def extend(self, at_step: int, total_steps: int) -> None:
        """A new horizon from ``at_step`` on: a cosine recomputed over the remaining steps.

        The new cosine starts from the factor the old schedule has at ``at_step`` (so the rate is
        continuous at the joint) and comes down to the floor exactly at ``total_steps``. A run that
        already sits on the floor stays there; a run still warming up finishes its warmup and then
        follows the §3 cosine over the new horizon, as if planned that long from the start.

        >>> f = WarmupCosine(0, 100); before = f(50); f.extend(50, 200)
        >>> f(50) == before, f(125) == 0.1 + (before - 0.1) / 2, f(200)
        (True, True, 0.1)
        """
        if at_step > self.warmup_steps:
            self.start_step, self.start_factor, self.extended = at_step, self(at_step), True
        self.total_steps = total_steps


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))


def schedule_note(schedule: Optional[dict]) -> Optional[str]:
    """What ``info`` says about a checkpoint's schedule when it was extended, else None.

    >>> schedule_note({"extensions": [{"from_epochs": 20, "to_epochs": 50, "at_step": 3240}]})
    'schedule extended from 20 to 50 epochs at step 3240'
    """
    extensions = (schedule or {}).get("extensions") or []
    return "; ".join(f"schedule extended from {e['from_epochs']} to {e['to_epochs']} epochs at step {e['at_step']}"
                     for e in extensions) or None


# ---------------------------------------------------------------------------------------------
# Atomic writes, RNG state


def save_checkpoint(checkpoint: dict, path: Path) -> Path:
    """``torch.save`` through a temporary file beside ``path``: no truncated file, ever."""
    with atomic_path(path) as temp:
        torch.save(checkpoint, temp)
    return path


def write_text(text: str, path: Path) -> Path:
    """Atomically replace a small text file (metadata JSON, metrics.jsonl)."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path


def rng_state(device: torch.device) -> dict:
    """Every RNG a training step draws from, as plain lists and tensors (weights-only loadable)."""
    version, internal, gauss = random.getstate()
    state = {"python": {"version": version, "state": list(internal), "gauss": gauss},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> list[str]:
    """Put back what :func:`rng_state` saved; returns the names of the states that were missing."""
    missing = []
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    else:
        missing.append("python RNG")
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    else:
        missing.append("torch RNG")
    if device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), device)
        else:
            missing.append("CUDA RNG")
    return missing


def _rng_neutral_iter(loader) -> Iterator:
    """``iter(loader)`` without touching the global torch RNG.

    DataLoader draws a worker base seed from the global RNG on every ``iter()``. Our loaders run
    in-process and never use it, so the draw is kept off the training stream: a run resumed mid-epoch
    (which calls ``iter()`` where the uninterrupted run did not) then draws the same dropout masks.
    """
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


# ---------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class Placement:
    """Where this process trains: its device, and its rank among ``world_size`` processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def placement(device: str | torch.device = "auto") -> Iterator[Placement]:
    """This process's device, joining the torchrun process group when RANK/WORLD_SIZE say so.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo); alone, the
    device is ``pick_device(device)``. Ranks other than 0 are made quiet: rank 0 alone prints.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = pick_device(device)
    if world_size == 1:
        _enable_tf32(chosen)
        yield Placement(chosen)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    _enable_tf32(chosen)
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    quiet = console.quiet
    console.quiet = console.quiet or rank != 0
    try:
        yield Placement(chosen, rank, world_size)
    finally:
        console.quiet = quiet
        dist.destroy_process_group()


def _enable_tf32(device: torch.device) -> None:
    if device.type == "cuda":  # float32 matmuls on tensor cores; bf16 autocast covers the rest
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ---------------------------------------------------------------------------------------------
# The trainer


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
    :class:`~phasegpt_ckpt.data.RandomWindows`; its batch size is the per-process share of
    ``training.batch_size``.

    >>> trainer = Trainer(model, train_loader, val_loader, load_config("tiny"), save_dir="runs/x")  # doctest: +SKIP
    >>> trainer.train(start_epoch=1, total_epochs=3)                                              # doctest: +SKIP
    """

    def __init__(self, model: GPT2Model, train_loader, val_loader, config: RunConfig | dict, *,
                 device: str | torch.device = "cpu", save_dir: str | Path = "checkpoints",
                 optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None,
                 compile: bool = False, plot: bool = False):
        self.run = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        self.device = pick_device(device)
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.save_dir = Path(save_dir)
        self.plot = plot
        if plot:
            _require_matplotlib()
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
            console.warn(f"could not restore from the checkpoint: {'; '.join(lost)}")
        self.metrics = [row for row in _read_metrics(self.save_dir / METRICS_FILE) if row["epoch"] < start_epoch]
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
                console.warn(f"the given scheduler is not the published warmup-cosine one; it runs on unchanged "
                             f"past the {planned} epochs it was planned for")
            return
        for fn in factors:
            fn.extend(self.global_step, total_steps)
        self.schedule["extensions"] = [*self.schedule["extensions"],
                                       {"from_epochs": planned, "to_epochs": total_epochs, "at_step": self.global_step}]
        self.schedule.update(planned_epochs=total_epochs, total_steps=total_steps)
        if self.rank == 0:
            console.log(f"{schedule_note({'extensions': self.schedule['extensions'][-1:]})}: the cosine now runs "
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
                console.log(f"training {self.run.experiment.name}: epochs {start_epoch}..{total_epochs}, "
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
        batches = _rng_neutral_iter(self.train_loader)
        first_step = position // self.windows_per_step
        tokens_per_step = self.windows_per_step * self.run.block_size  # all processes together
        loss_sum = torch.zeros((), device=self.device)
        started = tick = time.perf_counter()
        with EpochProgress(epoch, total_epochs, self.steps_per_epoch, first_step,
                           self.run.logging.log_interval, self.rank == 0) as progress:
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
        """Validation loss, PPL and order parameter R (mean and spread), measured as ``evaluate`` does.

        PPL is exp of the token-weighted mean loss — the number ``verify --eval`` reproduces from the
        metadata JSON. Runs on the plain module (no DDP, no compile) inside its own RNG fork, so
        validating never changes what training draws next.
        """
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            measured = measure(self.raw_model, self.val_loader, device=self.device)
        R_std = None
        if measured.R:  # pooled over layers (each holds as many values): within- plus between-layer spread
            spread = [r.std ** 2 + (r.mean - measured.R_mean) ** 2 for r in measured.R]
            R_std = math.sqrt(sum(spread) / len(spread))
        return {"val_loss": measured.loss, "val_ppl": measured.ppl, "R": measured.R_mean, "R_std": R_std}

    # -- what goes to disk -----------------------------------------------------------------------

    def _end_epoch(self, epoch: int, total_epochs: int, row: dict) -> None:
        improved = row["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_val_ppl = row["val_loss"], row["val_ppl"]
        self.metrics.append(row)
        if self.rank == 0:
            console.log(_epoch_line(row, total_epochs, improved))
            write_text("".join(json.dumps(r) + "\n" for r in self.metrics), self.save_dir / METRICS_FILE)
            windows = self.steps_per_epoch * self.windows_per_step
            sampler = {**self.sampler.state_dict(), "epoch": epoch, "position": windows}
            checkpoint = self.checkpoint(epoch, sampler, row)
            t = self.run.training
            if improved and t.save_best:
                self._save(checkpoint, "best_model.pt")
                self._write_info(self.save_dir / "best_model.pt", row, epoch)
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
            console.log(f"stopped at epoch {epoch}, step {self.global_step}; state saved to {path} "
                        f"(continue: phasegpt-ckpt resume --model {path} --epochs {self.schedule['planned_epochs']})")
        raise KeyboardInterrupt

    def _write_info(self, path: Path, row: dict, epoch: int) -> None:
        """The seed's ``best_model_info.json`` for ``path``: hash, size, measured PPL and R, provenance."""
        with open(path, "rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        size = path.stat().st_size
        info = {
            "model_name": self.run.experiment.name,
            "config": config_summary(self.raw_model.config),
            "dataset": f"{self.run.data.dataset} (char-level)",
            "validation_ppl": round(row["val_ppl"], 4),
            "validation_loss": round(row["val_loss"], 4),
            "order_parameter_R": None if row["R"] is None else round(row["R"], 4),
            "order_parameter_R_std": None if row["R_std"] is None else round(row["R_std"], 4),
            "training_epochs": epoch,
            "global_step": self.global_step,
            "training_time_minutes": round(self.training_time_s / 60, 2),
            "hardware": hardware(self.device, self.world_size),
            "date_trained": date.today().isoformat(),
            "pytorch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "coupling_mode": self.raw_model.config.coupling_mode,
            "file_size_mb": round(size / 10**6, 1),
            "file_size_bytes": size,
            "sha256": sha256,
            "license": "MIT",
            "doi": None,
            "tool_version": __version__,
        }
        write_text(json.dumps(info, indent=2) + "\n", path.with_name(INFO_FILE))
        if INFO_FILE not in self.files:
            self.files.append(INFO_FILE)

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
                console.log("stopping after this step to save interrupted.pt (signal again to stop at once)")

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


class EpochProgress:
    """Live stats of one epoch on stderr: a rich bar on a terminal, a line per ``log_interval`` steps otherwise."""

    def __init__(self, epoch: int, total_epochs: int, steps: int, done: int, log_interval: int, enabled: bool):
        self.label = f"epoch {epoch}/{total_epochs}"
        self.steps, self.done, self.log_interval = steps, done, log_interval
        self.enabled = enabled and not console.quiet
        self.bar = None
        if self.enabled and console.show_progress():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                console=console.stderr, transient=True)

    def __enter__(self) -> "EpochProgress":
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.steps, completed=self.done, stats="")
        return self

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, R: Optional[float]) -> None:
        if not self.enabled:
            return
        stats = f"loss {loss:.4f} · lr {lr:.2e} · {tokens_per_s:,.0f} tok/s" + ("" if R is None else f" · R {R:.3f}")
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=stats)
        elif step % self.log_interval == 0:
            console.log(f"{self.label} step {step}/{self.steps} · {stats}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _epoch_line(row: dict, total_epochs: int, improved: bool) -> str:
    R = "" if row["R"] is None else f" · R {row['R']:.4f}"
    best = " (best)" if improved else ""
    train = "n/a" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    return (f"epoch {row['epoch']}/{total_epochs} · step {row['step']} · train loss {train} · "
            f"val loss {row['val_loss']:.4f} · val PPL {row['val_ppl']:.3f}{best}{R} · lr {row['lr']:.2e} · "
            f"{row['tokens_per_s']:,.0f} tok/s · {row['time_s']:.0f} s")


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def config_summary(config: GPT2Config) -> str:
    """The seed's one-line config description, e.g. ``Layer 7, 32 oscillators, K=1.0``.

    >>> config_summary(GPT2Config(use_phase_attention=True, phase_layer_idx=[6, 7]))
    'Layers 6+7, 32 oscillators, K=1.0'
    """
    layers = config.phase_layers
    if not layers:
        return f"Baseline, {config.n_layers} layers, no phase coupling"
    where = f"Layer {layers[0]}" if len(layers) == 1 else f"Layers {'+'.join(map(str, layers))}"
    mode = "" if config.coupling_mode == "original" else f", {config.coupling_mode} coupling"
    return f"{where}, {config.num_oscillators} oscillators, K={config.coupling_strength}{mode}"


def hardware(device: torch.device, world_size: int = 1) -> str:
    """The metadata's hardware string, e.g. ``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 2 cores)``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{world_size} × {name}" if world_size > 1 else name


# ---------------------------------------------------------------------------------------------
# Plot


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput("--plot needs matplotlib: pip install 'phasegpt-ckpt[plot]'") from None


def plot_metrics(rows: list[dict], path: str | Path) -> Path:
    """A PNG of train/validation loss, validation PPL and R per epoch, written atomically."""
    _require_matplotlib()
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


# ---------------------------------------------------------------------------------------------
# The two jobs the CLI runs


def train(config: str | Path | RunConfig, *, epochs: Optional[int] = None, save_dir: str | Path | None = None,
          data: str | Path | None = None, device: str = "auto", plot: bool = False, compile: bool = False,
          locate_options: Optional[dict] = None) -> RunResult:
    """Train a config (shipped NAME, YAML PATH or :class:`RunConfig`) from scratch.

    ``epochs`` overrides ``training.max_epochs``; ``save_dir`` defaults to ``checkpoints/<experiment
    name>``; ``data`` defaults to the verified ``tinyshakespeare`` artifact.
    """
    run = config if isinstance(config, RunConfig) else load_config(config)
    if epochs is not None:
        run.training.max_epochs = epochs
    save_dir = Path(save_dir) if save_dir else Path("checkpoints") / run.experiment.name
    corpus = corpus_path(data, **(locate_options or {}))
    with placement(device) as where:
        _warn_unused(run, where)
        trainer = build_trainer(run, corpus, where, save_dir, compile=compile, plot=plot)
        return trainer.train(1, run.training.max_epochs)


def resume(model: str | Path | None = None, *, epochs: int, save_dir: str | Path | None = None,
           data: str | Path | None = None, device: str = "auto", plot: bool = False, compile: bool = False,
           locate_options: Optional[dict] = None) -> RunResult:
    """Continue a checkpoint (artifact NAME or PATH; None: the manifest's default) to ``epochs`` in total.

    Restores weights, AdamW state, scheduler, RNG and data position; ``epochs`` beyond the planned
    total extends the schedule. ``save_dir`` defaults to the checkpoint's own directory for a PATH
    and to ``checkpoints/<name>`` for an artifact.
    """
    from .fetch import locate

    located = locate(None if model is None else str(model), **(locate_options or {}))
    corpus = corpus_path(data, **(locate_options or {}))
    if save_dir is None:
        save_dir = located.path.parent if located.artifact is None else Path("checkpoints") / located.artifact.name
    with placement(device) as where:
        loaded = load_checkpoint(located.path, data=corpus, device=where.device, load_training_state=True)
        state = loaded.training_state
        done = int(state.get("epoch") or 0)
        if epochs <= done:
            raise BadInput(f"{located.path} has already trained {done} epochs; pass --epochs greater than {done}")
        run = RunConfig.from_dict({**loaded.full_config, "model": loaded.config.to_dict()},
                                  source=f"the config in {located.path}")
        if run.training.steps_per_epoch is None and "schedule" not in state and done and state.get("global_step"):
            # A published checkpoint: keep the epoch length it was trained with (3240 steps / 18 = 180).
            run.training.steps_per_epoch = int(state["global_step"]) // done
        for note in loaded.inferred:
            console.log(f"note: {note}")
        _warn_unused(run, where)
        trainer = build_trainer(run, corpus, where, Path(save_dir), model=loaded.model, vocab=loaded.vocab,
                                compile=compile, plot=plot)
        start_epoch = trainer.restore(state)
        return trainer.train(start_epoch, epochs)


def build_trainer(run: RunConfig, corpus: str | Path, where: Placement, save_dir: Path, *,
                  model: Optional[GPT2Model] = None, vocab: Optional[str] = None,
                  compile: bool = False, plot: bool = False) -> Trainer:
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
                   compile=compile, plot=plot)


def _warn_unused(run: RunConfig, where: Placement) -> None:
    unused = run.unused_keys()
    if unused and where.is_main:
        console.warn(f"config keys this trainer does not use (kept, ignored): {', '.join(unused)}")
