"""Depositing files with a provider (Zenodo, OSF Storage): one interface, one small module per provider.

A :class:`Deposit` knows its provider's per-file limit (``limit``), the token it needs (checked
before any byte moves) and how to upload :class:`Upload` s and prove the provider holds their bytes.
``publish`` (:mod:`phasegpt_ckpt.store.publish`) splits a file larger than ``limit`` into
:func:`parts` and lists the mirrors the deposit returns, after reading them back.

    deposit = target("osf:abcde/checkpoints", endpoint=None)     # OsfDeposit; needs OSF_TOKEN
    doi = deposit.reserve([Upload("best_model.pt", path, facts)], metadata)   # None: OSF mints none
    placed = deposit.send([Upload("best_model.pt", path, facts), Upload("best_model_info.json", ...)], metadata)
    placed.mirrors["best_model.pt"].describe()                   # 'osf abcde/checkpoints/best_model.pt'
"""
from __future__ import annotations

import io
import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import requests

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.proof.digest import FileFacts, Hasher
from phasegpt_ckpt.reporting import Progress, report
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import MirrorBase

log = logging.getLogger(__name__)

# Uploads are retried on a dropped connection, a 5xx or a 429; an answer is awaited longer than a
# download's next chunk: a server hashes the whole body before it answers.
DEPOSIT_RETRY = web.RetryPolicy(attempts=4, backoff=1.0, max_backoff=15.0, read_timeout=600.0)
TRANSIENT = {429, 500, 502, 503, 504}  # worth asking again; a 507 (quota) or a 501 will answer the same
READ_CHUNK = 1024 * 1024


@dataclass
class Upload:
    """One file to deposit under ``key``: ``size`` bytes of ``path`` from ``offset`` (a part of a larger file)."""

    key: str
    path: Path
    facts: FileFacts  # of these bytes (the part's, for a part), md5 included
    offset: int = 0
    progress: Optional[Progress] = None  # hears how many bytes were sent

    def open(self) -> "Slice":
        """The bytes to send, afresh (a retry starts over)."""
        return Slice(self.path, self.offset, self.facts.size,
                     lambda sent: report(self.progress, f"upload {self.key}", sent, self.facts.size))


class Slice(io.RawIOBase):
    """``size`` bytes of a file from ``offset``, read as a stream: a part is uploaded without being copied."""

    def __init__(self, path: Path, offset: int, size: int, sent: Callable[[int], None] = lambda _: None):
        super().__init__()
        self._file = open(path, "rb")
        self._file.seek(offset)
        self._left = self._size = size
        self._sent = sent

    def __len__(self) -> int:  # requests sends it as Content-Length
        return self._size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        chunk = self._file.read(n)
        self._left -= len(chunk)
        self._sent(self._size - self._left)
        return chunk

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass
class Deposited:
    """What a deposit holds now: a mirror per key (``published`` false on a draft), the DOI when one was minted."""

    mirrors: dict[str, MirrorBase]
    doi: Optional[str] = None
    note: str = ""  # where it is, for the person (a draft's address)


@dataclass
class Metadata:
    """What a provider's record says about the checkpoint (Zenodo's fields; OSF Storage keeps none)."""

    title: str
    description: str
    creators: list[dict[str, str]]
    license: str
    version: str
    related: list[dict[str, str]] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)


class Deposit(ABC):
    """A provider ``publish`` uploads to. ``limit``: the most bytes one file may have there."""

    token_env: ClassVar[str]
    limit: int

    def __init__(self, endpoint: Optional[str], services: tuple[str, ...]):
        if endpoint:
            try:
                web.check_url_allowed(endpoint)
            except BadInput as err:
                raise BadInput(f"--endpoint: {err}") from None
        self.endpoint = endpoint.rstrip("/") if endpoint else None  # as a mirror's endpoint is written
        self.base = self.endpoint or services[0]
        self.token = required_token(self.token_env, self.base, services)

    @abstractmethod
    def describe(self) -> str:
        """The target as the user wrote it, for messages."""

    def reserve(self, uploads: list[Upload], metadata: Metadata) -> Optional[str]:
        """Prepare the deposit before its files are final; the DOI it will have, if the provider mints one
        (written into the metadata JSON, which then travels with the checkpoint)."""
        return None

    def supersedes(self, mirror: MirrorBase) -> bool:
        """Does the deposit replace ``mirror`` (an older version's record) in the manifest?"""
        return False

    @abstractmethod
    def send(self, uploads: list[Upload], metadata: Metadata) -> Deposited:
        """Upload ``uploads`` and prove the provider holds their bytes; refused with one line otherwise."""


