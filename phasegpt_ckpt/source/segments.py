"""One file over several ranged connections at once, written in place and hashed as its prefix grows.

:class:`Download` is the engine :func:`~phasegpt_ckpt.source.transfer.transfer` uses when a file is big
enough to be worth it (:func:`connection_count`), from one URL or, for a pinned artifact, from several
mirrors at once (each with its own validators; a mirror that fails loses its pieces to the others).
The ``.part`` is preallocated; each connection GETs one ``Range: bytes=a-b`` at a time and writes what
arrives at its offset with ``os.pwrite``. A connection with nothing left to start takes the back half of
the biggest segment still in flight (work stealing), so the last seconds are not one straggler. A hasher thread follows the contiguous prefix of the part
(reading it back from the page cache), so sha256 is ready right after the last byte lands.

Every answer must come from one object: a 206 whose ``Content-Range`` starts where asked with the
expected total, and the same strong ETag (else Last-Modified) as every other answer; requests carry
``If-Range``. Anything else (a 200, a wrong range, a changed validator) raises :class:`Unsegmentable`:
the caller starts over in one stream, never splicing two objects.

The sidecar is a control record: the byte ranges on disk, written only after an ``fdatasync`` of the
part, so after ``kill -9`` at any moment it claims nothing that is not there; a rerun asks for the rest.

>>> connection_count(4 * 2**20, None), connection_count(256 * 2**20, None), connection_count(2**40, 64)
(1, 16, 16)
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import json
import logging
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import requests
import urllib3

from phasegpt_ckpt.atomic import datasync, read_regular, write_text
from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.proof.digest import CHUNK, Hasher, feed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.web import RetryPolicy

log = logging.getLogger(__name__)

CONNECTIONS_ENV = "PHASEGPT_CONNECTIONS"
SINGLE_BELOW = 8 * 2**20  # smaller files: one connection (start-up and round trips outweigh the gain)
PER_CONNECTION = 4 * 2**20  # then one connection per 4 MiB ...
MAX_PER_HOST = 16  # ... and never more than 16 on one host (aria2's cap too)
CHECKPOINT_SECONDS = 0.05  # how often the control record is rewritten (what a kill -9 loses)
SYNC_SECONDS = 1.0  # how often the part is fdatasynced, on a thread of its own (what a power cut loses)
NETWORK_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                  requests.exceptions.Timeout, urllib3.exceptions.HTTPError, OSError)


class Unsegmentable(Exception):
    """The server does not serve this file as one object in ranges: download it in one stream instead."""


class Retry(Exception):
    """A failure worth another attempt: (outcome tag, message, seconds the server asked us to wait)."""

    def __init__(self, outcome: str, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.outcome, self.retry_after = outcome, retry_after


def connection_count(size: Optional[int], requested: Optional[int]) -> int:
    """Connections for a ``size``-byte file: ``requested`` (``--connections``), else ``$PHASEGPT_CONNECTIONS``,
    else one per 4 MiB from 8 MiB up; always 1..16 (the per-host cap), and 1 when the size is unknown."""
    wanted = requested if requested is not None else _from_env()
    if wanted is None:
        wanted = 1 if size is None or size < SINGLE_BELOW else size // PER_CONNECTION
    return 1 if size is None else max(1, min(MAX_PER_HOST, wanted))


def _from_env() -> Optional[int]:
    value = os.environ.get(CONNECTIONS_ENV, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and 0 < len(value) < 4 and int(value) > 0):
        raise BadInput(f"${CONNECTIONS_ENV} is {value[:20]!r}: set it to a number of connections (1 to {MAX_PER_HOST})")
    return int(value)


# -- answers: what every download checks ----------------------------------------------------------


def reject_unusable(response: requests.Response, label: str) -> None:
    """An HTML page (a login, quota or error page) or compressed bytes are not the file."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() == "text/html":
        raise MirrorFailed("html page", f"{label}: got an HTML page instead of the file (a login, quota or error page?)")
    encoding = response.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity":  # offsets and hashes would be of the compressed bytes
        raise MirrorFailed("encoded", f"{label}: the server compressed the file ({encoding}) though asked not to")


