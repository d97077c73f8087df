"""Artifact name → verified local file: the cache first, then each mirror in the manifest's order.

The machinery behind :class:`~phasegpt_ckpt.store.store.Store`: each function takes the store (its
manifest, cache, offline mode and progress callback, resolved once). Each mirror is resolved, what it
publishes is checked against the manifest before any byte moves (pre-flight), the transfer engine
moves and hashes the bytes, the proof stage judges them, and the cache keeps them. Every mirror's
outcome is recorded; a mirror's failure never escapes as such.

    fetched = fetch(store, "tinyshakespeare")   # the cache, else its mirrors in order
    fetched.path, fetched.pinned                # (.../artifacts/tinyshakespeare/input.txt, True)
    locate(store, "best_model").path            # NAME: fetched and verified
    locate(store, "./my_run/best_model.pt").path  # PATH: taken as it is
"""
from __future__ import annotations

import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import requests
import urllib3

from phasegpt_ckpt.errors import BadInput, MirrorFailed, MirrorsExhausted, PhasegptError, VerificationFailed
from phasegpt_ckpt.paths import user_path
from phasegpt_ckpt.proof.digest import FileFacts, Hasher
from phasegpt_ckpt.proof.metadata import CheckpointInfo, load_metadata
from phasegpt_ckpt.proof.verify import disagreement, mismatch
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.manifest import Artifact, renamed
from phasegpt_ckpt.source.mirrors import TYPES, resolve
from phasegpt_ckpt.source.mirrors.base import MirrorBase, Source
from phasegpt_ckpt.source.mirrors.local import LocalMirror
from phasegpt_ckpt.source.segments import connection_count, record_path
from phasegpt_ckpt.source.transfer import RetryPolicy, transfer
from phasegpt_ckpt.store.cache import TOFU, Cache, place

if TYPE_CHECKING:
    from phasegpt_ckpt.store.store import Store

log = logging.getLogger(__name__)

PARALLEL_PARTS = 4  # parts of one artifact downloaded at once
JOIN_CHUNK = 4 * 1024 * 1024


@dataclass
class Outcome:
    """What one mirror did: ``status`` is a short tag ("ok", "404", "unpublished", "disagrees: ...")."""

    mirror: str
    kind: str
    status: str
    detail: str = ""
    bytes_moved: Optional[int] = None  # what this mirror sent in this run (None: it sent nothing)
    mb_per_s: Optional[float] = None  # ... and how fast, over the download's wall time


@dataclass(kw_only=True)
class Fetched(FileFacts):
    """A verified file of artifact ``name`` (its facts, ``origin`` the mirror it came from) and how it was obtained."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    pinned: bool = False
    from_cache: bool = False
    pin: str = ""  # what the sha256 was checked against (the receipt's words)


@dataclass
class Located:
    """A local file for a ``NAME|PATH`` reference; ``sha256`` is known when it is an artifact's cached file."""

    path: Path
    artifact: Optional[Artifact]
    sha256: Optional[str]


def fetch(store: "Store", name: Optional[str] = None, *, mirror_type: Optional[str] = None,
          dest: str | Path | None = None, policy: Optional[RetryPolicy] = None, force: bool = False,
          mirror_order: Optional[str] = None) -> Fetched:
    """Get artifact ``name`` (the manifest's default when None) as a verified local file (see :meth:`Store.fetch`)."""
    artifact = store.manifest.artifact(name)
    mirrors = _mirrors_of(artifact, mirror_type)
    order = mirror_order or artifact.mirror_order
    if order not in ("manifest", "fastest"):
        raise BadInput(f"unknown mirror order {order!r}: use manifest or fastest")
    with store.cache.lock(artifact.name):
        fetched = None if force else _from_cache(artifact, store.cache)
        if fetched is None and store.offline:
            mirrors = [mirror for mirror in mirrors if isinstance(mirror, LocalMirror)]  # a disk needs no network
            if not mirrors:
                alternative = offline_alternative(store, artifact)
                raise MirrorsExhausted(
                    f"{artifact.name} is not in the cache ({store.cache.root}) and offline mode forbids downloading; "
                    f"`phasegpt-ckpt import {artifact.name} FILE` adds a copy you already have"
                    + (f" ({alternative} is at hand offline)" if alternative else ""),
                    summary="offline, not cached",
                )
        if fetched is None:
            if order == "fastest":
                mirrors = _fastest_first(mirrors, policy or RetryPolicy())
            fetched = (_from_parts if artifact.parts else _from_mirrors)(store, artifact, mirrors, policy)
    for index in range(len(artifact.parts or [])):  # once the whole is in: the cache lock released, blobs too
        name = _piece_name(artifact, index)
        if store.cache.receipt(name) is not None:
            store.cache.remove(name, wait=True)
    if dest is not None:
        fetched.path = place(fetched.path, dest, artifact.filename)
    return fetched


