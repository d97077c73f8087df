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

import logging
import os
import re
from typing import TYPE_CHECKING, Literal, Optional
from urllib.parse import urljoin

import requests
from pydantic import field_validator

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.proof.digest import SHA256_HEX
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import API_TIMEOUT, Endpoint, MirrorBase, Source

if TYPE_CHECKING:
    from phasegpt_ckpt.proof.claims import Claim

log = logging.getLogger(__name__)
HUB = "https://huggingface.co"
# The Hub's repository ids: NAME or NAMESPACE/NAME, letters, digits, '-', '_', '.', no '--' or '..'.
REPO_ID = re.compile(r"(?!.*(--|\.\.))(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


class HfMirror(MirrorBase):
    """A file in a Hub repository; ``revision`` may be a branch, tag or 40-hex commit (pinned)."""

    type: Literal["hf"] = "hf"
    repo: str
    filename: str
    revision: str = "main"
    repo_type: Literal["model", "dataset", "space"] = "model"
    endpoint: Endpoint = None

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, repo: str) -> str:
        if not REPO_ID.fullmatch(repo) or repo.endswith((".git", "-", ".")):
            raise ValueError(f"not a Hub repository id (ORG/NAME, e.g. templetwo/phasegpt-checkpoints): {repo!r}")
        return repo

    def describe(self) -> str:
        return f"hf {self.repo}@{self.revision}"

    def base_url(self) -> str:
        """``endpoint``, else ``HF_ENDPOINT`` (read now, not at import), else the public Hub."""
        base = (self.endpoint or os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")
        web.check_url_allowed(base)  # HF_ENDPOINT comes from the environment, unvalidated
        return base


def resolve(mirror: HfMirror, session: requests.Session) -> Source:
    """Ask the Hub where ``mirror``'s file is and what it publishes about it.

    The token (``HF_TOKEN`` or the saved login) goes to the Hub only: ``Source.headers``
    carries it only when the location is on the endpoint's origin, never to the CDN.
    """
    # Imported here: huggingface_hub costs ~0.3 s to import, paid only when an hf mirror is tried.
    import httpx2
    from huggingface_hub import get_hf_file_metadata, get_token, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    endpoint = mirror.base_url()
    token = web.trusted_token(get_token(), endpoint, HUB, os.environ.get("HF_ENDPOINT"), name="HF_TOKEN")
    try:
        url = hf_hub_url(mirror.repo, mirror.filename, repo_type=mirror.repo_type, revision=mirror.revision,
                         endpoint=endpoint)
        meta = get_hf_file_metadata(url, token=token or False, timeout=API_TIMEOUT[1], endpoint=endpoint)
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError, HFValidationError) as err:
        raise _mirror_failed(mirror, err, token) from None
    if not meta.commit_hash:
        raise MirrorFailed("bad answer", f"{endpoint} does not look like a Hugging Face Hub (no X-Repo-Commit)")
    try:  # the Hub names the location: the one URL rule, and the token on the endpoint's origin only
        location = urljoin(url, meta.location)
        web.check_url_allowed(location)
    except ValueError:  # urljoin: an unclosed '['
        raise MirrorFailed("bad answer", f"{endpoint} points {mirror.filename} to an unreadable address") from None
    except BadInput as err:
        raise MirrorFailed("bad answer", f"{endpoint} points {mirror.filename} to a refused address: {err}") from None
    etag = (meta.etag or "").lower()
    return Source(
        label=mirror.describe(),
        url=location,
        headers=web.credentials_for(location, token, endpoint),
        size=meta.size,
        sha256=etag if SHA256_HEX.fullmatch(etag) else None,  # LFS files only; small files carry a git sha1
        revision=meta.commit_hash,
        stable_url=hf_hub_url(mirror.repo, mirror.filename, repo_type=mirror.repo_type, revision=meta.commit_hash,
                              endpoint=endpoint),  # the CDN link is signed anew at every resolution
    )


