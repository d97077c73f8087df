"""A Hugging Face Hub on 127.0.0.1 (PROVIDERS.md §1.9): ``/resolve`` on one port, its CDN on another.

LFS files answer the metadata HEAD with a 302 to the CDN (a second origin) carrying
``X-Repo-Commit``, ``X-Linked-Etag`` (the quoted sha256) and ``X-Linked-Size``; small files
are served by the Hub itself with their git blob sha1 as ETag. Errors carry ``X-Error-Code``
and ``X-Error-Message`` (a HEAD has no body) and a JSON ``{"error": ...}`` body. Never Xet.
The CDN's request log shows whether it ever received ``Authorization``::

    with HfEmulator() as hub:
        hub.add_repo("org/name", private=True, tokens={"hf_secret"})
        hub.put("org/name", "best_model.pt", data)          # LFS by default
        hub.cdn.set_faults(hub.cdn_path("org/name", "best_model.pt"), Faults(drop_after=1000, times=1))
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import quote, unquote

from .fileserver import Blob, FileServer, Request

COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Repo:
    """One repository: its files, one commit every branch points at, and who may read it."""

    repo_id: str
    commit: str
    files: dict[str, Blob] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    branches: tuple[str, ...] = ("main",)
    private: bool = False
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access (private or gated)


class HfEmulator(FileServer):
    """The Hub's ``/{repo}/resolve/{rev}/{path}`` (and ``/datasets/...``); ``cdn`` serves LFS bytes."""

    def __init__(self):
        super().__init__()
        self.cdn = FileServer()
        self.repos: dict[str, Repo] = {}
        self.route(r"/api/agent-harnesses", lambda request: request.send_json({"error": "Not Found"}, 404))
        self.route(r"/(?:datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve)

    def add_repo(self, repo_id: str, **options) -> Repo:
        """A repository whose branches all point at one commit derived from its name."""
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = repo = Repo(repo_id, commit, **options)
        return repo

    def put(self, repo_id: str, path: str, data: bytes, lfs: bool = True) -> None:
        """Commit ``data`` at ``path``: LFS files are served by the CDN, small files by the Hub itself."""
        repo = self.repos[repo_id]
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        repo.files[path] = Blob(data, etag=f'"{git_sha1}"')
        if lfs:
            repo.lfs.add(path)
            name = path.rsplit("/", 1)[-1]
            self.cdn.add_file(self.cdn_path(repo_id, path), data, headers={
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"})

    def cdn_path(self, repo_id: str, path: str) -> str:
        """Where the CDN serves an LFS file: an opaque path per content, as the Hub's bridge URLs."""
        return "/xet-bridge-us/" + hashlib.sha256(self.repos[repo_id].files[path].data).hexdigest()

    def resolve(self, request: Request) -> None:
        repo = self.repos.get(request.params["repo"])
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ") or None
        if repo is None or (repo.private and token not in repo.tokens):
            # The Hub cannot tell "missing" from "private": 401 to anonymous users, 404 to others.
            return _error(request, 401 if token is None else 404, "RepoNotFound", "Repository not found")
        if repo.gated and token not in repo.tokens:
            if token is None:
                message = (f"Access to model {repo.repo_id} is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in.")
                return _error(request, 401, "GatedRepo", message)
            return _error(request, 403, "GatedRepo", f"Access to model {repo.repo_id} is restricted "
                                                      "and you are not in the authorized list.")
        revision, path = unquote(request.params["rev"]), unquote(request.params["path"])
        if revision not in repo.branches and revision != repo.commit:
            return _error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        commit = {"X-Repo-Commit": repo.commit}
        if path not in repo.files:
            return _error(request, 404, "EntryNotFound", f"{path} does not exist on \"{revision}\"", commit)
        blob = repo.files[path]
        if path in repo.lfs:
            sha256 = hashlib.sha256(blob.data).hexdigest()
            return request.redirect(self.cdn.url(self.cdn_path(repo.repo_id, path)) + "?X-Amz-Signature=emulated",
                                    headers={**commit, "X-Linked-Etag": f'"{sha256}"',
                                             "X-Linked-Size": str(len(blob.data)), "Accept-Ranges": "bytes"})
        request.send_blob(blob, headers=commit)

    def start(self) -> "HfEmulator":
        self.cdn.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.cdn.stop()


def _error(request: Request, status: int, code: str, message: str, headers: Optional[dict] = None) -> None:
    request.send_json({"error": message}, status, headers={"X-Error-Code": code, "X-Error-Message": message,
                                                          **(headers or {})})
