"""OSF: a file in a project's OSF Storage, found through API v2 (JSON:API).

A file ``guid`` names it directly; ``node`` + ``path`` walks the listing folder by folder,
following ``links.next`` through pages. OSF publishes size, md5 and sha256, so the
provider's sha256 can be checked against the manifest before any byte moves.

    >>> OsfMirror(node="abcde", path="checkpoints/best_model.pt").describe()
    'osf abcde/checkpoints/best_model.pt'
"""
from __future__ import annotations

import logging
import os
import re
from typing import Literal, Optional

import requests
from pydantic import BaseModel, ConfigDict, Field, model_validator

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import Endpoint, MirrorBase, Source, get_json, parse_answer

log = logging.getLogger(__name__)

OSF_API = "https://api.osf.io"
# WaterButler, OSF's file service, as the public API names it: files.osf.io, files.<region>.osf.io
WATERBUTLER = re.compile(r"files(?:\.[a-z0-9-]+)?\.osf\.io")

OSFSTORAGE_LIMIT = 5 * 1024**3  # OSF Storage refuses single files over 5 GB; larger ones need an add-on
PAGE_SIZE = 100  # OSF caps page[size]; 100 is within its limit


class OsfMirror(MirrorBase):
    """A file ``guid``, or a project ``node`` and the file's ``path`` inside OSF Storage."""

    type: Literal["osf"] = "osf"
    guid: Optional[str] = None
    node: Optional[str] = None
    path: Optional[str] = None
    endpoint: Endpoint = None

    @model_validator(mode="after")
    def _one_identifier(self) -> "OsfMirror":
        given = (self.guid is not None, self.node is not None, self.path is not None)
        if given not in {(True, False, False), (False, True, True)}:
            raise ValueError("an osf mirror needs either 'guid', or 'node' and 'path'")
        return self

    def describe(self) -> str:
        return f"osf {self.guid or f'{self.node}/{self.path}'}"

    def base_url(self) -> str:
        return self.endpoint or OSF_API


class _Hashes(BaseModel):
    model_config = ConfigDict(strict=True)

    sha256: Optional[str] = None
    md5: Optional[str] = None


class _Extra(BaseModel):
    hashes: Optional[_Hashes] = None


class _Attributes(BaseModel):
    """A JSON:API entry's attributes, the parts we read; a size as a string or a hash as a number is refused."""

    model_config = ConfigDict(strict=True)

    name: Optional[str] = None  # a file's or folder's; a node (a guid of a project) has none
    kind: Optional[str] = None  # "file" or "folder"
    provider: Optional[str] = None
    size: Optional[int] = Field(None, ge=0)
    current_version: Optional[int] = None
    extra: Optional[_Extra] = None


class _Entry(BaseModel):
    """One JSON:API resource object: its type, attributes, links and (for a folder) relationships."""

    model_config = ConfigDict(strict=True)

    type: Optional[str] = None
    attributes: _Attributes
    links: dict = {}
    relationships: dict = {}


class _PageLinks(BaseModel):
    next: Optional[str] = None


class _Page(BaseModel):
    """A JSON:API document: one resource (a guid, a file) or a page of them (a listing)."""

    data: _Entry | list[_Entry]
    links: Optional[_PageLinks] = None


def resolve(mirror: OsfMirror, session: requests.Session) -> Source:
    """Find the file's API entry; its download link leads to WaterButler, which serves the bytes.

    Every link OSF's answers hand back (next pages, folder listings, the download) is checked by
    :func:`web.check_url_allowed` before it is asked, and gets ``OSF_TOKEN`` only on the API's own
    origin, or for the download on WaterButler's (:func:`_token_may_go_to`).
    """
    api = mirror.base_url()
    token = web.trusted_token(os.environ.get("OSF_TOKEN"), api, OSF_API, name="OSF_TOKEN")
    what = f"OSF file {mirror.guid or mirror.path}"

    def ask(url: str, params: Optional[dict] = None) -> _Page:
        _check_link(url, what)
        if token and not web.on_origin(url, api):
            log.warning(f"{what}: OSF's answer links to {web.scrub(url)}, not {api}: asking it without OSF_TOKEN")
        headers = {"Accept": "application/vnd.api+json", **web.credentials_for(url, token, api)}
        page = get_json(session, url, what=what, token_env="OSF_TOKEN", headers=headers, params=params)
        return parse_answer(_Page, page, what)

    if mirror.guid:
        entry = ask(f"{api}/v2/guids/{mirror.guid}/").data  # redirects to /v2/files/<id>/
        if not isinstance(entry, _Entry) or entry.type != "files":
            kind = web.scrub(str(entry.type))[:40] if isinstance(entry, _Entry) else "a listing"
            raise MirrorFailed("not a file", f"OSF guid {mirror.guid} is {kind}, not a file: "
                                             "give node and path instead")
    else:
        root = f"{api}/v2/nodes/{mirror.node}/files/osfstorage/"
        entry = _walk(ask, root, mirror.path.strip("/").split("/"), what)
    attributes = entry.attributes
    if attributes.provider == "osfstorage" and (attributes.size or 0) > OSFSTORAGE_LIMIT:
        raise MirrorFailed("too large", f"OSF lists {web.scrub(str(attributes.name))[:100]} at {attributes.size} "
                                        "bytes, over OSF Storage's 5 GB single-file limit; trying the next mirror")
    hashes = (attributes.extra and attributes.extra.hashes) or _Hashes()
    url = _download_url(entry.links, attributes, token, api, what)
    _check_link(url, what)
    return Source(
        label=mirror.describe(),
        url=url,
        headers=web.bearer(token) if token and _token_may_go_to(url, api) else {},
        size=attributes.size,
        sha256=hashes.sha256,
        md5=hashes.md5,
        revision=str(attributes.current_version) if attributes.current_version else None,
    )


