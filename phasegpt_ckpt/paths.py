"""Paths a person typed (an option, an env variable, a manifest field), made usable or refused in one line.

>>> user_path("~/cache", "--cache-dir").is_absolute()
True
"""
from __future__ import annotations

from pathlib import Path

from phasegpt_ckpt.errors import BadInput


def user_path(text: str | Path, what: str) -> Path:
    """``text`` with ``~`` expanded; ``BadInput`` naming ``what`` when it cannot name a file.

    pathlib raises a bare ``RuntimeError`` for ``~nosuchuser`` (or ``~`` without a home directory),
    and every system call a ``ValueError`` for a NUL byte: both are the person's input, not a crash.
    """
    if "\0" in str(text):
        raise BadInput(f"{what}: {str(text)!r} contains a NUL byte; give a path without it")
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise BadInput(f"{what}: cannot expand the home directory in {str(text)!r}; "
                       "give the path in full (or set HOME)") from None
