"""Hugging Face Hub: huggingface_hub finds the file, our engine moves the bytes.

``get_hf_file_metadata`` sends the Hub's own HEAD (token, redirect rules, error codes)
and gives the commit, size, the LFS sha256 (``X-Linked-Etag``) and the CDN location.
We then GET that location ourselves: huggingface_hub 2.x keeps no partial file across
runs and checks no hash. Xet data in the answer is ignored: the location is the Hub's
plain-HTTP bridge URL, which serves ordinary bytes with Range.

    >>> HfMirror(repo="templetwo/phasegpt-checkpoints", filename="best_model.pt").describe()
    'hf templetwo/phasegpt-checkpoints@main'
"""
from __future__ import annotations

import os
import re
from typing import Literal, Optional
from urllib.parse import urljoin

import requests

from ..errors import MirrorFailed
from .base import API_TIMEOUT, MirrorBase, Source, credentials_for

SHA256 = re.compile(r"[0-9a-f]{64}")


class HfMirror(MirrorBase):
    """A file in a Hub repository; ``revision`` may be a branch, tag or 40-hex commit (pinned)."""

    type: Literal["hf"] = "hf"
    repo: str
    filename: str
    revision: str = "main"
    repo_type: Literal["model", "dataset", "space"] = "model"
    endpoint: Optional[str] = None

    def describe(self) -> str:
        return f"hf {self.repo}@{self.revision}"

    def base_url(self) -> str:
        """``endpoint``, else ``HF_ENDPOINT`` (read now, not at import), else the public Hub."""
        return (self.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def resolve(mirror: HfMirror, session: requests.Session) -> Source:
    """Ask the Hub where ``mirror``'s file is and what it publishes about it.

    The token (``HF_TOKEN`` or the saved login) goes to the Hub only: ``Source.headers``
    carries it only when the location is on the endpoint's origin, never to the CDN.
    """
    # Imported here: huggingface_hub costs ~0.3 s to import, paid only when an hf mirror is tried.
    import httpx2
    from huggingface_hub import get_hf_file_metadata, get_token, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    endpoint = mirror.base_url()
    token = get_token()
    url = hf_hub_url(mirror.repo, mirror.filename, repo_type=mirror.repo_type, revision=mirror.revision,
                     endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token or False, timeout=API_TIMEOUT[1], endpoint=endpoint)
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError) as err:
        raise _mirror_failed(mirror, err, token) from None
    if not meta.commit_hash:
        raise MirrorFailed("bad answer", f"{endpoint} does not look like a Hugging Face Hub (no X-Repo-Commit)")
    location = urljoin(url, meta.location)
    etag = (meta.etag or "").lower()
    return Source(
        label=mirror.describe(),
        url=location,
        headers=credentials_for(location, token, endpoint),
        size=meta.size,
        sha256=etag if SHA256.fullmatch(etag) else None,  # LFS files only; small files carry a git sha1
        revision=meta.commit_hash,
    )


def _mirror_failed(mirror: HfMirror, err: Exception, token: Optional[str]) -> MirrorFailed:
    """One line per kind of Hub failure, most specific first (GatedRepoError is a RepositoryNotFoundError)."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{mirror.repo}@{mirror.revision}"
    if isinstance(err, GatedRepoError) and err.response.status_code == 403:
        return MirrorFailed("gated", f"{mirror.repo} is gated and your token is not granted access: ask on the Hub")
    if isinstance(err, GatedRepoError):
        return MirrorFailed("gated", f"{mirror.repo} is gated: accept its terms on the Hub, then log in (HF_TOKEN)")
    if isinstance(err, RepositoryNotFoundError):
        return MirrorFailed("repo not found", f"repository {mirror.repo} not found, or private (set HF_TOKEN)")
    if isinstance(err, RevisionNotFoundError):
        return MirrorFailed("revision not found", f"revision {mirror.revision!r} not found in {mirror.repo}")
    if isinstance(err, RemoteEntryNotFoundError):
        return MirrorFailed("404", f"{mirror.filename} not found in {where}")
    if isinstance(err, OfflineModeIsEnabled):
        return MirrorFailed("offline", "HF_HUB_OFFLINE is set: the Hub is not asked")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code
        said = _scrub(err.server_message or "", token).strip().splitlines()
        return MirrorFailed(str(status), f"the Hub answered HTTP {status} for {where}{': ' + said[0] if said else ''}")
    if isinstance(err, httpx2.TimeoutException):
        return MirrorFailed("timeout", f"no answer from {mirror.base_url()}")
    return MirrorFailed("network", f"cannot reach {mirror.base_url()} ({type(err).__name__})")


def _scrub(text: str, token: Optional[str]) -> str:
    """Server text may echo request details; the token must never reach a message."""
    return text.replace(token, "***") if token else text
