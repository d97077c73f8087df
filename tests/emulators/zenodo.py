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

The deposit API (PUBLISHING.md §1) creates, fills, describes, publishes and re-versions drafts for
tokens given with :meth:`ZenodoEmulator.allow`; a published deposition becomes a record above. The
bucket API takes PUT (octet-stream or no type; replaces a key; quota and file count judged from the
Content-Length), the deposition PUT replaces the metadata whole, publish checks the required fields
and at least one file. Faults beyond the FileServer's: :meth:`~.uploads.UploadServer.cut_upload`,
:meth:`~.uploads.UploadServer.lose_answer`, and ``checksum_lies`` (the PUT answers another md5)::

    zenodo.allow("tok")
    zenodo.lose_answer("/api/deposit/depositions/100002/actions/publish", method="POST")
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Optional
from urllib.parse import quote, unquote

from .fileserver import Blob, Request
from .uploads import UploadServer

WRITE, ACTIONS = "deposit:write", "deposit:actions"
UPLOAD_TYPES = {"publication", "poster", "presentation", "dataset", "image", "video", "software", "lesson",
                "physicalobject", "other"}
LICENSES = {"cc-by-4.0", "cc0-1.0", "mit", "apache-2.0", "bsd-3-clause", "gpl-3.0-or-later"}
METADATA_FIELDS = {"upload_type", "publication_date", "title", "creators", "description", "access_right", "license",
                   "version", "keywords", "notes", "communities", "related_identifiers", "embargo_date",
                   "access_conditions", "imprint_publisher", "prereserve_doi"}
DATE = "2025-01-01T00:00:00.000000+00:00"


@dataclass
class Record:
    id: int
    concept: int
    files: dict[str, Blob] = field(default_factory=dict)
    token: Optional[str] = None  # set: restricted, readable with this token only
    legacy: bool = False


