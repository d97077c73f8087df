"""The rules every HTTP request of the tool follows, in one place.

- One reading of a URL (:func:`parse`): the parser requests itself uses (``urllib3.util.parse_url``),
  after refusing what parsers read differently (a backslash, user info before ``@``, spaces or
  control characters, a non-ASCII or percent-encoded host). The scheme rule, origins, trusted
  endpoints and which request carries a token are all decided from that one reading, so the host
  the rules judge is the host the request goes to.
- Only ``https://``, and plain ``http://`` to loopback addresses (local mirrors, tests).
- Redirects are followed by hand, each hop checked against that rule; once a hop leaves the
  origin (scheme, host, port) the request was meant for, every header but a few portable ones
  is dropped, so a provider token never reaches a CDN, whatever header it travels in.
- A provider token goes only to an endpoint the user trusts: the provider's public service,
  an origin the user configured for that provider (``HF_ENDPOINT``), or one listed in
  ``$PHASEGPT_TRUSTED_ENDPOINTS``. A manifest from elsewhere cannot collect tokens by naming
  its own server as a mirror's ``endpoint``. URLs a provider's answer hands back (a next page, a
  download link) get the token only on that same origin (or a file host the provider documents).
- No token value is ever shown: :func:`scrub` masks every known one (``HF_TOKEN``, the saved Hub
  login, ``ZENODO_TOKEN``, ``OSF_TOKEN``) in server text before it becomes a message, and the
  command line passes all it prints through it once more.

>>> origin("https://huggingface.co/org/repo/resolve/main/x.pt")
Origin(scheme='https', host='huggingface.co', port=443)
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import NamedTuple, Optional
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError, NewConnectionError
from urllib3.util import parse_url

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.tokens import known_tokens, masker, scrub  # noqa: F401 - scrub is web's to callers

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
# Headers that may follow a redirect to another origin; anything else (Authorization, X-API-Key,
# a provider's token header) stays with the origin it was meant for. Cookies are scoped by the jar.
PORTABLE_HEADERS = {"user-agent", "accept", "accept-encoding", "connection", "range", "if-range", "cookie"}
TRUSTED_ENDPOINTS = "PHASEGPT_TRUSTED_ENDPOINTS"  # comma-separated origins, or hosts (any port)


class Origin(NamedTuple):
    """Where a request goes: credentials never cross this boundary."""

    scheme: str
    host: str  # lower case, ASCII; an IPv6 address keeps its brackets, as urllib3 writes it
    port: int


DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?://([^/?#]*))?")
# A host requests will connect to as written: DNS labels (no empty one, no '*'), or a bracketed IPv6 address.
_HOST = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*|\[[0-9A-Fa-f:.]+\]")


def parse(url: str) -> Origin:
    """The one reading of ``url`` every rule here uses, or :class:`BadInput` in one line.

    It is the reading requests acts on (``urllib3.util.parse_url``), and URLs that parsers read
    differently are refused outright rather than guessed at: a backslash (``https://a.example\\@b.example/``
    is host ``a.example`` to urllib3 and ``b.example`` to ``urllib.parse``), user info before ``@``,
    spaces and control characters, a non-ASCII or percent-encoded host, a bad port, an unclosed ``[``.

    >>> parse("https://HuggingFace.co/org/repo")
    Origin(scheme='https', host='huggingface.co', port=443)
    >>> parse("https://zenodo.org\\\\@evil.example/x")
    Traceback (most recent call last):
    phasegpt_ckpt.errors.BadInput: refusing URL 'https://zenodo.org\\\\@evil.example/x': it contains a backslash, which URL parsers read differently
    """
    if not isinstance(url, str):
        raise BadInput(f"not a URL: {url!r}")

    def refused(why: str) -> BadInput:
        return BadInput(why.format(url=_shown(url)))

    if "\\" in url:
        raise refused("refusing URL {url}: it contains a backslash, which URL parsers read differently")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise refused("refusing URL {url}: it contains a space or a control character")
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in DEFAULT_PORTS or match.group(2) is None:
        raise refused("not an http(s) URL: {url}")
    authority = match.group(2)
    if "@" in authority:
        raise refused("refusing URL {url}: user info before '@' is not allowed in a URL "
                      "(a provider token goes in its variable, e.g. HF_TOKEN)")
    if not authority.isascii():
        raise refused("refusing URL {url}: its host is not ASCII; write it in its xn-- (IDNA) form")
    if "%" in authority:
        raise refused("refusing URL {url}: its host is percent-encoded")
    try:
        parts = parse_url(url)
    except LocationParseError:
        raise refused("not a valid URL {url}: " + _authority_problem(authority)) from None
    if not parts.host:
        raise refused("not an http(s) URL: {url} (no host)")
    if not _HOST.fullmatch(parts.host):
        raise refused("not a valid URL {url}: not a valid host")
    if parts.port == 0:
        raise refused("not a valid URL {url}: the port must be a number from 1 to 65535")
    found = Origin(scheme, parts.host.lower(), parts.port or DEFAULT_PORTS[scheme])
    try:  # what the standard library reads must be the same origin, or the URL is ambiguous
        other = urlsplit(url)
        agree = ((other.hostname or "").lower() == found.host.strip("[]")
                 and (other.port or DEFAULT_PORTS[scheme]) == found.port)
    except ValueError:
        agree = False
    if not agree:
        raise refused("refusing URL {url}: URL parsers disagree on its host")
    return found


def _authority_problem(authority: str) -> str:
    """Why urllib3 could not read ``authority`` (host and port), in a few words."""
    if authority.startswith("[") and "]" not in authority:
        return "an IPv6 address with no closing ']'"
    port = authority.rpartition("]")[2] if authority.startswith("[") else authority
    if ":" in port:
        digits = port.rpartition(":")[2]
        if not (digits.isdigit() and 0 < int(digits) <= 65535):
            return "the port must be a number from 1 to 65535"
    return "not a valid host"


def _shown(url: str, limit: int = 200) -> str:
    """``url`` quoted for a one-line message: control characters escaped, long ones cut, tokens masked."""
    return repr(scrub(url if len(url) <= limit else url[:limit] + "…"))


def check_url_allowed(url: str) -> None:
    """Refuse URLs the tool never fetches: unparseable or ambiguous ones (:func:`parse`), non-http(s)
    schemes, and plain http:// beyond loopback.

    >>> check_url_allowed("https://huggingface.co/x/resolve/main/best_model.pt")
    >>> check_url_allowed("http://127.0.0.1:8000/best_model.pt")   # loopback: local mirrors, tests
    >>> check_url_allowed("http://example.org/best_model.pt")
    Traceback (most recent call last):
    phasegpt_ckpt.errors.BadInput: refusing plain http:// to example.org (http://example.org/best_model.pt): use https://; plain http is allowed only to loopback addresses
    """
    scheme, host, _ = parse(url)
    if scheme == "http" and not _is_loopback(host):
        raise BadInput(
            f"refusing plain http:// to {host} ({scrub(url)}): use https://; plain http is allowed only to loopback addresses"
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
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def origin(url: str) -> Origin:
    """(scheme, host, port) of ``url`` as :func:`parse` reads it (:class:`BadInput` if it can't):
    credentials never cross this boundary."""
    return parse(url)


def _origin_or_none(url: Optional[str]) -> Optional[Origin]:
    """``origin(url)``, None for a missing or refused URL (which is then trusted with nothing)."""
    if not url:
        return None
    try:
        return parse(url)
    except BadInput:
        return None


def get(session: requests.Session, url: str, *, label: str, timeout, headers: Optional[dict] = None,
        params: Optional[dict] = None, stream: bool = False) -> requests.Response:
    """GET ``url`` following redirects under the rules above; the final (non-redirect) response.

    ``url`` itself must pass :func:`check_url_allowed` (:class:`BadInput` otherwise: callers check
    URLs a server handed them first). Raises :class:`MirrorFailed` for a redirect to a refused URL
    or too many redirects; network errors are requests' own exceptions, for the caller to retry or map.
    Known tokens a server echoes in its reason phrase or headers are masked before anyone reads them.
    """
    check_url_allowed(url)
    home, headers = origin(url), dict(headers or {})
    bounded(session)
    for _ in range(MAX_REDIRECTS + 1):
        response = session.get(url, headers=headers, params=params, stream=stream, allow_redirects=False,
                               timeout=timeout, hooks={"response": [_hold_location]})
        _mask_echoes(response)
        location = getattr(response, "held_location", None)
        if location is None:
            return response
        response.close()
        url, params = _next_hop(response.url, location, label), None  # Location has its own query
        if origin(url) != home:
            headers = {k: v for k, v in headers.items() if k.lower() in PORTABLE_HEADERS}
    raise MirrorFailed("redirect loop", f"{label}: more than {MAX_REDIRECTS} redirects")


def _hold_location(response: requests.Response, *args, **kwargs) -> requests.Response:
    """A response hook: a redirect's ``Location`` is taken from requests and kept for :func:`get`.

    Even with ``allow_redirects=False`` requests prepares the next request (``Response.next``) with its
    own URL parsing, which raises ValueError on a bad port or an unclosed ``[``; without the header it
    does nothing, and the one rule here reads the Location instead.
    """
    if response.status_code in requests.models.REDIRECT_STATI and "Location" in response.headers:
        response.held_location = response.headers.pop("Location")
    return response


def _next_hop(base: str, location: str, label: str) -> str:
    """The absolute URL a redirect from ``base`` points to, checked by the one rule; :class:`MirrorFailed` if refused."""
    with contextlib.suppress(UnicodeError):  # http.client reads headers as latin-1; servers send UTF-8
        location = location.encode("latin-1").decode("utf-8")
    location = scrub(location)  # a token in a redirect goes nowhere, and into no message
    try:
        url = urljoin(base, location)
        parse(url)
    except (ValueError, BadInput) as err:  # urljoin's ValueError: an unclosed '['
        reason = err if isinstance(err, BadInput) else f"not a valid URL {_shown(location)}"
        raise MirrorFailed("bad redirect", f"{label}: the server redirected to an unusable address: {reason}") from None
    try:
        check_url_allowed(url)
    except BadInput as err:
        raise MirrorFailed("insecure redirect", f"{label}: redirected to {scrub(url)}: {err}") from None
    return url


def _mask_echoes(response: requests.Response) -> None:
    """Mask known tokens a server echoes back in its reason phrase or headers (messages quote both)."""
    tokens = known_tokens()
    if not tokens:
        return
    mask = masker(*tokens)
    response.reason = mask(response.reason)
    for name, value in list(response.headers.items()):
        if any(token in value for token in tokens):
            response.headers[name] = mask(value)


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
    unreachable_attempts: int = 2  # a mirror no connection reached yet (refused, no such host): not worth 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # bounded cost, as curl's --speed-limit/--speed-time: a connection moving fewer than speed_limit
    # bytes/s over speed_time seconds is abandoned (and retried); one mirror's whole attempt ends after budget s
    speed_limit: float = 1024.0
    speed_time: float = 30.0
    budget: float = 6 * 3600.0
    # how a download is spread: connections (None: chosen from the size, or $PHASEGPT_CONNECTIONS),
    # the smallest piece an idle connection takes from a busy one, a total bytes/s cap (None: no cap)
    connections: Optional[int] = None
    min_segment: int = 1024 * 1024
    limit_rate: Optional[float] = None

    def wait(self, failures: int, retry_after: Optional[float]) -> float:
        """Seconds to sleep before attempt ``failures + 1``."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


def unreachable(err: BaseException) -> bool:
    """Did ``err`` (requests') come before any connection was made: refused, no such host, connect timeout?"""
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NewConnectionError)


def trusted_token(token: Optional[str], endpoint: str, *services: str, name: str) -> Optional[str]:
    """``token`` when ``endpoint`` is one of the provider's ``services`` or trusted by the user, else None.

    ``name`` is the token's variable, for the warning said when a token is withheld.

    >>> trusted_token("t", "https://zenodo.org", "https://zenodo.org", name="ZENODO_TOKEN")
    't'
    """
    if not token:
        return None
    require_sendable(token, name)
    if on_origin(endpoint, *services) or listed(endpoint):
        return token
    shown = scrub(endpoint) if _origin_or_none(endpoint) else _shown(endpoint)  # quoted when it may hold anything
    log.warning(f"not sending {name} to {shown}: it is not {services[0]}; "
                 f"if that server is yours, add it to ${TRUSTED_ENDPOINTS}")
    return None


def require_sendable(token: str, name: str) -> str:
    """``token``, when an HTTP header can carry it; else a one-line ``BadInput`` naming its variable
    (http.client would raise UnicodeEncodeError mid-request).

    >>> require_sendable("hf_abc", "HF_TOKEN")
    'hf_abc'
    """
    if not all(" " <= char <= "\xff" and char != "\x7f" for char in token):
        raise BadInput(f"{name} holds a character an HTTP header cannot carry (outside Latin-1, or a control "
                       "character): set it to the token exactly as the provider shows it")
    return token


def on_origin(url: Optional[str], *trusted: Optional[str]) -> bool:
    """Does ``url`` lie on the origin of one of the ``trusted`` URLs (None, empty or refused ones match nothing)?

    >>> on_origin("https://hub.example/api/x", "https://hub.example"), on_origin("https://cdn.example/x", "https://hub.example")
    (True, False)
    """
    here = _origin_or_none(url)
    return here is not None and here in {_origin_or_none(t) for t in trusted}


def listed(url: str) -> bool:
    """Is ``url``'s origin in ``$PHASEGPT_TRUSTED_ENDPOINTS`` (an origin, or a bare host meaning any port)?"""
    here = _origin_or_none(url)
    if here is None:
        return False
    for entry in filter(None, (e.strip() for e in os.environ.get(TRUSTED_ENDPOINTS, "").split(","))):
        if "://" in entry and _origin_or_none(entry) == here:
            return True
        if "://" not in entry and entry.lower() in (here.host, here.host.strip("[]")):
            return True
    return False


def bearer(token: Optional[str]) -> dict[str, str]:
    """``Authorization`` header for an optional token: ``bearer(None) == {}``."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def credentials_for(url: str, token: Optional[str], *trusted: Optional[str]) -> dict[str, str]:
    """The token's header only when ``url`` lies on one of the ``trusted`` origins (:func:`on_origin`:
    the same reading of the URL the request will use; a refused URL gets nothing).

    >>> credentials_for("https://cdn.example/x", "t", "https://hub.example")
    {}
    >>> credentials_for("https://evil.example\\\\@hub.example/x", "t", "https://hub.example")
    {}
    """
    return bearer(token) if token and on_origin(url, *trusted) else {}


def reroute(session: requests.Session, endpoint: str, *prefixes: str) -> None:
    """Send ``session``'s requests for URLs under ``prefixes`` to ``endpoint`` (scheme, host, port), path
    and query kept: how a service whose hosts are fixed (Google Drive) is pointed at a mirror or emulator.

    The URLs keep their names, so redirects, cookies and origins behave as with the real hosts.
    """
    adapter = _Rerouted(endpoint.rstrip("/"))
    for prefix in prefixes:
        session.mount(prefix, adapter)


class _HeadersInTime:
    """A connection whose whole response head must arrive within the read timeout (urllib3 sets
    ``timeout`` to it just before ``getresponse``). The timeout alone bounds each ``recv``, so a server
    sending one header byte every few seconds would hold the request for ever; past the deadline the
    socket is shut and the request fails as a read timeout (retried, then that mirror's failure)."""

    def getresponse(self, *args, **kwargs):
        limit = self.timeout if isinstance(self.timeout, (int, float)) else None
        if limit is None:
            return super().getresponse(*args, **kwargs)
        expired = threading.Event()
        timer = threading.Timer(limit, self._cut, args=(expired,))
        timer.daemon = True
        timer.start()
        try:
            response = super().getresponse(*args, **kwargs)
        except Exception:
            if expired.is_set():  # urllib3 reports a socket timeout as requests' ReadTimeout
                raise TimeoutError(f"no complete response head within {limit:g} s") from None
            raise
        finally:
            timer.cancel()
        if expired.is_set():  # cut mid-head, http.client may still hand over what it parsed
            response.close()
            raise TimeoutError(f"no complete response head within {limit:g} s")
        return response

    def _cut(self, expired: threading.Event) -> None:
        expired.set()
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = type("HTTPConnection", (_HeadersInTime, HTTPConnection), {})


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = type("HTTPSConnection", (_HeadersInTime, HTTPSConnection), {})


class BoundedAdapter(HTTPAdapter):
    """requests' adapter with :class:`_HeadersInTime` connections; :func:`get` mounts it on every session."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def bounded(session: requests.Session) -> requests.Session:
    """``session`` with :class:`BoundedAdapter` for plain http and https (more specific mounts stay)."""
    for prefix in ("http://", "https://"):
        if not isinstance(session.adapters.get(prefix), BoundedAdapter):
            session.mount(prefix, BoundedAdapter())
    return session


class _Rerouted(BoundedAdapter):
    """A transport adapter that keeps path and query but swaps scheme, host and port."""

    def __init__(self, endpoint: str):
        super().__init__()
        self.endpoint = endpoint

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        parts = urlsplit(request.url)
        request.url = self.endpoint + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().send(request, **kwargs)


MAX_JSON_BYTES = 16 * 2**20  # a provider's API answer about one file is kilobytes; this is far past any real one


def json_body(response: requests.Response, label: str, limit: int = MAX_JSON_BYTES):
    """The JSON document ``response`` (requested with ``stream=True``) carries, read ``limit`` bytes at most.

    The body is read in chunks and given up past ``limit`` (decompressed bytes: a gzip bomb is cut short
    too), so a huge answer costs ``limit`` of memory, not its size. Anything but one readable JSON document
    is a :class:`MirrorFailed` line: too large, not JSON, a number too long for Python's int (5000 digits),
    nesting past the interpreter's stack.
    """
    host = urlsplit(response.url).netloc
    chunks, received = [], 0
    try:
        for chunk in response.iter_content(2**16):
            received += len(chunk)
            if received > limit:
                raise MirrorFailed("too large", f"{label}: {host} answered more than {limit // 2**20} MiB of JSON")
            chunks.append(chunk)
    except requests.RequestException as err:
        raise MirrorFailed("network", f"{label}: the answer from {host} broke off ({type(err).__name__})") from None
    finally:
        response.close()
    try:
        document = json.loads(b"".join(chunks))
        json.dumps(document, ensure_ascii=False).encode()  # a lone surrogate ("\\ud800") breaks whatever prints it
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeError are ValueErrors
        raise MirrorFailed("bad answer", f"{label}: {host} did not answer readable JSON "
                                         f"({type(err).__name__})") from None
    return document
