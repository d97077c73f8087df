"""OSF: a file in a project's OSF Storage, found through API v2 (JSON:API).

A file ``guid`` names it directly; ``node`` + ``path`` walks the listing folder by folder,
following ``links.next`` through pages. OSF publishes size, md5 and sha256, so the
provider's sha256 can be checked against the manifest before any byte moves.

    >>> OsfMirror(node="abcde", path="checkpoints/best_model.pt").describe()
    'osf abcde/checkpoints/best_model.pt'
"""
from __future__ import annotations

import os
from typing import Literal, Optional

import requests
from pydantic import model_validator

from phasegpt_ckpt.errors import MirrorFailed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import Endpoint, MirrorBase, Source, get_json

OSF_API = "https://api.osf.io"

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
    """Find the file's API entry; its download link leads to WaterButler, which serves the bytes."""
    api = mirror.base_url()
    token = web.trusted_token(os.environ.get("OSF_TOKEN"), api, OSF_API, name="OSF_TOKEN")
    ask = dict(what=f"OSF file {mirror.guid or mirror.path}", token_env="OSF_TOKEN",
               headers={"Accept": "application/vnd.api+json", **web.bearer(token)})
    if mirror.guid:
        entry = get_json(session, f"{api}/v2/guids/{mirror.guid}/", **ask)["data"]  # redirects to /v2/files/<id>/
        if entry.get("type") != "files":
            raise MirrorFailed("not a file", f"OSF guid {mirror.guid} is {entry.get('type')}, not a file: "
                                             "give node and path instead")
    else:
        root = f"{api}/v2/nodes/{mirror.node}/files/osfstorage/"
        entry = _walk(session, root, mirror.path.strip("/").split("/"), ask)
    attributes = entry["attributes"]
    if attributes.get("provider") == "osfstorage" and (attributes.get("size") or 0) > OSFSTORAGE_LIMIT:
        raise MirrorFailed("too large", f"OSF lists {attributes['name']} at {attributes['size']} bytes, "
                                        "over OSF Storage's 5 GB single-file limit; trying the next mirror")
    hashes = (attributes.get("extra") or {}).get("hashes") or {}
    url = _download_url(entry["links"], attributes, token)
    return Source(
        label=mirror.describe(),
        url=url,
        # WaterButler, where the trusted API says the bytes are, may have the token too
        headers=web.credentials_for(url, token, api, entry["links"].get("upload") or api),
        size=attributes.get("size"),
        sha256=hashes.get("sha256"),
        md5=hashes.get("md5"),
        revision=str(attributes["current_version"]) if attributes.get("current_version") else None,
    )


def _download_url(links: dict, attributes: dict, token: Optional[str]) -> str:
    """``links.download`` (osf.io), or with a token WaterButler's own link for the listed version.

    osf.io answers a download with a redirect to WaterButler, another origin, where the engine
    drops credentials; a private file would be refused there. The API itself names WaterButler
    (``links.upload``, which serves GETs as downloads), so the token may go to it directly.
    """
    if not token or not links.get("upload"):
        return links["download"]
    version = attributes.get("current_version")
    return f"{links['upload']}?action=download&direct" + (f"&version={version}" if version else "")


def _walk(session: requests.Session, listing: str, names: list[str], ask: dict) -> dict:
    """Descend ``names`` (folders, then the file) from the ``listing`` URL of a folder."""
    for depth, name in enumerate(names):
        kind = "file" if depth == len(names) - 1 else "folder"
        entry = next((e for e in _entries(session, listing, ask, name) if e["attributes"]["name"] == name), None)
        if entry is None or entry["attributes"]["kind"] != kind:
            raise MirrorFailed("404", f"OSF Storage has no {kind} {'/'.join(names[: depth + 1])}")
        if kind == "folder":
            listing = entry["relationships"]["files"]["links"]["related"]["href"]
    return entry


def _entries(session: requests.Session, url: str, ask: dict, name: str):
    """The entries of a listing whose name contains ``name`` (OSF's filter), page after page until
    ``links.next`` is null; the caller picks the exact name."""
    params = {"page[size]": PAGE_SIZE, "filter[name]": name}
    while url:
        page = get_json(session, url, params=params, **ask)
        yield from page["data"]
        url, params = (page.get("links") or {}).get("next"), None  # the next link carries its own query
