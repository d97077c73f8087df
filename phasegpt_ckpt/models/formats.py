"""What kind of file a checkpoint is, told from its first bytes, without importing torch.

``verify`` of a file that is no checkpoint at all answers in milliseconds; a file that looks like
one is then read weights-only by :mod:`phasegpt_ckpt.models.checkpoint`.

>>> import tempfile, pathlib
>>> text = pathlib.Path(tempfile.mkdtemp()) / "notes.pt"; _ = text.write_text("hello")
>>> sniff(text).kind, sniff(text).problem.endswith("nor a safetensors file")
('unknown', True)
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archives start so


@dataclass
class Sniffed:
    """``kind``: "zip" (torch.save), "safetensors" or "unknown"; ``problem``: why it cannot be read, if known."""

    kind: str
    problem: Optional[str] = None
    header_length: Optional[int] = None  # safetensors: the JSON header's announced length


def sniff(path: Path) -> Sniffed:
    """The file's format from its head (and, for a zip, whether its end is there), no weight read."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{":  # an 8-byte little-endian header length, then JSON
        length = int.from_bytes(head[:8], "little")
        if 8 + length > size:
            return Sniffed("safetensors", f"{path} is truncated: its safetensors header announces {length} bytes, "
                                          f"the file has {size}; fetch or copy it again", length)
        return Sniffed("safetensors", None, length)
    if zipfile.is_zipfile(path):
        return Sniffed("zip")
    if head.startswith(ZIP_MAGIC):
        return Sniffed("zip", f"{path} is truncated: it starts as a PyTorch checkpoint (a zip archive) but its end "
                              f"is missing ({size} bytes); fetch or copy it again")
    return Sniffed("unknown", f"{path} is not a checkpoint: neither a PyTorch checkpoint (zip format, torch >= 1.6) "
                              "nor a safetensors file")