def import_file(store: "Store", name: str, path: str | Path) -> Fetched:
    """Check a file obtained elsewhere against artifact ``name`` and keep it in the cache (see :meth:`Store.import_file`)."""
    artifact = store.manifest.artifact(name)
    path = user_path(path, "import")
    if not path.is_file():
        raise BadInput(f"{path} is not a file")
    mirror = LocalMirror(path=path.resolve())
    with store.cache.lock(artifact.name), requests.Session() as session:
        try:
            fetched = _via(store, mirror, artifact, session)
        except MirrorFailed as err:
            raise VerificationFailed(f"{path} is not {artifact.name}: {_detail(err, mirror)}") from None
    return fetched


def locate(store: "Store", ref: Optional[str] = None) -> Located:
    """Turn ``NAME|PATH`` into a local file: an artifact name is fetched (verified), a path is taken as is.

    A name wins over a file of the same name in the current directory; write ``./name`` for the file.
    None means the manifest's default artifact.
    """
    manifest = store.manifest
    if ref is None or ref in manifest.artifacts:
        fetched = fetch(store, ref)
        return Located(fetched.path, manifest.artifact(ref), fetched.sha256)
    path = Path(ref).expanduser()
    if path.is_file():
        receipt = store.cache.identify(path)
        artifact = manifest.artifacts.get(receipt.artifact) if receipt else None
        return Located(path, artifact, receipt.sha256 if receipt else None)
    if path.exists():
        raise BadInput(f"{ref} is a directory, not a file")
    known = ", ".join(manifest.artifacts) or "none"
    raise BadInput(f"{ref!r} is neither an artifact of the manifest ({known}) nor an existing file")


def fetch_metadata(store: "Store", artifact: Artifact) -> Optional[CheckpointInfo]:
    """The metadata JSON of ``artifact`` (fetched if needed), or None when it names none."""
    if artifact.metadata is None:
        return None
    return load_metadata(fetch(store, artifact.metadata).path)


def list_artifacts(store: "Store") -> list[dict[str, Any]]:
    """One row per artifact: what the manifest says, whether it is cached, and each mirror's state."""
    rows = []
    for artifact in store.manifest.artifacts.values():
        receipt = store.cache.lookup(artifact)
        rows.append({
            "name": artifact.name, "kind": artifact.kind, "filename": artifact.filename,
            "size": artifact.size, "sha256": artifact.sha256,
            "cached": (receipt.pin if receipt else None),
            "mirrors": [_mirror_row(mirror) for mirror in artifact.mirrors],
            "manifest": str(store.manifest.source_of(artifact.name) or ""),  # the file that lists it
        })
    return rows


