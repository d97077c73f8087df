"""The rules every HTTP request of the tool follows, in one place.

- Only ``https://``, and plain ``http://`` to loopback addresses (local mirrors, tests).
- Redirects are followed by hand, each hop checked against that rule; once a hop leaves the
  origin (scheme, host, port) the request was meant for, every header but a few portable ones
  is dropped, so a provider token never reaches a CDN, whatever header it travels in.
- A provider token goes only to an endpoint the user trusts: the provider's public service,
  an origin the user configured for that provider (``HF_ENDPOINT``), or one listed in
  ``$PHASEGPT_TRUSTED_ENDPOINTS``. A manifest from elsewhere cannot collect tokens by naming
  its own server as a mirror's ``endpoint``.

>>> origin("https://huggingface.co/org/repo/resolve/main/x.pt")
('https', 'huggingface.co', 443)
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Optional
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from phasegpt_ckpt.errors import BadInput, MirrorFailed

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
# Headers that may follow a redirect to another origin; anything else (Authorization, X-API-Key,
# a provider's token header) stays with the origin it was meant for. Cookies are scoped by the jar.
PORTABLE_HEADERS = {"user-agent", "accept", "accept-encoding", "connection", "range", "if-range", "cookie"}
TRUSTED_ENDPOINTS = "PHASEGPT_TRUSTED_ENDPOINTS"  # comma-separated origins, or hosts (any port)


def check_url_allowed(url: str) -> None:
    """Refuse URLs the tool never fetches: non-http(s) schemes and plain http:// beyond loopback.

    >>> check_url_allowed("https://huggingface.co/x/resolve/main/best_model.pt")
    >>> check_url_allowed("http://127.0.0.1:8000/best_model.pt")   # loopback: local mirrors, tests
    >>> check_url_allowed("http://example.org/best_model.pt")
    Traceback (most recent call last):
    phasegpt_ckpt.errors.BadInput: refusing plain http:// to example.org (http://example.org/best_model.pt): use https://; plain http is allowed only to loopback addresses
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"not an http(s) URL: {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise BadInput(
            f"refusing plain http:// to {parts.hostname} ({url}): use https://; plain http is allowed only to loopback addresses"
        )


def allowed_url(url: str) -> str:
    """``url`` if :func:`check_url_allowed` accepts it, else ValueError (for pydantic validators)."""
    try:
        check_url_allowed(url)
    except BadInput as err:
        raise ValueError(str(err)) from None
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``: credentials never cross this boundary."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)


def get(session: requests.Session, url: str, *, label: str, timeout, headers: Optional[dict] = None,
        params: Optional[dict] = None, stream: bool = False) -> requests.Response:
    """GET ``url`` following redirects under the rules above; the final (non-redirect) response.

    Raises :class:`MirrorFailed` for a redirect to a refused URL or too many redirects; network
    errors are requests' own exceptions, for the caller to retry or map.
    """
    home, headers = origin(url), dict(headers or {})
    for _ in range(MAX_REDIRECTS + 1):
        response = session.get(url, headers=headers, params=params, stream=stream, allow_redirects=False,
                               timeout=timeout)
        if not response.is_redirect:
            return response
        response.close()
        url, params = urljoin(response.url, response.headers["Location"]), None  # Location has its own query
        try:
            check_url_allowed(url)
        except BadInput as err:
            raise MirrorFailed("insecure redirect", f"{label}: redirected to {url}: {err}") from None
        if origin(url) != home:
            headers = {k: v for k, v in headers.items() if k.lower() in PORTABLE_HEADERS}
    raise MirrorFailed("redirect loop", f"{label}: more than {MAX_REDIRECTS} redirects")


def retry_after(value: Optional[str]) -> Optional[float]:
    """A ``Retry-After`` header as seconds: ``120`` or an HTTP date; None when absent or unreadable.

    >>> retry_after("120"), retry_after(None), retry_after("soon")
    (120.0, None, None)
    """
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


@dataclass
class RetryPolicy:
    """How hard a request is tried: a download from one mirror, or a provider's API call.

    Downloads (:func:`~phasegpt_ckpt.source.transfer.transfer`) default to ``RetryPolicy()``; API
    calls use ``mirrors.base.API_RETRY``, one retry after a 429.

    ``attempts`` caps consecutive attempts that brought nothing (for a download, no new bytes: the
    count restarts whenever the part grows past its longest length so far). Waits double from
    ``backoff`` up to ``max_backoff``, with jitter; a server's Retry-After is honoured up to
    ``max_retry_after``.

    >>> RetryPolicy(max_retry_after=30).wait(1, retry_after=120.0)
    30
    """

    attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def wait(self, failures: int, retry_after: Optional[float]) -> float:
        """Seconds to sleep before attempt ``failures + 1``."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


def trusted_token(token: Optional[str], endpoint: str, *services: str, name: str) -> Optional[str]:
    """``token`` when ``endpoint`` is one of the provider's ``services`` or trusted by the user, else None.

    ``name`` is the token's variable, for the warning said when a token is withheld.

    >>> trusted_token("t", "https://zenodo.org", "https://zenodo.org", name="ZENODO_TOKEN")
    't'
    """
    if not token:
        return None
    if origin(endpoint) in {origin(s) for s in services if s} or _listed(endpoint):
        return token
    log.warning(f"not sending {name} to {endpoint}: it is not {services[0]}; "
                 f"if that server is yours, add it to ${TRUSTED_ENDPOINTS}")
    return None


def _listed(endpoint: str) -> bool:
    """Is ``endpoint`` in ``$PHASEGPT_TRUSTED_ENDPOINTS`` (an origin, or a bare host meaning any port)?"""
    scheme, host, port = origin(endpoint)
    for entry in filter(None, (e.strip() for e in os.environ.get(TRUSTED_ENDPOINTS, "").split(","))):
        if "://" in entry and origin(entry) == (scheme, host, port):
            return True
        if "://" not in entry and entry.lower() == host:
            return True
    return False


def scrub(text: str, token: Optional[str]) -> str:
    """``text`` with ``token`` masked: server messages may echo request headers back.

    >>> scrub("bad credentials hf_abc", "hf_abc")
    'bad credentials ***'
    """
    return text.replace(token, "***") if token else text


def bearer(token: Optional[str]) -> dict[str, str]:
    """``Authorization`` header for an optional token: ``bearer(None) == {}``."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def credentials_for(url: str, token: Optional[str], *trusted: str) -> dict[str, str]:
    """The token's header only when ``url`` lies on one of the ``trusted`` origins.

    >>> credentials_for("https://cdn.example/x", "t", "https://hub.example")
    {}
    """
    return bearer(token) if origin(url) in {origin(t) for t in trusted} else {}


def reroute(session: requests.Session, endpoint: str, *prefixes: str) -> None:
    """Send ``session``'s requests for URLs under ``prefixes`` to ``endpoint`` (scheme, host, port), path
    and query kept: how a service whose hosts are fixed (Google Drive) is pointed at a mirror or emulator.

    The URLs keep their names, so redirects, cookies and origins behave as with the real hosts.
    """
    adapter = _Rerouted(endpoint.rstrip("/"))
    for prefix in prefixes:
        session.mount(prefix, adapter)


class _Rerouted(HTTPAdapter):
    """A transport adapter that keeps path and query but swaps scheme, host and port."""

    def __init__(self, endpoint: str):
        super().__init__()
        self.endpoint = endpoint

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        parts = urlsplit(request.url)
        request.url = self.endpoint + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().send(request, **kwargs)
