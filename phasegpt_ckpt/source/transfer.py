"""Move one artifact's bytes into a stable ``.part`` file: hashed on the way, resumable, retried.

>>> done = transfer(source, partial / "best_model.pt.part", expected_size=size, expected_sha256=sha)  # doctest: +SKIP
>>> os.replace(done.path, final)   # the cache places the verified part; transfer never does  # doctest: +SKIP

The part has a JSON sidecar ``<part>.json`` (url, ETag/Last-Modified, expectations, bytes) so a
later run, even after ``kill -9``, asks only for the rest with ``Range: bytes=n-`` and ``If-Range``
(PROVIDERS.md §0.2). sha256 is computed on worker threads while the socket is read, so a verified
download costs about as much as the slower of the two. A returned part always has the expected
size and sha256; on a mismatch it is deleted and :class:`MirrorFailed` raised.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import requests
import urllib3

from phasegpt_ckpt.atomic import datasync, write_text
from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.proof.digest import CHUNK, FileFacts, Hasher, feed
from phasegpt_ckpt.proof.verify import mismatch
from phasegpt_ckpt.reporting import Progress, report
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.segments import (
    Download,
    Pace,
    Ranges,
    RateLimit,
    Retry,
    Unsegmentable,
    connection_count,
    content_range,
    judged,
    looks_like_html,
    open_part,
    preallocate,
    read_record,
    record_path,
    recorded,
    reject_unusable,
    strong_etag,
    to_int,
)
from phasegpt_ckpt.source.web import RetryPolicy  # where the download's callers import it from

log = logging.getLogger(__name__)

WRITE_BEHIND = 32 * CHUNK  # bytes written between background flushes of the part to disk

if TYPE_CHECKING:
    from phasegpt_ckpt.source.mirrors.base import Source


def transfer(
    source: Source,
    part: Path,
    *,
    expected_size: Optional[int],
    expected_sha256: Optional[str],
    session: Optional[requests.Session] = None,
    policy: Optional[RetryPolicy] = None,
    label: Optional[str] = None,
    want_md5: bool = False,
    progress: Optional[Progress] = None,
    also: Sequence[Source] = (),
    account: Optional[list] = None,
) -> FileFacts:
    """Bring ``source``'s bytes into ``part`` and check them against the expected size and sha256.

    ``session`` defaults to ``source.session``, else a fresh one. A ``source.local_path`` is
    copied instead of downloaded. ``progress`` hears of every chunk written. Raises :class:`MirrorFailed` (outcome tag + one line) when this
    source cannot deliver; the part is kept for a resume unless its bytes are known bad.
    KeyboardInterrupt leaves part and sidecar consistent and propagates.

    ``also``: other mirrors' sources of the same pinned bytes; a segmented download takes segments from all
    of them at once, drops one that fails, and traces a sha256 mismatch to the one that sent bad bytes.
    ``account``, when given, receives ``(source, bytes it served, seconds, its failure or None)`` for each
    source of a segmented download.
    """
    label = label or source.label
    policy = policy or RetryPolicy()
    target = str(source.local_path) if source.local_path is not None else source.stable_url or source.url
    identity = {"url": target, "expected_size": expected_size, "expected_sha256": expected_sha256}
    partfile = _Part(Path(part), identity, want_md5)
    progress = _progress(label, progress)
    try:
        if source.local_path is not None:
            _copy(Path(source.local_path), partfile, label, progress, source.compression, expected_size)
            result = _check(partfile, expected_size, expected_sha256, label)
        else:
            web.check_url_allowed(source.url)
            session = session or source.session or requests.Session()
            resume = _resumable(partfile, expected_sha256)
            connections = connection_count(expected_size, policy.connections)
            result = None
            if connections > 1:
                result = _in_segments([source, *also], partfile, resume, expected_size, expected_sha256, session,
                                      policy, label, progress, connections)
                resume = False  # what the segments left is not a prefix for one stream
            if result is None:
                result = _in_one_stream(source, partfile, resume, expected_size, expected_sha256, session, policy,
                                        label, progress)
        if account is not None:
            account.extend((server.source, server.served.covered(), partfile.seconds, server.failure)
                           for server in partfile.servers)
        if isinstance(result, MirrorFailed):
            partfile.discard()
            raise result
        partfile.done()
        return result
    except BaseException:
        partfile.save()  # no-op once discarded: bad bytes are never kept for a resume
        raise
    finally:
        partfile.close()


def _in_one_stream(source: Source, part: "_Part", resume: bool, expected_size: Optional[int],
                   expected_sha256: Optional[str], session: requests.Session, policy: RetryPolicy, label: str,
                   progress: Callable[[int, Optional[int]], None]) -> FileFacts | MirrorFailed:
    """One GET at a time, appending to the part (resumed from its end); the part's facts, or the failure."""
    part.open(resume=resume)
    _download(source, part, expected_size, session, policy, label, progress)
    result = _check(part, expected_size, expected_sha256, label)
    if isinstance(result, MirrorFailed) and part.spliced:
        # a server may change a file without changing its validator: one clean run decides
        log.info(f"{result}; the bytes came from several answers, downloading once more from 0")
        part.restart()
        _download(source, part, expected_size, session, policy, label, progress)
        result = _check(part, expected_size, expected_sha256, label)
    return result