def looks_like_html(chunk: bytes) -> bool:
    return chunk[:64].lstrip().lower().startswith((b"<!doctype", b"<html"))


def content_range(value: str) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """``bytes a-b/L`` → (a, b, L); ``bytes */L`` → (None, None, L); unknown parts are None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value)
    if not match:
        return None, None, None
    return tuple(to_int(group) for group in match.groups())  # type: ignore[return-value]


def strong_etag(response: requests.Response) -> Optional[str]:
    """The ETag if it is strong: If-Range must never carry a weak one (RFC 9110 §13.1.5)."""
    etag = response.headers.get("ETag")
    return etag if etag and not etag.startswith("W/") else None


def to_int(value: Optional[str]) -> Optional[int]:
    """A header's byte count; None when absent or not one (a 5000-digit number is not a size either).

    >>> to_int("42"), to_int("4" * 5000), to_int("²"), to_int(None)
    (42, None, None, None)
    """
    return int(value) if value and value.isascii() and value.isdigit() and len(value) <= 19 else None


# -- pacing: shared by the one-stream download --------------------------------------------------


class Pace:
    """curl's ``--speed-limit``/``--speed-time`` for one connection, and the mirror's time budget.

    :meth:`moved` (of 0 bytes after a failed read) raises :class:`Retry` with outcome ``"too slow"`` when
    fewer than ``policy.speed_limit`` bytes/s arrived over the last ``policy.speed_time`` seconds, across
    requests, so a trickle that keeps resetting the connection is caught too; and :class:`MirrorFailed`
    once ``deadline`` (``time.monotonic()``) has passed. :meth:`restart` after a deliberate wait.
    """

    def __init__(self, policy: RetryPolicy, label: str, deadline: float):
        self.policy, self.label, self.deadline = policy, label, deadline
        self.restart()

    def restart(self) -> None:
        self._since, self._bytes = time.monotonic(), 0

    def moved(self, size: int) -> None:
        self._bytes += size
        now = time.monotonic()
        if now > self.deadline:
            raise MirrorFailed("timeout", f"{self.label}: gave up after {self.policy.budget:g} s, "
                                          "the time one mirror is given")
        span = now - self._since
        if span < self.policy.speed_time:
            return
        if self._bytes < self.policy.speed_limit * span:
            raise Retry("too slow", f"{self.label}: {self._bytes / span:.0f} B/s over {span:.1f} s, "
                                    f"below the {self.policy.speed_limit:.0f} B/s floor")
        self.restart()


def judged(pace: Pace, failure: Retry) -> Retry:
    """``failure``, or "too slow" when the connection's pace, failures included, is under the floor."""
    try:
        pace.moved(0)
    except Retry as slow:
        return slow
    return failure


class RateLimit:
    """A total bytes/s cap shared by every connection (``--limit-rate``): :meth:`take` sleeps until
    ``size`` more bytes fit under it."""

    def __init__(self, rate: Optional[float]):
        self.rate, self._lock = rate, threading.Lock()
        self._start, self._sent = time.monotonic(), 0

    def take(self, size: int) -> None:
        if not self.rate:
            return
        with self._lock:
            self._sent += size
            due = self._start + self._sent / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# -- the part file, never through a symlink ------------------------------------------------------


