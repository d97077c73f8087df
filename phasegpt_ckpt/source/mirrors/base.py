"""What every provider shares: the manifest entry's base model and the ``Source`` it resolves to.

A provider module (``url``, ``local``, ``hf``, ``zenodo``, ``osf``, ``gdrive``) defines
one pydantic model ``<Name>Mirror(MirrorBase)`` with a literal ``type`` and one function::

    def resolve(mirror: <Name>Mirror, session: requests.Session) -> Source

``resolve`` asks the provider where the bytes are and what it publishes about them; it
raises :class:`~phasegpt_ckpt.errors.MirrorFailed` (outcome tag + one line) when the
provider cannot serve the file. The transfer engine then moves the bytes.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar
from urllib.parse import urlsplit

import requests
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from phasegpt_ckpt.errors import MirrorFailed
from phasegpt_ckpt.source import web

log = logging.getLogger(__name__)

# Metadata calls are small: fail over to the next mirror quickly rather than wait.
API_TIMEOUT = (10, 30)
# Rate limited (Zenodo allows 60 anonymous calls a minute): one retry, after Retry-After up to 30 s.
API_RETRY = web.RetryPolicy(attempts=2, max_retry_after=30.0)

# A URL field of a mirror entry: https, or http to loopback only (see web.check_url_allowed).
AllowedUrl = Annotated[str, AfterValidator(web.allowed_url)]
# A provider's base URL (scheme, host and port), None meaning its public service.
Endpoint = Annotated[Optional[AllowedUrl], AfterValidator(lambda url: url and url.rstrip("/"))]
Answer = TypeVar("Answer", bound=BaseModel)
# How pydantic names our models in its errors (a union member in a location, "or instance of _Entry" in a
# message): left out of what a person reads. The fields we read are all lower case.
MODEL_NAME = re.compile(r"_?[A-Z]\w*|\w+\[.*\]")
MODEL_INSTANCE = re.compile(r" or instance of _?[A-Z]\w*")


class MirrorBase(BaseModel):
    """Fields every mirror entry has. ``published: false`` lists a mirror that is never tried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    published: bool = True

    def describe(self) -> str:
        """Short human label for tables: ``hf templetwo/phasegpt-checkpoints@main``."""
        raise NotImplementedError


@dataclass
class Source:
    """Where the bytes of one artifact are, as resolved from one mirror.

    ``url`` is fetched with ``headers`` (credentials only ever go to ``url``'s own origin;
    the engine drops them on a cross-origin redirect). ``local_path`` replaces ``url`` for
    files already on disk. ``size``/``sha256``/``md5`` are what the provider publishes
    (``None`` where it publishes nothing); fetch compares them with the manifest before
    any byte moves. ``session`` carries provider cookies (Google Drive) when needed.
    ``stable_url`` names the file when ``url`` changes at every resolution (a signed CDN link,
    Drive's confirmed form): a part left by an earlier run is resumed only for the same one.
    ``compression`` ("gzip") says ``local_path`` holds the bytes compressed; they are checked decompressed.
    """

    label: str
    url: Optional[str] = None
    local_path: Optional[Path] = None
    headers: dict[str, str] = field(default_factory=dict)
    size: Optional[int] = None
    sha256: Optional[str] = None
    md5: Optional[str] = None
    revision: Optional[str] = None
    session: Optional[requests.Session] = None
    stable_url: Optional[str] = None
    compression: Optional[str] = None  # "gzip": ``local_path`` holds the bytes compressed

    def published(self) -> dict[str, Any]:
        """What the provider publishes about the file (None where nothing), for the proof stage to compare.

        >>> Source("x", size=3, md5="AB").published()
        {'size': 3, 'sha256': None, 'md5': 'AB'}
        """
        return {"size": self.size, "sha256": self.sha256, "md5": self.md5}


def get(session: requests.Session, url: str, *, what: str, **kwargs: Any) -> requests.Response:
    """A provider API GET (redirects checked by :func:`web.get`); a network failure becomes :class:`MirrorFailed`."""
    try:
        return web.get(session, url, label=what, timeout=API_TIMEOUT, **kwargs)
    except requests.Timeout:
        raise MirrorFailed("timeout", f"{what}: no answer from {urlsplit(url).netloc}") from None
    except requests.RequestException as err:
        raise MirrorFailed("network", f"{what}: cannot reach {urlsplit(url).netloc} ({type(err).__name__})") from None


def get_json(session: requests.Session, url: str, *, what: str, token_env: str, **kwargs: Any) -> Any:
    """GET a provider's JSON API document; any failure becomes one :class:`MirrorFailed` line.

    ``what`` names the thing asked for ("Zenodo record 123"); ``token_env`` is the
    variable that holds the provider token, named in the hint for 401/403 answers.
    The outcome tag is the HTTP status ("404"), or "network"/"timeout"/"bad answer".
    """
    failures = 0
    while (response := get(session, url, what=what, stream=True, **kwargs)).status_code == 429:
        failures += 1
        if failures >= API_RETRY.attempts:
            break  # still rate limited: a failure like any other HTTP error, below
        wait = API_RETRY.wait(failures, web.retry_after(response.headers.get("Retry-After")))
        log.info(f"{what}: rate limited by {urlsplit(url).netloc}; asking again in {wait:.1f}s")
        response.close()
        time.sleep(wait)
    if response.status_code >= 400:
        hint = f"; private or restricted? set {token_env}" if response.status_code in (401, 403) else ""
        raise MirrorFailed(
            str(response.status_code),
            web.scrub(f"{what}: {_error_detail(response)} (HTTP {response.status_code}){hint}"),
        )
    return web.json_body(response, what)


def parse_answer(model: type[Answer], document: Any, what: str) -> Answer:
    """A provider's JSON ``document`` read into the pydantic ``model`` of the parts we use; any other shape
    (a list for an object, a size as a string, a checksum as a number) is this mirror's one-line failure."""
    try:
        return model.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if not MODEL_NAME.fullmatch(str(part)))
        problem = MODEL_INSTANCE.sub("", first["msg"]).lower()
        raise MirrorFailed("bad answer", f"{what}: the answer is not in the shape the API documents "
                                         f"({web.scrub(where)[:100] or 'the document'}: {problem})") from None


def _error_detail(response: requests.Response) -> str:
    """The server's own words from the error shapes providers use, else the reason phrase; one line,
    with any token the server echoes back masked (before it is cut short, so no piece of one is left)."""
    try:
        body = web.json_body(response, "an error answer", limit=2**16)
    except MirrorFailed:  # no JSON (or too much of it): the reason phrase says it
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")  # JSON:API (OSF)
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        detail = first.get("detail") or body.get("message") or body.get("error")  # then Zenodo, then {"error"}
        if isinstance(detail, str) and detail.strip():
            return web.scrub(detail.strip().splitlines()[0])[:200]
    reason = web.scrub(str(response.reason or "")).strip()
    return reason.splitlines()[0][:200] if reason else "error"