def target(spec: str, *, endpoint: Optional[str] = None, draft: bool = False,
           new_version: Optional[str] = None, limit: Optional[int] = None) -> Optional[Deposit]:
    """The deposit ``--to`` names (``zenodo``, ``zenodo-sandbox``, ``osf:NODE[/folder]``), else None (the
    Hub, a folder). Its token is checked here, before any byte moves; ``limit`` overrides the provider's
    per-file limit (tests, a smaller quota).

    >>> target("hf:me/repo") is None
    True
    """
    from phasegpt_ckpt.store.deposit.osf import OsfDeposit
    from phasegpt_ckpt.store.deposit.zenodo import ZenodoDeposit

    kind, _, where = spec.partition(":")
    sized = {} if limit is None else {"limit": limit}
    if kind in ("zenodo", "zenodo-sandbox") and not where:
        return ZenodoDeposit(sandbox=kind == "zenodo-sandbox", endpoint=endpoint, draft=draft,
                             new_version=new_version, **sized)
    if draft or new_version:
        raise BadInput("--draft and --new-version go with --to zenodo or --to zenodo-sandbox")
    if kind == "osf":
        return OsfDeposit(where, endpoint=endpoint, **sized)
    if kind in ("zenodo", "zenodo-sandbox"):
        raise BadInput(f"--to {spec!r}: write --to {kind} (a new record) or add --new-version RECORD")
    return None


def required_token(env: str, base: str, services: tuple[str, ...]) -> str:
    """The token in ``$env``, when it may go to ``base``; else one line naming the variable (before any byte moves)."""
    token = os.environ.get(env)
    if not token:
        raise BadInput(f"publishing to {base} needs a token: set {env}")
    web.require_sendable(token, env)
    if not (web.on_origin(base, *services) or web.listed(base)):
        raise BadInput(f"not sending {env} to {web.scrub(base)}: add it to ${web.TRUSTED_ENDPOINTS} if that server is yours")
    return token


def parts(path: Path, limit: int, key: str, sizes: Optional[list[int]] = None) -> list[Upload]:
    """``path`` as uploads of at most ``limit`` bytes, keyed ``key.001-of-003`` ...; none when it fits whole.

    ``sizes``: the parts already listed for these bytes (another mirror's), kept when each fits, so every
    mirror holds the same parts. Each part's sha256 and md5 are computed in one pass over the file.
    """
    total = path.stat().st_size
    kept = bool(sizes) and max(sizes) <= limit and sum(sizes) == total
    if total <= limit and not kept:
        return []
    if not kept:
        sizes = [min(limit, total - offset) for offset in range(0, total, limit)]
    uploads, offset = [], 0
    with open(path, "rb") as source:
        for index, size in enumerate(sizes):
            hasher = Hasher(want_md5=True)
            left = size
            while left:
                chunk = source.read(min(READ_CHUNK, left))
                hasher.update(chunk)
                left -= len(chunk)
            digests = hasher.hexdigests()
            part_key = f"{key}.{index + 1:03d}-of-{len(sizes):03d}"
            uploads.append(Upload(part_key, path, FileFacts(path, size, digests["sha256"], digests["md5"]), offset))
            offset += size
    return uploads


class ApiError(Exception):
    """A provider call that failed for good: ``status`` (None for the network) and the provider's reason."""

    def __init__(self, status: Optional[int], reason: str, body: Any = None):
        super().__init__(reason)
        self.status, self.reason, self.body = status, reason, body


