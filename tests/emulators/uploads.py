"""What upload emulators add to :class:`~.fileserver.FileServer`: DELETE, and the faults of a request body.

``cut_upload(path, after=N)`` reads N bytes of the next upload's body, then closes the connection:
nothing is committed (a network drop mid-body). ``lose_answer(path)`` does the work (the upload
lands, the record is published) and then closes the connection instead of answering: the client
cannot tell it worked, and its retry must not duplicate anything::

    class ZenodoEmulator(UploadServer): ...
    zenodo.cut_upload(bucket_path, after=1000)          # the next PUT to that path dies mid-body
    zenodo.lose_answer(publish_path, method="POST")     # the next publish lands, its 202 never arrives
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

from .fileserver import FileServer, LoggedRequest, Request, _Handler


@dataclass
class Switch:
    method: str
    times: int
    after: int = 0  # body bytes read before a cut


class _UploadHandler(_Handler):
    def do_DELETE(self):
        self._serve()

    def _serve(self):
        owner: UploadServer = self.server.owner
        path = urlsplit(self.path).path
        cut = owner._take(owner._cuts, path, self.command)
        if cut is None:
            return super()._serve()
        with owner._lock:
            owner.log.append(LoggedRequest(self.command, path, urlsplit(self.path).query, CaseInsensitiveDict(self.headers.items())))
        self.rfile.read(min(cut.after, int(self.headers.get("Content-Length") or 0)))
        self.drop_connection()


class UploadServer(FileServer):
    """A FileServer that takes DELETE and whose uploads can be cut mid-body or lose their answer."""

    def __init__(self):
        super().__init__()
        self._httpd.RequestHandlerClass = _UploadHandler
        self._cuts: dict[str, Switch] = {}
        self._lost: dict[str, Switch] = {}

    def cut_upload(self, path: str, after: int, method: str = "PUT", times: int = 1) -> None:
        """The next ``times`` ``method`` requests to ``path`` close after ``after`` body bytes, committing nothing."""
        self._cuts[path] = Switch(method, times, after)

    def lose_answer(self, path: str, method: str = "PUT", times: int = 1) -> None:
        """The next ``times`` ``method`` requests to ``path`` are carried out, then closed unanswered."""
        self._lost[path] = Switch(method, times)

    def _take(self, switches: dict[str, Switch], path: str, method: str) -> Optional[Switch]:
        with self._lock:
            switch = switches.get(path)
            if switch is None or switch.method != method or switch.times <= 0:
                return None
            switch.times -= 1
            return switch

    def _dispatch(self, request: Request) -> None:
        if self._take(self._lost, request.path, request.method) is None:
            return super()._dispatch(request)
        request._handler.wfile = io.BytesIO()  # the work is done; its answer never leaves
        super()._dispatch(request)
        request.logged.status = None  # logged as what the client saw: no answer
        request._handler.drop_connection()
