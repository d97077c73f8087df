"""Zenodo deposit (PUBLISHING.md §1): a draft, its bucket, its metadata, then publish; a DOI comes back.

The draft is found again rather than made twice: a re-run takes the unpublished deposition with the
same title (for ``--new-version``, the same concept), or the published one that already holds these
very bytes. Each bucket PUT is a replacement, so retrying one is safe; its md5 is compared with ours
before anything is published, and a publish whose answer was lost is read back before it is called
failed. Whatever fails leaves the draft unpublished and says where it is.

    ZenodoDeposit(sandbox=True).send([Upload("best_model.pt", path, facts)], metadata).doi
    # '10.5072/zenodo.123457'
"""
from __future__ import annotations

import logging
from typing import Any, Optional
from urllib.parse import quote

from phasegpt_ckpt.errors import BadInput, MirrorsExhausted, VerificationFailed
from phasegpt_ckpt.proof.verify import disagreement
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.zenodo import DOI, SANDBOX, ZENODO, ZenodoMirror
from phasegpt_ckpt.store.deposit import DEPOSIT_RETRY, Api, ApiError, Deposit, Deposited, Metadata, Upload

log = logging.getLogger(__name__)

PER_FILE = 50 * 10**9  # the bucket API's limit per file (and per record), decimal bytes
ZENODO_DOI, SANDBOX_DOI = "10.5281", "10.5072"  # DOIs are {prefix}/zenodo.{record id}; the sandbox's are test DOIs
DEPOSITIONS = "/api/deposit/depositions"


