"""The manifest: which artifacts exist, what their bytes must be, and where to get them.

A YAML file written by hand (``manifests/phasegpt.yaml`` ships with the tool)::

    version: 1
    default: best_model
    artifacts:
      tinyshakespeare:
        kind: dataset
        filename: input.txt
        size: 1115394
        sha256: 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
        mirrors:
          - {type: url, url: "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"}

Every mistake in it is a :class:`~phasegpt_ckpt.errors.BadInput` with one line naming the field.

>>> Manifest.model_validate({"version": 1, "artifacts": {}}).artifacts
{}
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from phasegpt_ckpt import manifests
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.paths import user_path
from phasegpt_ckpt.proof.digest import MD5_HEX, SHA256_HEX
from phasegpt_ckpt.source.mirrors import Mirror
from phasegpt_ckpt.yamlio import read_yaml

# Seed placeholders: "zenodo.XXXXXXX", "osf.io/XXXXX", "[hash]", "[Link to be added]".
PLACEHOLDER = re.compile(r"X{4,}|^\s*\[.*\]\s*$|^\s*$")

ArtifactName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]  # also a cache directory name
Size = Annotated[int, Field(strict=True, ge=0, lt=2**63)]  # a file offset is a signed 64-bit number


def _hex_digest(pattern: re.Pattern, digits: int):
    """A lower-cased hex digest of ``digits`` digits, for pydantic (None = not published)."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value.lower()):
            raise ValueError(f"must be {digits} hex digits (or null when not published), got {value!r}")
        return value.lower()

    return Annotated[str, AfterValidator(check)]


Sha256 = _hex_digest(SHA256_HEX, 64)
Md5 = _hex_digest(MD5_HEX, 32)


def is_placeholder(value: object) -> bool:
    """True for the stand-ins the seed uses where a real value is not published yet.

    >>> is_placeholder("10.5281/zenodo.XXXXXXX"), is_placeholder("[hash]"), is_placeholder("best_model.pt")
    (True, True, False)
    """
    return isinstance(value, str) and PLACEHOLDER.search(value) is not None


class ClaimedValue(BaseModel):
    """A number the authors claim for an artifact, and how far a re-measurement may stray."""

    model_config = ConfigDict(extra="forbid")

    value: float
    tolerance: float = Field(ge=0)


def _plain(filename: str) -> str:
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or "\0" in filename:
        raise ValueError(f"filename must be a plain file name without a path, got {filename!r}")
    return filename


class Part(BaseModel):
    """One piece of an artifact kept in ordered parts (a provider's per-file limit): its file and bytes."""

    model_config = ConfigDict(extra="forbid")

    filename: Annotated[str, AfterValidator(_plain)]
    size: Size
    sha256: Sha256


class Artifact(BaseModel):
    """One file: its kind, its name on disk, the bytes it must have and the mirrors that serve it.

    ``parts``: the file is kept by its mirrors as these ordered pieces (each beside where the whole
    would be, under its own filename); fetch joins them and verifies the whole's size and sha256.
    """

    model_config = ConfigDict(extra="forbid")

    name: ArtifactName  # the key in ``artifacts:``, filled in by Manifest
    kind: Literal["checkpoint", "metadata", "dataset"]
    filename: str
    size: Optional[Size] = None
    sha256: Optional[Sha256] = None
    md5: Optional[Md5] = None  # where a provider publishes md5 only (Zenodo), checked before any byte moves
    parts: Optional[list[Part]] = None
    metadata: Optional[str] = None
    claims: dict[str, ClaimedValue] = {}
    mirrors: list[Mirror] = []
    mirror_order: Literal["manifest", "fastest"] = "manifest"  # fastest: probe each mirror, start with the quickest

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, filename: str) -> str:
        return _plain(filename)

    @model_validator(mode="after")
    def _parts_make_the_whole(self) -> "Artifact":
        if self.parts is None:
            return self
        if not self.parts or self.sha256 is None or self.size is None:
            raise ValueError("an artifact in parts needs at least one part, and the whole file's size and sha256")
        if sum(part.size for part in self.parts) != self.size:
            raise ValueError(f"its parts hold {sum(p.size for p in self.parts)} bytes, not the {self.size} of size")
        return self

    @field_validator("mirrors")
    @classmethod
    def _no_placeholder_ids(cls, mirrors: list) -> list:
        for index, mirror in enumerate(mirrors):
            fields = mirror.model_dump(mode="json", exclude={"type", "published"})
            placeholder = next((v for v in fields.values() if mirror.published and is_placeholder(v)), None)
            if placeholder is not None:
                raise ValueError(
                    f"mirror {index} ({mirror.type}) has the placeholder {placeholder!r}: "
                    "give the real value or mark it `published: false`"
                )
        return mirrors


