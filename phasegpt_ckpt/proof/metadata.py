"""The metadata JSON published beside a checkpoint (the seed's ``best_model_info.json``): read and written.

Placeholders the seed ships (``"[hash]"``, ``"10.5281/zenodo.XXXXXXX"``, ``""``) read as
"not published" (``None``), never as an error. Fields our own trainer adds later
(``file_size_bytes``, ``order_parameter_R_std``, ...) are kept as extras.

:func:`build_info` is the one writer: the trainer calls it for ``best_model_info.json`` and
``publish`` for the published JSON, from what a checkpoint carries, so both say the same.

>>> info = CheckpointInfo(sha256="[hash]", doi="10.5281/zenodo.XXXXXXX", file_size_mb=970)
>>> info.sha256 is None, "doi" in info.not_published()
(True, True)
>>> info.size_agrees(1_017_118_720), info.size_agrees(1_100_000_000)
(True, False)
"""
from __future__ import annotations

import json
import logging
import os
import platform
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from phasegpt_ckpt.atomic import write_text
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.source.manifest import Sha256, first_error, is_placeholder

if TYPE_CHECKING:  # the model (and torch) load only where a checkpoint does
    import torch

    from model import GPT2Config
    from phasegpt_ckpt.proof.digest import FileFacts

log = logging.getLogger(__name__)

MEGABYTES = (10**6, 2**20)  # "970 MB" may mean either
DIGITS = 4  # measured numbers are rounded to this in the JSON and in manifest claims alike, so they compare equal
# The measured fields, named as a metrics row (Trainer.validate, Measurement.summary) names them.
VALIDATION_FIELDS = {"validation_ppl": "val_ppl", "validation_loss": "val_loss", "order_parameter_R": "R",
                     "order_parameter_R_std": "R_std", "validation_tokens": "val_tokens"}
MAX_BYTES = 2**20  # the seed's metadata JSON is under 1 KB; a file this large is something else
MAX_DEPTH = 32  # the seed's JSON is flat; junk nested deeper would overflow whatever serializes or prints it


class CheckpointInfo(BaseModel):
    """Every field of the seed's metadata JSON; ``None`` where it is absent or a placeholder."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # NaN claims nothing and compares with nothing

    model_name: Optional[str] = None
    config: Optional[str] = None
    dataset: Optional[str] = None
    validation_ppl: Optional[float] = None
    order_parameter_R: Optional[float] = None
    training_epochs: Optional[int] = None
    training_time_minutes: Optional[float] = None
    hardware: Optional[str] = None
    date_trained: Optional[str] = None
    pytorch_version: Optional[str] = None
    cuda_version: Optional[str] = None
    # int stays int: its precision is the rounding allowed
    file_size_mb: Optional[Annotated[Union[int, float], Field(ge=0, lt=2**63)]] = None
    sha256: Optional[Sha256] = None
    license: Optional[str] = None
    doi: Optional[str] = None

    @field_validator("*", mode="before")
    @classmethod
    def _placeholder_is_unpublished(cls, value):
        return None if is_placeholder(value) else value

    def not_published(self) -> list[str]:
        """Names of the seed's fields that carry no real value yet."""
        return [name for name in type(self).model_fields if getattr(self, name) is None]

    def size_agrees(self, size: int) -> Optional[bool]:
        """Does ``size`` bytes round to ``file_size_mb`` (MB or MiB, at the precision written)?

        None when the metadata publishes no size.
        """
        if self.file_size_mb is None:
            return None
        written = repr(self.file_size_mb)
        decimals = len(written.partition(".")[2]) if isinstance(self.file_size_mb, float) else 0
        half_unit = 0.5 * 10**-decimals
        return any(abs(size / unit - self.file_size_mb) <= half_unit for unit in MEGABYTES)


def info_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's metadata JSON lies: ``<stem>_info.json`` beside it, as the seed's
    ``best_model_info.json`` beside ``best_model.pt`` (train and publish write it there).

    >>> info_path("checkpoints/best_model.pt").as_posix()
    'checkpoints/best_model_info.json'
    """
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_info.json")


def metadata_beside(facts: "FileFacts") -> Optional[CheckpointInfo]:
    """The ``<stem>_info.json`` beside a file no artifact vouches for (where train and the seed's layout put
    it), if it describes these very bytes; None (and a warning saying why) otherwise."""
    from phasegpt_ckpt.proof.verify import describes

    beside = info_path(facts.path)
    if not beside.is_file():
        return None
    try:
        info = load_metadata(beside)
    except BadInput as err:
        log.warning(f"ignoring {beside.name}: {err}")
        return None
    if info.sha256 is not None and not describes(info.sha256, facts):
        log.warning(f"ignoring {beside.name}: it describes other bytes (sha256 {info.sha256})")
        return None
    log.info(f"claims from {beside}")
    return info


def load_metadata(path: str | Path) -> CheckpointInfo:
    """Read a metadata JSON file; a file that is not one is a one-line BadInput.

    >>> load_metadata("missing.json")
    Traceback (most recent call last):
    ...
    phasegpt_ckpt.errors.BadInput: metadata file missing.json not found
    """
    path, data = Path(path), metadata_document(path)
    try:
        return CheckpointInfo.model_validate(data)
    except ValidationError as err:
        raise BadInput(f"metadata file {path}: {first_error(err)}") from None


def metadata_document(path: str | Path) -> dict:
    """The JSON object in a metadata file, read with every bound (size, depth, Unicode), not yet validated."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_BYTES + 1)  # never more: the file may be anything, of any size
    except FileNotFoundError:
        raise BadInput(f"metadata file {path} not found") from None
    except OSError as err:
        raise BadInput(f"metadata file {path} is not readable ({err.strerror or type(err).__name__})") from None
    if len(raw) > MAX_BYTES:
        raise BadInput(f"metadata file {path} is over {MAX_BYTES // 2**20} MiB: not a checkpoint's metadata JSON")
    try:  # ValueError: not UTF-8, not JSON, or a number too long for Python's int (over 4300 digits)
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise BadInput(f"metadata file {path} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise BadInput(f"metadata file {path} must hold a JSON object")
    if _deeper_than(data, MAX_DEPTH):
        raise BadInput(f"metadata file {path} is nested more than {MAX_DEPTH} levels deep")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # "\\ud800" reads as a lone surrogate, which no terminal or file can take
        raise BadInput(f"metadata file {path} holds text that is not Unicode "
                       "(an unpaired \\uD800-\\uDFFF escape)") from None
    return data


def _deeper_than(value, depth: int) -> bool:
    """Do JSON containers nest more than ``depth`` levels in ``value``? (level by level: no recursion)

    >>> _deeper_than({"a": [1, {"b": 2}]}, 2), _deeper_than({"a": [1, {"b": 2}]}, 3)
    (True, False)
    """
    level = [value]
    for _ in range(depth):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, (dict, list)) for item in level)


