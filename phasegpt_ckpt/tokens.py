"""Which token values this process holds, and masking them out of any text the tool prints or logs.

Kept apart from :mod:`phasegpt_ckpt.source.web` (and its HTTP stack) so the command line's renderer
can mask every line without importing requests.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional

# Shorter values are no token any provider issues; masking them would garble ordinary words.
MIN_TOKEN_LENGTH = 8
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ZENODO_TOKEN", "OSF_TOKEN")


def known_tokens() -> list[str]:
    """Every token value this process could send: the provider variables and the saved Hub login
    (its ``token`` file and ``stored_tokens``), longest first. Read afresh each time, offline."""
    values = {os.environ.get(name, "").strip() for name in TOKEN_VARIABLES}
    for path in _hub_login_files():
        with contextlib.suppress(OSError, UnicodeError):
            text = path.read_text()
            values.add(text.strip())
            values.update(m.group(1).strip() for m in re.finditer(r"(?m)^\s*hf_token\s*=\s*(\S+)", text))
    return sorted((v for v in values if len(v) >= MIN_TOKEN_LENGTH), key=len, reverse=True)


def _hub_login_files() -> list[Path]:
    """Where huggingface_hub keeps the saved login (its own constants when it is loaded, else its defaults)."""
    constants = sys.modules.get("huggingface_hub.constants")
    token_path = getattr(constants, "HF_TOKEN_PATH", None)
    if token_path is None:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        token_path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    token_path = Path(os.path.expanduser(os.path.expandvars(token_path)))
    return [token_path, token_path.parent / "stored_tokens"]


def scrub(text: str, *tokens: Optional[str]) -> str:
    """``text`` with ``tokens`` and every :func:`known_tokens` value masked: server messages may echo
    request headers back, and nothing the tool prints or logs may show a token.

    >>> scrub("bad credentials hf_abc", "hf_abc")
    'bad credentials ***'
    """
    return masker(*tokens)(text)


def masker(*tokens: Optional[str]) -> Callable[[str], str]:
    """:func:`scrub` with the known tokens read once, for masking many strings (a JSON document, a table)."""
    values = sorted({t for t in tokens if t} | set(known_tokens()), key=len, reverse=True)

    def mask(text: str) -> str:
        if not isinstance(text, str):
            return text
        for value in values:
            text = text.replace(value, "***")
        return text

    return mask