def _in_segments(sources: list[Source], part: "_Part", resume: bool, expected_size: int,
                 expected_sha256: Optional[str], session: requests.Session, policy: RetryPolicy, label: str,
                 progress: Callable[[int, Optional[int]], None], connections: int) -> FileFacts | MirrorFailed | None:
    """``connections`` ranged GETs at once to each of ``sources`` (:mod:`~phasegpt_ckpt.source.segments`); None
    when the server does not serve the file consistently in ranges, or resumed bytes fail the check: then one
    stream from byte 0. With several sources a hash mismatch is traced to the mirror that sent bad bytes."""
    done = part.open_segmented(resume, expected_size)
    download = Download(sources, part.fileno(), part.path, expected_size, part.meta, done, session=session,
                        policy=policy, connections=connections, pinned=expected_sha256 is not None)
    part.servers = download.servers
    try:
        download.run(part.hasher(), progress)
    except Unsegmentable as why:
        log.info(f"{why}; downloading it in one stream from byte 0")
        part.discard()
        return None
    except BaseException:
        if download.plan.written.covered():
            part.close()  # the control record describes what is on disk, for the next run
        else:
            part.discard()
        raise
    part.size, part.seconds = expected_size, download.seconds
    result = _check(part, expected_size, expected_sha256, label)
    if isinstance(result, MirrorFailed) and len(sources) > 1:
        culprit = download.blame()
        if culprit is not None:
            culprit.failure = MirrorFailed("corrupt bytes", f"{culprit.label}: served bytes that differ from the "
                                                            "other mirrors' (found after the sha256 mismatch)")
            log.warning(str(culprit.failure))
            part.rehash()
            result = _check(part, expected_size, expected_sha256, label)
    if isinstance(result, MirrorFailed) and part.resumed_from:
        log.info(f"{result}; part of the bytes came from an earlier run, downloading once more from 0")
        part.discard()
        return None
    return result


def _resumable(part: "_Part", expected_sha256: Optional[str]) -> bool:
    """A prefix may be kept if a validator proves the server's file unchanged, or sha256 will prove it."""
    meta = part.stored_meta()
    return meta is not None and bool(meta.get("etag") or meta.get("last_modified") or expected_sha256)


def _check(part: "_Part", expected_size: Optional[int], expected_sha256: Optional[str],
           label: str) -> FileFacts | MirrorFailed:
    """The complete part measured against the expectations: its facts, or the failure to raise."""
    size, digests = part.finish()
    facts = FileFacts(part.path, size, digests["sha256"], digests.get("md5"), label)
    problem = mismatch(facts, size=expected_size, sha256=expected_sha256)
    if problem is not None:
        field, words = problem
        return MirrorFailed("size mismatch" if field == "size" else "hash mismatch", f"{label}: {words}")
    if part.resumed_from:
        log.info(f"{label}: resumed from byte {part.resumed_from} of an earlier run")
    return facts


# -- the download loop ---------------------------------------------------------------------------


