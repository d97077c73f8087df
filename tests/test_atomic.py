"""Atomic writes: new files get the mode open() would give them, and the rename is made durable."""
from __future__ import annotations

import os
import stat

import pytest

from phasegpt_ckpt import atomic
from phasegpt_ckpt.atomic import write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the previous one back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_0666_less_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = write_text("hello\n", tmp_path / "new.json")
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "hello\n"


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "manifest.yaml"
    path.write_text("old\n")
    path.chmod(0o640)
    write_text("new\n", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.yaml"]  # no temporary file left


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    path, synced = tmp_path / "best_model.pt", []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # what the directory holds at the moment it is synced
            synced.append(sorted(p.name for p in tmp_path.iterdir()))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    write_text("weights\n", path)
    assert synced == [["best_model.pt"]]  # once, after the rename: the final name, no temporary one
