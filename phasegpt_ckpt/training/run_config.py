"""Training configs in the published YAML layout: ``model``, ``training``, ``data``, ``logging``, ``experiment``.

The ``model`` section is checked by :class:`~model.GPT2Config` and saved in full (coupling mode
included); keys the published code never read are kept and named once, never an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from model import GPT2Config
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.paths import user_path
from phasegpt_ckpt.training import configs
from phasegpt_ckpt.yamlio import read_yaml


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
    seed: int = Field(42, ge=0, le=2**63 - 1 - 10**6)  # as generate --seed: torch takes 64 bits, offsets add to it


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
    path = user_path(ref, "--config")
    if not path.is_file():
        shipped = configs.DIR / f"{ref}.yaml"
        if not shipped.is_file():
            raise BadInput(f"config {ref!r} is neither a file nor a shipped config ({', '.join(shipped_configs())})")
        path = shipped
    return RunConfig.from_dict(read_yaml(path, "config"), source=f"config {path}")
