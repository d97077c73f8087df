"""A file on a local or network disk (a lab share, a bundled checkpoint, a USB stick).

A relative ``path`` in a manifest is taken from the manifest file's directory.

    >>> LocalMirror(path="/data/mirror/best_model.pt").describe()
    'local /data/mirror/best_model.pt'
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import requests
from pydantic import ValidationInfo, field_validator

from phasegpt_ckpt.errors import MirrorFailed
from phasegpt_ckpt.source.mirrors.base import MirrorBase, Source


class LocalMirror(MirrorBase):
    """``path``: absolute, ``~``-relative, or relative to the manifest's directory (``base: cwd``: to the
    working directory, for where a project keeps a file, such as the seed's ``data/shakespeare/input.txt``);
    ``compression: gzip`` for a file kept compressed (the corpus bundled with the package), checked as
    it decompresses."""

    type: Literal["local"] = "local"
    base: Literal["manifest", "cwd"] = "manifest"
    path: Path
    compression: Optional[Literal["gzip"]] = None

    @field_validator("path")
    @classmethod
    def _from_manifest_dir(cls, path: Path, info: ValidationInfo) -> Path:
        if "\0" in str(path):  # no system call takes it: open() and stat() would raise ValueError
            raise ValueError("a path cannot contain a NUL byte")
        base_dir = (info.context or {}).get("base_dir")
        try:
            path = path.expanduser()
        except RuntimeError:  # ~user of no such user, or ~ with no home directory to read
            raise ValueError(f"cannot expand {str(path).split('/')[0]!r}: no such user or home directory") from None
        if info.data.get("base") == "cwd" or not base_dir or path.is_absolute():
            return path  # a relative path then opens from the working directory of the moment
        return base_dir / path

    def describe(self) -> str:
        return f"local {self.path}"


def resolve(mirror: LocalMirror, session: requests.Session) -> Source:
    """The file itself; its size on disk is what this mirror "publishes" (nothing, when it is compressed)."""
    try:
        size = mirror.path.stat().st_size
    except FileNotFoundError:
        raise MirrorFailed("not found", f"{mirror.path} does not exist") from None
    except OSError as err:
        raise MirrorFailed("unreadable", f"cannot read {mirror.path}: {err.strerror}") from None
    if not mirror.path.is_file():
        raise MirrorFailed("not a file", f"{mirror.path} is not a regular file")
    if mirror.compression:
        return Source(label=mirror.describe(), local_path=mirror.path, compression=mirror.compression)
    return Source(label=mirror.describe(), local_path=mirror.path, size=size)
