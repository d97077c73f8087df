"""Where output goes: results to stdout, progress and logs to stderr.

Every module logs through :func:`log` so ``--quiet`` silences all of it in one place.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)
quiet = False


def log(message: str) -> None:
    """A progress or status line on stderr (suppressed by ``--quiet``)."""
    if not quiet:
        stderr.print(message, markup=False)


def warn(message: str) -> None:
    """A warning on stderr; shown even with ``--quiet``."""
    stderr.print(f"warning: {message}", markup=False)


def show_progress() -> bool:
    """Progress bars only on an interactive stderr and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()