# -- writing ----------------------------------------------------------------------------------------


def build_info(name: str, config: "GPT2Config", carried: dict[str, Any], *, size: int, sha256: str,
               validation: Optional[dict] = None, known: Optional[dict] = None) -> dict[str, Any]:
    """The seed's metadata JSON for a checkpoint file, validated under :class:`CheckpointInfo`.

    ``carried``: what the checkpoint holds beside its weights (a training dict's ``epoch``,
    ``global_step``, ``metrics``, ``config``, ``provenance``, ...; empty for a bare state dict).
    Precedence, lowest first: ``carried``; ``known`` (a metadata JSON about the same bytes);
    ``validation`` (a fresh measurement as a metrics row, :meth:`Measurement.summary`); the file's
    ``size`` and ``sha256``. The seed's fields come first, in its order, null where nothing knows them.
    """
    info: dict[str, Any] = {key: None for key in CheckpointInfo.model_fields}
    for source in (_carried_fields(name, config, carried), known or {}, _validation_fields(validation or {})):
        info.update({key: value for key, value in source.items() if value is not None})
    info.update(file_size_mb=round(size / 10**6, 1), file_size_bytes=size, sha256=sha256)
    try:
        CheckpointInfo.model_validate(info)
    except ValidationError as err:
        raise BadInput(f"the metadata JSON for {name} would be invalid: {first_error(err)}") from None
    return info


def save_info(info: dict[str, Any], path: str | Path) -> Path:
    """Write a metadata JSON (from :func:`build_info`) atomically."""
    return write_text(json.dumps(info, indent=2) + "\n", Path(path))


def _carried_fields(name: str, config: "GPT2Config", carried: dict[str, Any]) -> dict[str, Any]:
    row = carried.get("metrics") or {"val_ppl": carried.get("best_val_ppl"), "val_loss": carried.get("best_val_loss")}
    data = (carried.get("config") or {}).get("data") or {}
    seconds = carried.get("training_time_s")
    return {
        "model_name": name,
        "config": config_summary(config),
        "dataset": f"{data['dataset']} (char-level)" if data.get("dataset") else None,
        **_validation_fields(row),
        "training_epochs": carried.get("epoch"),
        "global_step": carried.get("global_step"),
        "training_time_minutes": round(seconds / 60, 2) if seconds else None,
        **(carried.get("provenance") or {}),
        "coupling_mode": config.coupling_mode,
        "tool_version": carried.get("tool_version"),
    }


def _validation_fields(row: dict) -> dict[str, Any]:
    """A metrics row's measured numbers under the metadata's names, rounded to :data:`DIGITS`."""
    fields = {}
    for field, key in VALIDATION_FIELDS.items():
        value = row.get(key)
        try:
            fields[field] = value if value is None or isinstance(value, int) else round(float(value), DIGITS)
        except (TypeError, ValueError):  # a checkpoint's metrics hold anything its writer put there
            raise BadInput(f"the checkpoint's {key} is not a number: {type(value).__name__} "
                           f"{str(value)[:40]!r}") from None
    return fields


def config_summary(config: "GPT2Config") -> str:
    """The seed's one-line config description, e.g. ``Layer 7, 32 oscillators, K=1.0``.

    >>> from model import GPT2Config
    >>> config_summary(GPT2Config(use_phase_attention=True, phase_layer_idx=[6, 7]))
    'Layers 6+7, 32 oscillators, K=1.0'
    """
    layers = config.phase_layers
    if not layers:
        return f"Baseline, {config.n_layers} layers, no phase coupling"
    where = f"Layer {layers[0]}" if len(layers) == 1 else f"Layers {'+'.join(map(str, layers))}"
    mode = "" if config.coupling_mode == "original" else f", {config.coupling_mode} coupling"
    return f"{where}, {config.num_oscillators} oscillators, K={config.coupling_strength}{mode}"


def provenance(device: "torch.device", world_size: int = 1) -> dict[str, Optional[str]]:
    """Where and with what a checkpoint was trained, under the metadata's names: the trainer stores it in
    every checkpoint, so the metadata JSON can be written from the file alone (``publish``)."""
    import torch

    return {"hardware": hardware(device, world_size), "date_trained": date.today().isoformat(),
            "pytorch_version": str(torch.__version__),  # a str subclass weights-only unpickling refuses
            "cuda_version": torch.version.cuda,
            "license": "MIT"}  # the seed releases its checkpoints under MIT; runs of this trainer follow it


def hardware(device: "torch.device", world_size: int = 1) -> str:
    """The metadata's hardware string, e.g. ``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 2 cores)``."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{world_size} × {name}" if world_size > 1 else name