def _download(source: Source, part: "_Part", expected_size: Optional[int], session: requests.Session,
              policy: RetryPolicy, label: str, progress: Callable[[int, Optional[int]], None]) -> None:
    """Grow ``part`` until the server says it is complete; retry what is worth retrying."""
    failures, longest, reached = 0, part.size, False
    pace, limit = Pace(policy, label, time.monotonic() + policy.budget), RateLimit(policy.limit_rate)
    while True:
        try:
            if not (expected_size and part.size == expected_size):
                _attempt(source, part, expected_size, session, policy, label, progress, pace, limit)
            return
        except Retry as retry:
            outcome, message, retry_after, reached = retry.outcome, str(retry), retry.retry_after, True
        except requests.exceptions.SSLError as err:
            raise MirrorFailed("tls error", f"{label}: TLS failed ({err})") from None
        except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError) as err:
            outcome, message, retry_after = "timeout", f"{label}: timed out at byte {part.size}", None
            reached = reached or not web.unreachable(err)
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError) as err:
            outcome, retry_after = "connection error", None
            message = f"{label}: connection failed at byte {part.size} ({type(err).__name__})"
            reached = reached or not web.unreachable(err)
        slow = judged(pace, Retry(outcome, message))  # a trickle between failures is too slow too
        if slow.outcome == "too slow":
            raise MirrorFailed(slow.outcome, str(slow))
        if part.size > longest:
            longest, failures = part.size, 0
        failures += 1
        if failures >= (policy.attempts if reached else policy.unreachable_attempts):
            raise MirrorFailed(outcome, f"{message} (gave up after {failures} attempts)")
        wait = policy.wait(failures, retry_after)
        if time.monotonic() + wait > pace.deadline:
            raise MirrorFailed("timeout", f"{message} (and the {policy.budget:.0f} s this mirror is given run out)")
        log.info(f"{message}; retrying in {wait:.1f}s")
        time.sleep(wait)
        pace.restart()