def artifact_info(store: "Store", ref: Optional[str] = None) -> dict[str, Any]:
    """What is known about ``NAME|PATH`` without downloading it: manifest entry, receipt, metadata JSON.

    Only the (small) metadata JSON is fetched when missing. The Store adds the checkpoint's own
    facts (epoch, parameters, ...).
    """
    manifest = store.manifest
    if ref is None or ref in manifest.artifacts:
        artifact = manifest.artifact(ref)
        cached = _from_cache(artifact, store.cache)
        path = cached.path if cached else None
    else:
        located = locate(store, ref)
        artifact, path = located.artifact, located.path
    receipt = store.cache.identify(path) if path else None
    info: dict[str, Any] = {"path": str(path) if path else None}
    if path is not None:
        info["file_size"] = path.stat().st_size
    info["receipt"] = receipt.model_dump(mode="json") if receipt else None
    if artifact is not None:
        info["artifact"] = artifact.model_dump(mode="json", exclude={"mirrors"})
        info["artifact"]["mirrors"] = [_mirror_row(mirror) for mirror in artifact.mirrors]
        info["metadata"] = _metadata_facts(store, artifact)
    return info


# -- internals ------------------------------------------------------------------------------------


def _mirrors_of(artifact: Artifact, mirror_type: Optional[str]) -> list[MirrorBase]:
    """The mirrors to try, in order; ``mirror_type`` keeps one type (refused if the artifact has none)."""
    if mirror_type is None:
        return list(artifact.mirrors)
    if mirror_type not in TYPES:
        raise BadInput(f"unknown mirror type {mirror_type!r} (known: {', '.join(TYPES)})")
    chosen = [mirror for mirror in artifact.mirrors if mirror.type == mirror_type]
    if not chosen:
        have = ", ".join(dict.fromkeys(m.type for m in artifact.mirrors)) or "none"
        raise BadInput(f"{artifact.name} has no {mirror_type} mirror (it has: {have})")
    return chosen


def _from_cache(artifact: Artifact, cache: Cache) -> Optional[Fetched]:
    receipt = cache.lookup(artifact)
    if receipt is None:
        return None
    cache.mark_used(artifact.name)  # what `cache ls` shows as last used
    path = place(cache.blob(receipt.sha256), cache.path(artifact).parent, artifact.filename)
    return Fetched(path, receipt.size, receipt.sha256, origin=receipt.mirror, name=artifact.name,
                   pinned=artifact.sha256 is not None, from_cache=True, pin=receipt.pin)


def _from_mirrors(store: "Store", artifact: Artifact, mirrors: list[MirrorBase],
                  policy: Optional[RetryPolicy]) -> Fetched:
    """Try each mirror in order; the first that delivers checked bytes wins."""
    outcomes: list[Outcome] = []
    with requests.Session() as session:
        together = _from_all_at_once(store, artifact, mirrors, session, policy or RetryPolicy())
        if together is not None:
            return together
        for mirror in mirrors:
            if not mirror.published:
                outcomes.append(Outcome(mirror.describe(), mirror.type, "unpublished", "listed, not published yet"))
                continue
            try:
                fetched = _via(store, mirror, artifact, session, policy)
            except MirrorFailed as err:
                log.warning(f"{mirror.describe()}: {_detail(err, mirror)}")
                outcomes.append(Outcome(mirror.describe(), mirror.type, err.outcome, _detail(err, mirror)))
                continue
            fetched.outcomes = outcomes + fetched.outcomes
            return fetched
    raise MirrorsExhausted(_exhausted(store, artifact, outcomes), outcomes, summary=_tried(outcomes))


