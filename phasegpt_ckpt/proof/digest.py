"""sha256 (and md5) of bytes as they stream past, on worker threads: hashing overlaps reading.

hashlib releases the GIL on large buffers, so a thread per digest hashes one chunk while the
caller reads or receives the next. ``transfer`` feeds it from the socket; ``hash_file`` (what
``verify`` uses) from the disk. This module imports nothing heavy: ``verify`` and checkpoint
loading re-hash files without loading the download stack.

>>> hasher = Hasher(want_md5=True); hasher.update(b"abc"); hasher.hexdigests()["md5"]
'900150983cd24fb0d6963f7d28e17f72'
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MD5_HEX = re.compile(r"[0-9a-f]{32}")
# Chunks this large make per-chunk Python overhead negligible and let hashlib drop the GIL.
CHUNK = 1024 * 1024
QUEUE_DEPTH = 8  # chunks in flight to each hashing thread
# A prefetch runs while the main thread imports and holds the GIL between switches: each hand-back
# of the GIL is then worth 8 MiB rather than 1 MiB.
PREFETCH_CHUNK = 8 * CHUNK


class Hasher:
    """sha256 (and md5 when asked) of the bytes fed in, each digest on its own thread."""

    def __init__(self, want_md5: bool = False):
        self.digests = {"sha256": hashlib.sha256()}
        if want_md5:
            self.digests["md5"] = hashlib.md5()
        self._queues: list[queue.Queue] = []
        self._threads: list[threading.Thread] = []
        for digest in self.digests.values():
            chunks: queue.Queue = queue.Queue(QUEUE_DEPTH)
            thread = threading.Thread(target=_consume, args=(chunks, digest), daemon=True)
            thread.start()
            self._queues.append(chunks)
            self._threads.append(thread)

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` for every digest; it must not be changed afterwards."""
        for chunks in self._queues:
            chunks.put(chunk)

    def hexdigests(self) -> dict[str, str]:
        """Wait for the queued chunks; the digests by name ("sha256", "md5")."""
        self.close()
        return {name: digest.hexdigest() for name, digest in self.digests.items()}

    def close(self) -> None:
        for chunks in self._queues:
            chunks.put(None)
        for thread in self._threads:
            thread.join()
        self._queues, self._threads = [], []


def _consume(chunks: queue.Queue, digest) -> None:
    while (chunk := chunks.get()) is not None:
        digest.update(chunk)


@dataclass
class FileFacts:
    """A file as the proof stage sees it: where it is, its size and sha256 (md5 when asked for), and
    where it came from (a mirror's label, ``cache``, ``local file``). Every stage hands these on;
    :mod:`phasegpt_ckpt.proof.verify` alone compares them with what they should be."""

    path: Path
    size: int
    sha256: str
    md5: Optional[str] = None
    origin: str = ""


def hash_file(path: str | Path, *, want_md5: bool = False, origin: str = "local file") -> FileFacts:
    """The facts of a file on disk, reading while hashing (sha256, and md5 on its own thread if asked).

    A hash :func:`prefetch` started for the same unchanged file is waited for instead of done again.

    >>> facts = hash_file("/dev/null")
    >>> facts.size, facts.sha256
    (0, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')
    """
    path = Path(path)
    started = _prefetched.pop(_identity(path), None) if not want_md5 else None
    if started is not None:
        thread, result = started
        thread.join()
        if result:
            return dataclasses.replace(result[0], origin=origin)
    return _hash_now(path, want_md5, origin)


def prefetch(path: str | Path) -> None:
    """Start hashing ``path`` on a background thread, so the sha256 is (nearly) ready when :func:`hash_file`
    asks for it: the command line starts it before its slower imports (``verify FILE`` pays its start-up
    while the disk is read). Does nothing for a path that is not a regular file."""
    path = Path(path)
    try:
        key = _identity(path)
    except OSError:
        return
    if key is None or key in _prefetched:
        return
    result: list[FileFacts] = []

    def run() -> None:
        try:
            result.append(_hash_now(path, False, "local file", chunk=PREFETCH_CHUNK))
        except OSError:  # the caller's own hash_file reports it
            pass

    thread = threading.Thread(target=run, name=f"hash {path.name}", daemon=True)
    _prefetched[key] = (thread, result)
    thread.start()


_prefetched: dict[tuple, tuple[threading.Thread, list]] = {}


def _identity(path: Path) -> Optional[tuple]:
    """(device, inode, size, mtime): a file changed since its prefetch is hashed again."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _hash_now(path: Path, want_md5: bool, origin: str, chunk: int = CHUNK) -> FileFacts:
    hasher = Hasher(want_md5)
    size = feed(path, hasher, os.stat(path).st_size, chunk)
    digests = hasher.hexdigests()
    return FileFacts(path, size, digests["sha256"], digests.get("md5"), origin)


def feed(path: Path, hasher: Hasher, limit: int, chunk_size: int = CHUNK) -> int:
    """Read the first ``limit`` bytes of ``path`` into ``hasher``; returns how many there were."""
    size = 0
    with open(path, "rb", buffering=0) as file:
        while size < limit and (chunk := file.read(min(chunk_size, limit - size))):
            hasher.update(chunk)
            size += len(chunk)
    return size
