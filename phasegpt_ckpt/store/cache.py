"""The local cache: verified bytes by sha256, a readable name per artifact, receipts and locks.

Layout under the root (``--cache-dir``, ``$PHASEGPT_CACHE``, else the platform's user cache)::

    blobs/<sha256>                       verified bytes, read-only, shared by artifacts with equal content
    quarantine/<sha256>.<time>           blobs found changed after they were verified, kept for a look
    artifacts/<name>/<filename>          hard link to the blob (a copy where links are impossible)
    receipts/<name>.json                 what was verified, against what, from where and when
    partial/<name>/<type>-<key>.part     transfers in progress, one per (artifact, mirror): resume finds them
    locks/<name>.lock                    one fetch of an artifact at a time, across threads and processes
    used/<name>                          empty; its mtime is when the cache last served the artifact

Bytes reach ``blobs/`` only through :meth:`Cache.store`, after the caller checked sha256 and size.
Housekeeping (``phasegpt-ckpt cache ls|rm|prune``): :meth:`Cache.entries`, :meth:`Cache.remove` and
:meth:`Cache.prune`, each safe beside a fetch in another process (they take or test its lock).

>>> cache = Cache("/tmp/phasegpt-doctest-cache")
>>> cache.blob("ab" * 32).relative_to(cache.root).as_posix()[:12]
'blobs/ababab'
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Iterator, Optional

import platformdirs
from filelock import FileLock, Timeout
from pydantic import AfterValidator, BaseModel, StringConstraints, ValidationError

from phasegpt_ckpt import __version__
from phasegpt_ckpt.atomic import atomic_path, fsync_directory, link_into_place, read_regular, write_text
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.paths import user_path
from phasegpt_ckpt.proof.digest import SHA256_HEX, FileFacts, hash_file
from phasegpt_ckpt.proof.verify import mismatch
from phasegpt_ckpt.source.manifest import Artifact
from phasegpt_ckpt.source.mirrors.base import MirrorBase
from phasegpt_ckpt.source.segments import read_record, record_path

log = logging.getLogger(__name__)

TOFU = "unpinned (trust on first use)"


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("a name cannot be . or ..")
    return name


# A receipt's fields become paths (blobs/<sha256>, artifacts/<name>/<filename>): in a cache other
# users can write, a field holding "../.." would aim a move or a delete outside the cache.
_NAME = Annotated[str, StringConstraints(pattern=r"^[^/\\\x00]{1,255}$"), AfterValidator(_not_dots)]


class Receipt(BaseModel):
    """The record of one verified file. ``pin`` says what its sha256 was checked against."""

    artifact: _NAME
    filename: _NAME
    sha256: Annotated[str, StringConstraints(pattern=SHA256_HEX.pattern + "$")]
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


@dataclass
class Partial:
    """A download not finished: its ``.part`` file, the bytes in it, the size it is heading for (from
    its sidecar, when known), and whether a fetch is writing it now (its artifact's lock is held)."""

    path: Path
    size: int
    expected_size: Optional[int]
    in_progress: bool


@dataclass
class CacheEntry:
    """One artifact name the cache holds anything for: its verified file (from the receipt) and partials.

    ``state``: ``cached``; ``blob missing`` or ``blob changed`` (the receipt's bytes are gone or another
    size: the next fetch downloads them again); ``unreadable receipt``; ``partial`` (a download not
    finished, nothing verified yet); ``stray`` (a readable name or use record without a receipt).
    ``last_used``: the later of when it was fetched and when the cache last served it.
    ``shared_with``: other artifacts whose receipts point to the same blob (equal content).
    """

    name: str
    state: str
    filename: Optional[str] = None
    path: Optional[Path] = None
    sha256: Optional[str] = None
    size: Optional[int] = None
    pinned: Optional[bool] = None
    pin: Optional[str] = None
    fetched: Optional[datetime] = None
    last_used: Optional[datetime] = None
    shared_with: list[str] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)


@dataclass
class Dropped:
    """One file :meth:`Cache.remove` or :meth:`Cache.prune` took away (in a dry run: would take), or, with
    a ``reason``, kept. ``kind``: receipt, readable name, blob, partial, use record, orphan blob,
    quarantined, stray; ``name``: its artifact, where it has one."""

    kind: str
    path: Path
    size: int
    name: Optional[str] = None
    reason: str = ""