def _mirror_failed(mirror: HfMirror, err: Exception, token: Optional[str]) -> MirrorFailed:
    """One line per kind of Hub failure, most specific first (GatedRepoError is a RepositoryNotFoundError)."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{mirror.repo}@{mirror.revision}"
    if isinstance(err, HFValidationError):
        return MirrorFailed("bad input", f"huggingface_hub refuses {where} {mirror.filename!r}: {err}")
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
        said = web.scrub(err.server_message or "", token).strip().splitlines()
        return MirrorFailed(str(status), f"the Hub answered HTTP {status} for {where}{': ' + said[0] if said else ''}")
    if isinstance(err, httpx2.TimeoutException):
        return MirrorFailed("timeout", f"no answer from {mirror.base_url()}")
    return MirrorFailed("network", f"cannot reach {mirror.base_url()} ({type(err).__name__})")


# -- the repository's model card --------------------------------------------------------------------

CARD_FILENAME = "README.md"


def model_card_claims(mirror: HfMirror, *, sha256: Optional[str] = None, offline: bool = False) -> list["Claim"]:
    """The claims in the model card (README.md) of ``mirror``'s repository at its revision.

    Downloaded through huggingface_hub (its cache, the mirror's endpoint, the token on trusted origins
    only); ``offline``: from that cache alone, nothing asked of the network. A card larger than
    :data:`~phasegpt_ckpt.proof.claims.MAX_CARD_BYTES` is refused before it is downloaded (and again
    if the bytes received are larger), a missing card gives no claims, and any failure is a logged
    line and no claims: verify carries on without them.
    """
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    from phasegpt_ckpt.proof.claims import MAX_CARD_BYTES, card_claims

    offline = offline or constants.HF_HUB_OFFLINE  # huggingface_hub's own switch means the same
    card = mirror.model_copy(update={"filename": CARD_FILENAME})
    where = f"the model card of {mirror.repo}@{mirror.revision}"
    try:
        endpoint = card.base_url()
        token = web.trusted_token(get_token(), endpoint, HUB, os.environ.get("HF_ENDPOINT"), name="HF_TOKEN")
        if not offline:  # the size first: a card too large is never downloaded
            url = hf_hub_url(card.repo, CARD_FILENAME, repo_type=card.repo_type, revision=card.revision,
                             endpoint=endpoint)
            meta = get_hf_file_metadata(url, token=token or False, timeout=API_TIMEOUT[1], endpoint=endpoint)
            if meta.size is not None and meta.size > MAX_CARD_BYTES:
                log.warning(f"{where} has {meta.size} bytes, over {MAX_CARD_BYTES // 1024} KiB: not read for claims")
                return []
        path = hf_hub_download(card.repo, CARD_FILENAME, repo_type=card.repo_type, revision=card.revision,
                               endpoint=endpoint, token=token or False, local_files_only=offline,
                               etag_timeout=API_TIMEOUT[1])
        with open(path, "rb") as file:
            data = file.read(MAX_CARD_BYTES + 1)
    except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not in huggingface_hub's cache
        if offline:
            log.info(f"{where} is not in the Hub cache and this Store is offline: no claims from it")
        else:
            log.warning(f"cannot reach {card.base_url()} for {where}, nor is it cached: no claims from it")
        return []
    except EntryNotFoundError:
        log.info(f"{mirror.repo}@{mirror.revision} has no model card: no claims from it")
        return []
    except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, httpx2.HTTPError) as err:
        log.warning(f"cannot read {where}: {_mirror_failed(card, err, None)}; no claims from it")
        return []
    except (OSError, ValueError, BadInput) as err:  # the cache unwritable, an endpoint refused, ...
        log.warning(f"cannot read {where} ({type(err).__name__}): no claims from it")
        return []
    if len(data) > MAX_CARD_BYTES:
        log.warning(f"{where} is over {MAX_CARD_BYTES // 1024} KiB: not read for claims")
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        log.warning(f"{where} is not UTF-8 text: no claims from it")
        return []
    return card_claims(text, sha256=sha256, where=where)
