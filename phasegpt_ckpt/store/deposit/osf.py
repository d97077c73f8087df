"""OSF Storage deposit (PUBLISHING.md §2): WaterButler PUTs to the links API v2 hands out.

The project's osfstorage entry gives the root's upload and new-folder links; folders are found by
name in the listings or created; a file already there gets a new version (a PUT to its own link),
a new one is created in its folder. A create whose answer was lost comes back as 409 with the
existing file: the same sha256 means it landed, another means a new version is due. Every answer's
sha256 and size are compared with ours; ``publish`` then reads the file back through API v2.

    OsfDeposit("abcde/checkpoints").send([Upload("best_model.pt", path, facts)], metadata).mirrors
    # {'best_model.pt': OsfMirror(node='abcde', path='checkpoints/best_model.pt')}
"""
from __future__ import annotations

import logging
import re
from typing import Optional

from phasegpt_ckpt.errors import BadInput, MirrorsExhausted, VerificationFailed
from phasegpt_ckpt.proof.verify import disagreement
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.osf import OSF_API, PAGE_SIZE, OsfMirror, _token_may_go_to
from phasegpt_ckpt.store.deposit import DEPOSIT_RETRY, TRANSIENT, Api, ApiError, Deposit, Deposited, Metadata, Upload

log = logging.getLogger(__name__)

NODE = re.compile(r"[A-Za-z0-9]+")
# OSF's help caps a file in OSF Storage at 5 GB, and WaterButler refuses a body over 4.9 GiB (5,261,334,937
# bytes) with a bare 400: the decimal 5 GB is under both readings.
PER_FILE = 5 * 10**9