def open_part(path: Path, keep: bool) -> tuple[int, bool]:
    """A read-write descriptor of the part, never through a symlink someone planted at ``path``, and
    whether it is the file that was there.

    ``keep``: the existing regular file (for a resume); otherwise, or when what is there is not a
    regular file, whatever is at ``path`` is unlinked (a symlink itself, never its target) and a new
    file created exclusively.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if keep:
        try:
            fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))  # a planted FIFO must not block the open
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOENT, errno.EISDIR, errno.ENXIO):
                raise
        else:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.set_blocking(fd, True)
                return fd, True
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), False


def preallocate(fd: int, size: int) -> None:
    """Give the part its final size now: a full disk is found before any byte moves, not in the middle."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise BadInput(f"disk full: {size} bytes do not fit; free space and run again") from None
        if os.fstat(fd).st_size < size:  # a filesystem without fallocate: a sparse file of that size
            os.ftruncate(fd, size)
    except AttributeError:  # macOS
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))
    if os.fstat(fd).st_size > size:
        os.ftruncate(fd, size)


@functools.cache  # a process lives within one boot
def boot_id() -> Optional[str]:
    """This boot of the machine (Linux), None where unknown: the page cache, and so every byte written
    but not yet synced, outlives a killed process, not a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def recorded(meta: dict, total: int, length: int) -> Ranges:
    """The byte ranges a control record vouches for: those written, when the machine has not restarted
    since (a killed process loses nothing it wrote), else those synced. A one-stream record vouches for
    the file's length (written in order: after kill -9 the file, not the sidecar, knows it). Nonsense
    vouches for nothing."""
    if meta.get("ranges") is None:
        return Ranges([(0, min(length, total))])
    same_boot = meta.get("boot_id") is not None and meta.get("boot_id") == boot_id()
    spans = meta.get("written") if same_boot else meta.get("ranges")
    valid = isinstance(spans, list) and all(
        isinstance(span, list) and len(span) == 2 and all(type(n) is int for n in span)
        and 0 <= span[0] < span[1] <= min(total, length) for span in spans)
    return Ranges(spans if valid else ())


def record_path(part: Path) -> Path:
    """Where the control record of ``part`` lies: ``<part>.json`` beside it."""
    return part.with_name(part.name + ".json")


def read_record(sidecar: Path) -> Optional[dict]:
    """The sidecar's JSON, read without following a symlink; None when absent or unreadable (a planted
    FIFO or device, a file over 1 MiB, not a JSON object)."""
    try:
        meta = json.loads(read_regular(sidecar))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


# -- byte ranges ---------------------------------------------------------------------------------


class Ranges:
    """Disjoint sorted ``[start, end)`` byte ranges.

    >>> spans = Ranges([(0, 4), (8, 10)]); spans.add(4, 8); spans.spans, spans.prefix()
    ([[0, 10]], 10)
    >>> Ranges([(2, 5)]).missing(8)
    [(0, 2), (5, 8)]
    """

    def __init__(self, spans=()):
        self.spans: list[list[int]] = []
        for start, end in spans:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        at = bisect.bisect_left(self.spans, [start, start])
        if at and self.spans[at - 1][1] >= start:
            at -= 1
        last = at
        while last < len(self.spans) and self.spans[last][0] <= end:
            start, end = min(start, self.spans[last][0]), max(end, self.spans[last][1])
            last += 1
        self.spans[at:last] = [[start, end]]

    def prefix(self) -> int:
        """How many bytes from 0 on are covered without a gap."""
        return self.spans[0][1] if self.spans and self.spans[0][0] == 0 else 0

    def covered(self) -> int:
        return sum(end - start for start, end in self.spans)

    def missing(self, total: int) -> list[tuple[int, int]]:
        gaps, at = [], 0
        for start, end in self.spans:
            if start > at:
                gaps.append((at, start))
            at = max(at, end)
        return gaps + ([(at, total)] if at < total else [])


class Segment:
    """Bytes ``[at, end)`` still to fetch on one connection; a thief may lower ``end``."""

    def __init__(self, start: int, end: int):
        self.at, self.end = start, end
        self.response: Optional[requests.Response] = None  # shut down when the download stops

    @property
    def left(self) -> int:
        return self.end - self.at


# -- the scheduler -------------------------------------------------------------------------------


class Plan:
    """Who fetches what: pending pieces, segments in flight, the bytes written, and the stop switch.

    Writes go through :meth:`write` under the plan's lock, so a segment's end, the record of written
    bytes and the bytes in the file never disagree, and nothing is written once the download stopped.
    """

    def __init__(self, fd: int, total: int, done: Ranges, connections: int, min_segment: int):
        self.fd, self.total, self.written, self.min_segment = fd, total, done, min_segment
        self.lock = threading.Condition()
        self.returned = threading.Condition(self.lock)  # a piece came back, the last one ended, or a stop
        gaps = done.missing(total)
        piece = max(min_segment, -(-sum(end - start for start, end in gaps) // connections))
        self.pending = [(at, min(at + piece, end)) for start, end in gaps for at in range(start, end, piece)]
        self.active: list[Segment] = []
        self.stopped = False
        self.error: Optional[BaseException] = None  # what stopped the download, if anything did
        self.problem: Optional[Retry] = None  # the last retried failure, for the message if all give up

    def take(self, server: "Server") -> Optional[Segment]:
        """The next piece for an idle connection to ``server``: a pending one, else the back half of the
        biggest in flight. While pieces too small to split are in flight, wait: one may come back (its
        connection failed) and must find a connection left to fetch it. None when all is done, the
        download stopped, or ``server`` was dropped."""
        with self.lock:
            while not self.stopped and server.failure is None:
                if self.pending:
                    segment = Segment(*self.pending.pop(0))
                    break
                victim = max(self.active, key=lambda s: s.left, default=None)
                if victim is None:
                    return None
                if victim.left >= 2 * self.min_segment:
                    middle = victim.at + victim.left // 2
                    segment, victim.end = Segment(middle, victim.end), middle
                    break
                self.returned.wait(0.5)
            else:
                return None
            self.active.append(segment)
            return segment

    def write(self, segment: Segment, chunk: bytes, server: "Server") -> bool:
        """Write what of ``chunk`` belongs to ``segment`` at its offset, noting ``server`` served it; False once
        the segment is done or the download stopped."""
        with self.lock:
            if self.stopped:
                return False
            size = min(len(chunk), segment.left)
            if size > 0:
                _pwrite_all(self.fd, memoryview(chunk)[:size], segment.at)
                self.written.add(segment.at, segment.at + size)
                server.served.add(segment.at, segment.at + size)
                segment.at += size
                self.lock.notify_all()
            return segment.left > 0

    def release(self, segment: Segment) -> None:
        """The connection is done with ``segment``: what it did not fetch is pending again."""
        with self.lock:
            self.active.remove(segment)
            segment.response = None
            if segment.left > 0:
                bisect.insort(self.pending, (segment.at, segment.end))
            self.returned.notify_all()

    def reading(self, segment: Segment, response: Optional[requests.Response]) -> None:
        with self.lock:
            segment.response = response
            if self.stopped and response is not None:
                _shut(response)

    def stop(self, error: Optional[BaseException] = None) -> None:
        """Stop every connection (cutting their sockets) and the hasher; the first error is kept."""
        with self.lock:
            self.stopped = True
            self.error = self.error or error
            for segment in self.active:
                if segment.response is not None:
                    _shut(segment.response)
            self.lock.notify_all()
            self.returned.notify_all()

    def snapshot(self) -> list[list[int]]:
        with self.lock:
            return [list(span) for span in self.written.spans]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise BadInput("disk full while downloading: free space and run again to resume") from None


def _shut(response: requests.Response) -> None:
    """Cut a connection another thread is reading, so its blocked read returns now."""
    with contextlib.suppress(Exception):
        response.raw.connection.sock.shutdown(socket.SHUT_RDWR)


# -- the download --------------------------------------------------------------------------------


class Server:
    """One mirror's URL in a download: its own validators (the same object may carry another ETag on another
    mirror), the ranges it served, and why it was dropped, if it was."""

    def __init__(self, source, validators: dict):
        self.source, self.label, self.validators = source, source.label, validators
        self.served = Ranges()
        self.failure: Optional[BaseException] = None
        self.reached = False  # any HTTP answer yet: until then a refused connection is not worth many retries
        # One connection asks first; the others wait until its answer proves the mirror serves ranges of one
        # object (like aria2). A server that ignores ranges then costs one full answer, not one per connection.
        self.ready = threading.Event()
        self.opening = threading.Lock()


class Download:
    """One segmented download into the open part ``fd`` from one URL, or, for a pinned artifact, from
    several mirrors at once (see the module docstring). ``connections`` is per mirror."""

    def __init__(self, sources: list, fd: int, path: Path, total: int, meta: dict, done: Ranges, *,
                 session: requests.Session, policy: RetryPolicy, connections: int, pinned: bool):
        self.total, self.meta, self.path = total, meta, path
        self.sidecar = record_path(path)
        self.session, self.policy, self.pinned = session, policy, pinned
        if len(sources) > 1:  # validators are per mirror, and not kept: the sha256 decides
            meta.pop("etag", None), meta.pop("last_modified", None)
        self.servers = [Server(source, meta if len(sources) == 1 else {}) for source in sources]
        self.label = sources[0].label
        self.connections = connections
        self.plan = Plan(fd, total, done, connections * len(sources), policy.min_segment)
        self.limit = RateLimit(policy.limit_rate)
        self.deadline = time.monotonic() + policy.budget
        self.seconds = 0.0
        self.synced = [list(span) for span in done.spans]  # ranges on disk for sure: a reboot keeps them
        self.finished = threading.Event()

    # -- the main thread -------------------------------------------------------------------------
    def run(self, hasher: Hasher, progress: Callable[..., None]) -> None:
        """Fetch every missing byte and hash the whole part; raises what stopped it."""
        threads = [threading.Thread(target=self._connection, args=(server,), daemon=True)
                   for server in self.servers for _ in range(self._connections_to(server))]
        follower = threading.Thread(target=self._follow, args=(hasher,), daemon=True)
        syncer = threading.Thread(target=self._sync_now_and_then, daemon=True)
        began = time.monotonic()
        for thread in [follower, syncer, *threads]:
            thread.start()
        try:
            self._watch(threads, progress)
        except BaseException as err:  # KeyboardInterrupt too: stop, record what is on disk, re-raise
            self.plan.stop(err)
            raise
        finally:
            self.plan.stop()
            self.finished.set()
            for thread in [syncer, *threads]:
                thread.join()
            self.checkpoint(final=True)
            self.seconds = time.monotonic() - began
        follower.join()
        progress(self.plan.written.covered(), self.total)
        if self.plan.error is not None:
            raise self.plan.error
        if self.plan.written.covered() < self.total:
            failures = [server.failure for server in self.servers if server.failure is not None]
            if failures and len(failures) == len(self.servers):
                raise failures[0]
            problem = self.plan.problem or Retry("connection error", f"{self.label}: the download stopped")
            raise MirrorFailed(problem.outcome, f"{problem} (every connection gave up after "
                                                f"{self.policy.attempts} attempts without new bytes)")

    def _connections_to(self, server: Server) -> int:
        """``connections``, but never more than 16 to one host, however many of the mirrors it serves."""
        host = web.origin(server.source.url).host
        sharing = sum(web.origin(other.source.url).host == host for other in self.servers)
        return max(1, min(self.connections, MAX_PER_HOST // sharing))

    def _watch(self, threads: list[threading.Thread], progress: Callable[..., None]) -> None:
        checkpoint_at = time.monotonic() + CHECKPOINT_SECONDS
        while alive := [thread for thread in threads if thread.is_alive()]:
            alive[0].join(CHECKPOINT_SECONDS)
            progress(self.plan.written.covered(), self.total, detail=self._in_use())
            if self.plan.written.covered() >= self.total:
                return  # connections still backing off (a dead mirror's) have nothing left to do
            now = time.monotonic()
            if now >= checkpoint_at:
                self.checkpoint()
                checkpoint_at = now + CHECKPOINT_SECONDS
            if now > self.deadline:
                self.plan.stop(MirrorFailed("timeout", f"{self.label}: gave up after {self.policy.budget:g} s, "
                                                       "the time one mirror is given"))

    def _in_use(self) -> str:
        """The connections fetching now, and from how many mirrors, for the progress bar."""
        with self.plan.lock:
            count = len(self.plan.active)
        mirrors = len(self.servers) - sum(server.failure is not None for server in self.servers)
        return f"{count} connection{'s' * (count != 1)}" + (f", {mirrors} mirrors" if mirrors > 1 else "")

    def checkpoint(self, final: bool = False) -> None:
        """Record the ranges written so far (``written``, with this boot's id) beside those synced (``ranges``):
        neither list ever runs ahead of what it claims. The record is renamed into place, not fsynced (a
        power cut may bring back an older one, which claims less); ``final`` syncs the part and the record."""
        with self.plan.lock:
            spans, meta = [list(span) for span in self.plan.written.spans], dict(self.meta)
        with contextlib.suppress(OSError):  # a full disk may refuse even this; the next run re-fetches
            if final:
                datasync(self.plan.fd)
                self.synced = spans
            synced = self.synced
            prefix = synced[0][1] if synced and synced[0][0] == 0 else 0
            record = {**meta, "ranges": synced, "written": spans, "boot_id": boot_id(), "bytes": prefix}
            write_text(json.dumps(record), self.sidecar, as_bad_input=False, durable=final)

    def _sync_now_and_then(self) -> None:
        """fdatasync the part every ``SYNC_SECONDS`` (on its own thread: it can take a while, and the record of
        written ranges must go on meanwhile), then let the record call what was written before it synced."""
        while not self.finished.wait(SYNC_SECONDS):
            with self.plan.lock:
                spans = [list(span) for span in self.plan.written.spans]
            with contextlib.suppress(OSError):
                datasync(self.plan.fd)
                self.synced = spans

    def _follow(self, hasher: Hasher) -> None:
        """Hash the part's contiguous prefix as it grows, reading it back from the page cache."""
        hashed, plan = 0, self.plan
        while hashed < self.total:
            with plan.lock:
                while plan.written.prefix() <= hashed and not plan.stopped:
                    plan.lock.wait()
                ready = plan.written.prefix()
            if ready <= hashed:
                return  # stopped short of the end
            while hashed < ready:
                block = os.pread(plan.fd, min(ready - hashed, 8 * CHUNK), hashed)
                hasher.update(block)
                hashed += len(block)

    # -- after a hash mismatch ---------------------------------------------------------------------
    def blame(self) -> Optional[Server]:
        """Which mirror served bad bytes: each mirror's ranges are fetched again from another one; the
        mirror whose differing bytes, replaced by the other's, make the sha256 right is the bad one. Its
        bytes stay replaced (the part then holds the file); None when no replacement helps (all put back)."""
        for suspect in self.servers:
            witness = next((s for s in self.servers if s is not suspect and s.failure is None), None)
            if witness is None or not suspect.served.spans:
                continue
            differing = self._compare(suspect, witness)
            if not differing:
                continue
            for offset, ours, theirs in differing:
                _pwrite_all(self.plan.fd, memoryview(theirs), offset)
            if self.expected_sha256_matches():
                return suspect
            for offset, ours, _ in differing:
                _pwrite_all(self.plan.fd, memoryview(ours), offset)
        return None

    def expected_sha256_matches(self) -> bool:
        hasher = Hasher()
        feed(self.path, hasher, self.total)
        return hasher.hexdigests()["sha256"] == self.meta.get("expected_sha256")

    def _compare(self, suspect: Server, witness: Server) -> list[tuple[int, bytes, bytes]]:
        """(offset, our bytes, the witness's bytes) for each 1 MiB block of ``suspect``'s ranges that differ."""
        differing = []
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        try:
            for first, end in suspect.served.spans:
                differing += self._differing(suspect, witness, first, end, timeout)
        except NETWORK_ERRORS as err:
            raise MirrorFailed("hash mismatch", f"{witness.label}: the connection failed ({type(err).__name__}) while "
                                                "asking for bytes to find the mirror that sent bad ones") from None
        return differing

    def _differing(self, suspect: Server, witness: Server, first: int, end: int,
                   timeout) -> list[tuple[int, bytes, bytes]]:
        """Bytes ``first``..``end`` asked of ``witness``, compared block by block with those ``suspect`` wrote."""
        headers = {**witness.source.headers, "Accept-Encoding": "identity", "Range": f"bytes={first}-{end - 1}"}
        differing = []
        with web.get(self.session, witness.source.url, headers=headers, label=witness.label, stream=True,
                     timeout=timeout) as response:
            if response.status_code != 206 or content_range(response.headers.get("Content-Range", ""))[0] != first:
                raise MirrorFailed("hash mismatch", f"{witness.label}: could not serve bytes {first}-{end - 1} "
                                                    "to find the mirror that sent bad bytes")
            offset = first
            while offset < end:
                theirs = response.raw.read(min(CHUNK, end - offset))
                if not theirs:
                    break
                ours = os.pread(self.plan.fd, len(theirs), offset)
                if ours != theirs:
                    differing.append((offset, ours, theirs))
                offset += len(theirs)
        return differing

    # -- one connection --------------------------------------------------------------------------
    def _connection(self, server: Server) -> None:
        """One connection's thread: what it cannot retry (a fatal answer, Unsegmentable, the time budget)
        stops the whole download, or, with several mirrors, drops that mirror (its pieces go to the others)."""
        try:
            self._fetch_pieces(server)
        except (MirrorFailed, Unsegmentable) as err:
            if len(self.servers) == 1 or (isinstance(err, MirrorFailed) and err.outcome == "timeout"):
                return self.plan.stop(err)
            log.info(f"{err}; its pieces go to the other mirrors")
            server.failure = server.failure or err
        except BaseException as err:
            self.plan.stop(err)

    def _fetch_pieces(self, server: Server) -> None:
        """Fetch pieces until none is left; back off (this connection only) on failures; give up after
        ``policy.attempts`` in a row that brought no bytes, or when slower than the floor (its piece
        goes to the other connections)."""
        failures, pace = 0, Pace(self.policy, server.label, self.deadline)
        while server.failure is None and (opener := self._turn(server)) is not None:
            segment = self.plan.take(server)
            if segment is None:
                return self._end_turn(server, opener)
            start = segment.at
            try:
                self._fetch(segment, pace, server)
                failures = 0
                continue
            except Retry as retry:
                problem = retry
            except NETWORK_ERRORS as err:
                problem = judged(pace, Retry("connection error", f"{server.label}: a connection failed at byte "
                                                                  f"{segment.at} ({type(err).__name__})"))
                server.reached = server.reached or not web.unreachable(err)
            except (MirrorFailed, Unsegmentable) as err:
                if len(self.servers) > 1:  # dropped before its turn passes on: no other connection asks it
                    server.failure = server.failure or err
                raise
            finally:
                self.plan.release(segment)
                self._end_turn(server, opener)
            if self.plan.stopped:
                return
            self.plan.problem = problem
            failures = 1 if segment.at > start else failures + 1
            allowed = self.policy.attempts if server.reached else self.policy.unreachable_attempts
            if failures >= allowed or problem.outcome == "too slow":
                return log.info(f"{problem}; this connection gives up")
            wait = self.policy.wait(failures, problem.retry_after)
            log.info(f"{problem}; this connection retries in {wait:.1f}s")
            with self.plan.lock:
                self.plan.lock.wait_for(lambda: self.plan.stopped, timeout=wait)
            pace.restart()

    def _turn(self, server: Server) -> Optional[bool]:
        """Wait until this connection may ask ``server``: True when it asks first (holding ``opening``),
        False once the mirror has proved itself, None when the download stopped meanwhile."""
        while not server.ready.is_set():
            if self.plan.stopped or server.failure is not None:
                return None
            if server.opening.acquire(timeout=0.05):
                if not server.ready.is_set():
                    return True
                server.opening.release()
        return False

    @staticmethod
    def _end_turn(server: Server, opener: bool) -> None:
        if opener:
            server.opening.release()

    def _fetch(self, segment: Segment, pace: Pace, server: Server) -> None:
        first, last = segment.at, segment.end - 1
        headers = {**server.source.headers, "Accept-Encoding": "identity", "Range": f"bytes={first}-{last}"}
        validator = server.validators.get("etag") or server.validators.get("last_modified")
        if validator:
            headers["If-Range"] = validator
        timeout = (self.policy.connect_timeout, min(self.policy.read_timeout, self.policy.speed_time))
        with web.get(self.session, server.source.url, headers=headers, label=server.label, stream=True,
                     timeout=timeout) as response:
            self._judge(response, first, last, server)
            self.plan.reading(segment, response)
            self._receive(response, segment, pace, server)
        if segment.left > 0 and not self.plan.stopped:
            raise Retry("connection error", f"{server.label}: a connection closed at byte {segment.at}, "
                                            f"inside its segment {first}-{last}")

    def _receive(self, response: requests.Response, segment: Segment, pace: Pace, server: Server) -> None:
        read = response.raw.read1
        while chunk := read(CHUNK):
            if segment.at == 0 and looks_like_html(chunk):
                raise MirrorFailed("html page", f"{server.label}: got an HTML page instead of the file")
            self.limit.take(len(chunk))
            if not self.plan.write(segment, chunk, server):
                return
            pace.moved(len(chunk))

    def _judge(self, response: requests.Response, first: int, last: int, server: Server) -> None:
        """A usable answer is a 206 for exactly the bytes asked, of the same object as every other answer."""
        label, status = server.label, response.status_code
        server.reached = True
        if status in (408, 429) or status >= 500:
            raise Retry(f"http {status}", f"{label}: HTTP {status} {response.reason}",
                        web.retry_after(response.headers.get("Retry-After")))
        if status in (200, 416):
            raise Unsegmentable(f"{label}: HTTP {status} to a request for bytes {first}-{last}")
        if status != 206:
            tag = str(status) if status in (401, 403, 404) else f"http {status}"
            raise MirrorFailed(tag, f"{label}: HTTP {status} {response.reason}")
        reject_unusable(response, label)
        start, end, total = content_range(response.headers.get("Content-Range", ""))
        length = to_int(response.headers.get("Content-Length"))
        if (start != first or end is None or not first <= end <= last or total != self.total
                or (length is not None and length != end - start + 1)):
            raise Unsegmentable(f"{label}: asked for bytes {first}-{last} of {self.total}, got Content-Range "
                                f"{response.headers.get('Content-Range')!r}")
        self._agree(response, server)
        server.ready.set()

    def _agree(self, response: requests.Response, server: Server) -> None:
        """Every answer of a mirror names the same object: its first one's strong ETag, else its Last-Modified."""
        etag, modified = strong_etag(response), response.headers.get("Last-Modified")
        known = server.validators
        with self.plan.lock:
            if "etag" not in known and "last_modified" not in known:
                if not (etag or modified or self.pinned):
                    raise Unsegmentable(f"{server.label}: no validator proves the segments are of one file")
                known.update(etag=etag, last_modified=modified)
                return
            was = known.get("etag"), known.get("last_modified")
            if (etag, None if etag else modified) != (was[0], None if was[0] else was[1]):
                raise Unsegmentable(f"{server.label}: the file changed during the download "
                                    f"(ETag {was[0]!r} then {etag!r}, Last-Modified {was[1]!r} then {modified!r})")

