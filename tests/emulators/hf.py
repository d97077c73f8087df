"""A Hugging Face Hub on 127.0.0.1 (PROVIDERS.md §1.9): ``/resolve`` on one port, its CDN on another.

LFS files answer the metadata HEAD with a 302 to the CDN (a second origin) carrying
``X-Repo-Commit``, ``X-Linked-Etag`` (the quoted sha256) and ``X-Linked-Size``. Small files
are served by the Hub itself, as today's Hub does: a same-origin relative 307 to
``/api/resolve-cache/{models|datasets|spaces}/{repo}/{commit}/{path}``, whose answer alone
carries ``X-Repo-Commit`` and the git blob sha1 as ETag, so a client must follow it. Errors
carry ``X-Error-Code`` and ``X-Error-Message`` (a HEAD has no body) and a JSON ``{"error": ...}``
body. Never Xet. The CDN's request log shows whether it ever received ``Authorization``.

Repositories are named as the Hub's URLs spell them: ``org/name`` is a model,
``datasets/org/name`` and ``spaces/org/name`` a dataset and a space, so a prefix selects
the repository's type. A revision is a branch (``refs/pr/1`` included, sent as
``refs%2Fpr%2F1``) or a commit sha::

    with HfEmulator() as hub:
        hub.add_repo("org/name", private=True, tokens={"hf_secret"}, branches=("main", "refs/pr/1"))
        hub.put("org/name", "best_model.pt", data)          # LFS by default
        hub.cdn.set_faults(hub.cdn_path("org/name", "best_model.pt"), Faults(drop_after=1000, times=1))
        hub.add_repo("datasets/org/corpus")

It also takes uploads the way ``HfApi.create_repo`` and ``HfApi.create_commit`` send them
(huggingface_hub 2.4 with ``HF_HUB_DISABLE_XET=1``), for tokens given write access::

    hub.add_writer("hf_writer", "org")                        # may create and commit under org/
    # POST /api/repos/create                                   {"name", "organization"} → 200, 409 if it exists
    # POST /api/models/{repo}/preupload/{rev}                  "lfs" for weights and binaries, else "regular"
    # POST /{repo}.git/info/lfs/objects/batch                  basic transfer: PUT to the CDN, then verify
    # POST /api/models/{repo}/commit/{rev}                     NDJSON: header, file (base64), lfsFile, deletedFile
    # GET  /api/models/{repo}[/revision/{rev}]                 sha and siblings (repo_info)
    # POST /api/validate-yaml                                  {"content", "repoType"}: a README.md's front matter

A commit moves every branch to a new commit; earlier commits stay resolvable by their sha.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import quote, unquote

from .fileserver import Blob, FileServer, Request

COMMIT = re.compile(r"[0-9a-f]{40}")
REPO = r"(?P<repo>[^/]+/[^/]+)"
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}  # URL prefix -> repo type
# The Hub's default .gitattributes sends these through LFS; so does any file over 10 MB or with binary bytes.
LFS_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".h5", ".onnx", ".npz", ".pkl", ".zip", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024


@dataclass
class Repo:
    """One repository: its files, one commit every branch points at, and who may read it."""

    repo_id: str  # ORG/NAME, without the type prefix
    commit: str
    repo_type: str = "model"
    files: dict[str, Blob] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    branches: tuple[str, ...] = ("main",)
    private: bool = False
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access (private or gated)
    history: dict[str, tuple[dict[str, Blob], set[str]]] = field(default_factory=dict)  # earlier commits' trees

    @property
    def key(self) -> str:
        """The name in the Hub's URLs (and in ``HfEmulator.repos``): ``datasets/org/name`` for a dataset."""
        return self.repo_id if self.repo_type == "model" else f"{self.repo_type}s/{self.repo_id}"


