"""Zenodo: a file of a record, found through the records API; md5 and size as published.

A DOI names its record offline (``10.5281/zenodo.N`` is record N; the sandbox uses the test
prefix ``10.5072``). A concept record (all versions) answers 404 on ``/api/records/<id>``
and is read through ``/versions/latest``. Zenodo publishes md5 only, so sha256 comes from
the manifest.

    >>> ZenodoMirror(doi="10.5281/zenodo.1234567", filename="best_model.pt").record_id()
    '1234567'
"""
from __future__ import annotations

import os
import re
from typing import Literal, Optional
from urllib.parse import quote

import requests
from pydantic import BaseModel, ConfigDict, Field, model_validator

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import Endpoint, MirrorBase, Source, get_json, parse_answer

DOI = re.compile(r"10\.(?:5281|5072)/zenodo\.(\d+)")
SANDBOX_PREFIX = "10.5072/"  # DataCite's test prefix: DOIs minted by sandbox.zenodo.org
ZENODO, SANDBOX = "https://zenodo.org", "https://sandbox.zenodo.org"


class ZenodoMirror(MirrorBase):
    """``record`` (id) or ``doi``, and the file's key in that record."""

    type: Literal["zenodo"] = "zenodo"
    record: Optional[str] = Field(None, coerce_numbers_to_str=True)  # YAML gives an int
    doi: Optional[str] = None
    filename: Optional[str] = None  # the file's key; may wait until the record is published
    endpoint: Endpoint = None

    @model_validator(mode="after")
    def _one_identifier(self) -> "ZenodoMirror":
        if (self.record is None) == (self.doi is None):
            raise ValueError("a zenodo mirror needs exactly one of 'record' or 'doi'")
        if not self.published:  # a placeholder ("10.5281/zenodo.XXXXXXX") is fine on a mirror never tried
            return self
        if not (self.record or "").isdigit() and not DOI.fullmatch(self.doi or ""):
            raise ValueError(f"not a Zenodo record id or DOI (10.5281/zenodo.N): {self.record or self.doi}")
        if not self.filename:
            raise ValueError("a published zenodo mirror needs the 'filename' (key) of the file in the record")
        return self

    def describe(self) -> str:
        return f"zenodo {self.doi or 'record ' + str(self.record)}"

    def record_id(self) -> str:
        return self.record or DOI.fullmatch(self.doi).group(1)

    def base_url(self) -> str:
        """``endpoint``, else the sandbox for a test-prefix DOI, else zenodo.org."""
        sandbox = (self.doi or "").startswith(SANDBOX_PREFIX)
        return self.endpoint or (SANDBOX if sandbox else ZENODO)


class _FileLinks(BaseModel):
    content: Optional[str] = Field(None, alias="self")


class _File(BaseModel):
    """A file entry of the records API, the parts we read; a size as a string or a checksum as a number is refused."""

    model_config = ConfigDict(strict=True)

    key: Optional[str] = None
    filename: Optional[str] = None  # the 2023 variant's name for the key
    size: Optional[int] = Field(None, ge=0)
    filesize: Optional[int] = Field(None, ge=0)  # the 2023 variant's name for the size
    checksum: Optional[str] = None  # "md5:<hex>"
    links: Optional[_FileLinks] = None


class _Record(BaseModel):
    """A record of the records API, the parts we read."""

    model_config = ConfigDict(strict=True)

    id: Optional[int | str] = None
    doi: Optional[str] = None
    conceptdoi: Optional[str] = None
    files: Optional[list[_File]] = None  # null or absent: a record whose files are restricted or not yet there


def resolve(mirror: ZenodoMirror, session: requests.Session) -> Source:
    """Read the record (or a concept record's latest version) and find the file by key."""
    api = f"{mirror.base_url()}/api/records/{mirror.record_id()}"
    token = web.trusted_token(os.environ.get("ZENODO_TOKEN"), mirror.base_url(), ZENODO, SANDBOX, name="ZENODO_TOKEN")
    ask = dict(what=f"Zenodo record {mirror.record_id()}", token_env="ZENODO_TOKEN", headers=web.bearer(token))
    try:
        document = get_json(session, api, **ask)
    except MirrorFailed as err:
        if err.outcome != "404":
            raise
        document = get_json(session, f"{api}/versions/latest", **ask)  # a concept id: its newest version
    record = parse_answer(_Record, document, ask["what"])
    _check_doi(mirror, record)
    version = str(record.id if record.id is not None else mirror.record_id())
    entry = _file_entry(record, mirror.filename)
    content = f"{mirror.base_url()}/api/records/{version}/files/{quote(mirror.filename, safe='')}/content"
    url = (entry.links and entry.links.content) or content
    algorithm, _, digest = (entry.checksum or "").rpartition(":")
    try:  # the file link comes from the server's answer: the one URL rule, and the token on its origin only
        web.check_url_allowed(url)
    except BadInput as err:
        raise MirrorFailed("bad answer", f"{ask['what']}: its file link is refused: {err}") from None
    return Source(
        label=mirror.describe(),
        url=url,
        headers=web.credentials_for(url, token, mirror.base_url()),
        size=entry.size if entry.size is not None else entry.filesize,
        md5=digest.lower() if algorithm in ("md5", "") and digest else None,
        revision=version,
    )


def _file_entry(record: _Record, filename: str) -> _File:
    """The record's file entry keyed ``filename`` (``key`` now, ``filename`` in the 2023 variant)."""
    for entry in record.files or []:
        if filename in (entry.key, entry.filename):
            return entry
    raise MirrorFailed("404", f"Zenodo record {web.scrub(str(record.id))[:40]} has no file {filename!r}")


def _check_doi(mirror: ZenodoMirror, record: _Record) -> None:
    """The record must carry the DOI the manifest names (a sandbox DOI asked of zenodo.org finds another record)."""
    dois = {record.doi, record.conceptdoi} - {None}
    if mirror.doi and dois and mirror.doi not in dois:
        raise MirrorFailed("bad answer", f"{mirror.base_url()} record {web.scrub(str(record.id))[:40]} has DOI "
                                         f"{web.scrub(str(record.doi))[:80]}, not {mirror.doi}: "
                                         "wrong service or endpoint?")
