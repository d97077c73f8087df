"""Where the benchmarks find tiny Shakespeare: ``$PHASEGPT_TEST_CORPUS``, else ``../shared`` beside the checkout.

The same place the tests read it from, so a benchmark never needs the network or a filled cache.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PHASEGPT_TEST_CORPUS", REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))


def corpus(path: Path | None = None) -> Path:
    """``path``, else :data:`CORPUS`; exits with one line when the file is not there."""
    path = path or CORPUS
    if not path.is_file():
        sys.exit(f"corpus not found at {path}: pass --data or set PHASEGPT_TEST_CORPUS")
    return path