class Manifest(BaseModel):
    """The whole manifest; ``artifacts`` keeps the file's order."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    default: Optional[str] = None
    artifacts: dict[ArtifactName, Artifact] = {}
    _sources: dict[str, Path] = PrivateAttr(default_factory=dict)  # artifact -> the file that defined it

    @model_validator(mode="before")
    @classmethod
    def _name_artifacts(cls, data):
        """Each artifact learns its own name (its key), so it can travel alone."""
        if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):
            named = {key: {**entry, "name": key} if isinstance(entry, dict) else entry
                     for key, entry in data["artifacts"].items()}
            data = {**data, "artifacts": named}
        return data

    @model_validator(mode="after")
    def _references_exist(self) -> "Manifest":
        if self.default is not None and self.default not in self.artifacts:
            raise ValueError(f"default: no artifact named {self.default!r}")
        for artifact in self.artifacts.values():
            target = self.artifacts.get(artifact.metadata) if artifact.metadata else None
            if artifact.metadata and (target is None or target.kind != "metadata"):
                raise ValueError(
                    f"artifacts.{artifact.name}.metadata: {artifact.metadata!r} is not an artifact of kind metadata"
                )
        return self

    def source_of(self, name: str) -> Optional[Path]:
        """The manifest file that defined artifact ``name`` (None for one built in memory)."""
        return self._sources.get(name)

    def layered(self, over: "Manifest") -> "Manifest":
        """This manifest with ``over``'s entries laid on top (added, or replacing one of the same name)."""
        try:
            combined = Manifest.model_validate({"version": 1, "default": over.default or self.default,
                                                "artifacts": {**self.artifacts, **over.artifacts}})
        except ValidationError as err:
            raise BadInput(f"the manifest {over.source_of(next(iter(over.artifacts), '')) or ''} does not fit over "
                           f"the shipped one: {first_error(err)}") from None
        combined._sources = {**self._sources, **over._sources}
        return combined

    def artifact(self, name: Optional[str] = None) -> Artifact:
        """The artifact called ``name`` (the manifest's default when None).

        >>> Manifest(version=1).artifact("nope")
        Traceback (most recent call last):
        ...
        phasegpt_ckpt.errors.BadInput: unknown artifact 'nope' (the manifest has none)
        """
        name = name or self.default
        if name is None:
            raise BadInput("no artifact named and the manifest has no `default`")
        if name not in self.artifacts:
            known = ", ".join(self.artifacts) or "none"
            raise BadInput(f"unknown artifact {name!r} (the manifest has {known})")
        return self.artifacts[name]


def renamed(mirror: Mirror, filename: str) -> Optional[Mirror]:
    """``mirror`` pointed at ``filename`` beside the file it names (where a part of it lies), or None
    when the mirror names its file by an id that says nothing of its neighbours (a guid, a Drive id).

    >>> from phasegpt_ckpt.source.mirrors.osf import OsfMirror
    >>> renamed(OsfMirror(node="abcde", path="ckpt/big.pt"), "big.pt.001-of-002").describe()
    'osf abcde/ckpt/big.pt.001-of-002'
    """
    fields = type(mirror).model_fields
    if "filename" in fields and getattr(mirror, "filename", None):
        return mirror.model_copy(update={"filename": filename})
    if "path" in fields and getattr(mirror, "path", None) is not None:
        path = mirror.path
        beside = path.with_name(filename) if isinstance(path, Path) else f"{path.rpartition('/')[0]}/{filename}"
        return mirror.model_copy(update={"path": beside if isinstance(path, Path) else beside.lstrip("/")})
    if "url" in fields:
        return mirror.model_copy(update={"url": mirror.url.rpartition("/")[0] + "/" + filename})
    return None


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a manifest: ``path``, else ``$PHASEGPT_MANIFEST``, else the shipped one with the
    user's own (:func:`user_manifest_path`, where ``publish`` writes) laid over it, entry by entry.

    Relative ``local`` mirror paths are taken from the manifest file's directory.

    >>> load_manifest().artifact("tinyshakespeare").size
    1115394
    """
    given = path or os.environ.get("PHASEGPT_MANIFEST")
    if given:
        return _load_one(user_path(given, "--manifest" if path else "PHASEGPT_MANIFEST"))
    shipped = _load_one(manifests.DEFAULT)
    user = user_manifest_path()
    return shipped.layered(_load_one(user)) if user.is_file() else shipped


def user_manifest_path() -> Path:
    """The user's own manifest, laid over the shipped one: ``publish`` adds entries there, never to the
    installed package (``$PHASEGPT_USER_MANIFEST``, else the platform's config directory)."""
    import platformdirs

    given = os.environ.get("PHASEGPT_USER_MANIFEST")
    return user_path(given or Path(platformdirs.user_config_dir("phasegpt-ckpt")) / "manifest.yaml",
                     "PHASEGPT_USER_MANIFEST")


def _load_one(path: Path) -> Manifest:
    data = _read_yaml(path)
    try:
        manifest = Manifest.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as err:
        raise BadInput(f"invalid manifest {path}: {first_error(err)}") from None
    manifest._sources = dict.fromkeys(manifest.artifacts, path)
    return manifest


def _read_yaml(path: Path) -> dict:
    """The YAML mapping in ``path``, or a one-line BadInput saying what is wrong with the file."""
    data = read_yaml(path, "manifest")
    if data is None:
        raise BadInput(f"manifest {path} is empty")
    if not isinstance(data, dict):
        raise BadInput(f"manifest {path} must be a mapping with version, default and artifacts")
    return data


def first_error(err: ValidationError) -> str:
    """A pydantic error as one line: dotted field path, message, and how many more there are."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"