def _attempt(source: Source, part: "_Part", expected_size: Optional[int], session: requests.Session,
             policy: RetryPolicy, label: str, progress: Callable[[int, Optional[int]], None], pace: Pace,
             limit: RateLimit) -> None:
    """One GET: resume from the part's length, check the answer, append its body at ``limit``'s rate,
    abandoned when slower than ``pace`` allows."""
    too_long = expected_size is not None and part.size > expected_size  # never a prefix of the file
    if too_long:
        part.restart()
    offset = part.size
    headers = {**source.headers, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = part.meta.get("etag") or part.meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    with web.get(session, source.url, headers=headers, label=label, stream=True,
                 timeout=(policy.connect_timeout, min(policy.read_timeout, policy.speed_time))) as response:
        status = response.status_code
        if status == 416 and offset:
            return _range_not_satisfiable(response, part, expected_size, label)
        if status in (408, 429) or status >= 500:
            raise Retry(f"http {status}", f"{label}: HTTP {status} {response.reason}",
                        web.retry_after(response.headers.get("Retry-After")))
        if status not in (200, 206):
            tag = str(status) if status in (401, 403, 404) else f"http {status}"
            raise MirrorFailed(tag, f"{label}: HTTP {status} {response.reason} from {response.url}")
        reject_unusable(response, label)
        if status == 206:
            total = _check_content_range(response, part, offset, expected_size, label)
        else:
            if offset:
                log.info(f"{label}: the server sent the whole file again; restarting from 0")
                part.restart()
            total = to_int(response.headers.get("Content-Length"))
            if None not in (total, expected_size) and total != expected_size:
                part.discard()
                raise MirrorFailed("too long" if total > expected_size else "size mismatch",
                                   f"{label}: the server declares {total} bytes, {expected_size} expected")
            part.remember(strong_etag(response), response.headers.get("Last-Modified"))
        size = expected_size if expected_size is not None else total
        progress(part.size, size)
        _receive(response, part, size, label, progress, pace, limit)
    if size is not None and part.size < size:
        raise Retry("connection error", f"{label}: the connection closed at {part.size} of {size} bytes")


def _receive(response: requests.Response, part: "_Part", size: Optional[int], label: str,
             progress: Callable[[int, Optional[int]], None], pace: Pace, limit: RateLimit) -> None:
    """Append the body to the part; refuse an HTML page and any byte beyond ``size``.

    ``read1`` hands over what has arrived (up to CHUNK) instead of waiting for a full chunk, so a
    stalled or interrupted transfer keeps every byte received for the resume.
    """
    read = response.raw.read1
    while chunk := read(CHUNK):
        if part.size == 0 and looks_like_html(chunk):
            part.discard()
            raise MirrorFailed("html page", f"{label}: got an HTML page instead of the file (a login, quota or error page?)")
        if size is not None and part.size + len(chunk) > size:
            part.discard()
            raise MirrorFailed("too long", f"{label}: the server sent more than the {size} bytes expected")
        limit.take(len(chunk))
        part.append(chunk)
        progress(part.size, size)
        pace.moved(len(chunk))


def _range_not_satisfiable(response: requests.Response, part: "_Part", expected_size: Optional[int],
                           label: str) -> None:
    """416 to ``bytes=n-``: ``bytes */n`` means the part is already complete; anything else restarts it."""
    _, _, total = content_range(response.headers.get("Content-Range", ""))
    if total == part.size and expected_size in (None, total):
        return
    message = (f"{label}: HTTP 416 with Content-Range {response.headers.get('Content-Range')!r} "
               f"for a {part.size}-byte part; restarting from 0")
    part.restart()
    raise Retry("range error", message)


def _check_content_range(response: requests.Response, part: "_Part", offset: int,
                         expected_size: Optional[int], label: str) -> Optional[int]:
    """A 206 must continue exactly where the part ends, for the file the part holds; returns its total."""
    start, _, total = content_range(response.headers.get("Content-Range", ""))
    etag, known = strong_etag(response), part.meta.get("etag")
    if start != offset or (expected_size is not None and total != expected_size) or (etag and known and etag != known):
        part.restart()
        raise Retry("range error", f"{label}: asked for bytes {offset}-, got Content-Range "
                                    f"{response.headers.get('Content-Range')!r}; restarting from 0")
    if offset:
        part.spliced = True
    return total


def _copy(path: Path, part: "_Part", label: str, progress: Callable[[int, Optional[int]], None],
          compression: Optional[str] = None, limit: Optional[int] = None) -> None:
    """A local mirror: copy (decompressing a gzip file) through the same hashing part writer, never
    past ``limit`` bytes (a file that decompresses to more is not the artifact)."""
    if not path.is_file():
        raise MirrorFailed("missing", f"{label}: no file at {path}")
    part.open(resume=False)
    total = None if compression else path.stat().st_size
    with (gzip.open(path, "rb") if compression == "gzip" else open(path, "rb")) as file:
        while chunk := _read_or_fail(file, label):
            if limit is not None and part.size + len(chunk) > limit:
                part.discard()
                raise MirrorFailed("too long", f"{label}: holds more than the {limit} bytes expected")
            part.append(chunk)
            progress(part.size, total)


def _read_or_fail(file, label: str) -> bytes:
    """The next chunk of a local file; a damaged gzip stream is this mirror's failure, not a crash."""
    try:
        return file.read(CHUNK)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise MirrorFailed("unreadable", f"{label}: {err}") from None


def _progress(label: str, progress: Optional[Progress]) -> Callable[..., None]:
    """The caller's progress callback, bound to this transfer's label (bytes done, bytes in all, and a
    ``detail`` such as the connections in use)."""
    return lambda done, total, detail="": report(progress, label, done, total, detail=detail)


# -- the part file -------------------------------------------------------------------------------


class _WriteBehind:
    """``fdatasync`` on a worker thread after every ``every`` bytes written to ``file``.

    The part is fsynced before it is renamed into place (a power cut must not leave a named file
    with missing bytes); flushing as the bytes arrive lets the disk write back while the network
    delivers, so that final fsync finds little left instead of the whole file (0.46 s per GiB here).
    """

    def __init__(self, file, every: int = WRITE_BEHIND):
        self._fd, self._every, self._pending = file.fileno(), every, 0
        self._wake, self._stopped = threading.Event(), False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def wrote(self, size: int) -> None:
        self._pending += size
        if self._pending >= self._every:
            self._pending = 0
            self._wake.set()

    def close(self) -> None:
        """Stop the worker; call before the file is closed."""
        self._stopped = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            with contextlib.suppress(OSError):  # a full disk or a closed file: the final fsync reports it
                datasync(self._fd)



class _Part:
    """The ``.part`` file, its JSON sidecar and the running hashes of the bytes in it.

    The sidecar binds the part to what it was downloaded for (``identity``: url, expected size
    and sha256) and to the server's validator; a part without a matching sidecar is never trusted.
    """

    def __init__(self, path: Path, identity: dict, want_md5: bool):
        self.path, self.identity, self.want_md5 = path, identity, want_md5
        self.sidecar = record_path(path)
        self.meta: dict = dict(identity)
        self.size = self.resumed_from = 0
        self.spliced = False  # bytes come from more than one answer
        self.servers: list = []  # a segmented download's mirrors: what each served, and why one was dropped
        self.seconds = 0.0  # how long a segmented download took
        self._file = None
        self._hasher: Optional[Hasher] = None
        self._write_behind: Optional[_WriteBehind] = None

    def stored_meta(self) -> Optional[dict]:
        """The sidecar, if it describes a part of this very download (neither read through a symlink).

        A pinned artifact's part is the same download from any mirror (its sha256 decides): the bytes of
        another URL are kept, but that server's validators do not apply to this one.
        """
        meta = read_record(self.sidecar)
        pinned = self.identity["expected_sha256"] is not None
        binding = {key: value for key, value in self.identity.items() if not (pinned and key == "url")}
        if meta is None or any(meta.get(key) != value for key, value in binding.items()):
            return None
        if meta.get("url") != self.identity["url"]:
            meta = {key: value for key, value in meta.items() if key not in ("etag", "last_modified")}
            meta["url"] = self.identity["url"]
        return meta if self.path.is_file() and not self.path.is_symlink() else None

    def open(self, resume: bool) -> None:
        """Open the part: keep (and re-hash once) the bytes of an earlier run, or start empty."""
        fd, kept = open_part(self.path, keep=resume)
        self._file = os.fdopen(fd, "r+b")
        self._hasher = Hasher(self.want_md5)
        if kept:
            self.meta = self.stored_meta() or self.meta
            # after kill -9 the file, not the sidecar, knows its length; a segmented part, its record's prefix
            length = self._file.seek(0, os.SEEK_END)
            self.size = self.resumed_from = recorded(self.meta, length, length).prefix()
            self._file.truncate(self.size)
            self._file.seek(self.size)
            feed(self.path, self._hasher, self.size)  # hashed once here, never downloaded again
            self.spliced = self.size > 0
        else:
            self._write_sidecar()
        self._write_behind = _WriteBehind(self._file)

    def open_segmented(self, resume: bool, total: int) -> Ranges:
        """Open the part for writes at any offset, preallocated to ``total``; the ranges kept from an earlier
        run (its control record's, re-fetched if the record cannot be trusted)."""
        stored = self.stored_meta() if resume else None
        fd, kept = open_part(self.path, keep=stored is not None)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._hasher = Hasher(self.want_md5)
        done = recorded(stored, total, os.fstat(fd).st_size) if kept else Ranges()
        if done.covered():
            self.meta, self.resumed_from = stored, done.covered()
        preallocate(fd, total)
        return done

    def rehash(self) -> None:
        """Hash the whole part again (its bytes were changed in place)."""
        self._hasher.close()
        self._hasher = Hasher(self.want_md5)
        feed(self.path, self._hasher, self.size)

    def fileno(self) -> int:
        return self._file.fileno()

    def hasher(self) -> Hasher:
        return self._hasher

    def remember(self, etag: Optional[str], last_modified: Optional[str]) -> None:
        """Record the validators of a fresh full answer before any of its bytes land."""
        self.meta.update(etag=etag, last_modified=last_modified)
        self._write_sidecar()

    def append(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise BadInput(  # like any place the tool cannot write: exit 2, and no other mirror will help
                f"disk full while writing {self.path} ({self.size} bytes kept): free space and run again to resume"
            ) from None
        self._hasher.update(chunk)
        self._write_behind.wrote(len(chunk))
        self.size += len(chunk)

    def restart(self) -> None:
        """Throw the bytes away and start over from byte 0 in the same file."""
        self._hasher.close()
        self._hasher = Hasher(self.want_md5)
        self._file.seek(0)
        self._file.truncate()
        self.size = self.resumed_from = 0
        self.spliced = False
        self.meta = dict(self.identity)
        self._write_sidecar()

    def finish(self) -> tuple[int, dict[str, str]]:
        """Flush and fsync; (size, hex digests) of the part."""
        self._sync()
        return self.size, self._hasher.hexdigests()

    def save(self) -> None:
        """Make part and sidecar consistent for a later resume (after an interrupt or a failure)."""
        if self._file is None:
            return
        if self.size == 0:
            return self.discard()  # nothing worth resuming: leave no litter
        with contextlib.suppress(OSError):  # a full disk may refuse even this; the next run re-hashes
            self._sync()
            self._write_sidecar()

    def done(self) -> None:
        """The part is complete and verified: the sidecar has served its purpose."""
        self.close()
        self.sidecar.unlink(missing_ok=True)

    def discard(self) -> None:
        """The bytes are bad: delete part and sidecar."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)

    def close(self) -> None:
        if self._hasher is not None:
            self._hasher.close()
        if self._write_behind is not None:
            self._write_behind.close()
            self._write_behind = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def _write_sidecar(self) -> None:
        """Replace the sidecar atomically and durably; ``save`` syncs the part before it, so the record
        never runs ahead of the bytes on disk.

        A full disk stays an ``OSError``: ``save`` tolerates one rather than hide the failure it records.
        """
        write_text(json.dumps({**self.meta, "bytes": self.size}, indent=1), self.sidecar, as_bad_input=False)
