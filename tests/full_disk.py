"""A disk that fills up under a test: a real 3 MiB tmpfs where the test may mount one, else ENOSPC on cue.

Used by the reliability tests (a download) and the training tests (a checkpoint write)::

    disk = FullDisk(tmp_path)
    disk.fill(leave=200_000)    # about 200 kB free under disk.root
    ...                         # writes there fail with ENOSPC once that is used up
    disk.free(); disk.close()
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from phasegpt_ckpt.source import transfer as transfer_module


class FullDisk:
    """Where to write, and a way to fill the disk under it and free it again.

    A 3 MiB tmpfs when this process may mount one (root in a container); otherwise the writes of
    the transfer's part file and of ``torch.save`` fail with ENOSPC once ``leave`` more bytes are
    written, as a full disk fails them (what fits is written first).
    """

    def __init__(self, tmp_path: Path):
        self.root, self.patches = tmp_path / "small", pytest.MonkeyPatch()  # its own: free() undoes only these
        self.root.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(self.root)]
        self.mounted = subprocess.run(mount, capture_output=True).returncode == 0

    def fill(self, leave: int) -> None:
        """Leave about ``leave`` bytes free."""
        if self.mounted:
            ballast = shutil.disk_usage(self.root).free - leave
            (self.root / "ballast").write_bytes(b"\0" * ballast)
        else:
            self.patches.setattr(transfer_module._Part, "open", _opening_on_a_full_disk(leave))
            self.patches.setattr(torch, "save", _saving_on_a_full_disk(leave))

    def free(self) -> None:
        if self.mounted:
            (self.root / "ballast").unlink()
        else:
            self.patches.undo()

    def close(self) -> None:
        self.patches.undo()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=True)


def _opening_on_a_full_disk(room: int):
    real_open = transfer_module._Part.open

    def open_part(part, resume):
        real_open(part, resume)
        part._file = _NoSpaceLeft(part._file, room)

    return open_part


def _saving_on_a_full_disk(room: int):
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        with open(path, "wb") as file:
            real_save(obj, _NoSpaceLeft(file, room), *args, **kwargs)

    return save


class _NoSpaceLeft:
    """A file whose device fills up after ``room`` bytes: a write gets what fits, then ENOSPC."""

    def __init__(self, file, room: int):
        self._file, self._room = file, room

    def write(self, data: bytes) -> int:
        fits = data[: max(0, self._room - self._file.tell())]
        self._file.write(fits)
        if len(fits) < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)

    def __getattr__(self, name):
        return getattr(self._file, name)
