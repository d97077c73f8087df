"""Google Drive on 127.0.0.1 (PROVIDERS.md §4.6): host A stands for drive.google.com, ``content`` for
drive.usercontent.google.com.

Host A answers ``/uc?id=`` and ``/open?id=`` with a 303 to host B's ``/download``, which serves
small files at once and large ones only once the virus-scan form (on one line, a fresh
``uuid`` per page, good for the file it was issued for only) has been submitted; a file's
``uuid_for`` makes its page hand out a uuid issued for another file. Switchable pages per
file: ``quota`` (Quota exceeded), ``private`` (a redirect to a sign-in page) and ``legacy``
(the pre-2024 confirm link, which gdown prefixes with docs.google.com: route that host to
host A too). ``nid_cookie=True`` adds Google's ``Set-Cookie: NID=...; Domain=.google.com``
to every answer of both hosts::

    with DriveEmulator(nid_cookie=True) as drive:
        drive.add("1" + "a" * 32, "best_model.pt", data, large=True)
        gdown_routed_to(drive, monkeypatch)      # real gdown now talks to it
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Literal

from .fileserver import Blob, FileServer, Request

Mode = Literal["public", "quota", "private", "legacy"]

QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>\n"
    '<div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing '
    "the file again later. If the file you are trying to access is particularly large or is shared with many people, "
    "it may take up to 24 hours to be able to view or download the file.</p></div>\n</body></html>"
)
SIGN_IN_PAGE = ("<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head><body>\n"
                '<form action="/signin/v2/identifier" method="post"><input type="email" name="identifier"></form>\n'
                "</body></html>")
NOT_FOUND_PAGE = ("<!DOCTYPE html><html><head><title>Error 404 (Not Found)!!1</title></head><body>\n"
                  "<p><b>404.</b> <ins>That’s an error.</ins></p>\n</body></html>")


@dataclass
class DriveFile:
    name: str
    blob: Blob
    large: bool = False  # too large to scan: the virus-scan warning comes first
    mode: Mode = "public"
    uuid_for: str | None = None  # set: its warning page hands out a uuid issued for that other file

    @property
    def legacy_token(self) -> str:
        return hashlib.sha1(self.blob.data).hexdigest()[:4].upper()


class DriveEmulator(FileServer):
    def __init__(self, nid_cookie: bool = False):
        super().__init__()
        self.content = FileServer()
        self.drive_files: dict[str, DriveFile] = {}  # FileServer.files is taken
        self.issued_uuids: dict[str, str] = {}  # uuid -> the file id whose warning page carried it
        self.nid_cookie = nid_cookie
        self.route(r"/(uc|open)", self.uc)
        self.route(r"/ServiceLogin", lambda request: request.send_html(SIGN_IN_PAGE))
        self.content.route(r"/download", self.download)

    def add(self, file_id: str, name: str, data: bytes, large: bool = False, mode: Mode = "public") -> DriveFile:
        blob = Blob(data, headers={"Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"})
        self.drive_files[file_id] = drive_file = DriveFile(name, blob, large, mode)
        return drive_file

    def uc(self, request: Request) -> None:
        """Host A: everything goes on to host B, except missing and private files."""
        file_id = request.query.get("id", "")
        drive_file = self.drive_files.get(file_id)
        self._set_cookie(request)
        if drive_file is None:
            return request.send_html(NOT_FOUND_PAGE, 404)
        if drive_file.mode == "private":
            return request.redirect(self.url("/ServiceLogin?continue=https://drive.google.com/uc"))
        confirm = f"&confirm={request.query['confirm']}" if "confirm" in request.query else ""
        request.redirect(self.content.url(f"/download?id={file_id}&export=download{confirm}"), 303)

    def download(self, request: Request) -> None:
        """Host B: the file, or the page standing in front of it."""
        file_id, confirm = request.query.get("id", ""), request.query.get("confirm")
        drive_file = self.drive_files.get(file_id)
        self._set_cookie(request)
        if drive_file is None:
            return request.send_html(NOT_FOUND_PAGE, 404)
        if drive_file.mode == "quota":
            return request.send_html(QUOTA_PAGE)
        if drive_file.mode == "legacy" and confirm != drive_file.legacy_token:
            return request.send_html(self._legacy_page(file_id, drive_file), headers={
                "Set-Cookie": f"download_warning_{file_id}={drive_file.legacy_token}; Path=/"})
        if drive_file.large and drive_file.mode != "legacy" and not (
                confirm == "t" and self.issued_uuids.get(request.query.get("uuid")) == file_id):
            return request.send_html(self._virus_scan_page(file_id, drive_file))
        request.send_blob(drive_file.blob)

    def _virus_scan_page(self, file_id: str, drive_file: DriveFile) -> str:
        fresh = str(uuid.uuid4())
        self.issued_uuids[fresh] = drive_file.uuid_for or file_id
        hidden = "".join(f'<input type="hidden" name="{name}" value="{value}">' for name, value in (
            ("id", file_id), ("export", "download"), ("authuser", "0"), ("confirm", "t"), ("uuid", fresh)))
        return ("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>\n"
                f'<p class="uc-warning-subcaption">{drive_file.name} is too large for Google to scan for viruses. '
                "Would you still like to download this file?</p>\n"
                f'<form id="download-form" action="{self.content.url("/download")}" method="get">'
                f'<input type="submit" id="uc-download-link" value="Download anyway"/>{hidden}</form>\n'
                "</body></html>")

    def _legacy_page(self, file_id: str, drive_file: DriveFile) -> str:
        return ("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>\n"
                f'<a id="uc-download-link" href="/uc?export=download&amp;confirm={drive_file.legacy_token}'
                f'&amp;id={file_id}">Download anyway</a>\n</body></html>')

    def _set_cookie(self, request: Request) -> None:
        if self.nid_cookie:
            request.extra_headers["Set-Cookie"] = (f"NID=511={uuid.uuid4().hex}; "
                                                   "expires=Fri, 01-Jan-2038 00:00:00 GMT; path=/; "
                                                   "domain=.google.com; HttpOnly")

    def start(self) -> "DriveEmulator":
        self.content.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.content.stop()


def gdown_routed_to(drive: DriveEmulator, monkeypatch) -> None:
    """Make real gdown talk to ``drive``: it hard-codes Google's hosts, so its session's requests for
    them are rerouted (PROVIDERS.md §4.5, workaround 2) for the rest of the test."""
    import sys

    import gdown.download  # noqa: F401  (the module, for sys.modules)

    from phasegpt_ckpt.source.mirrors.gdrive import route_google_hosts

    module = sys.modules["gdown.download"]  # gdown.download is also the name of the function
    real_get_session = module._get_session

    def get_session(**kwargs):
        session, cookies_file = real_get_session(**kwargs)
        route_google_hosts(session, drive.origin)
        return session, cookies_file

    monkeypatch.setattr(module, "_get_session", get_session)
