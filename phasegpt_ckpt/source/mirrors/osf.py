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
from pydantic import model_validator

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import Endpoint, MirrorBase, Source, get_json

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


def resolve(mirror: OsfMirror, session: requests.Session) -> Source:
    """Find the file's API entry; its download link leads to WaterButler, which serves the bytes.

    Every link OSF's answers hand back (next pages, folder listings, the download) is checked by
    :func:`web.check_url_allowed` before it is asked, and gets ``OSF_TOKEN`` only on the API's own
    origin, or for the download on WaterButler's (:func:`_token_may_go_to`).
    """
    api = mirror.base_url()
    token = web.trusted_token(os.environ.get("OSF_TOKEN"), api, OSF_API, name="OSF_TOKEN")
    what = f"OSF file {mirror.guid or mirror.path}"

    def ask(url: str, params: Optional[dict] = None) -> dict:
        _check_link(url, what)
        if token and not web.on_origin(url, api):
            log.warning(f"{what}: OSF's answer links to {web.scrub(url)}, not {api}: asking it without OSF_TOKEN")
        headers = {"Accept": "application/vnd.api+json", **web.credentials_for(url, token, api)}
        page = get_json(session, url, what=what, token_env="OSF_TOKEN", headers=headers, params=params)
        if not isinstance(page, dict):
            raise MirrorFailed("bad answer", f"{what}: {web.origin(url).host} did not answer a JSON:API document")
        return page

    try:
        if mirror.guid:
            entry = ask(f"{api}/v2/guids/{mirror.guid}/")["data"]  # redirects to /v2/files/<id>/
            if entry.get("type") != "files":
                raise MirrorFailed("not a file", f"OSF guid {mirror.guid} is {entry.get('type')}, not a file: "
                                                 "give node and path instead")
        else:
            root = f"{api}/v2/nodes/{mirror.node}/files/osfstorage/"
            entry = _walk(ask, root, mirror.path.strip("/").split("/"))
        attributes = entry["attributes"]
        if attributes.get("provider") == "osfstorage" and (attributes.get("size") or 0) > OSFSTORAGE_LIMIT:
            raise MirrorFailed("too large", f"OSF lists {attributes['name']} at {attributes['size']} bytes, "
                                            "over OSF Storage's 5 GB single-file limit; trying the next mirror")
        hashes = (attributes.get("extra") or {}).get("hashes") or {}
        url = _download_url(entry["links"], attributes, token, api, what)
        _check_link(url, what)
        return Source(
            label=mirror.describe(),
            url=url,
            headers=web.bearer(token) if token and _token_may_go_to(url, api) else {},
            size=attributes.get("size"),
            sha256=hashes.get("sha256"),
            md5=hashes.get("md5"),
            revision=str(attributes["current_version"]) if attributes.get("current_version") else None,
        )
    except (KeyError, TypeError, AttributeError, IndexError) as err:  # JSON without the fields JSON:API promises
        raise MirrorFailed("bad answer", f"{what}: OSF's answer lacks an expected field "
                                         f"({type(err).__name__}: {web.scrub(str(err))[:80]})") from None


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


def _download_url(links: dict, attributes: dict, token: Optional[str], api: str, what: str) -> str:
    """``links.download`` (osf.io), or with a token WaterButler's own link for the listed version.

    osf.io answers a download with a redirect to WaterButler, another origin, where the engine
    drops credentials; a private file would be refused there. The API itself names WaterButler
    (``links.upload``, which serves GETs as downloads), so the token may go to it directly, when
    it is where WaterButler may be (:func:`_token_may_go_to`); any other upload link is not used.
    """
    upload = links.get("upload")
    if not token or not upload:
        return links["download"]
    if not (isinstance(upload, str) and _token_may_go_to(upload, api)):
        log.warning(f"{what}: OSF's upload link {web.scrub(str(upload))[:200]!r} is not WaterButler's origin: "
                    "downloading through links.download, without OSF_TOKEN")
        return links["download"]
    version = attributes.get("current_version")
    return f"{upload}?action=download&direct" + (f"&version={version}" if version else "")


def _walk(ask, listing: str, names: list[str]) -> dict:
    """Descend ``names`` (folders, then the file) from the ``listing`` URL of a folder."""
    for depth, name in enumerate(names):
        kind = "file" if depth == len(names) - 1 else "folder"
        entry = next((e for e in _entries(ask, listing, name) if e["attributes"]["name"] == name), None)
        if entry is None or entry["attributes"]["kind"] != kind:
            raise MirrorFailed("404", f"OSF Storage has no {kind} {'/'.join(names[: depth + 1])}")
        if kind == "folder":
            listing = entry["relationships"]["files"]["links"]["related"]["href"]
    return entry


def _entries(ask, url: str, name: str):
    """The entries of a listing whose name contains ``name`` (OSF's filter), page after page until
    ``links.next`` is null; the caller picks the exact name."""
    params = {"page[size]": PAGE_SIZE, "filter[name]": name}
    while url:
        page = ask(url, params)
        yield from page["data"]
        url, params = (page.get("links") or {}).get("next"), None  # the next link carries its own query
