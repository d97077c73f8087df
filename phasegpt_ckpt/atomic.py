"""Atomic file writes: a temporary file beside the final path, fsynced, renamed, the rename made durable.

Every file the tool writes whole goes through here: :func:`atomic_path` (a writer of the caller's),
:func:`write_text` (a small text file), :func:`link_into_place` (a hard link of a finished file).
What the tool reads back from a place others may write (the cache's receipts, a download's record)
goes through :func:`read_regular`.

A reader (or a crash) sees the previous file or the new one, never half of one. The temporary file
is created as ``open()`` would create the final one (mode 0666 less the umask, or the mode of the
file it replaces), so a checkpoint or manifest written this way is as readable as any other file.

    >>> with atomic_path(Path("runs/x/best_model.pt")) as temp:    # doctest: +SKIP
    ...     torch.save(checkpoint, temp)
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterator, Optional

from phasegpt_ckpt.errors import BadInput


@contextlib.contextmanager
def atomic_path(final: Path, *, as_bad_input: bool = True, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``final`` to write; fsynced and renamed onto ``final`` only on success.

    A full disk is a one-line ``BadInput`` that says the previous file is untouched, as is a
    directory where no file can be created. ``as_bad_input=False`` leaves both the ``OSError``
    the OS raised, for a caller that handles a full disk itself (the download's sidecar).
    ``durable=False`` skips the fsyncs: still all or nothing for a killed process, but a power cut
    may bring back the previous file (for a record rewritten many times a second that says so itself).
    """
    final = Path(final)
    if final.is_dir() and not final.is_symlink():  # os.replace would refuse only after the whole file was written
        raise BadInput(f"{final} is a directory; name the file to write inside it")
    try:
        temp = _create_beside(final)
    except OSError as err:
        if not as_bad_input:
            raise
        raise BadInput(f"cannot write {final}: {err.strerror}") from None
    mode = stat.S_IMODE(temp.stat().st_mode)
    try:
        yield temp
        os.chmod(temp, mode)  # a writer that replaced the file (safetensors writes 0600) gets the intended mode back
        if durable:
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, final)
        if durable:
            fsync_directory(final.parent)  # the rename itself must survive a power cut
    except (OSError, RuntimeError) as err:
        if not as_bad_input or not _disk_full(err, final.parent):
            raise
        raise BadInput(f"disk full while writing {final}: free space and run again; "
                       f"the previous {final.name}, if any, is untouched") from None
    finally:
        temp.unlink(missing_ok=True)


def write_text(text: str, path: Path, *, as_bad_input: bool = True, durable: bool = True) -> Path:
    """Atomically replace a small text file (metadata JSON, metrics.jsonl, a manifest, a sidecar)."""
    path = Path(path)
    with atomic_path(path, as_bad_input=as_bad_input, durable=durable) as temp:
        temp.write_text(text, encoding="utf-8")
    return path


def link_into_place(source: Path, final: Path) -> bool:
    """Hard-link ``source`` at ``final`` in one rename (replacing what is there), the rename made durable.

    False where no link can be made (another file system, or one without hard links): the caller
    copies instead, e.g. through :func:`atomic_path`. Other errors of the rename are ``OSError``.
    """
    final = Path(final)
    temp = _temp_name(final)
    try:
        os.link(source, temp)
    except OSError:
        return False
    try:
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(final.parent)
    return True


def _temp_name(final: Path) -> Path:
    """A hidden name beside ``final`` that no other writer picks: ``.NAME.<random>.tmp``."""
    return final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")


def _create_beside(final: Path) -> Path:
    """An empty, new, hidden file in ``final``'s directory, with the mode ``final`` will have.

    Not ``tempfile.mkstemp``: its files are 0600, and the rename would carry that onto a checkpoint
    meant to be shared. O_EXCL with a random name gives the same guarantee (never an existing file).
    """
    temp = _temp_name(final)
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask
        replaced = _regular_file_status(final)  # a link there is replaced, and lends no mode
        if replaced is not None:
            os.chmod(temp, stat.S_IMODE(replaced.st_mode))
    except OSError:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _regular_file_status(path: Path) -> Optional[os.stat_result]:
    try:
        status = path.lstat()
    except OSError:
        return None
    return status if stat.S_ISREG(status.st_mode) else None


def read_regular(path: Path, limit: int = 1 << 20) -> bytes:
    """The bytes of the regular file ``path``, never through a link, never more than ``limit``.

    A link, a FIFO or device, or a larger file is an ``OSError``: such a file is read as untrusted
    (a planted ``/dev/zero`` would otherwise be read for ever, a FIFO block the open).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"{path} is larger than {limit} bytes")
    return data


datasync = getattr(os, "fdatasync", os.fsync)  # the data of a file made durable (macOS has no fdatasync)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX keeps it in the directory, not the file)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames need no such sync
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # a file system that cannot sync a directory (some FUSE mounts)
            raise
    finally:
        os.close(fd)


def _disk_full(err: Optional[BaseException], directory: Path) -> bool:
    """ENOSPC anywhere in the chain, or no space left at all: torch's C++ writer reports a full
    disk as a bare RuntimeError ("unexpected pos", "iostream error")."""
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC:
            return True
        err = err.__context__
    return shutil.disk_usage(directory).free == 0