def _from_parts(store: "Store", artifact: Artifact, mirrors: list[MirrorBase],
                policy: Optional[RetryPolicy]) -> Fetched:
    """An artifact kept in parts: a whole copy on a ``local`` mirror if there is one, else each part (in
    parallel) from the first mirror that has it, checked against
    its own sha256 and kept in the cache as an artifact of its own (a part fetched survives a failure of
    another), then joined and the whole verified."""
    whole = [m for m in mirrors if isinstance(m, LocalMirror) and m.published and m.path.is_file()]
    if whole:  # a copy of the whole on this disk (the one publish split): the whole verdict decides
        try:
            return _from_mirrors(store, artifact, whole, policy)
        except MirrorsExhausted:
            log.info(f"{artifact.name}: no whole copy on disk serves it; fetching its {len(artifact.parts)} parts")
    pieces = [_piece(artifact, index, mirrors) for index in range(len(artifact.parts))]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_PARTS, len(pieces))) as pool:
        got = list(pool.map(lambda piece: _fetch_piece(store, artifact, piece, policy), pieces))
    joined = _join(store.cache.part_path(artifact, mirrors[0]) if mirrors else store.cache.path(artifact), got)
    problem = mismatch(joined, size=artifact.size, sha256=artifact.sha256)
    if problem is not None:
        joined.path.unlink(missing_ok=True)
        raise VerificationFailed(f"{artifact.name}: its {len(got)} parts, each as the manifest says, join into other "
                                 f"bytes than the whole file ({problem[1]}): the manifest's parts are wrong")
    pin = "pinned (manifest sha256)"
    path = store.cache.store(artifact, joined, pin=pin)
    outcomes = [o for fetched in got for o in fetched.outcomes]
    return Fetched(path, joined.size, joined.sha256, origin=joined.origin, name=artifact.name, outcomes=outcomes,
                   pinned=True, pin=pin)


def _piece(artifact: Artifact, index: int, mirrors: list[MirrorBase]) -> Artifact:
    """Part ``index`` of ``artifact`` as an artifact of its own, served beside the whole by each mirror that can."""
    part = artifact.parts[index]
    beside = [m for m in (renamed(mirror, part.filename) for mirror in mirrors) if m is not None]
    return Artifact(name=_piece_name(artifact, index), kind=artifact.kind, filename=part.filename,
                    size=part.size, sha256=part.sha256, mirrors=beside)


def _piece_name(artifact: Artifact, index: int) -> str:
    return f"{artifact.name}.part{index + 1:03d}"


def _fetch_piece(store: "Store", artifact: Artifact, piece: Artifact, policy: Optional[RetryPolicy]) -> Fetched:
    with store.cache.lock(piece.name):
        try:
            return _from_cache(piece, store.cache) or _from_mirrors(store, piece, piece.mirrors, policy)
        except MirrorsExhausted as err:
            raise MirrorsExhausted(f"{artifact.name}: part {piece.filename}: {err}", err.outcomes,
                                   summary=err.summary) from None