@dataclass
class Deposition:
    id: int
    concept: int
    token: str  # its owner's
    metadata: dict = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    state: str = "unsubmitted"  # "inprogress": published, edit open; "done": published
    submitted: bool = False

    @property
    def bucket(self) -> str:
        """Its bucket's id: a UUID derived from the deposition id, so a test can name it in advance."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bucket/{self.id}"))


class ZenodoEmulator(UploadServer):
    def __init__(self, sandbox: bool = False):
        super().__init__()
        self.records: dict[int, Record] = {}
        self.depositions: dict[int, Deposition] = {}
        self.tokens: dict[str, set[str]] = {}  # deposit token -> scopes
        self.max_file_size, self.max_files = 50 * 10**9, 100
        self.checksum_lies = False  # the bucket PUT answers an md5 that is not the bytes'
        self.discarded: list[int] = []
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
        deposits = r"/api/deposit/depositions"
        self.route(deposits, self.depositions_list, ("GET",))
        self.route(deposits, self.create, ("POST",))
        self.route(deposits + r"/(?P<dep>\d+)", self.deposition, ("GET", "PUT", "DELETE"))
        self.route(deposits + r"/(?P<dep>\d+)/actions/(?P<action>\w+)", self.action, ("POST",))
        self.route(r"/api/files/(?P<bucket>[\w-]+)", self.bucket, ("GET",))
        self.route(r"/api/files/(?P<bucket>[\w-]+)/(?P<key>[^/]+)", self.bucket_file, ("PUT", "DELETE"))

    def add_record(self, record_id: int, files: dict[str, bytes], concept: Optional[int] = None, **options) -> Record:
        """A published version; versions sharing a ``concept`` id are ordered by record id."""
        blobs = {key: Blob(data, etag=lambda data: f'"md5:{hashlib.md5(data).hexdigest()}"')
                 for key, data in files.items()}
        self.records[record_id] = record = Record(record_id, concept or record_id - 1, blobs, **options)
        return record

    def allow(self, token: str, scopes: tuple[str, ...] = (WRITE, ACTIONS)) -> None:
        """Let ``token`` deposit, with these scopes."""
        self.tokens[token] = set(scopes)

    def deposition_path(self, deposition_id: int, action: str = "") -> str:
        """The API path of a deposition, or of one of its actions (where faults are switched)."""
        return f"/api/deposit/depositions/{deposition_id}" + (f"/actions/{action}" if action else "")

    def bucket_path(self, deposition_id: int, key: str) -> str:
        return f"/api/files/{Deposition(deposition_id, 0, '').bucket}/{quote(key, safe='')}"

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

    # -- the deposit API (PUBLISHING.md §1) -----------------------------------------------------
    def depositions_list(self, request: Request) -> None:
        token = self._authorized(request, WRITE)
        if token is None:
            return
        wanted = request.query.get("status")
        mine = [d for d in self.depositions.values() if d.token == token and wanted in (
            None, "published" if d.state == "done" else "draft")]
        request.send_json([self._deposition_json(d) for d in mine])

    def create(self, request: Request) -> None:
        token = self._authorized(request, WRITE)
        body = self._json_body(request) if token is not None else None
        if body is None:
            return
        unknown = set(body) - {"metadata"}
        if unknown:
            return _invalid(request, [(sorted(unknown)[0], "Unknown field.")])
        problems = _metadata_problems(body.get("metadata") or {})
        if problems:
            return _invalid(request, problems)
        new_id = self._next_id()
        deposition = Deposition(new_id, new_id - 1, token, metadata=_with_defaults(body.get("metadata") or {}))
        self.depositions[new_id] = deposition
        request.send_json(self._deposition_json(deposition), 201)

    def deposition(self, request: Request) -> None:
        deposition = self._owned(request, WRITE)
        if deposition is None:
            return
        if request.method == "GET":
            return request.send_json(self._deposition_json(deposition))
        if request.method == "DELETE":
            return self._discard(request, deposition)
        body = self._json_body(request)
        if body is None:
            return
        if deposition.state == "done":
            return _fail(request, 403, "You do not have permission to edit this published deposition.")
        problems = _metadata_problems(body.get("metadata") or {})
        if problems:
            return _invalid(request, problems)
        deposition.metadata = _with_defaults(body.get("metadata") or {})  # a full replacement, not a merge
        request.send_json(self._deposition_json(deposition))

    def action(self, request: Request) -> None:
        deposition = self._owned(request, ACTIONS)
        if deposition is None:
            return
        act = {"publish": self._publish, "discard": self._discard, "edit": self._edit,
               "newversion": self._new_version}.get(request.params["action"])
        if act is None:
            return _fail(request, 404, "Not found.")
        act(request, deposition)

    def bucket(self, request: Request) -> None:
        deposition = self._by_bucket(request)
        if deposition is not None:
            request.send_json({"id": deposition.bucket, "size": sum(map(len, deposition.files.values())),
                               "contents": [self._bucket_file_json(deposition, key) for key in deposition.files]})

    def bucket_file(self, request: Request) -> None:
        deposition = self._by_bucket(request)
        if deposition is None:
            return
        key = unquote(request.params["key"])
        if deposition.state == "done":
            return _fail(request, 403, "Forbidden.")
        if request.method == "DELETE":
            if deposition.files.pop(key, None) is None:
                return _fail(request, 404, "Not found.")
            return request.send(204)
        if request.headers.get("Content-Type", "application/octet-stream") != "application/octet-stream":
            return _fail(request, 415, "Invalid 'Content-Type' header. Expected one of: application/octet-stream")
        if "Content-Length" not in request.headers:
            return _fail(request, 411, "Length required.")
        if int(request.headers["Content-Length"]) > self.max_file_size:
            return _fail(request, 400, "Maximum file size exceeded.")
        if key not in deposition.files and len(deposition.files) >= self.max_files:
            return _fail(request, 400, "Uploading selected files will result in exceeding the max amount per record.")
        deposition.files.pop(key, None)  # the server deletes, then re-creates
        deposition.files[key] = request.body
        request.send_json(self._bucket_file_json(deposition, key), 201)

    def _publish(self, request: Request, deposition: Deposition) -> None:
        if deposition.state == "done":
            return _fail(request, 404, "Not found.")
        problems = [(f"metadata.{name}", "Missing data for required field.") for name in
                    ("upload_type", "title", "creators", "description", "access_right")
                    if not deposition.metadata.get(name)]
        if deposition.metadata.get("access_right") == "open" and not deposition.metadata.get("license"):
            problems.append(("metadata.license", "Missing data for required field."))
        if not deposition.files:
            problems.append(("files.enabled", "Missing uploaded files. To disable files for this record please mark "
                                              "it as metadata-only."))
        if problems:
            return _invalid(request, problems)
        deposition.state, deposition.submitted = "done", True
        self.add_record(deposition.id, deposition.files, concept=deposition.concept)
        request.send_json(self._deposition_json(deposition), 202)

    def _discard(self, request: Request, deposition: Deposition) -> None:
        if deposition.submitted:
            return _fail(request, 403, "You cannot discard a published deposition.")
        del self.depositions[deposition.id]
        self.discarded.append(deposition.id)
        request.send(204)

    def _edit(self, request: Request, deposition: Deposition) -> None:
        deposition.state = "inprogress"
        request.send_json(self._deposition_json(deposition), 201)

    def _new_version(self, request: Request, deposition: Deposition) -> None:
        versions = [r.id for r in self.records.values() if r.concept == deposition.concept]
        if deposition.state != "done" or deposition.id != max(versions):
            return _fail(request, 400, "Only the latest published version can be versioned.")
        pending = next((d for d in self.depositions.values()
                        if d.concept == deposition.concept and d.state == "unsubmitted"), None)
        if pending is not None and pending.files:
            return _invalid(request, [("files.enabled", "Please remove all files first.")])
        if pending is None:
            metadata = {k: v for k, v in deposition.metadata.items() if k != "version"}
            pending = Deposition(self._next_id(), deposition.concept, deposition.token,
                                 metadata={**metadata, "publication_date": date.today().isoformat()},
                                 files=dict(deposition.files))  # the legacy endpoint copies the files in
            self.depositions[pending.id] = pending
        request.send_json(self._deposition_json(pending), 201)

    def _authorized(self, request: Request, scope: str) -> Optional[str]:
        """The request's token, or None after answering 403 (none, unknown, or without ``scope``)."""
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ") or request.query.get("access_token")
        if token not in self.tokens or scope not in self.tokens[token]:
            return _fail(request, 403, request.echoed("The server could not verify that you are authorized."))
        return token

    def _owned(self, request: Request, scope: str) -> Optional[Deposition]:
        token = self._authorized(request, scope)
        if token is None:
            return None
        deposition = self.depositions.get(int(request.params["dep"]))
        if deposition is None or deposition.token != token:
            return _fail(request, 404, "PID does not exist.")
        return deposition

    def _by_bucket(self, request: Request) -> Optional[Deposition]:
        token = self._authorized(request, WRITE)
        if token is None:
            return None
        deposition = next((d for d in self.depositions.values() if d.bucket == request.params["bucket"]), None)
        if deposition is None or deposition.token != token:
            return _fail(request, 404, "Not found.")
        return deposition

    def _json_body(self, request: Request) -> Optional[dict]:
        if request.headers.get("Content-Type", "application/json").split(";")[0] != "application/json":
            return _fail(request, 415, "Invalid 'Content-Type' header. Expected one of: application/json")
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _fail(request, 400, "The request body is not a JSON object.")
        return body

    def next_id(self) -> int:
        """The id the next new deposition will get."""
        return self._next_id()

    def _next_id(self) -> int:
        return max([100000, *self.records, *self.depositions, *self.discarded]) + 2  # one before it: the concept

    def _deposition_json(self, d: Deposition) -> dict:
        api = self.url(self.deposition_path(d.id))
        links = {"self": api, "bucket": self.url(f"/api/files/{d.bucket}"), "files": f"{api}/files",
                 "publish": f"{api}/actions/publish", "edit": f"{api}/actions/edit",
                 "discard": f"{api}/actions/discard", "newversion": f"{api}/actions/newversion",
                 "latest_draft": api, "html": self.url(f"/deposit/{d.id}")}
        out = {"id": d.id, "record_id": d.id, "conceptrecid": str(d.concept), "state": d.state,
               "submitted": d.submitted, "title": d.metadata.get("title", ""), "owner": 1, "created": DATE,
               "modified": DATE, "files": [self._legacy_file_json(d, key) for key in d.files],
               "metadata": {**d.metadata, "prereserve_doi": {"doi": f"10.5281/zenodo.{d.id}", "recid": d.id}},
               "links": links}
        if d.submitted:
            record = self.url(f"/api/records/{d.id}")
            links.update(record=record, latest=f"{record}/versions/latest", html=self.url(f"/records/{d.id}"))
            out.update(doi=f"{self.doi_prefix}/zenodo.{d.id}", doi_url=f"https://doi.org/{self.doi_prefix}/zenodo.{d.id}",
                       conceptdoi=f"{self.doi_prefix}/zenodo.{d.concept}")
        return out

    def _legacy_file_json(self, d: Deposition, key: str) -> dict:
        data = d.files[key]
        return {"id": hashlib.md5(key.encode()).hexdigest(), "filename": key, "filesize": len(data),
                "checksum": hashlib.md5(data).hexdigest()}

    def _bucket_file_json(self, d: Deposition, key: str) -> dict:
        data = d.files[key]
        md5 = hashlib.md5(data + (b"lie" if self.checksum_lies else b"")).hexdigest()
        link = self.url(f"/api/files/{d.bucket}/{quote(key, safe='')}")
        return {"key": key, "mimetype": "application/octet-stream", "checksum": f"md5:{md5}", "size": len(data),
                "version_id": str(uuid.uuid5(uuid.NAMESPACE_URL, link + md5)), "created": DATE, "updated": DATE,
                "is_head": True, "delete_marker": False,
                "links": {"self": link, "version": f"{link}?versionId=1", "uploads": f"{link}?uploads=1"}}

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


