"""The local cache: verified bytes by sha256, a readable name per artifact, receipts and locks.

Layout under the root (``--cache-dir``, ``$PHASEGPT_CACHE``, else the platform's user cache)::

    blobs/<sha256>                       verified bytes, read-only, shared by artifacts with equal content
    quarantine/<sha256>.<time>           blobs found changed after they were verified, kept for a look
    artifacts/<name>/<filename>          hard link to the blob (a copy where links are impossible)
    receipts/<name>.json                 what was verified, against what, from where and when
    partial/<name>/<type>-<key>.part     transfers in progress, one per (artifact, mirror): resume finds them
    locks/<name>.lock                    one fetch of an artifact at a time, across threads and processes

Bytes reach ``blobs/`` only through :meth:`Cache.store`, after the caller checked sha256 and size.

>>> cache = Cache("/tmp/phasegpt-doctest-cache")
>>> cache.blob("ab" * 32).relative_to(cache.root).as_posix()[:12]
'blobs/ababab'
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import platformdirs
from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from phasegpt_ckpt import __version__
from phasegpt_ckpt.atomic import atomic_path, fsync_directory, link_into_place, write_text
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.proof.digest import FileFacts, hash_file
from phasegpt_ckpt.proof.verify import mismatch
from phasegpt_ckpt.source.manifest import Artifact
from phasegpt_ckpt.source.mirrors.base import MirrorBase

log = logging.getLogger(__name__)

TOFU = "unpinned (trust on first use)"


class Receipt(BaseModel):
    """The record of one verified file. ``pin`` says what its sha256 was checked against."""

    artifact: str
    filename: str
    sha256: str
    size: int
    mirror: str
    time: datetime
    tool_version: str
    pinned: bool
    pin: str  # "pinned (manifest sha256)", "unpinned (provider sha256)", ..., or TOFU
    # The blob as it was when verified: while inode and mtime still match, its bytes are taken as
    # verified; when they differ (edited in place, replaced), the blob is hashed again before use.
    inode: Optional[int] = None
    mtime_ns: Optional[int] = None


class Cache:
    """One cache directory; creating the object touches nothing on disk."""

    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("PHASEGPT_CACHE") or platformdirs.user_cache_dir("phasegpt-ckpt")
        self.root = Path(root).expanduser()

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def path(self, artifact: Artifact) -> Path:
        """Where the artifact's file is kept under its own ``filename``."""
        return self.root / "artifacts" / artifact.name / artifact.filename

    def part_path(self, artifact: Artifact, mirror: MirrorBase) -> Path:
        """The stable partial file for this artifact from this mirror (same mirror entry, same name)."""
        key = hashlib.sha256(mirror.model_dump_json().encode()).hexdigest()[:12]
        return self._dir("partial", artifact.name) / f"{mirror.type}-{key}.part"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the artifact's lock; says so on stderr when another fetch holds it first."""
        lock = FileLock(self._dir("locks") / f"{name}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info(f"waiting for another fetch of {name} to finish")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def receipt(self, name: str) -> Optional[Receipt]:
        """The receipt of artifact ``name``, or None (absent or unreadable: the file is refetched)."""
        path = self.root / "receipts" / f"{name}.json"
        try:
            return Receipt.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError):
            log.warning(f"ignoring the unreadable receipt {path}")
            return None

    def receipts(self) -> list[Receipt]:
        """Every readable receipt, by artifact name."""
        names = sorted(p.stem for p in (self.root / "receipts").glob("*.json"))
        return [r for r in map(self.receipt, names) if r is not None]

    def lookup(self, artifact: Artifact) -> Optional[Receipt]:
        """The receipt of a cached copy that still fits the manifest and its blob, else None.

        The receipt must agree with the manifest's sha256 and size, and the blob with the receipt: its
        size, and its inode and mtime as recorded when it was verified. A blob whose inode or mtime
        changed is hashed again (the proof stage judges it): still the same bytes, the receipt is
        renewed; other bytes, the blob is moved to ``quarantine/`` and the caller fetches afresh.
        """
        receipt = self.receipt(artifact.name)
        if receipt is None or artifact.sha256 not in (None, receipt.sha256) or artifact.size not in (None, receipt.size):
            return None
        blob = self.blob(receipt.sha256)
        try:
            status = blob.stat()
        except OSError:
            return None
        if status.st_size != receipt.size:
            return None
        if (status.st_ino, status.st_mtime_ns) == (receipt.inode, receipt.mtime_ns):
            return receipt
        problem = mismatch(hash_file(blob), size=receipt.size, sha256=receipt.sha256)
        if problem is not None:
            moved = self.quarantine(receipt.sha256)
            log.warning(f"the cached copy of {artifact.name} changed after it was verified ({problem[1]}); "
                        f"moved it to {moved} and fetching it again")
            return None
        renewed = receipt.model_copy(update={"inode": status.st_ino, "mtime_ns": status.st_mtime_ns})
        self._write_receipt(renewed)
        return renewed

    def quarantine(self, sha256: str) -> Path:
        """Move a blob found corrupt out of ``blobs/`` (its readable names go with it); returns where it went."""
        target = self._dir("quarantine") / f"{sha256}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
        os.replace(self.blob(sha256), target)
        return target

    def store(self, artifact: Artifact, facts: FileFacts, *, pin: str) -> Path:
        """Move the verified file ``facts.path`` into the cache, name it, write the receipt; returns the path.

        Only bytes the proof stage passed come here; ``pin`` says what their sha256 was checked against.
        """
        sha256, size, mirror = facts.sha256, facts.size, facts.origin
        blob = self.blob(sha256)
        self._dir("blobs")
        os.replace(facts.path, blob)  # even over an equal blob: these bytes were just checked, the old ones not
        blob.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # a hard-linked --dest copy must not be edited in place
        fsync_directory(blob.parent)
        readable = place(blob, self._dir("artifacts", artifact.name), artifact.filename)
        status = blob.stat()
        receipt = Receipt(
            artifact=artifact.name, filename=artifact.filename, sha256=sha256, size=size, mirror=mirror,
            time=datetime.now(timezone.utc), tool_version=__version__, pinned=artifact.sha256 is not None, pin=pin,
            inode=status.st_ino, mtime_ns=status.st_mtime_ns,
        )
        self._write_receipt(receipt)
        shutil.rmtree(self.root / "partial" / artifact.name, ignore_errors=True)  # other mirrors' leftovers
        return readable

    def discard(self, name: str) -> None:
        """Forget artifact ``name``: its receipt, its readable name and its blob (found corrupt: quarantined)."""
        receipt = self.receipt(name)
        if receipt is not None and self.blob(receipt.sha256).is_file():
            self.quarantine(receipt.sha256)
        shutil.rmtree(self.root / "artifacts" / name, ignore_errors=True)
        (self.root / "receipts" / f"{name}.json").unlink(missing_ok=True)

    def identify(self, path: Path) -> Optional[Receipt]:
        """The receipt whose blob *is* ``path`` (same inode: the cached file or a hard-linked ``--dest``)."""
        return next((r for r in self.receipts()
                     if self.blob(r.sha256).is_file() and os.path.samefile(path, self.blob(r.sha256))), None)

    def _write_receipt(self, receipt: Receipt) -> None:
        write_text(receipt.model_dump_json(indent=2) + "\n", self._dir("receipts") / f"{receipt.artifact}.json")

    def _dir(self, *parts: str) -> Path:
        directory = self.root.joinpath(*parts)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInput(f"cannot use the cache directory {self.root}: {err.strerror}") from None
        return directory


def place(path: Path, dest_dir: str | Path, filename: str) -> Path:
    """Put ``path`` at ``dest_dir/filename``: a hard link, else a copy; never a partial file there.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "a").write_text("x")
    >>> place(d / "a", d / "out", "b.txt").read_text()
    'x'
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / filename
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        if final.exists() and os.path.samefile(path, final):
            return final
        if not link_into_place(path, final):  # another filesystem, or one without hard links
            with atomic_path(final) as temp:
                shutil.copyfile(path, temp)
    except OSError as err:
        raise BadInput(f"cannot write {final}: {err.strerror}") from None
    return final