class Api:
    """Calls to one provider's API with its token, under the one URL rule; retried where retrying is safe."""

    def __init__(self, token: str, may_carry: Callable[[str], bool], what: str,
                 policy: web.RetryPolicy = DEPOSIT_RETRY):
        self.token, self.may_carry, self.what, self.policy = token, may_carry, what, policy
        self.session = web.bounded(requests.Session())

    def call(self, method: str, url: str, *, ok: tuple[int, ...] = (200,), retry: bool = True,
             body: Optional[Callable[[], Any]] = None, size: Optional[int] = None, **kwargs: Any) -> requests.Response:
        """``method url``; a status in ``ok`` is returned, any other raises :class:`ApiError`.

        ``body`` opens the upload afresh for each attempt (``size`` bytes, sent as Content-Length).
        A dropped connection or a :data:`TRANSIENT` status is tried again when ``retry``; other answers are final.
        """
        try:
            web.check_url_allowed(url)
        except BadInput as err:
            raise ApiError(None, f"{self.what} handed out a link that is refused: {err}") from None
        headers = {**(web.bearer(self.token) if self.may_carry(url) else {}), **kwargs.pop("headers", {})}
        if size is not None:
            headers["Content-Length"] = str(size)
        failures = 0
        while True:
            stream = body() if body else None
            try:
                response = self.session.request(method, url, data=stream, headers=headers, allow_redirects=False,
                                                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                                                stream=True, **kwargs)
                problem, wait_hint = None, None
                if response.status_code in TRANSIENT:
                    problem = f"HTTP {response.status_code}"
                    wait_hint = web.retry_after(response.headers.get("Retry-After"))
            except requests.RequestException as err:
                response, problem, wait_hint = None, f"{type(err).__name__}", None
            finally:
                if stream is not None:
                    stream.close()
            if problem is None:
                break
            failures += 1
            if not retry or failures >= self.policy.attempts:
                break
            wait = self.policy.wait(failures, wait_hint)
            log.info(f"{self.what}: {method} {urlpath(url)} failed ({problem}); trying again in {wait:.1f}s")
            time.sleep(wait)
        if response is None:
            raise ApiError(None, f"{self.what} could not be reached ({problem})")
        if response.status_code not in ok:
            raise ApiError(response.status_code, f"{reason(response)} (HTTP {response.status_code})", _json(response))
        return response

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        """The JSON answer of :meth:`call`."""
        response = self.call(method, url, **kwargs)
        answer = _json(response)
        if answer is None:
            raise ApiError(response.status_code, f"{self.what} did not answer JSON")
        return answer

    def close(self) -> None:
        self.session.close()


def reason(response: requests.Response) -> str:
    """The provider's own words, one line, tokens masked: a field error (Zenodo's ``errors[{field,
    messages|message}]``), a JSON:API ``errors[{detail}]`` (OSF), a ``message``, else the reason phrase."""
    body = _json(response)
    if isinstance(body, dict):
        errors = body.get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        words = first.get("messages") or first.get("message") or first.get("detail")
        words = "; ".join(map(str, words)) if isinstance(words, list) else words
        if first.get("field") and words:
            return web.scrub(f"{first['field']}: {words}".splitlines()[0])[:300]
        detail = words or body.get("message") or body.get("message_long")
        if isinstance(detail, str) and detail.strip():
            return web.scrub(detail.strip().splitlines()[0])[:300]
    return web.scrub(str(response.reason or "no reason given")).strip()


def _json(response: requests.Response) -> Any:
    """The answer's JSON document, None when it is none; read once, and never more than
    :data:`web.MAX_JSON_BYTES` of it (the request streams, so a huge answer is cut, not loaded)."""
    if not hasattr(response, "document"):
        try:
            response.document = web.json_body(response, "the deposit")
        except MirrorFailed:
            response.document = None
    return response.document


def urlpath(url: str) -> str:
    """A URL without its query (where a token might ride), for logs."""
    return web.scrub(url.split("?", 1)[0])
