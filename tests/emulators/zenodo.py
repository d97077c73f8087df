"""Zenodo's records API on 127.0.0.1 (PROVIDERS.md §2.5), in its legacy-compatible JSON shape.

``/api/records/<id>`` with absolute links; a concept id answers 404 there and 302 on
``/versions/latest``; files at ``.../files/<key>/content`` (``inline``, as the InvenioRDM API
docs show) and on the web at ``/records/<id>/files/<key>`` (``inline``; with ``?download=1``
as an ``attachment``), with ``ETag: "md5:<hex>"`` and ``Content-MD5`` of the current bytes.
Restricted records need a Bearer token or ``?access_token``, else 403. ``legacy=True`` serves
the 2023 variant (``filename``, ``filesize``, a bare checksum).

Every answer carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds) for a
fixed window of ``rate_limit`` requests per ``rate_window`` seconds (60 a minute, as seen for
anonymous users); past it, 429 with ``Retry-After``. ``sandbox=True`` stands for
sandbox.zenodo.org: the same routes, DOIs under the test prefix ``10.5072``::

    with ZenodoEmulator() as zenodo, ZenodoEmulator(sandbox=True) as sandbox:
        zenodo.add_record(1001, {"best_model.pt": data}, concept=1000)
        zenodo.add_record(1002, {"best_model.pt": data2}, concept=1000)   # the latest version
        zenodo.limit_rate(1, per=1.0)                                      # 429 from the second request
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import quote, unquote

from .fileserver import Blob, FileServer, Request


@dataclass
class Record:
    id: int
    concept: int
    files: dict[str, Blob] = field(default_factory=dict)
    token: Optional[str] = None  # set: restricted, readable with this token only
    legacy: bool = False


class ZenodoEmulator(FileServer):
    def __init__(self, sandbox: bool = False):
        super().__init__()
        self.records: dict[int, Record] = {}
        self.doi_prefix = "10.5072" if sandbox else "10.5281"
        self.rate_limit, self.rate_window = 60, 60.0
        self._window: tuple[float, int] = (0.0, 0)  # (start, requests in it)
        records = r"/api/records/(?P<id>\d+)"
        self.route(records, self.record)
        self.route(records + r"/versions/latest", self.latest)
        self.route(records + r"/files", self.entries)
        self.route(records + r"/files/(?P<key>[^/]+)", self.entry)
        self.route(records + r"/files/(?P<key>[^/]+)/content", self.content)
        self.route(r"/records/(?P<id>\d+)/files/(?P<key>[^/]+)", self.content)

    def add_record(self, record_id: int, files: dict[str, bytes], concept: Optional[int] = None, **options) -> Record:
        """A published version; versions sharing a ``concept`` id are ordered by record id."""
        blobs = {key: Blob(data, etag=lambda data: f'"md5:{hashlib.md5(data).hexdigest()}"')
                 for key, data in files.items()}
        self.records[record_id] = record = Record(record_id, concept or record_id - 1, blobs, **options)
        return record

    def limit_rate(self, requests: int, per: float) -> None:
        """Allow ``requests`` per window of ``per`` seconds, the first window starting now."""
        with self._lock:
            self.rate_limit, self.rate_window, self._window = requests, per, (time.time(), 0)

    def content_path(self, record_id: int, key: str) -> str:
        """The API download path of a file (where faults are switched)."""
        return f"/api/records/{record_id}/files/{quote(key, safe='')}/content"

    # -- routes ---------------------------------------------------------------------------------
    def record(self, request: Request) -> None:
        record = self._readable(request)
        if record:
            request.send_json(self._record_json(record))

    def latest(self, request: Request) -> None:
        wanted = int(request.params["id"])
        concept = self.records[wanted].concept if wanted in self.records else wanted
        versions = [r.id for r in self.records.values() if r.concept == concept]
        if not versions:
            return _not_found(request, f"Record '{wanted}' not found.")
        request.redirect(self.url(f"/api/records/{max(versions)}"))

    def entries(self, request: Request) -> None:
        record = self._readable(request)
        if record:
            entries = [self._file_json(record, key, listing=True) for key in record.files]
            request.send_json({"enabled": True, "entries": entries})

    def entry(self, request: Request) -> None:
        record, key = self._readable(request), unquote(request.params.get("key", ""))
        if record and self._has(request, record, key):
            request.send_json(self._file_json(record, key, listing=True))

    def content(self, request: Request) -> None:
        record, key = self._readable(request), unquote(request.params["key"])
        if record and self._has(request, record, key):
            blob = record.files[key]
            attachment = not request.path.startswith("/api/") and request.query.get("download") == "1"
            request.send_blob(blob, headers={
                "Content-MD5": hashlib.md5(blob.data).hexdigest(),
                "Content-Disposition": f"{'attachment' if attachment else 'inline'}; filename={quote(key)}"})

    def _dispatch(self, request: Request) -> None:
        """Count the request in the rate-limit window; past the limit, 429 instead of the answer."""
        now = time.time()
        with self._lock:
            start, used = self._window if now < self._window[0] + self.rate_window else (now, 0)
            self._window = (start, used + 1)
        reset = start + self.rate_window
        request.extra_headers = {"X-RateLimit-Limit": str(self.rate_limit),
                                 "X-RateLimit-Remaining": str(max(0, self.rate_limit - used - 1)),
                                 "X-RateLimit-Reset": str(math.ceil(reset))}
        if used >= self.rate_limit:
            return request.send_json({"status": 429, "message": "Too many requests."}, 429,
                                     headers={"Retry-After": str(math.ceil(reset - now))})
        super()._dispatch(request)

    # -- helpers --------------------------------------------------------------------------------
    def _readable(self, request: Request) -> Optional[Record]:
        """The record, or None after answering 404 (unknown, or a concept id) or 403 (restricted)."""
        record = self.records.get(int(request.params["id"]))
        if record is None:
            return _not_found(request, f"Record '{request.params['id']}' not found.")
        bearer = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        token = bearer or request.query.get("access_token")
        if record.token is not None and token != record.token:
            return request.send_json({"status": 403, "message": request.echoed("Permission denied.")}, 403)
        return record

    def _has(self, request: Request, record: Record, key: str) -> bool:
        if key not in record.files:
            _not_found(request, f"Record '{record.id}' has no file '{key}'.")
        return key in record.files

    def _record_json(self, record: Record) -> dict:
        api = self.url(f"/api/records/{record.id}")
        return {
            "id": record.id, "recid": str(record.id), "conceptrecid": str(record.concept),
            "doi": f"{self.doi_prefix}/zenodo.{record.id}", "conceptdoi": f"{self.doi_prefix}/zenodo.{record.concept}",
            "title": "PhaseGPT checkpoints", "metadata": {"title": "PhaseGPT checkpoints", "access_right": "open"},
            "files": [self._file_json(record, key) for key in record.files],
            "links": {"self": api, "self_html": self.url(f"/records/{record.id}"), "files": f"{api}/files",
                      "latest": f"{api}/versions/latest", "versions": f"{api}/versions"},
            "status": "published", "state": "done", "submitted": True,
        }

    def _file_json(self, record: Record, key: str, listing: bool = False) -> dict:
        """A file entry; in a record ``links.self`` is the content, in ``/files`` it is the entry itself."""
        blob = record.files[key]
        md5 = hashlib.md5(blob.data).hexdigest()
        content = self.url(self.content_path(record.id, key))
        links = {"self": content.removesuffix("/content"), "content": content} if listing else {"self": content}
        if record.legacy:
            return {"id": md5, "filename": key, "filesize": len(blob.data), "checksum": md5, "links": links}
        return {"id": md5, "key": key, "size": len(blob.data), "checksum": f"md5:{md5}",
                "mimetype": blob.content_type, "status": "completed", "links": links}


def _not_found(request: Request, message: str) -> None:
    request.send_json({"status": 404, "message": request.echoed(message)}, 404)