class ZenodoDeposit(Deposit):
    """zenodo.org (or the sandbox, or ``endpoint``); ``new_version`` (a record id or DOI) continues a concept."""

    token_env = "ZENODO_TOKEN"

    def __init__(self, *, sandbox: bool = False, endpoint: Optional[str] = None, draft: bool = False,
                 new_version: Optional[str] = None, limit: int = PER_FILE, policy: web.RetryPolicy = DEPOSIT_RETRY):
        self.new_version = _record_id(new_version) if new_version else None
        super().__init__(endpoint, (SANDBOX, ZENODO) if sandbox else (ZENODO, SANDBOX))
        self.sandbox, self.draft, self.limit = sandbox, draft, limit
        self._deposition: Optional[dict] = None  # the draft (or record) this deposit fills
        self.api = Api(self.token, lambda url: web.on_origin(url, self.base), "Zenodo", policy)

    def describe(self) -> str:
        return "zenodo-sandbox" if self.sandbox else "zenodo"

    def supersedes(self, mirror) -> bool:
        """The record ``--new-version`` continues: the manifest lists the new version in its place (once it
        is published; a draft waits beside it)."""
        return (isinstance(mirror, ZenodoMirror) and self.new_version is not None and not self.draft
                and mirror.published and mirror.record_id() == self.new_version)

    def reserve(self, uploads: list[Upload], metadata: Metadata) -> Optional[str]:
        """Find or make the draft (described by ``metadata``; ``uploads``: the checkpoint's, by which a record
        already published is recognised); the DOI it has, or will have once published (``{prefix}/zenodo.{id}``)."""
        if not metadata.creators and not self.draft:
            raise BadInput('Zenodo publishes no record without creators: add "creators": ["Family, Given"] to the '
                           "metadata JSON (or publish with --draft and add them on Zenodo)")
        try:
            self._deposition = self._draft(uploads, _fields(metadata))
        except ApiError as err:
            self.api.close()
            raise _refused(err) from None
        prefix = SANDBOX_DOI if self.sandbox else ZENODO_DOI
        return self._deposition.get("doi") or f"{prefix}/zenodo.{self._deposition['id']}"

    def send(self, uploads: list[Upload], metadata: Metadata) -> Deposited:
        try:
            if self._deposition is None:
                self.reserve(uploads, metadata)
            return self._send(self._deposition, uploads)
        except ApiError as err:
            raise _refused(err) from None
        finally:
            self.api.close()

    def _send(self, deposition: dict, uploads: list[Upload]) -> Deposited:
        where = f"draft {deposition['id']} ({deposition['links'].get('html', deposition['links']['self'])})"
        if deposition.get("submitted") and deposition.get("state") == "done":
            log.info(f"Zenodo record {deposition['id']} already holds these bytes: nothing to upload")
            return self._deposited(deposition, [u for u in uploads if _holds(deposition, [u])])
        try:
            self._fill(deposition, uploads)
        except KeyboardInterrupt:
            log.warning(f"interrupted: {where} is left unpublished; the same command again resumes it")
            raise
        except ApiError as err:
            raise MirrorsExhausted(f"uploading to Zenodo failed: {err.reason}; {where} is left unpublished: run "
                                   "the same command again to resume, or discard it") from None
        except VerificationFailed as err:
            raise VerificationFailed(f"{err}; {where} is left unpublished: run the same command again to upload "
                                     "again, or discard it") from None
        if self.draft:
            log.info(f"left {where} unpublished, for a person to review")
            return self._deposited(deposition, uploads, note=where)
        return self._deposited(self._publish(deposition, where), uploads)

    # -- the draft ------------------------------------------------------------------------------
    def _draft(self, uploads: list[Upload], fields: dict[str, Any]) -> dict:
        """The deposition to fill, described by ``fields``: one an earlier run left (or published with these
        bytes), else a new version or a new one. A creation whose answer was lost is looked for, not repeated."""
        concept = self._concept(self.new_version) if self.new_version else None
        earlier = self._earlier(fields["title"], concept, uploads)
        if earlier is not None and earlier.get("state") == "done":
            return earlier
        if earlier is not None:
            log.info(f"resuming Zenodo draft {earlier['id']}")
        else:
            try:
                earlier = self._new_version_draft(concept) if self.new_version else self._create(fields)
            except ApiError as err:
                earlier = None if err.status is not None else self._earlier(fields["title"], concept, uploads)
                if earlier is None:
                    raise
                log.info(f"Zenodo made draft {earlier['id']} although its answer was lost")
        return self.api.json("PUT", earlier["links"]["self"], json={"metadata": fields})  # a full replacement

    def _create(self, fields: dict[str, Any]) -> dict:
        """A new deposition, described at once: metadata Zenodo refuses is refused before any byte moves."""
        created = self.api.json("POST", self._url(DEPOSITIONS), json={"metadata": fields}, ok=(201,), retry=False)
        log.info(f"created Zenodo draft {created['id']}")
        return created

    def _earlier(self, title: str, concept: Optional[str], uploads: list[Upload]) -> Optional[dict]:
        """A deposition of ours to continue: unpublished, with this title (a new version: of this concept,
        whose one pending draft keeps the previous version's title), or published already with these bytes."""
        mine = self.api.json("GET", self._url(DEPOSITIONS), params={"size": 100})
        ours = [d for d in mine if isinstance(d, dict) and (
            str(d.get("conceptrecid")) == concept if concept else (d.get("metadata") or {}).get("title") == title)]
        drafts = [d for d in ours if not d.get("submitted")]
        done = [d for d in ours if d.get("state") == "done" and _holds(d, uploads)]
        return (drafts or done or [None])[0]

    def _concept(self, record: str) -> str:
        try:
            return str(self.api.json("GET", self._url(f"{DEPOSITIONS}/{record}"))["conceptrecid"])
        except ApiError as err:
            if err.status in (403, 404, 410):
                raise BadInput(f"--new-version {record}: no such Zenodo record among yours ({err.reason})") from None
            raise

    def _new_version_draft(self, concept: str) -> dict:
        try:
            answer = self.api.json("POST", self._url(f"{DEPOSITIONS}/{self.new_version}/actions/newversion"),
                                   ok=(201,), retry=False)
        except ApiError as err:
            if err.status in (400, 403, 404):
                raise BadInput(f"--new-version {self.new_version}: Zenodo refused it: {err.reason}") from None
            raise
        draft = self.api.json("GET", answer["links"]["latest_draft"])  # the docs and the server answer differently
        log.info(f"created Zenodo draft {draft['id']}, a new version of concept {concept}")
        return draft

    # -- the bytes ------------------------------------------------------------------------------
    def _fill(self, deposition: dict, uploads: list[Upload]) -> None:
        """Make the bucket hold exactly ``uploads``: PUT what it lacks (each answer's md5 checked), drop the rest."""
        bucket = deposition["links"]["bucket"]
        held = {f.get("key"): f for f in self.api.json("GET", bucket).get("contents", [])}
        for upload in uploads:
            if _agrees(held.get(upload.key), upload) is None:
                log.info(f"{upload.key} is already in the draft")
                continue
            url = f"{bucket}/{quote(upload.key, safe='')}"
            log.info(f"uploading {upload.key} ({upload.facts.size} bytes) to Zenodo draft {deposition['id']}")
            answer = self.api.json("PUT", url, ok=(200, 201), body=upload.open, size=upload.facts.size,
                                   headers={"Content-Type": "application/octet-stream"})
            problem = _agrees(answer, upload)
            if problem is not None:
                raise VerificationFailed(f"Zenodo stored {upload.key} with {problem}")
        for key in set(held) - {u.key for u in uploads}:  # a new version starts with the previous files
            log.info(f"removing {key} from Zenodo draft {deposition['id']}")
            self.api.call("DELETE", f"{bucket}/{quote(key, safe='')}", ok=(204, 404))

    def _publish(self, deposition: dict, where: str) -> dict:
        """Publish; an answer lost on the way is read back (a repeat would be refused) before failure is said."""
        try:
            return self.api.json("POST", deposition["links"]["publish"], ok=(202,), retry=False)
        except ApiError as err:
            if err.status == 400:
                raise BadInput(f"Zenodo refused to publish: {err.reason}; {where} is left unpublished") from None
            failure = err
        try:
            now = self.api.json("GET", deposition["links"]["self"])
        except ApiError:
            now = {}
        if now.get("submitted") and now.get("doi"):
            log.info(f"Zenodo published {now['doi']} although its answer was lost")
            return now
        raise MirrorsExhausted(f"publishing on Zenodo failed: {failure.reason}; {where} is left unpublished: run the "
                               "same command again to publish it, or discard it")

    def _deposited(self, deposition: dict, uploads: list[Upload], note: str = "") -> Deposited:
        doi = deposition.get("doi") if deposition.get("submitted") else None
        identity = {"doi": doi} if doi else {"record": str(deposition["id"]), "published": False}
        mirrors = {u.key: ZenodoMirror(**identity, filename=u.key, endpoint=self.endpoint) for u in uploads}
        return Deposited(mirrors, doi, note or deposition["links"].get("html", ""))

    def _url(self, path: str) -> str:
        return f"{self.base.rstrip('/')}{path}"