@dataclass
class Removed:
    """What :meth:`Cache.remove` took away. ``kept_blob_for``: artifacts whose receipts still point to the
    blob, which therefore stayed; ``blob_kept``: why the blob stayed otherwise (a fetch in progress).
    ``freed``: bytes the disk got back (a file with another hard link, say a ``fetch --dest`` copy, frees
    nothing)."""

    name: str
    files: list[Dropped]
    freed: int
    kept_blob_for: list[str] = field(default_factory=list)
    blob_kept: str = ""


@dataclass
class Pruned:
    """What :meth:`Cache.prune` removed (``dry_run``: would remove), what it kept and why, and the bytes freed."""

    dry_run: bool
    removed: list[Dropped]
    kept: list[Dropped]
    freed: int


def _children(directory: Path) -> list[Path]:
    """The entries of ``directory``, sorted; none when it does not exist (housekeeping creates nothing)."""
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _files(directory: Path) -> list[Path]:
    """The regular files under ``directory`` (not following links, nor a linked ``directory``), sorted."""
    if not directory.is_dir() or directory.is_symlink():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def _unlink_planted(path: Path) -> None:
    """Remove a symbolic link found where the cache keeps a file or folder of its own (a cache holds none:
    in a shared cache, another user may have planted it to make us write, chmod or delete elsewhere)."""
    if path.is_symlink():
        log.warning(f"{path} is a symbolic link, which the cache never makes: removed it (not followed)")
        path.unlink()