def _check_link(url: object, what: str) -> None:
    """A link from OSF's JSON must pass the one URL rule; a refused one fails this mirror, not the fetch."""
    if not isinstance(url, str):
        raise MirrorFailed("bad answer", f"{what}: OSF's answer has no usable link where one belongs")
    try:
        web.check_url_allowed(url)
    except BadInput as err:
        raise MirrorFailed("bad answer", f"{what}: {err}") from None


def _token_may_go_to(url: str, api: str) -> bool:
    """May ``OSF_TOKEN`` (already trusted to ``api``) go with a download from ``url``?

    Yes on the API's own origin; on WaterButler as OSF documents it for its public API
    (``https://files.osf.io``, ``https://files.<region>.osf.io``); and on an origin the user lists in
    ``$PHASEGPT_TRUSTED_ENDPOINTS`` (the WaterButler of a private OSF deployment, an emulator).
    Whatever else the API's answer names gets no token.

    >>> _token_may_go_to("https://files.de1.osf.io/v1/resources/abcde/providers/osfstorage/1", OSF_API)
    True
    >>> _token_may_go_to("https://files.osf.io.evil.example/v1/x", OSF_API)
    False
    """
    if web.on_origin(url, api) or web.listed(url):
        return True
    if not web.on_origin(api, OSF_API):
        return False
    try:
        scheme, host, port = web.origin(url)
    except BadInput:
        return False
    return scheme == "https" and port == 443 and bool(WATERBUTLER.fullmatch(host))


def _download_url(links: dict, attributes: _Attributes, token: Optional[str], api: str, what: str) -> str:
    """``links.download`` (osf.io), or with a token WaterButler's own link for the listed version.

    osf.io answers a download with a redirect to WaterButler, another origin, where the engine
    drops credentials; a private file would be refused there. The API itself names WaterButler
    (``links.upload``, which serves GETs as downloads), so the token may go to it directly, when
    it is where WaterButler may be (:func:`_token_may_go_to`); any other upload link is not used.
    """
    upload, download = links.get("upload"), links.get("download")
    if not token or not upload:
        return download
    if not (isinstance(upload, str) and _token_may_go_to(upload, api)):
        log.warning(f"{what}: OSF's upload link {web.scrub(str(upload))[:200]!r} is not WaterButler's origin: "
                    "downloading through links.download, without OSF_TOKEN")
        return download
    version = attributes.current_version
    return f"{upload}?action=download&direct" + (f"&version={version}" if version else "")


def _walk(ask, listing: str, names: list[str], what: str) -> _Entry:
    """Descend ``names`` (folders, then the file) from the ``listing`` URL of a folder."""
    for depth, name in enumerate(names):
        kind = "file" if depth == len(names) - 1 else "folder"
        entry = next((e for e in _entries(ask, listing, name) if e.attributes.name == name), None)
        if entry is None or entry.attributes.kind != kind:
            raise MirrorFailed("404", f"OSF Storage has no {kind} {'/'.join(names[: depth + 1])}")
        if kind == "folder":
            listing = _folder_listing(entry, what)
    return entry


def _folder_listing(folder: _Entry, what: str) -> object:
    """Where a folder's entries are listed: ``relationships.files.links.related.href`` (checked where it is asked)."""
    link = folder.relationships
    for key in ("files", "links", "related", "href"):
        link = link.get(key) if isinstance(link, dict) else None
    if link is None:
        raise MirrorFailed("bad answer", f"{what}: OSF lists folder {folder.attributes.name} without its files link")
    return link


def _entries(ask, url: str, name: str):
    """The entries of a listing whose name contains ``name`` (OSF's filter), page after page until
    ``links.next`` is null; the caller picks the exact name."""
    params = {"page[size]": PAGE_SIZE, "filter[name]": name}
    while url:
        page = ask(url, params)
        yield from page.data if isinstance(page.data, list) else [page.data]
        url, params = page.links and page.links.next, None  # the next link carries its own query
