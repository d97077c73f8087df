"""OSF on 127.0.0.1 (PROVIDERS.md §3.4): the API v2 (JSON:API), the "osf.io" web host and WaterButler.

Three origins: this server is ``api.osf.io``; ``web`` answers ``/download/<guid>/`` and
``/<guid>/download`` with a 302 to ``wb``, which streams the bytes with no ETag and answers
a range covering the whole file with 200, as WaterButler does. Listings paginate
(``page``, ``page[size]`` capped at ``page_cap``, absolute ``links.next``, null at the end);
folders link their listing through ``relationships.files``. Listings take ``filter[name]``
(a case-insensitive substring, OSF's default for text fields; ``filter[name][eq]`` for the
exact name) and ``filter[kind]``, applied before paging and kept in the page links. Private nodes answer 401
without their token, on the API and on WaterButler; deleted files and unknown guids 410.
All errors are JSON:API ``{"errors": [{"detail": ...}]}``::

    with OsfEmulator() as osf:
        osf.add_node("abcde")
        osf.put("abcde", "checkpoints/best_model.pt", data)

Uploads (PUBLISHING.md §2): WaterButler takes PUTs from the holder of a node's ``write_token``
(Bearer; anyone else 403 in OSF's JSON): ``<folder>/?kind=file&name=`` (or bare ``name=``, as
osfclient sends) creates a file (201), ``<file id>`` adds a version (200; identical bytes add none),
``<folder>/?kind=folder&name=`` a folder (201); a name taken → 409 ``{message, data}``, decided
before the body counts; no Content-Length → 411; over ``max_body`` a bare 400; ``quota_full`` → 507.
Answers are WaterButler entities with ``extra.hashes`` (``sha256_lies`` makes them wrong); listings
update at once. :meth:`~.uploads.UploadServer.cut_upload` and ``lose_answer`` act on ``osf.wb``::

    osf.add_node("abcde", write_token="tok")
    osf.wb.lose_answer(osf.folder_upload_path("abcde"))    # the create lands, its 201 is lost

A hostile (or broken) API hands out links that lead elsewhere: :meth:`OsfEmulator.rewrite_links`
rewrites the ``next``, ``folder`` (a folder's listing), ``upload`` or ``download`` links of its
answers, and :meth:`OsfEmulator.serve_through` makes another server answer every path as this
emulator (or its WaterButler, or its web host) would, logging what it received::

    osf.serve_through(foreign)                                   # foreign: a FileServer on another port
    osf.rewrite_links(lambda url: foreign.origin + urlsplit(url).path, "next", "upload")
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Union
from urllib.parse import urlencode

from .fileserver import Blob, FileServer, Request
from .uploads import UploadServer

MAX_BODY = int(4.9 * 1024**3)  # WaterButler's Tornado max_body_size

DATE = "2025-01-01T00:00:00.000000Z"


@dataclass
class OsfFile:
    id: str
    guid: str
    node: str
    path: str  # materialized, e.g. "/checkpoints/best_model.pt"
    blob: Blob
    listed_size: Optional[int] = None  # what the API claims, when it differs from the bytes
    deleted: bool = False
    version: int = 1


@dataclass
class OsfFolder:
    id: str
    node: str
    path: str  # "/" for the storage root, "/checkpoints/" below
    children: list[Union["OsfFolder", OsfFile]] = field(default_factory=list)


@dataclass
class Node:
    id: str
    root: OsfFolder
    token: Optional[str] = None  # set: private, readable with this token only
    write_token: Optional[str] = None  # who may upload


class OsfEmulator(FileServer):
    def __init__(self, page_cap: int = 100):
        super().__init__()
        self.web, self.wb = FileServer(), UploadServer()
        self.max_body, self.quota_full, self.sha256_lies = MAX_BODY, False, False
        self.page_cap = page_cap
        self.nodes: dict[str, Node] = {}
        self.osf_files: dict[str, OsfFile] = {}  # by id and by guid (FileServer.files is taken)
        self.folders: dict[str, OsfFolder] = {}
        self.rewrites: dict[str, Callable[[str], str]] = {}  # link kind -> what it becomes (rewrite_links)
        # osfclient joins its default base URL "…/v2/" with "/", so the real API must take "/v2//guids/…".
        self.route(r"/v2/+guids/(?P<guid>\w+)/", self.guid)
        self.route(r"/v2/+nodes/(?P<node>\w+)/", self.node)
        self.route(r"/v2/nodes/(?P<node>\w+)/files/", self.providers)
        self.route(r"/v2/nodes/(?P<node>\w+)/files/osfstorage/(?:(?P<folder>\w+)/)?", self.listing)
        self.route(r"/v2/files/(?P<id>\w+)/", self.file)
        self.web.route(r"/download/(?P<ref>\w+)/", self.download)
        self.web.route(r"/(?P<ref>\w+)/download", self.download)
        self.wb.route(r"/v1/resources/(?P<node>\w+)/providers/osfstorage/(?P<id>\w+)", self.waterbutler)
        self.wb.route(r"/v1/resources/(?P<node>\w+)/providers/osfstorage/(?P<id>\w*)(?P<slash>/?)", self.upload,
                      ("PUT",))

    def add_node(self, node_id: str, token: Optional[str] = None, write_token: Optional[str] = None) -> Node:
        root = OsfFolder(_id(node_id, "/"), node_id, "/")
        self.nodes[node_id] = node = Node(node_id, root, token, write_token)
        return node

    def file_at(self, node_id: str, path: str) -> Optional[OsfFile]:
        """The live file at materialized ``path`` ("/checkpoints/best_model.pt"), if any."""
        return next((f for f in self.osf_files.values() if f.node == node_id and f.path == path and not f.deleted), None)

    def folder_upload_path(self, node_id: str, folder: str = "/") -> str:
        """WaterButler's path for creating in a folder ("/" or "/checkpoints/"; where faults are switched)."""
        root = f"/v1/resources/{node_id}/providers/osfstorage/"
        return root if folder == "/" else f"{root}{_id(node_id, folder)}/"

    def put(self, node_id: str, path: str, data: bytes, listed_size: Optional[int] = None) -> OsfFile:
        """Store ``data`` at ``path`` in the node's OSF Storage, creating folders on the way."""
        folder = self.nodes[node_id].root
        *folders, name = path.strip("/").split("/")
        for part in folders:
            folder = self._folder(folder, part)
        file_id = _id(node_id, folder.path + name)
        blob = Blob(data, etag=None, full_span_200=True, headers={
            "Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"})
        osf_file = OsfFile(file_id, file_id[:5], node_id, folder.path + name, blob, listed_size)
        folder.children.append(osf_file)
        self.osf_files[file_id] = self.osf_files[osf_file.guid] = osf_file
        return osf_file

    def rewrite_links(self, rewrite: Callable[[str], str], *kinds: str) -> None:
        """From now on the links of ``kinds`` ("next", "folder", "upload", "download") in answers are
        ``rewrite(link)``: what a hostile or broken API hands out."""
        assert set(kinds) <= {"next", "folder", "upload", "download"}, kinds
        self.rewrites.update(dict.fromkeys(kinds, rewrite))

    def serve_through(self, foreign: FileServer) -> None:
        """``foreign`` (another origin) answers every path as this emulator, its WaterButler (``/v1/``)
        or its web host (``/download/``) would; its own log records what reached it."""
        def answer(request: Request) -> None:
            owner = self.wb if request.path.startswith("/v1/") else (
                self.web if request.path.startswith("/download/") else self)
            owner._dispatch(request)

        foreign.route(r"/.*", answer)

    def _link(self, kind: str, url: Optional[str]) -> Optional[str]:
        return self.rewrites[kind](url) if url and kind in self.rewrites else url

    def wb_path(self, osf_file: OsfFile) -> str:
        """WaterButler's path for a file (where byte faults are switched)."""
        return f"/v1/resources/{osf_file.node}/providers/osfstorage/{osf_file.id}"

    # -- API routes -----------------------------------------------------------------------------
    def guid(self, request: Request) -> None:
        guid = request.params["guid"]
        if guid in self.nodes:
            return request.redirect(self.url(f"/v2/nodes/{guid}/"))
        osf_file = self.osf_files.get(guid)
        if osf_file is None or osf_file.deleted:
            return _error(request, 410, "The requested guid is no longer available.")
        request.redirect(self.url(f"/v2/files/{osf_file.id}/"))

    def node(self, request: Request) -> None:
        node = self._readable(request, request.params["node"])
        if node:
            request.send_json({"data": {
                "id": node.id, "type": "nodes",
                "attributes": {"title": f"Project {node.id}", "description": "", "public": node.token is None,
                               "date_created": DATE, "date_modified": DATE},
                "relationships": {"files": _related(self.url(f"/v2/nodes/{node.id}/files/"))},
                "links": {"self": self.url(f"/v2/nodes/{node.id}/"), "html": self.web.url(f"/{node.id}/")}}})

    def providers(self, request: Request) -> None:
        node = self._readable(request, request.params["node"])
        if node:
            storage = {"id": f"{node.id}:osfstorage", "type": "files",
                       "attributes": {"kind": "folder", "name": "osfstorage", "path": "/", "node": node.id,
                                      "provider": "osfstorage"},
                       "relationships": {"files": _related(self.url(f"/v2/nodes/{node.id}/files/osfstorage/"))},
                       "links": {"upload": self.wb.url(f"/v1/resources/{node.id}/providers/osfstorage/"),
                                 "new_folder": self.wb.url(f"/v1/resources/{node.id}/providers/osfstorage/")
                                 + "?kind=folder"}}
            request.send_json({"data": [storage], "links": {"next": None}, "meta": {"total": 1, "per_page": 10}})

    def listing(self, request: Request) -> None:
        node = self._readable(request, request.params["node"])
        if not node:
            return
        folder = self.folders.get(request.params["folder"]) if request.params["folder"] else node.root
        if folder is None or folder.node != node.id:
            return _error(request, 404, "Not found.")
        size = min(int(request.query.get("page[size]", 10)), self.page_cap)
        page = int(request.query.get("page", 1))
        filters = {k: v for k, v in request.query.items() if k.startswith("filter[")}
        entries = [e for e in folder.children if _matches(self._entry(e)["attributes"], filters)]
        here = self.url(request.path)
        link = lambda n: f"{here}?{urlencode({**filters, 'page': n, 'page[size]': size})}"  # noqa: E731
        last = max(1, -(-len(entries) // size))
        request.send_json({
            "data": [self._entry(e) for e in entries[(page - 1) * size: page * size]],
            "links": {"first": link(1), "last": link(last), "prev": link(page - 1) if page > 1 else None,
                      "next": self._link("next", link(page + 1) if page < last else None)},
            "meta": {"total": len(entries), "per_page": size}})

    def file(self, request: Request) -> None:
        osf_file = self.osf_files.get(request.params["id"])
        if osf_file is None:
            return _error(request, 404, "Not found.")
        if self._readable(request, osf_file.node):
            if osf_file.deleted:
                return _error(request, 410, "This file has been deleted.")
            request.send_json({"data": self._entry(osf_file)})

    # -- osf.io and WaterButler -----------------------------------------------------------------
    def download(self, request: Request) -> None:
        osf_file = self.osf_files.get(request.params["ref"])
        if osf_file is None or osf_file.deleted:
            return request.send_html("<h1>Not found</h1>", 404)
        request.redirect(self.wb.url(self.wb_path(osf_file)) + "?action=download&direct&version=1")

    def waterbutler(self, request: Request) -> None:
        osf_file = self.osf_files.get(request.params["id"])
        if osf_file is None or osf_file.deleted:
            return _error(request, 404, "Not found.")
        if self._readable(request, osf_file.node):  # WaterButler checks the node's permissions itself
            request.send_blob(osf_file.blob)

    def upload(self, request: Request) -> None:
        """WaterButler's PUT, its checks in its order (PUBLISHING.md §2.2), all before the body counts."""
        kind = request.query.get("kind") or "file"
        if kind not in ("file", "folder"):
            return _wb_error(request, 400, f"Kind must be file, folder or unspecified (interpreted as file), not {kind}")
        if kind == "file" and "Content-Length" not in request.headers:
            return _wb_error(request, 411, "Content-Length is required for file uploads")
        if kind == "folder" and request.body:
            return _wb_error(request, 413, "Folder creation requests may not have a body")
        if int(request.headers.get("Content-Length") or 0) > self.max_body:
            request._handler.close_connection = True
            return request.send(400, b"", headers={"Connection": "close"})
        node = self.nodes.get(request.params["node"])
        if node is None:
            return _wb_error(request, 404, "Not found")
        if node.write_token is None or request.headers.get("Authorization") != f"Bearer {node.write_token}":
            return request.send_json({"message_short": "Forbidden", "message_long": request.echoed(
                "You do not have permission to perform this action."), "code": 403, "referrer": None}, 403)
        target_id, slash = request.params["id"], request.params["slash"]
        folder = node.root if not target_id else self.folders.get(target_id)
        osf_file = self.osf_files.get(target_id) if target_id else None
        if (target_id and folder is not None and not slash) or (osf_file is not None and slash) or \
                (folder is None and osf_file is None):
            return _wb_error(request, 404, "Not found")
        name = request.query.get("name")
        if folder is not None:
            if not name:
                return _wb_error(request, 400, "Missing required parameter 'name'")
            return self._create(request, folder, kind, name)
        if name:
            return _wb_error(request, 400, "'name' parameter doesn't apply to actions on files")
        if kind == "folder":
            return _wb_error(request, 409, "Cannot create a folder on a file")
        self._new_version(request, osf_file)

    def _create(self, request: Request, folder: OsfFolder, kind: str, name: str) -> None:
        taken = next((c for c in folder.children if c.path.rstrip("/").rsplit("/", 1)[-1] == name and
                      isinstance(c, OsfFolder) == (kind == "folder") and not getattr(c, "deleted", False)), None)
        if taken is not None:
            return request.send_json({"message": f"Cannot complete action: file or folder \"{name}\" already exists "
                                                 "in this location", "data": self._wb_entity(taken)}, 409)
        if self.quota_full and kind == "file":
            return _wb_error(request, 507, "The quota on this osfstorage project has been exceeded")
        path = folder.path + name
        made = self._folder(folder, name) if kind == "folder" else self.put(folder.node, path, request.body)
        request.send_json({"data": self._wb_entity(made)}, 201, headers={"X-WATERBUTLER-REQUEST-ID": _id(path, "r")})

    def _new_version(self, request: Request, osf_file: OsfFile) -> None:
        if self.quota_full:
            return _wb_error(request, 507, "The quota on this osfstorage project has been exceeded")
        if request.body != osf_file.blob.data:  # storage is addressed by sha256: the same bytes add no version
            osf_file.blob.replace(request.body)
            osf_file.version += 1
        request.send_json({"data": self._wb_entity(osf_file)}, 200)

    def _folder(self, parent: OsfFolder, name: str) -> OsfFolder:
        sub = next((c for c in parent.children if isinstance(c, OsfFolder) and c.path.endswith(f"/{name}/")), None)
        if sub is None:
            sub = OsfFolder(_id(parent.node, f"{parent.path}{name}/"), parent.node, f"{parent.path}{name}/")
            parent.children.append(sub)
            self.folders[sub.id] = sub
        return sub

    def _wb_entity(self, item: Union[OsfFolder, OsfFile]) -> dict:
        """WaterButler's shape (§2.3), not API v2's: ``materialized``, ``sizeInt``, ``extra.version``."""
        name = item.path.rstrip("/").rsplit("/", 1)[-1]
        wb = self.wb.url(f"/v1/resources/{item.node}/providers/osfstorage/{item.id}")
        common = {"name": name, "provider": "osfstorage", "materialized": item.path, "resource": item.node,
                  "contentType": None, "modified": DATE, "modified_utc": DATE, "created_utc": DATE}
        if isinstance(item, OsfFolder):
            return {"id": f"osfstorage/{item.id}/", "type": "files",
                    "attributes": {**common, "kind": "folder", "path": f"/{item.id}/", "size": None, "etag": None,
                                   "extra": {}},
                    "links": {"move": wb + "/", "upload": wb + "/?kind=file", "delete": wb + "/",
                              "new_folder": wb + "/?kind=folder"}}
        data = item.blob.data
        sha256 = hashlib.sha256(data + (b"lie" if self.sha256_lies else b"")).hexdigest()
        return {"id": f"osfstorage/{item.id}", "type": "files",
                "attributes": {**common, "kind": "file", "path": f"/{item.id}", "size": len(data), "sizeInt": len(data),
                               "etag": hashlib.sha256(f"osfstorage::{item.version}::/{item.id}".encode()).hexdigest(),
                               "extra": {"guid": None, "version": item.version, "downloads": 0, "checkout": None,
                                         "latestVersionSeen": None,
                                         "hashes": {"md5": hashlib.md5(data).hexdigest(), "sha256": sha256}}},
                "links": {"move": wb, "upload": wb + "?kind=file", "delete": wb, "download": wb}}

    # -- helpers --------------------------------------------------------------------------------
    def _readable(self, request: Request, node_id: str) -> Optional[Node]:
        """The node, or None after answering 404 (unknown) or 401 (private, no or wrong token)."""
        node = self.nodes.get(node_id)
        if node is None:
            return _error(request, 404, "Not found.")
        if node.token is not None and request.headers.get("Authorization") != f"Bearer {node.token}":
            return _error(request, 401, "Authentication credentials were not provided.")
        return node

    def _entry(self, item: Union[OsfFolder, OsfFile]) -> dict:
        name = item.path.rstrip("/").rsplit("/", 1)[-1]
        wb = self.wb.url(f"/v1/resources/{item.node}/providers/osfstorage/{item.id}")
        common = {"kind": "folder", "name": name, "provider": "osfstorage", "materialized_path": item.path,
                  "date_created": DATE, "date_modified": DATE}
        info = self.url(f"/v2/files/{item.id}/")
        if isinstance(item, OsfFolder):
            return {"id": item.id, "type": "files",
                    "attributes": {**common, "path": f"/{item.id}/", "size": None, "extra": {"hashes": None}},
                    "links": {"info": info, "self": info, "new_folder": wb + "/?kind=folder", "upload": wb + "/",
                              "move": wb + "/", "delete": wb + "/"},
                    "relationships": {"files": _related(
                        self._link("folder", self.url(f"/v2/nodes/{item.node}/files/osfstorage/{item.id}/")))}}
        data = item.blob.data
        return {"id": item.id, "type": "files",
                "attributes": {**common, "kind": "file", "path": f"/{item.id}", "guid": item.guid,
                               "size": len(data) if item.listed_size is None else item.listed_size,
                               "current_version": 1,
                               "extra": {"hashes": {"md5": hashlib.md5(data).hexdigest(),
                                                    "sha256": hashlib.sha256(data).hexdigest()}, "downloads": 0}},
                "links": {"info": info, "self": info,
                          "download": self._link("download", self.web.url(f"/download/{item.guid}/")),
                          "html": self.web.url(f"/{item.guid}/"), "upload": self._link("upload", wb), "move": wb,
                          "delete": wb},
                "relationships": {"versions": _related(self.url(f"/v2/files/{item.id}/versions/"))}}

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "OsfEmulator":
        self.web.start()
        self.wb.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.web.stop()
        self.wb.stop()


def _id(node_id: str, path: str) -> str:
    """OSF's 24-hex object id, derived from the path so tests can predict it."""
    return hashlib.sha1(f"{node_id}:{path}".encode()).hexdigest()[:24]


def _matches(attributes: dict, filters: dict[str, str]) -> bool:
    """Does an entry pass ``filter[name]`` (substring, any case), ``filter[name][eq]`` and ``filter[kind]``?"""
    for key, wanted in filters.items():
        field, _, op = key.removeprefix("filter[").rstrip("]").partition("][")
        op = op or ("icontains" if field == "name" else "eq")
        value = str(attributes.get(field))
        if not (wanted.lower() in value.lower() if op == "icontains" else value == wanted):
            return False
    return True


def _related(href: str) -> dict:
    return {"links": {"related": {"href": href, "meta": {}}}}


def _error(request: Request, status: int, detail: str) -> None:
    request.send_json({"errors": [{"detail": request.echoed(detail)}]}, status,
                      headers={"Content-Type": "application/vnd.api+json"})


def _wb_error(request: Request, status: int, message: str) -> None:
    request.send_json({"code": status, "message": message}, status)
