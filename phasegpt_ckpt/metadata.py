"""The metadata JSON published beside a checkpoint (the seed's ``best_model_info.json``).

Placeholders the seed ships (``"[hash]"``, ``"10.5281/zenodo.XXXXXXX"``, ``""``) read as
"not published" (``None``), never as an error. Fields our own trainer adds later
(``file_size_bytes``, ``order_parameter_R_std``, ...) are kept as extras.

>>> info = CheckpointInfo(sha256="[hash]", doi="10.5281/zenodo.XXXXXXX", file_size_mb=970)
>>> info.sha256 is None, "doi" in info.not_published()
(True, True)
>>> info.size_agrees(1_017_118_720), info.size_agrees(1_100_000_000)
(True, False)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import BadInput
from .manifest import SHA256, first_error, is_placeholder

MEGABYTES = (10**6, 2**20)  # "970 MB" may mean either


class CheckpointInfo(BaseModel):
    """Every field of the seed's metadata JSON; ``None`` where it is absent or a placeholder."""

    model_config = ConfigDict(extra="allow")

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
    file_size_mb: Optional[Union[int, float]] = None  # int stays int: its precision is the rounding allowed
    sha256: Optional[str] = None
    license: Optional[str] = None
    doi: Optional[str] = None

    @field_validator("*", mode="before")
    @classmethod
    def _placeholder_is_unpublished(cls, value):
        return None if is_placeholder(value) else value

    @field_validator("sha256")
    @classmethod
    def _hex_sha256(cls, sha256: Optional[str]) -> Optional[str]:
        if sha256 is not None and not SHA256.fullmatch(sha256.lower()):
            raise ValueError(f"not 64 hex digits: {sha256!r}")
        return sha256 and sha256.lower()

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


def load_metadata(path: str | Path) -> CheckpointInfo:
    """Read a metadata JSON file; a file that is not one is a one-line BadInput.

    >>> load_metadata("missing.json")
    Traceback (most recent call last):
    ...
    phasegpt_ckpt.errors.BadInput: metadata file missing.json not found
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"metadata file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"metadata file {path} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise BadInput(f"metadata file {path} must hold a JSON object")
    try:
        return CheckpointInfo.model_validate(data)
    except ValidationError as err:
        raise BadInput(f"metadata file {path}: {first_error(err)}") from None
