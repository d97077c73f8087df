"""Fixtures shared by every test module."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Test models are tiny: one thread runs them as fast as two, and subprocesses inherit it, so
# parallel test or benchmark processes on a 2-core machine don't oversubscribe it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# huggingface_hub reads these once, when it is first imported, and test modules import it while
# they are collected, before any fixture runs: the emulators speak plain HTTP, not Xet.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PHASEGPT_TEST_CORPUS", REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """The real tiny Shakespeare corpus from ../shared, checked byte for byte."""
    assert CORPUS.is_file(), f"corpus missing at {CORPUS}: tests need ../shared beside the checkout"
    assert hashlib.sha256(CORPUS.read_bytes()).hexdigest() == CORPUS_SHA256
    return CORPUS


@pytest.fixture(scope="session")
def checkpoint_bytes(tmp_path_factory, corpus_path) -> list[bytes]:
    """Two tiny causal checkpoints in our trainer's layout (different seeds: different bytes), made once."""
    from deposit_files import two_checkpoints

    return two_checkpoints(tmp_path_factory.mktemp("checkpoints"), corpus_path)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Every test gets its own cache and never sees the user's manifest, cache or HF login."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PHASEGPT_CACHE", str(home / "cache"))
    monkeypatch.setenv("PHASEGPT_USER_MANIFEST", str(home / "config" / "manifest.yaml"))  # where publish writes
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("PHASEGPT_TRUSTED_ENDPOINTS", "127.0.0.1")  # the emulators may see test tokens
    for var in ("PHASEGPT_MANIFEST", "PHASEGPT_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "ZENODO_TOKEN", "OSF_TOKEN"):
        monkeypatch.delenv(var, raising=False)


# -- provider emulators (tests/emulators/), one fresh set of servers per test ----------------------
@pytest.fixture
def hub_emulator():
    """A Hugging Face Hub emulator; ``.cdn`` is its CDN on a second origin."""
    from emulators.hf import HfEmulator

    with HfEmulator() as server:
        yield server


@pytest.fixture
def zenodo_emulator():
    from emulators.zenodo import ZenodoEmulator

    with ZenodoEmulator() as server:
        yield server


@pytest.fixture
def osf_emulator():
    """An OSF emulator that pages listings by 10 at most, so every client must follow ``links.next``."""
    from emulators.osf import OsfEmulator

    with OsfEmulator(page_cap=10) as server:
        yield server


@pytest.fixture
def drive_emulator():
    """A Google Drive emulator; ``.content`` stands for drive.usercontent.google.com."""
    from emulators.gdrive import DriveEmulator

    with DriveEmulator() as server:
        yield server


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``run_cli(*args) -> (exit code, stdout, stderr)`` through ``cli.main`` (the real exit-code mapping)."""
    import sys

    from phasegpt_ckpt import cli

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["phasegpt-ckpt", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        out, err = capsys.readouterr()
        return exited.value.code, out, err

    return run