def _fields(metadata: Metadata) -> dict[str, Any]:
    """The legacy deposit metadata (PUBLISHING.md §1.4), every field every time: a PUT replaces them all."""
    fields = {"upload_type": "dataset", "title": metadata.title, "creators": metadata.creators,
              "description": metadata.description, "access_right": "open", "license": metadata.license,
              "version": metadata.version, "keywords": metadata.keywords}
    if metadata.related:
        fields["related_identifiers"] = metadata.related
    return fields


def _agrees(entry: Optional[dict], upload: Upload) -> Optional[str]:
    """None when a bucket entry has the upload's size and md5, else what differs (no entry: "nothing")."""
    if not isinstance(entry, dict):
        return "nothing"
    algorithm, _, digest = str(entry.get("checksum") or "").rpartition(":")
    conflict = disagreement({"size": entry.get("size"), "md5": digest if algorithm in ("md5", "") else None},
                            {"size": upload.facts.size, "md5": upload.facts.md5})
    if conflict is None and not digest:
        return "no checksum"
    return None if conflict is None else f"{conflict[0]} {conflict[1]}, ours is {conflict[2]}"


def _holds(deposition: dict, uploads: list[Upload]) -> bool:
    """Does a (published) deposition hold each of these files with these bytes (legacy file entries)?"""
    files = {f.get("filename"): f for f in deposition.get("files") or [] if isinstance(f, dict)}
    return all(u.key in files and files[u.key].get("checksum") == u.facts.md5
               and files[u.key].get("filesize") == u.facts.size for u in uploads)


def _record_id(ref: str) -> str:
    """A record id from ``123`` or ``10.5281/zenodo.123``.

    >>> _record_id("10.5072/zenodo.99"), _record_id("42")
    ('99', '42')
    """
    match = DOI.fullmatch(ref)
    if match:
        return match.group(1)
    if not ref.isdigit():
        raise BadInput(f"--new-version {ref!r}: give the record id or DOI of the latest version (10.5281/zenodo.N)")
    return ref


def _refused(err: ApiError) -> Exception:
    """A call that failed before any draft was in hand: the token, the metadata, or the service."""
    if err.status in (401, 403):
        return BadInput(f"Zenodo refused ZENODO_TOKEN: {err.reason}; it needs the deposit:write and deposit:actions "
                        "scopes")
    if err.status == 400:
        return BadInput(f"Zenodo refused the deposit: {err.reason}")
    return MirrorsExhausted(f"Zenodo: {err.reason}")