def _fail(request: Request, status: int, message: str) -> None:
    request.send_json({"status": status, "message": message}, status)


def _invalid(request: Request, problems: list[tuple[str, str]]) -> None:
    """400 in the shape the server sends now: ``errors[{field, messages[]}]``."""
    request.send_json({"status": 400, "message": "A validation error occurred.",
                       "errors": [{"field": f, "messages": [m]} for f, m in problems]}, 400)


def _with_defaults(metadata: dict) -> dict:
    """The loader's defaults for what a PUT left out (PUBLISHING.md §1.4)."""
    defaults = {"publication_date": date.today().isoformat(), "imprint_publisher": "Zenodo"}
    if metadata.get("access_right") in ("open", "embargoed") and "license" not in metadata:
        defaults["license"] = "cc0-1.0" if metadata.get("upload_type") == "dataset" else "cc-by-4.0"
    return {**defaults, **metadata}


def _metadata_problems(metadata: dict) -> list[tuple[str, str]]:
    """Malformed values, refused at create or PUT (missing ones wait for publish)."""
    problems = [(f"metadata.{k}", "Unknown field.") for k in sorted(set(metadata) - METADATA_FIELDS)]
    checks = {
        "upload_type": lambda v: v in UPLOAD_TYPES,
        "license": lambda v: isinstance(v, str) and v.lower() in LICENSES,
        "access_right": lambda v: v in ("open", "embargoed", "restricted", "closed"),
        "title": lambda v: isinstance(v, str) and len(v.strip()) >= 3,
        "creators": lambda v: isinstance(v, list) and all(isinstance(c, dict) and c.get("name") for c in v),
        "related_identifiers": lambda v: isinstance(v, list) and all(
            isinstance(r, dict) and r.get("identifier") and r.get("relation") for r in v),
    }
    problems += [(f"metadata.{k}", "Invalid value.") for k, ok in checks.items() if k in metadata and not ok(metadata[k])]
    return problems
