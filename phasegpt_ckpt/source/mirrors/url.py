"""A plain HTTPS address: the bytes are at the URL itself and nothing is published about them.

Size and sha256 come from the manifest; the transfer engine learns the length on the way.

    >>> UrlMirror(url="https://example.org/best_model.pt").describe()
    'url https://example.org/best_model.pt'
"""
from __future__ import annotations

from typing import Literal

import requests

from phasegpt_ckpt.source.mirrors.base import AllowedUrl, MirrorBase, Source


class UrlMirror(MirrorBase):
    """``url``: https anywhere, or http to a loopback address only."""

    type: Literal["url"] = "url"
    url: AllowedUrl

    def describe(self) -> str:
        return f"url {self.url}"


def resolve(mirror: UrlMirror, session: requests.Session) -> Source:
    """Nothing to ask: the URL is where the bytes are."""
    return Source(label=mirror.describe(), url=mirror.url)