class HfEmulator(FileServer):
    """The Hub's ``/{repo}/resolve/{rev}/{path}`` (``/datasets/...``, ``/spaces/...``); ``cdn`` serves LFS bytes."""

    def __init__(self):
        super().__init__()
        self.cdn = FileServer()
        self.repos: dict[str, Repo] = {}
        self.writers: dict[str, set[str]] = {}  # token -> namespaces it may create repos in and commit to
        self.lfs_objects: dict[str, bytes] = {}  # uploaded LFS content by sha256, not yet or already committed
        self.commits: list[dict] = []  # every commit received: repo, summary, operations (as sent)
        self.route(r"/api/agent-harnesses", lambda request: request.send_json({"error": "Not Found"}, 404))
        self.route(r"/(?P<repo>(?:datasets/|spaces/)?[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve)
        self.route(r"/api/resolve-cache/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<rev>[0-9a-f]{40})/"
                   r"(?P<path>.+)", self.resolve_cache)
        self.route(r"/api/repos/create", self.create_repo, methods=("POST",))
        self.route(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", self.preupload, methods=("POST",))
        self.route(rf"/{REPO}\.git/info/lfs/objects/batch", self.lfs_batch, methods=("POST",))
        self.route(rf"/{REPO}\.git/info/lfs/objects/verify", self.lfs_verify, methods=("POST",))
        self.route(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", self.commit, methods=("POST",))
        self.route(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", self.repo_info)
        self.route(r"/api/validate-yaml", self.validate_yaml, methods=("POST",))
        self.cdn.route(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_put, methods=("PUT",))

    def add_repo(self, name: str, **options) -> Repo:
        """A repository (``org/name``, ``datasets/org/name``, ``spaces/org/name``) whose branches all
        point at one commit derived from its name."""
        prefix, _, rest = name.partition("/")
        repo_type, repo_id = (TYPES[prefix], rest) if prefix in ("datasets", "spaces") else ("model", name)
        commit = hashlib.sha1(name.encode()).hexdigest()
        self.repos[name] = repo = Repo(repo_id, commit, repo_type, **options)
        return repo

    def add_writer(self, token: str, *namespaces: str) -> None:
        """Let ``token`` create repositories under, and commit to, each of ``namespaces`` (users, orgs)."""
        self.writers.setdefault(token, set()).update(namespaces)

    def put(self, name: str, path: str, data: bytes, lfs: bool = True) -> None:
        """Commit ``data`` at ``path`` of repository ``name``: LFS files are served by the CDN, small
        files by the Hub itself."""
        repo = self.repos[name]
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        repo.files[path] = Blob(data, etag=f'"{git_sha1}"')
        repo.lfs.discard(path)
        if lfs:
            repo.lfs.add(path)
            name = path.rsplit("/", 1)[-1]
            self.cdn.add_file(_cdn_path(data), data, headers={
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"})

    def cdn_path(self, name: str, path: str) -> str:
        """Where the CDN serves an LFS file: an opaque path per content, as the Hub's bridge URLs."""
        return _cdn_path(self.repos[name].files[path].data)

    # -- downloads ------------------------------------------------------------------------------
    def resolve(self, request: Request) -> None:
        found = self._file(request, request.params["repo"])
        if found is None:
            return
        repo, commit, path, blob, lfs = found
        if lfs:
            sha256 = hashlib.sha256(blob.data).hexdigest()
            return request.redirect(self.cdn.url(_cdn_path(blob.data)) + "?X-Amz-Signature=emulated",
                                    headers={"X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha256}"',
                                             "X-Linked-Size": str(len(blob.data)), "Accept-Ranges": "bytes"})
        # A plain git file: the Hub hands it to its own cache route first (relative, same origin).
        request.redirect(f"/api/resolve-cache/{repo.repo_type}s/{repo.repo_id}/{commit}/{quote(path)}", 307)

    def resolve_cache(self, request: Request) -> None:
        prefix = "" if request.params["type"] == "models" else request.params["type"] + "/"
        found = self._file(request, prefix + request.params["repo"])
        if found is not None:
            repo, commit, path, blob, lfs = found
            request.send_blob(blob, headers={"X-Repo-Commit": commit})

    def _file(self, request: Request, key: str) -> Optional[tuple[Repo, str, str, Blob, bool]]:
        """(repo, commit, path, blob, is LFS) of the file asked for, or None after answering the Hub's error."""
        repo = self.repos.get(key)
        token = _token(request)
        if repo is None or (repo.private and token not in repo.tokens | self._owners(repo)):
            # The Hub cannot tell "missing" from "private": 401 to anonymous users, 404 to others.
            return _error(request, 401 if token is None else 404, "RepoNotFound", "Repository not found")
        if repo.gated and token not in repo.tokens:
            restricted = f"Access to {repo.repo_type} {repo.repo_id} is restricted"
            if token is None:
                return _error(request, 401, "GatedRepo", f"{restricted}. You must have access to it and be "
                                                         "authenticated to access it. Please log in.")
            return _error(request, 403, "GatedRepo", f"{restricted} and you are not in the authorized list.")
        revision, path = unquote(request.params["rev"]), unquote(request.params["path"])
        tree = _tree(repo, revision)
        if tree is None:
            return _error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        commit, files, lfs = tree
        if path not in files:
            return _error(request, 404, "EntryNotFound", f"{path} does not exist on \"{revision}\"",
                          {"X-Repo-Commit": commit})
        return repo, commit, path, files[path], path in lfs

    def repo_info(self, request: Request) -> None:
        repo = self._writable(request, request.params["repo"], read_only=True)
        if repo is None:
            return
        tree = _tree(repo, unquote(request.params["rev"] or "main"))
        if tree is None:
            return _error(request, 404, "RevisionNotFound", f"Invalid rev id: {request.params['rev']}")
        commit, files, lfs = tree
        request.send_json({"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit, "private": repo.private,
                           "gated": repo.gated, "siblings": [{"rfilename": path} for path in files]})

    # -- uploads --------------------------------------------------------------------------------
    def create_repo(self, request: Request) -> None:
        body = json.loads(request.body or b"{}")
        namespace, name = body.get("organization"), body.get("name")
        token = _token(request)
        if token is None or token not in self.writers:
            return _error(request, 401, None, "Invalid username or password.")
        namespace = namespace or next(iter(sorted(self.writers[token])))  # no organization: the token's user
        repo_id = f"{namespace}/{name}"
        if namespace not in self.writers[token]:
            return _error(request, 403, None, f"You don't have the rights to create a model under the namespace "
                                              f"\"{namespace}\"")
        if repo_id in self.repos:
            return request.send_json({"error": "You already created this model repo", "url": self.url(f"/{repo_id}")},
                                     409)
        self.add_repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        request.send_json({"url": self.url(f"/{repo_id}"), "name": repo_id, "id": repo_id})

    def validate_yaml(self, request: Request) -> None:
        """What ``create_commit`` asks before committing a README.md: is its front matter a YAML mapping?
        (The Hub checks its schema too; 400 with ``errors`` either way, 200 with ``warnings``.)"""
        import yaml

        content = json.loads(request.body or b"{}").get("content") or ""
        front = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(\r?\n|$)", content)
        if front is None:
            return request.send_json({"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
        try:
            data = yaml.safe_load(front.group(1))
        except yaml.YAMLError as err:
            return request.send_json({"errors": [{"message": f"Invalid YAML: {type(err).__name__}"}]}, 400)
        if data is not None and not isinstance(data, dict):
            return request.send_json({"errors": [{"message": "YAML metadata must be a mapping"}]}, 400)
        request.send_json({"warnings": []})

    def preupload(self, request: Request) -> None:
        repo = self._writable(request, request.params["repo"])
        if repo is None:
            return
        answers = []
        for entry in json.loads(request.body)["files"]:
            sample = base64.b64decode(entry["sample"])
            lfs = entry["size"] >= LFS_MIN_SIZE or entry["path"].endswith(LFS_SUFFIXES) or b"\0" in sample
            existing = repo.files.get(entry["path"])
            answers.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": None if existing is None else _oid(existing.data, entry["path"] in repo.lfs)})
        request.send_json({"files": answers, "commitOid": repo.commit})

    def lfs_batch(self, request: Request) -> None:
        repo = self._writable(request, request.params["repo"])
        if repo is None:
            return
        body = json.loads(request.body)
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            return _error(request, 422, None, "only basic uploads are emulated")
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:  # content already stored needs no upload: no actions
                entry["actions"] = {
                    "upload": {"href": self.cdn.url(f"/lfs-upload/{obj['oid']}") + "?X-Amz-Signature=emulated",
                               "header": {}},
                    "verify": {"href": self.url(f"/{repo.repo_id}.git/info/lfs/objects/verify"), "header": {}}}
            objects.append(entry)
        request.send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                     "application/vnd.git-lfs+json")

    def lfs_put(self, request: Request) -> None:
        """The presigned storage URL: keeps the bytes only if they hash to the oid they were announced as."""
        oid = request.params["oid"]
        if hashlib.sha256(request.body).hexdigest() != oid:
            return request.send(400, b"<Error><Code>BadDigest</Code></Error>", "application/xml")
        self.lfs_objects[oid] = request.body
        request.send(200, b"", headers={"ETag": f'"{hashlib.md5(request.body).hexdigest()}"'})

    def lfs_verify(self, request: Request) -> None:
        if self._writable(request, request.params["repo"]) is None:
            return
        body = json.loads(request.body)
        stored = self.lfs_objects.get(body["oid"])
        if stored is None or len(stored) != body["size"]:
            return _error(request, 404, None, f"LFS object {body['oid']} was not uploaded with size {body['size']}")
        request.send_json({"success": True})

    def commit(self, request: Request) -> None:
        repo = self._writable(request, request.params["repo"])
        if repo is None:
            return
        revision = unquote(request.params["rev"])
        if revision not in repo.branches:
            return _error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        staged: dict[str, tuple[bytes, bool]] = {}
        deleted: list[str] = []
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                staged[value["path"]] = (base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                data = self.lfs_objects.get(value["oid"])
                if data is None or ("size" in value and value["size"] != len(data)):
                    return _error(request, 422, None, f"Your push was rejected because an LFS pointer pointed to "
                                                      f"a file that does not exist ({value['path']})")
                staged[value["path"]] = (data, True)
            elif line["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"].rstrip("/"))
        repo.history[repo.commit] = (dict(repo.files), set(repo.lfs))
        for path in deleted:
            for gone in [p for p in repo.files if p == path or p.startswith(path + "/")]:
                repo.files.pop(gone)
                repo.lfs.discard(gone)
        for path, (data, lfs) in staged.items():
            self.put(repo.key, path, data, lfs=lfs)
        repo.commit = hashlib.sha1(repo.commit.encode() + request.body).hexdigest()
        self.commits.append({"repo": repo.repo_id, "summary": header.get("summary"), "operations": lines[1:]})
        request.send_json({"success": True, "commitOid": repo.commit,
                           "commitUrl": self.url(f"/{repo.repo_id}/commit/{repo.commit}"), "pullRequestUrl": None})

    # -- helpers --------------------------------------------------------------------------------
    def _owners(self, repo: Repo) -> set[str]:
        namespace = repo.repo_id.split("/")[0]
        return {token for token, namespaces in self.writers.items() if namespace in namespaces}

    def _writable(self, request: Request, repo_id: str, read_only: bool = False) -> Optional[Repo]:
        """The repository, or None after answering 401 (no token), 404 (unknown) or 403 (no write access)."""
        repo, token = self.repos.get(repo_id), _token(request)
        if read_only and repo is not None and not repo.private:
            return repo
        if token is None:
            return _error(request, 401, None, "Invalid username or password.")
        if repo is None or (repo.private and token not in repo.tokens | self._owners(repo)):
            return _error(request, 404, "RepoNotFound", "Repository not found")
        if not read_only and token not in self._owners(repo):
            return _error(request, 403, None, f"You don't have the rights to write to {repo_id}")
        return repo

    def start(self) -> "HfEmulator":
        self.cdn.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.cdn.stop()


def _tree(repo: Repo, revision: str) -> Optional[tuple[str, dict[str, Blob], set[str]]]:
    """(commit, files, LFS paths) that ``revision`` (a branch or a commit sha) names, or None."""
    if revision in repo.branches or revision == repo.commit:
        return repo.commit, repo.files, repo.lfs
    if revision in repo.history:
        return (revision, *repo.history[revision])
    return None


def _oid(data: bytes, lfs: bool) -> str:
    """What the Hub compares with a local file: the sha256 of LFS content, the git blob sha1 of others."""
    return hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _cdn_path(data: bytes) -> str:
    return "/xet-bridge-us/" + hashlib.sha256(data).hexdigest()


def _token(request: Request) -> Optional[str]:
    return (request.headers.get("Authorization") or "").removeprefix("Bearer ") or None


def _error(request: Request, status: int, code: Optional[str], message: str, headers: Optional[dict] = None) -> None:
    coded = {"X-Error-Code": code} if code else {}
    message = request.echoed(message)
    request.send_json({"error": message}, status, headers={**coded, "X-Error-Message": message, **(headers or {})})