def _join(target: Path, got: list[Fetched]) -> FileFacts:
    """The parts written one after another into ``target``, hashed on the way (judged by the caller)."""
    hasher = Hasher()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for fetched in got:
            with open(fetched.path, "rb") as part:
                while chunk := part.read(JOIN_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    origins = ", ".join(dict.fromkeys(fetched.origin for fetched in got))
    return FileFacts(target, target.stat().st_size, hasher.hexdigests()["sha256"], origin=f"parts from {origins}")


PROBE_BYTES = 256 * 1024  # what --mirror-order fastest asks each mirror for


def _fastest_first(mirrors: list[MirrorBase], policy: RetryPolicy) -> list[MirrorBase]:
    """The mirrors by how soon each delivers its first 256 KiB (a local one: at once); those that cannot, last;
    ties keep the manifest's order."""
    seconds = {id(mirror): _probe(mirror, policy) for mirror in mirrors}
    ordered = sorted(mirrors, key=lambda mirror: seconds[id(mirror)])
    log.info("mirrors, fastest first: " + ", ".join(f"{m.describe()} ({seconds[id(m)]:.3f} s)" for m in ordered))
    return ordered


def _probe(mirror: MirrorBase, policy: RetryPolicy) -> float:
    if not mirror.published:
        return float("inf")
    try:
        with requests.Session() as session:
            source = resolve(mirror, session)
            if source.local_path is not None:
                return 0.0
            began = time.monotonic()
            headers = {**source.headers, "Accept-Encoding": "identity", "Range": f"bytes=0-{PROBE_BYTES - 1}"}
            with web.get(source.session or session, source.url, headers=headers, label=source.label, stream=True,
                         timeout=(policy.connect_timeout, policy.read_timeout)) as response:
                if response.status_code not in (200, 206):
                    return float("inf")
                got = len(response.raw.read(PROBE_BYTES))
                if got < PROBE_BYTES and str(got) != response.headers.get("Content-Length"):
                    return float("inf")  # cut short: quick, and broken
            return time.monotonic() - began
    except (PhasegptError, requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        return float("inf")


def _from_all_at_once(store: "Store", artifact: Artifact, mirrors: list[MirrorBase], session: requests.Session,
                      policy: RetryPolicy) -> Optional[Fetched]:
    """A pinned artifact big enough to segment, with several published HTTP mirrors (a local one not first):
    segments from all of them at once, each mirror's bytes and speed in its outcome row. None when that does
    not apply or does not deliver: then one mirror at a time, which resumes the bytes already there."""
    published = [mirror for mirror in mirrors if mirror.published]
    if (artifact.sha256 is None or artifact.size is None or connection_count(artifact.size, policy.connections) < 2
            or not published or isinstance(published[0], LocalMirror)):
        return None
    joined, outcomes = [], []
    for mirror in published:
        try:
            source = resolve(mirror, session)
            _, pin = _preflight(artifact, source)
        except MirrorFailed as err:
            outcomes.append(Outcome(mirror.describe(), mirror.type, err.outcome, _detail(err, mirror)))
            continue
        if source.local_path is None and source.session is None:  # a provider's own cookies stay on its own path
            joined.append((mirror, source))
    if len(joined) < 2:
        return None
    account: list = []
    try:
        got = transfer(joined[0][1], _part_for(store, artifact, joined[0][0]), expected_size=artifact.size,
                       expected_sha256=artifact.sha256, session=session, policy=policy, label=joined[0][1].label,
                       progress=store.progress, also=[source for _, source in joined[1:]], account=account)
    except MirrorFailed as err:
        log.warning(f"{artifact.name} from all mirrors at once: {err}; trying them one at a time")
        return None
    path = store.cache.store(artifact, got, pin=pin)
    for (mirror, _), (_, moved, seconds, failure) in zip(joined, account):
        speed = round(moved / seconds / 1e6, 2) if seconds else None
        if failure is not None:
            status, detail = getattr(failure, "outcome", "inconsistent"), _detail(failure, mirror)
        else:
            status, detail = ("ok", f"served {moved} bytes") if moved else ("unused", "served no bytes")
        outcomes.append(Outcome(mirror.describe(), mirror.type, status, detail, moved or None, speed))
    return Fetched(path, got.size, got.sha256, got.md5, got.origin, name=artifact.name, outcomes=outcomes,
                   pinned=True, pin=pin)


def _via(store: "Store", mirror: MirrorBase, artifact: Artifact, session: requests.Session,
         policy: Optional[RetryPolicy] = None) -> Fetched:
    """Resolve, agree, transfer, judge, store: one mirror's whole attempt (raises ``MirrorFailed``)."""
    source = resolve(mirror, session)
    expected_sha256, pin = _preflight(artifact, source)
    want_md5 = expected_sha256 is None and source.md5 is not None
    began = time.monotonic()
    got = transfer(
        source, _part_for(store, artifact, mirror),
        expected_size=source.size if artifact.size is None else artifact.size,
        expected_sha256=expected_sha256, session=source.session or session, policy=policy, label=source.label,
        want_md5=want_md5, progress=store.progress,
    )
    problem = mismatch(got, md5=source.md5) if want_md5 else None
    if problem is not None:
        got.path.unlink(missing_ok=True)
        raise MirrorFailed("hash mismatch", problem[1])
    path = store.cache.store(artifact, got, pin=pin, source_mode=_mode_of(source.local_path))
    if pin == TOFU:
        log.warning(f"{artifact.name} has no published sha256: recorded {got.sha256} as {TOFU}")
    seconds = time.monotonic() - began
    outcome = Outcome(mirror.describe(), mirror.type, "ok", pin, mb_per_s=round(got.size / seconds / 1e6, 2))
    return Fetched(path, got.size, got.sha256, got.md5, source.label, name=artifact.name, outcomes=[outcome],
                   pinned=artifact.sha256 is not None, pin=pin)


def _mode_of(path: Optional[Path]) -> Optional[int]:
    """The permission bits of a local mirror's file (None for a download, or a file gone meanwhile)."""
    try:
        return None if path is None else stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def _part_for(store: "Store", artifact: Artifact, mirror: MirrorBase) -> Path:
    """This mirror's part file; for a pinned artifact, the partial bytes another mirror left move there first
    (the sha256 decides, whoever served them), so a resume may switch mirrors. The caller holds the lock."""
    part = store.cache.part_path(artifact, mirror)
    if artifact.sha256 is None or part.exists():
        return part
    for other in artifact.mirrors:
        left = store.cache.part_path(artifact, other)
        record = record_path(left)
        if left != part and left.is_file() and not left.is_symlink() and record.is_file():
            os.replace(left, part)  # a crash between the two leaves a part without a record: never trusted
            os.replace(record, record_path(part))
            break
    return part


def _detail(err: MirrorFailed, mirror: MirrorBase) -> str:
    """The failure without the mirror's label, which transfer's messages start with."""
    return str(err).removeprefix(f"{mirror.describe()}: ")


def _preflight(artifact: Artifact, source: Source) -> tuple[Optional[str], str]:
    """Compare what the provider publishes with the manifest before any byte moves.

    Returns the sha256 the bytes must have (None: nothing to check against) and what it came
    from. A provider that disagrees serves a different file (replaced upstream): skip it.
    """
    conflict = disagreement(source.published(), {"size": artifact.size, "sha256": artifact.sha256, "md5": artifact.md5})
    if conflict is not None:
        field, theirs, ours = conflict
        said = f"it has {theirs} bytes" if field == "size" else f"it publishes {field} {theirs}"
        raise MirrorFailed(f"disagrees: provider {field} ≠ manifest", f"{said}, the manifest says {ours}")
    if artifact.sha256 is not None:
        return artifact.sha256, "pinned (manifest sha256)"
    if source.sha256:
        return source.sha256.lower(), "unpinned (provider sha256)"
    return None, "unpinned (provider md5)" if source.md5 else TOFU


def _exhausted(store: "Store", artifact: Artifact, outcomes: list[Outcome]) -> str:
    """The one line for a failed fetch: each mirror's outcome, and a checkpoint at hand instead."""
    tried = _tried(outcomes)
    if all(o.status == "unpublished" for o in outcomes):
        line = f"{artifact.name} has no published mirror yet ({tried})"
    else:
        line = f"every mirror of {artifact.name} failed ({tried})"
    alternative = offline_alternative(store, artifact)
    return line + (f"; {alternative} is at hand offline" if alternative else "")


def _tried(outcomes: list[Outcome]) -> str:
    return ", ".join(f"{o.kind}: {o.status}" for o in outcomes) or "no mirrors listed"


def offline_alternative(store: "Store", artifact: Artifact) -> Optional[str]:
    """Another checkpoint that needs no network: cached, or on a published local mirror (the bundled one)."""
    if artifact.kind != "checkpoint":
        return None
    for other in store.manifest.artifacts.values():
        if other.kind == "checkpoint" and other is not artifact and (on_local_mirror(other) or store.cache.lookup(other)):
            return other.name
    return None


def on_local_mirror(artifact: Artifact) -> bool:
    """Is a published ``local`` mirror of ``artifact`` there on disk?"""
    return any(isinstance(m, LocalMirror) and m.published and m.path.is_file() for m in artifact.mirrors)


def _mirror_row(mirror: MirrorBase) -> dict[str, Any]:
    return {"type": mirror.type, "mirror": mirror.describe(), "published": mirror.published}


def _metadata_facts(store: "Store", artifact: Artifact) -> Optional[dict[str, Any]]:
    """The metadata JSON's fields and which of them are not published, or why it is unavailable."""
    try:
        info = fetch_metadata(store, artifact)
    except PhasegptError as err:
        return {"unavailable": str(err)}
    if info is None:
        return None
    return {**info.model_dump(mode="json"), "not_published": info.not_published()}