class OsfDeposit(Deposit):
    """``where``: ``NODE`` or ``NODE/folder/...`` in the project's OSF Storage (folders made as needed)."""

    token_env = "OSF_TOKEN"

    def __init__(self, where: str, *, endpoint: Optional[str] = None, limit: int = PER_FILE,
                 policy: web.RetryPolicy = DEPOSIT_RETRY):
        node, _, folder = where.strip("/").partition("/")
        if not NODE.fullmatch(node):
            raise BadInput(f"--to osf:{where}: write osf:NODE or osf:NODE/folder (NODE: the project's id, as abcde)")
        self.node, self.folders, self.limit = node, [f for f in folder.split("/") if f], limit
        if any(f in (".", "..") or "\\" in f for f in self.folders):  # OSF would make folders named ".."
            raise BadInput(f"--to osf:{where}: a folder cannot be . or .. or hold a backslash; name it from the "
                           "project's root, as osf:NODE/checkpoints/tiny")
        super().__init__(endpoint, (OSF_API,))
        self.api = Api(self.token, lambda url: _token_may_go_to(url, self.base), "OSF", policy)

    def describe(self) -> str:
        return f"osf:{'/'.join([self.node, *self.folders])}"

    def send(self, uploads: list[Upload], metadata: Metadata) -> Deposited:
        """Upload each file into the folder. OSF Storage keeps no record metadata: ``metadata`` goes unused (the
        metadata JSON, one of the uploads, says it all)."""
        try:
            folder = self._folder()
            return Deposited({upload.key: self._put(folder, upload) for upload in uploads},
                             note=f"{self.describe()} ({self.base})")
        except ApiError as err:
            if err.status in (401, 403):
                raise BadInput(f"OSF refused to let OSF_TOKEN write to project {self.node}: {err.reason}; the token "
                               "needs the osf.full_write scope and write permission on the project") from None
            if err.status in (404, 410):
                raise BadInput(f"OSF project {self.node}: {err.reason}") from None
            if err.status is not None and err.status not in TRANSIENT:
                raise BadInput(f"OSF refused the upload to {self.describe()}: {err.reason}") from None
            raise MirrorsExhausted(f"uploading to {self.describe()} failed: {err.reason}; nothing was listed: run "
                                   "the same command again (a file already there gets a new version)") from None
        finally:
            self.api.close()

    def _folder(self) -> dict:
        """The API v2 entry of the target folder, created level by level where missing."""
        providers = self.api.json("GET", f"{self.base.rstrip('/')}/v2/nodes/{self.node}/files/")
        folder = next((e for e in providers.get("data", []) if e.get("attributes", {}).get("provider") == "osfstorage"),
                      None)
        if folder is None:
            raise BadInput(f"OSF project {self.node} has no OSF Storage")
        for name in self.folders:
            found = self._child(folder, name, "folder")
            if found is None:
                log.info(f"creating folder {name} in OSF project {self.node}")
                self.api.call("PUT", folder["links"]["new_folder"], params={"name": name}, ok=(201, 409))
                found = self._child(folder, name, "folder")  # its API entry, with the listing link
            if found is None:
                raise MirrorsExhausted(f"OSF created folder {name} in project {self.node} but does not list it")
            folder = found
        return folder

    def _child(self, folder: dict, name: str, kind: str) -> Optional[dict]:
        """The entry named exactly ``name`` of ``kind`` in ``folder``'s listing, page after page."""
        url = folder["relationships"]["files"]["links"]["related"]["href"]
        params: Optional[dict] = {"page[size]": PAGE_SIZE, "filter[name]": name}
        while url:
            page = self.api.json("GET", url, params=params)
            for entry in page.get("data", []):
                attributes = entry.get("attributes", {})
                if attributes.get("name") == name and attributes.get("kind") == kind:
                    return entry
            url, params = (page.get("links") or {}).get("next"), None  # the next link carries its own query
        return None

    def _put(self, folder: dict, upload: Upload) -> OsfMirror:
        """Upload one file: a new version of the one already there, else a new file; its answer checked."""
        existing = self._child(folder, upload.key, "file")
        send = dict(body=upload.open, size=upload.facts.size)
        if existing is not None:
            log.info(f"uploading {upload.key} ({upload.facts.size} bytes) as a new version in {self.describe()}")
            entity = self.api.json("PUT", existing["links"]["upload"], ok=(200,), **send)
        else:
            log.info(f"uploading {upload.key} ({upload.facts.size} bytes) to {self.describe()}")
            try:
                entity = self.api.json("PUT", folder["links"]["upload"], params={"kind": "file", "name": upload.key},
                                       ok=(201,), **send)
            except ApiError as err:
                if err.status != 409:
                    raise
                entity = self._after_conflict(err.body, upload)
        problem = _agrees(entity, upload)
        path = "/".join([*self.folders, upload.key])
        if problem is not None:
            raise VerificationFailed(f"OSF stored {path} in project {self.node} with {problem}: not listing it; its "
                                     "latest version there holds other bytes, so publish again or delete it")
        return OsfMirror(node=self.node, path=path, endpoint=self.endpoint)

    def _after_conflict(self, body: object, upload: Upload) -> dict:
        """409: the name is taken (an earlier try whose answer was lost, or another run). The same bytes are
        done; other bytes get a new version through the existing file's own link."""
        existing = body.get("data") if isinstance(body, dict) else None
        if not isinstance(existing, dict) or not existing.get("links", {}).get("upload"):
            raise MirrorsExhausted(f"OSF says {upload.key} already exists in {self.describe()} but does not say "
                                   "where: run the same command again")
        if _agrees(existing, upload) is None:
            log.info(f"{upload.key} is already in {self.describe()} with these bytes")
            return existing
        log.info(f"{upload.key} already exists in {self.describe()}: uploading a new version")
        return self.api.json("PUT", existing["links"]["upload"], ok=(200,), body=upload.open, size=upload.facts.size)


def _agrees(entity: object, upload: Upload) -> Optional[str]:
    """None when a WaterButler entity has the upload's size and sha256 (``extra.hashes``), else what differs."""
    data = entity.get("data", entity) if isinstance(entity, dict) else {}
    attributes = data.get("attributes", {}) if isinstance(data, dict) else {}
    hashes = (attributes.get("extra") or {}).get("hashes") or {}
    if not hashes.get("sha256"):
        return "no sha256"
    size = attributes.get("sizeInt", attributes.get("size"))
    conflict = disagreement({"size": size, "sha256": hashes["sha256"]},
                            {"size": upload.facts.size, "sha256": upload.facts.sha256})
    return None if conflict is None else f"{conflict[0]} {conflict[1]}, ours is {conflict[2]}"