def _restrict(path: Path, mode: int) -> None:
    """chmod the file at ``path`` itself, never a link's target."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _size(path: Path) -> Optional[int]:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _mtime(path: Path) -> Optional[datetime]:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        return None


def _listed(kind: str, paths: list[Path], name: Optional[str] = None, reason: str = "") -> list[Dropped]:
    """``paths`` that exist, as :class:`Dropped` rows."""
    return [Dropped(kind, path, size, name, reason) for path in paths if (size := _size(path)) is not None]


def _freed(files: list[Dropped]) -> int:
    """Bytes the disk gets back when ``files`` go: a file counts once all its hard links are among them."""
    inodes: dict[tuple[int, int], list[int]] = {}
    for dropped in files:
        try:
            status = dropped.path.lstat()
        except OSError:
            continue
        seen = inodes.setdefault((status.st_dev, status.st_ino), [0, status.st_nlink, status.st_size])
        seen[0] += 1
    return sum(size for count, links, size in inodes.values() if count >= links)


def _delete(files: list[Dropped], directories: list[Path]) -> None:
    """Unlink ``files``, then drop ``directories`` left empty."""
    for dropped in files:
        try:
            dropped.path.unlink(missing_ok=True)
        except OSError as err:
            raise BadInput(f"cannot remove {dropped.path}: {err.strerror}") from None
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


class Cache:
    """One cache directory; creating the object touches nothing on disk."""

    def __init__(self, root: str | Path | None = None):
        given = root or os.environ.get("PHASEGPT_CACHE")
        self.root = user_path(given, "the cache directory (--cache-dir, $PHASEGPT_CACHE)") if given else Path(
            platformdirs.user_cache_dir("phasegpt-ckpt"))

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
        lock = FileLock(self._lock_file(name))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info(f"waiting for another fetch of {name} to finish")
                lock.acquire()
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise BadInput(f"cannot use the lock {lock.lock_file}: {err.strerror}") from None
            # a cache someone else fills (read-only here): what it holds is served; a download
            # fails when it needs to write, with one line
            log.info(f"cannot lock {name} in {self.root} ({err.strerror}): reading the cache without a lock")
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def receipt(self, name: str) -> Optional[Receipt]:
        """The receipt of artifact ``name``, or None (absent or unreadable: the file is refetched)."""
        path = self.root / "receipts" / f"{name}.json"
        try:
            return Receipt.model_validate_json(read_regular(path))
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
            status = blob.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(status.st_mode) or status.st_size != receipt.size:
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
        self._unplant()
        target = self._dir("quarantine") / f"{sha256}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
        os.replace(self.blob(sha256), target)
        return target

    def store(self, artifact: Artifact, facts: FileFacts, *, pin: str, source_mode: Optional[int] = None) -> Path:
        """Move the verified file ``facts.path`` into the cache, name it, write the receipt; returns the path.

        Only bytes the proof stage passed come here; ``pin`` says what their sha256 was checked against.
        The blob is read-only (a hard-linked ``--dest`` copy must not be edited in place), and no more
        readable than the part was made (the umask) nor than ``source_mode``, the mode of a local file
        copied in: a file only its owner may read stays so in a shared cache.
        """
        sha256, size, mirror = facts.sha256, facts.size, facts.origin
        self._unplant()
        blob = self.blob(sha256)
        self._dir("blobs")
        os.replace(facts.path, blob)  # even over an equal blob: these bytes were just checked, the old ones not
        mode = stat.S_IMODE(blob.lstat().st_mode) & (0o777 if source_mode is None else source_mode)
        _restrict(blob, mode & (stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH))
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
        self._unplant()
        if receipt is not None and self.blob(receipt.sha256).is_file():
            self.quarantine(receipt.sha256)
        shutil.rmtree(self.root / "artifacts" / name, ignore_errors=True)
        (self.root / "receipts" / f"{name}.json").unlink(missing_ok=True)

    def identify(self, path: Path) -> Optional[Receipt]:
        """The receipt whose blob *is* ``path`` (same inode: the cached file or a hard-linked ``--dest``)."""
        return next((r for r in self.receipts()
                     if self.blob(r.sha256).is_file() and os.path.samefile(path, self.blob(r.sha256))), None)

    # -- housekeeping: what is here, and taking it away (phasegpt-ckpt cache ls | rm | prune) --------

    def names(self) -> list[str]:
        """Every artifact name the cache holds anything for: receipt, readable name, partial download, use record."""
        found = {p.stem for p in _children(self.root / "receipts") if p.suffix == ".json"}
        found |= {p.name for p in _children(self.root / "artifacts") if p.is_dir()}
        found |= {p.name for p in _children(self.root / "partial") if p.is_dir()}
        found |= {p.name for p in _children(self.root / "used")}
        return sorted(name for name in found if not name.startswith("."))  # .tmp files of atomic writes

    def require(self, *names: str) -> None:
        """Raise ``BadInput`` (one line) unless the cache holds something for each of ``names``."""
        held = self.names()
        unknown = [name for name in names if name not in held]
        if unknown:
            raise BadInput(f"not in the cache {self.root}: {', '.join(unknown)} "
                           f"(it holds: {', '.join(held) or 'nothing'})")

    def entries(self) -> list[CacheEntry]:
        """One :class:`CacheEntry` per name, by name: what ``cache ls`` shows. Writes nothing; a partial
        counts as in progress while another process or thread holds its artifact's lock."""
        names = self.names()
        receipts = {name: receipt for name in names if (receipt := self.receipt(name)) is not None}
        by_blob: dict[str, list[str]] = {}
        for name, receipt in receipts.items():
            by_blob.setdefault(receipt.sha256, []).append(name)
        entries = []
        for name in names:
            partials, used, receipt = self._partials(name), _mtime(self.root / "used" / name), receipts.get(name)
            if receipt is None:
                state = ("unreadable receipt" if (self.root / "receipts" / f"{name}.json").exists()
                         else "partial" if partials else "stray")
                entries.append(CacheEntry(name, state, last_used=used, partials=partials))
                continue
            size = _size(self.blob(receipt.sha256))
            state = "cached" if size == receipt.size else "blob missing" if size is None else "blob changed"
            entries.append(CacheEntry(
                name, state, receipt.filename, self.root / "artifacts" / name / receipt.filename, receipt.sha256,
                receipt.size, receipt.pinned, receipt.pin, receipt.time, max(filter(None, (receipt.time, used))),
                [other for other in by_blob[receipt.sha256] if other != name], partials,
            ))
        return entries

    def mark_used(self, name: str) -> None:
        """Record that artifact ``name`` was just served from the cache: ``used/<name>``'s mtime, one
        ``utime`` per use. A cache that cannot be written only loses the record."""
        try:
            path = self._dir("used") / name
            _unlink_planted(path)
            os.utime(path, follow_symlinks=False)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666))
        except (OSError, BadInput) as err:
            log.debug(f"cannot record the use of {name}: {err}")

    def remove(self, name: str, *, wait: bool = False) -> Removed:
        """Take artifact ``name`` out of the cache: receipt, readable name, partial downloads, use record,
        and its blob unless another artifact's receipt points to it (equal content) or a fetch in progress
        may be storing the same bytes (``cache prune`` takes it later).

        Raises ``BadInput`` for a name the cache does not hold, and, unless ``wait``, when another
        process or thread holds the artifact's lock (a fetch in progress); ``wait`` waits for it.
        """
        self.require(name)
        self._unplant()
        with contextlib.ExitStack() as held:
            if self._hold(held, name) is False:
                if not wait:
                    raise BadInput(f"{name} is being fetched right now ({self.root / 'locks' / f'{name}.lock'} is "
                                   "held); run again when that fetch ends, or wait for it (--wait)")
                held.enter_context(self.lock(name))
            receipt = self.receipt(name)
            files = _listed("receipt", [self.root / "receipts" / f"{name}.json"], name)
            files += _listed("readable name", _files(self.root / "artifacts" / name), name)
            kept_for, blob_kept = [], ""
            if receipt is not None and self.blob(receipt.sha256).is_file():
                kept_for = sorted(r.artifact for r in self.receipts()
                                  if r.sha256 == receipt.sha256 and r.artifact != name)
                busy = self._hold_all(held, self._lock_names(), taken={name})
                if busy and not kept_for:
                    blob_kept = f"a fetch of {', '.join(sorted(busy))} is in progress and may be storing equal bytes"
                elif not kept_for:
                    files += _listed("blob", [self.blob(receipt.sha256)], name)
            files += _listed("partial", _files(self.root / "partial" / name), name)
            files += _listed("use record", [self.root / "used" / name], name)
            freed = _freed(files)
            _delete(files, [self.root / "artifacts" / name, self.root / "partial" / name])
        log.debug(f"removed {name} from {self.root}")
        return Removed(name, files, freed, kept_for, blob_kept)

    def prune(self, *, dry_run: bool = False) -> Pruned:
        """Remove what no artifact needs: blobs no readable receipt points to, partial downloads no fetch is
        writing, quarantined blobs, readable names and use records left without a receipt.

        Each artifact's lock is taken (never waited for) before its files go; a partial whose lock another
        process holds is a download in progress and stays, and orphan blobs stay while any fetch is in
        progress (its bytes may be landing). Lock files stay: removing one a process has open breaks it.
        ``dry_run`` lists the same and removes nothing (nor creates a lock file).
        """
        removed: list[Dropped] = []
        kept: list[Dropped] = []
        if not dry_run:
            self._unplant()
        with contextlib.ExitStack() as held:
            taken: set[str] = set()
            names = self.names()
            busy = self._hold_all(held, names, taken=taken, create=not dry_run)
            busy |= self._hold_all(held, self._lock_names(), taken=taken, create=False)
            receipt_files = {p.stem for p in _children(self.root / "receipts") if p.suffix == ".json"}
            for name in names:
                reason = f"a fetch of {name} is in progress" if name in busy else ""
                leftovers = _listed("partial", _files(self.root / "partial" / name), name, reason)
                if name not in receipt_files:
                    leftovers += _listed("stray", _files(self.root / "artifacts" / name), name, reason)
                    leftovers += _listed("stray", [self.root / "used" / name], name, reason)
                (kept if reason else removed).extend(leftovers)
            if not dry_run:  # a fetch that began meanwhile: its lock file is new
                busy |= self._hold_all(held, self._lock_names(), taken=taken, create=False)
            referenced = {receipt.sha256 for receipt in self.receipts()}
            orphans = [p for p in _files(self.root / "blobs") if p.name not in referenced]
            reason = f"a fetch of {', '.join(sorted(busy))} is in progress and may be storing it" if busy else ""
            (kept if reason else removed).extend(_listed("orphan blob", orphans, None, reason))
            removed += _listed("quarantined", _files(self.root / "quarantine"))
            freed = _freed(removed)
            if not dry_run:
                _delete(removed, [self.root / sub / name for sub in ("artifacts", "partial") for name in names])
        if not dry_run and removed:
            log.debug(f"pruned {len(removed)} files from {self.root}")
        return Pruned(dry_run, removed, kept, freed)

    def _partials(self, name: str) -> list[Partial]:
        """The ``.part`` files of artifact ``name``, in progress when another holder has its lock."""
        parts = [(path, size) for path in _files(self.root / "partial" / name)
                 if path.name.endswith(".part") and (size := _size(path)) is not None]
        if not parts:
            return []
        with contextlib.ExitStack() as held:
            in_progress = self._hold(held, name, create=False) is False
        partials = []
        for path, size in parts:
            expected = (read_record(record_path(path)) or {}).get("expected_size")
            partials.append(Partial(path, size, expected if isinstance(expected, int) else None, in_progress))
        return partials

    def _lock_names(self) -> list[str]:
        return [p.name.removesuffix(".lock") for p in _children(self.root / "locks") if p.name.endswith(".lock")]

    def _hold(self, held: contextlib.ExitStack, name: str, *, create: bool = True) -> Optional[bool]:
        """Take artifact ``name``'s lock without waiting, released when ``held`` closes: True when taken,
        False when another process or thread holds it, None when there is no lock file and ``create`` is
        off (no fetch of it has begun) or the lock cannot be opened (a cache this user cannot write)."""
        path = self.root / "locks" / f"{name}.lock"
        if not create and not path.exists():
            return None
        try:
            lock = FileLock(self._lock_file(name))
        except BadInput:
            return None
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        except OSError:
            return None
        held.callback(lock.release)
        return True

    def _hold_all(self, held: contextlib.ExitStack, names, *, taken: set[str], create: bool = True) -> set[str]:
        """:meth:`_hold` each of ``names`` not in ``taken`` (which grows); the names another holder has."""
        busy = set()
        for name in sorted(set(names) - taken):
            taken.add(name)
            if self._hold(held, name, create=create) is False:
                busy.add(name)
        return busy

    def _unplant(self) -> None:
        """Remove links planted in place of the cache's own folders, before anything is moved or deleted
        under them (rmtree and :func:`_files` refuse a linked folder one level further down)."""
        for folder in ("blobs", "quarantine", "artifacts", "receipts", "partial", "locks", "used"):
            try:
                _unlink_planted(self.root / folder)
            except OSError as err:
                raise BadInput(f"cannot use the cache directory {self.root}: {err.strerror}") from None

    def _lock_file(self, name: str) -> Path:
        """``locks/<name>.lock``, a planted link there removed first (filelock opens with O_TRUNC)."""
        path = self._dir("locks") / f"{name}.lock"
        try:
            _unlink_planted(path)
        except OSError as err:
            raise BadInput(f"cannot use the lock {path}: {err.strerror}") from None
        return path

    def _write_receipt(self, receipt: Receipt) -> None:
        write_text(receipt.model_dump_json(indent=2) + "\n", self._dir("receipts") / f"{receipt.artifact}.json")

    def _dir(self, *parts: str) -> Path:
        """The folder ``root/parts...``, made where missing; no link below the root is followed.

        The root itself may be a link (a cache moved to a bigger disk); below it, a link is planted.
        """
        directory = self.root
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for part in parts:
                directory = directory / part
                _unlink_planted(directory)
                directory.mkdir(exist_ok=True)
        except OSError as err:
            raise BadInput(f"cannot use the cache directory {directory}: {err.strerror}; "
                           "give one you can write with --cache-dir or $PHASEGPT_CACHE") from None
        return directory


def _same_file(path: Path, final: Path) -> bool:
    """Is ``final`` itself (not a link's target) the file ``path``?"""
    try:
        here, there = path.stat(), final.lstat()
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


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
        if _same_file(path, final):
            return final
        if not link_into_place(path, final):  # another filesystem, or one without hard links
            with atomic_path(final) as temp:
                shutil.copyfile(path, temp)
    except OSError as err:
        raise BadInput(f"cannot write {final}: {err.strerror}") from None
    return final
