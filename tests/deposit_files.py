"""What the deposit tests share: two tiny checkpoints, a run folder holding one, the error line of a run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tiny_checkpoints import save_ours, tiny_model


def two_checkpoints(folder: Path, corpus: Path) -> list[bytes]:
    """Two tiny causal checkpoints in our trainer's layout (different seeds: different bytes)."""
    return [save_ours(tiny_model("causal", seed=seed), folder / f"s{seed}.pt", corpus).read_bytes() for seed in (0, 1)]


def place(tmp_path: Path, data: bytes, name: str = "tiny.pt", creators=("Doe, Jane",)) -> Path:
    """A checkpoint in a run folder, with a metadata JSON naming its creators (what Zenodo requires)."""
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    path = run / name
    path.write_bytes(data)
    info = {"sha256": hashlib.sha256(data).hexdigest(), "creators": list(creators), "license": "MIT",
            "code_repository": "https://github.com/example/phasegpt"}
    (run / f"{path.stem}_info.json").write_text(json.dumps(info))
    return path


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of a run's stderr (progress and log lines aside)."""
    return [line for line in err.splitlines() if line.startswith("error:")]
