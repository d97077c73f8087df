"""Google Drive: gdown reads Drive's pages to find the download URL; our engine moves the bytes.

``/uc?id=<ID>`` answers with the file itself, or with an HTML page: the virus-scan warning
(a form to submit), a legacy confirm link, "quota exceeded", or a sign-in page for a file
that is not shared. gdown's ``get_url_from_gdrive_confirmation`` knows those pages; we
follow them here and stop at the file's headers, so the transfer keeps our verification,
locking and resume rules. Cookies stay in an in-memory session: gdown's own ``download``
would save them to ``~/.cache/gdown``.

    >>> GdriveMirror(id="1AbCdEfGhIjKlMnOpQrStUvWxYz012345").describe()
    'gdrive 1AbCdEfGhIjKlMnOpQrStUvWxYz012345'
"""
from __future__ import annotations

import re
from typing import Literal

import requests
from pydantic import model_validator

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import Endpoint, MirrorBase, Source, get

FILE_ID = re.compile(r"[-\w]{25,}")
DRIVE = "https://drive.google.com"
# Hosts gdown's pages lead to: the uc host, and docs.google.com, its prefix for legacy confirm links.
GOOGLE_HOSTS = ("https://drive.google.com/", "https://docs.google.com/")
MAX_PAGE_BYTES = 2**20  # Drive's warning pages are a few KB
MAX_PAGES = 4  # uc -> warning page -> confirmed file; Drive asking again and again means it won't serve it


class GdriveMirror(MirrorBase):
    """A Drive file shared as "Anyone with the link"; ``endpoint`` stands in for drive.google.com."""

    type: Literal["gdrive"] = "gdrive"
    id: str
    endpoint: Endpoint = None

    @model_validator(mode="after")
    def _valid_id(self) -> "GdriveMirror":
        if self.published and not FILE_ID.fullmatch(self.id):
            raise ValueError(f"not a Google Drive file id (25+ letters, digits, - or _): {self.id}")
        return self

    def describe(self) -> str:
        return f"gdrive {self.id}"


def resolve(mirror: GdriveMirror, session: requests.Session) -> Source:
    """Follow Drive's pages for ``mirror.id`` up to the file; the Source carries the cookies it set."""
    drive = requests.Session()  # this file's own cookie jar, kept in memory only
    drive.headers.update(session.headers)
    if mirror.endpoint:
        route_google_hosts(drive, mirror.endpoint)
    url = f"{DRIVE}/uc?id={mirror.id}&export=download"
    for _ in range(MAX_PAGES):
        with get(drive, url, what=f"Google Drive file {mirror.id}", stream=True) as response:
            if response.ok and "Content-Disposition" in response.headers:
                size = response.headers.get("Content-Length", "")
                return Source(label=mirror.describe(), url=response.url, session=drive,
                              size=int(size) if size.isascii() and size.isdigit() and len(size) <= 19 else None,
                              stable_url=f"{DRIVE}/uc?id={mirror.id}")  # a confirmed link carries a fresh uuid
            if response.status_code == 404:
                raise MirrorFailed("404", f"Google Drive has no file {mirror.id}")
            if not response.headers.get("Content-Type", "").startswith("text/html"):
                status = response.status_code
                raise MirrorFailed(str(status), f"Google Drive answered HTTP {status} for file {mirror.id}")
            page = _page_text(response, mirror.id)
        # Imported here: gdown (and BeautifulSoup) load only when a Drive page must be read.
        from gdown.download import get_url_from_gdrive_confirmation
        from gdown.exceptions import FileURLRetrievalError

        try:
            url = get_url_from_gdrive_confirmation(page)
        except FileURLRetrievalError:
            if "Quota exceeded" in page:
                raise MirrorFailed("quota", "quota exceeded on Google Drive; trying the next mirror") from None
            raise MirrorFailed("not shared", f"Google Drive will not hand out file {mirror.id}: "
                                             "is it shared as 'Anyone with the link'?") from None
        try:  # the page names the next address: the one URL rule before it is asked
            web.check_url_allowed(url)
        except BadInput as err:
            raise MirrorFailed("bad answer", f"Google Drive's page for file {mirror.id} links to a refused "
                                             f"address: {err}") from None
    raise MirrorFailed("bad answer", f"Google Drive kept answering pages instead of file {mirror.id}")


def _page_text(response: requests.Response, file_id: str) -> str:
    """Drive's HTML page, read up to :data:`MAX_PAGE_BYTES`: a server answering gigabytes of "page" fails this
    mirror rather than filling memory."""
    try:
        head = next(response.iter_content(MAX_PAGE_BYTES + 1), b"")  # one read of that many bytes, or to the end
    except requests.RequestException as err:
        raise MirrorFailed("network", f"Google Drive's page for file {file_id} broke off "
                                      f"({type(err).__name__})") from None
    if len(head) > MAX_PAGE_BYTES:
        raise MirrorFailed("bad answer", f"Google Drive answered a page of over {MAX_PAGE_BYTES // 2**20} MiB "
                                         f"for file {file_id}")
    return head.decode("utf-8", errors="replace")  # Drive writes UTF-8; a charset a server names may be no codec


def route_google_hosts(session: requests.Session, endpoint: str) -> None:
    """Send ``session``'s requests for Drive's Google hosts to ``endpoint`` instead (a mirror, an emulator).

    Works for any code that uses ``session``, gdown's own included.
    """
    web.reroute(session, endpoint, *GOOGLE_HOSTS)
