"""Artifact name → verified local file: the cache first, then each mirror in the manifest's order.

Each mirror is resolved, its published facts are checked against the manifest before any byte
moves (pre-flight agreement), then the transfer engine moves and hashes the bytes, and the cache
keeps them. Every mirror's outcome is recorded; a mirror's failure never escapes as such.

    fetched = fetch("tinyshakespeare")        # the cache, else its mirrors in order
    fetched.path, fetched.pinned              # (.../artifacts/tinyshakespeare/input.txt, True)
    locate("best_model").path                 # NAME: fetched and verified
    locate("./my_run/best_model.pt").path     # PATH: taken as it is
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import requests

from phasegpt_ckpt import console
from phasegpt_ckpt.store.cache import TOFU, Cache, place
from phasegpt_ckpt.errors import BadInput, MirrorFailed, MirrorsExhausted, PhasegptError, VerificationFailed
from phasegpt_ckpt.source.manifest import Artifact, Manifest, load_manifest
from phasegpt_ckpt.proof.metadata import CheckpointInfo, load_metadata
from phasegpt_ckpt.source.mirrors import TYPES, resolve
from phasegpt_ckpt.source.mirrors.base import MirrorBase, Source
from phasegpt_ckpt.source.mirrors.local import LocalMirror
from phasegpt_ckpt.source.transfer import RetryPolicy, transfer


@dataclass
class Outcome:
    """What one mirror did: ``status`` is a short tag ("ok", "404", "unpublished", "disagrees: ...")."""

    mirror: str
    kind: str
    status: str
    detail: str = ""


@dataclass
class Fetched:
    """A verified file of an artifact and how it was obtained."""

    name: str
    path: Path
    sha256: str
    size: int
    mirror: str
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


def fetch(
    name: Optional[str] = None,
    *,
    manifest: Optional[Manifest] = None,
    cache: Optional[Cache] = None,
    mirror_type: Optional[str] = None,
    offline: Optional[bool] = None,
    dest: str | Path | None = None,
    policy: Optional[RetryPolicy] = None,
) -> Fetched:
    """Get artifact ``name`` (the manifest's default when None) as a verified local file.

    ``mirror_type`` tries only mirrors of that type; ``offline`` (default: ``$PHASEGPT_OFFLINE``)
    uses the cache and ``local`` mirrors only; ``dest`` also places the file at ``dest/<filename>``;
    ``policy`` sets the timeouts and retries of each transfer (default: :class:`RetryPolicy`). Concurrent calls
    for one artifact, from threads or processes, transfer it once.
    Raises ``MirrorsExhausted`` (with ``.outcomes``) when no mirror delivers.
    """
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    artifact = manifest.artifact(name)
    mirrors = _mirrors_of(artifact, mirror_type)
    with cache.lock(artifact.name):
        fetched = _from_cache(artifact, cache)
        if fetched is None and _offline(offline):
            mirrors = [mirror for mirror in mirrors if isinstance(mirror, LocalMirror)]  # a disk needs no network
            if not mirrors:
                alternative = _offline_alternative(artifact, manifest, cache)
                raise MirrorsExhausted(
                    f"{artifact.name} is not in the cache ({cache.root}) and offline mode forbids downloading; "
                    f"`phasegpt-ckpt import {artifact.name} FILE` adds a copy you already have"
                    + (f", or `--model {alternative}` works offline" if alternative else "")
                )
        if fetched is None:
            fetched = _from_mirrors(artifact, mirrors, cache, manifest, policy)
    if dest is not None:
        fetched.path = place(fetched.path, dest, artifact.filename)
    return fetched


def import_file(name: str, path: str | Path, *, manifest: Optional[Manifest] = None,
                cache: Optional[Cache] = None) -> Fetched:
    """Check a file obtained elsewhere against artifact ``name`` and keep it in the cache.

    How air-gapped machines and CI get artifacts: ``import_file("tinyshakespeare", "input.txt")``.
    Raises ``VerificationFailed`` when the file's size or sha256 differ from the manifest.
    """
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    artifact = manifest.artifact(name)
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInput(f"{path} is not a file")
    mirror = LocalMirror(path=path.resolve())
    with cache.lock(artifact.name), requests.Session() as session:
        try:
            fetched = _via(mirror, artifact, cache, session)
        except MirrorFailed as err:
            raise VerificationFailed(f"{path} is not {artifact.name}: {_detail(err, mirror)}") from None
    return fetched


def locate(ref: Optional[str] = None, *, manifest: Optional[Manifest] = None, cache: Optional[Cache] = None,
           offline: Optional[bool] = None) -> Located:
    """Turn ``NAME|PATH`` into a local file: an artifact name is fetched (verified), a path is taken as is.

    A name wins over a file of the same name in the current directory; write ``./name`` for the file.
    None means the manifest's default artifact.
    """
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    if ref is None or ref in manifest.artifacts:
        fetched = fetch(ref, manifest=manifest, cache=cache, offline=offline)
        return Located(fetched.path, manifest.artifact(ref), fetched.sha256)
    path = Path(ref).expanduser()
    if path.is_file():
        receipt = cache.identify(path)
        artifact = manifest.artifacts.get(receipt.artifact) if receipt else None
        return Located(path, artifact, receipt.sha256 if receipt else None)
    if path.exists():
        raise BadInput(f"{ref} is a directory, not a file")
    known = ", ".join(manifest.artifacts) or "none"
    raise BadInput(f"{ref!r} is neither an artifact of the manifest ({known}) nor an existing file")


def fetch_metadata(artifact: Artifact, *, manifest: Manifest, cache: Cache,
                   offline: Optional[bool] = None) -> Optional[CheckpointInfo]:
    """The metadata JSON of ``artifact`` (fetched if needed), or None when it names none."""
    if artifact.metadata is None:
        return None
    return load_metadata(fetch(artifact.metadata, manifest=manifest, cache=cache, offline=offline).path)


def list_artifacts(*, manifest: Optional[Manifest] = None, cache: Optional[Cache] = None) -> list[dict[str, Any]]:
    """One row per artifact: what the manifest says, whether it is cached, and each mirror's state."""
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    rows = []
    for artifact in manifest.artifacts.values():
        receipt = cache.lookup(artifact)
        rows.append({
            "name": artifact.name, "kind": artifact.kind, "filename": artifact.filename,
            "size": artifact.size, "sha256": artifact.sha256,
            "cached": (receipt.pin if receipt else None),
            "mirrors": [_mirror_row(mirror) for mirror in artifact.mirrors],
        })
    return rows


def artifact_info(ref: Optional[str] = None, *, manifest: Optional[Manifest] = None, cache: Optional[Cache] = None,
                  offline: Optional[bool] = None) -> dict[str, Any]:
    """What is known about ``NAME|PATH`` without downloading it: manifest entry, receipt, metadata JSON.

    Only the (small) metadata JSON is fetched when missing. Other modules merge their own facts
    into the returned dict (the checkpoint's epoch, parameters, ...).
    """
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    if ref is None or ref in manifest.artifacts:
        artifact = manifest.artifact(ref)
        cached = _from_cache(artifact, cache)
        path = cached.path if cached else None
    else:
        located = locate(ref, manifest=manifest, cache=cache, offline=offline)
        artifact, path = located.artifact, located.path
    receipt = cache.identify(path) if path else None
    info: dict[str, Any] = {"path": str(path) if path else None}
    if path is not None:
        info["file_size"] = path.stat().st_size
    info["receipt"] = receipt.model_dump(mode="json") if receipt else None
    if artifact is not None:
        info["artifact"] = artifact.model_dump(mode="json", exclude={"mirrors"})
        info["artifact"]["mirrors"] = [_mirror_row(mirror) for mirror in artifact.mirrors]
        info["metadata"] = _metadata_facts(artifact, manifest, cache, offline)
    return info


# -- internals ------------------------------------------------------------------------------------


def _offline(offline: Optional[bool]) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("PHASEGPT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
    path = place(cache.blob(receipt.sha256), cache.path(artifact).parent, artifact.filename)
    return Fetched(artifact.name, path, receipt.sha256, receipt.size, receipt.mirror,
                   pinned=artifact.sha256 is not None, from_cache=True, pin=receipt.pin)


def _from_mirrors(artifact: Artifact, mirrors: list[MirrorBase], cache: Cache, manifest: Manifest,
                  policy: Optional[RetryPolicy]) -> Fetched:
    """Try each mirror in order; the first that delivers checked bytes wins."""
    outcomes: list[Outcome] = []
    with requests.Session() as session:
        for mirror in mirrors:
            if not mirror.published:
                outcomes.append(Outcome(mirror.describe(), mirror.type, "unpublished", "listed, not published yet"))
                continue
            try:
                fetched = _via(mirror, artifact, cache, session, policy)
            except MirrorFailed as err:
                console.warn(f"{mirror.describe()}: {_detail(err, mirror)}")
                outcomes.append(Outcome(mirror.describe(), mirror.type, err.outcome, _detail(err, mirror)))
                continue
            fetched.outcomes = outcomes + fetched.outcomes
            return fetched
    raise MirrorsExhausted(_exhausted(artifact, outcomes, manifest, cache), outcomes)


def _via(mirror: MirrorBase, artifact: Artifact, cache: Cache, session: requests.Session,
         policy: Optional[RetryPolicy] = None) -> Fetched:
    """Resolve, agree, transfer, check, store: one mirror's whole attempt (raises ``MirrorFailed``)."""
    source = resolve(mirror, session)
    expected_sha256, pin = _preflight(artifact, source)
    want_md5 = expected_sha256 is None and source.md5 is not None
    got = transfer(
        source, cache.part_path(artifact, mirror), expected_size=source.size if artifact.size is None else artifact.size,
        expected_sha256=expected_sha256, session=source.session or session, policy=policy, label=source.label,
        want_md5=want_md5,
    )
    if want_md5 and got.md5 != source.md5.lower():
        got.path.unlink(missing_ok=True)
        raise MirrorFailed("hash mismatch", f"md5 {got.md5} of the bytes received is not the {source.md5} published")
    path = cache.store(artifact, got.path, sha256=got.sha256, size=got.size, mirror=source.label, pin=pin)
    if pin == TOFU:
        console.warn(f"{artifact.name} has no published sha256: recorded {got.sha256} as {TOFU}")
    outcome = Outcome(mirror.describe(), mirror.type, "ok", pin)
    return Fetched(artifact.name, path, got.sha256, got.size, source.label, [outcome],
                   pinned=artifact.sha256 is not None, pin=pin)


def _detail(err: MirrorFailed, mirror: MirrorBase) -> str:
    """The failure without the mirror's label, which transfer's messages start with."""
    return str(err).removeprefix(f"{mirror.describe()}: ")


def _preflight(artifact: Artifact, source: Source) -> tuple[Optional[str], str]:
    """Compare what the provider publishes with the manifest before any byte moves.

    Returns the sha256 the bytes must have (None: nothing to check against) and what it came
    from. A provider that disagrees serves a different file (replaced upstream): skip it.
    """
    mismatch = source.disagreement(size=artifact.size, sha256=artifact.sha256, md5=artifact.md5)
    if mismatch is not None:
        field, theirs, ours = mismatch
        said = f"it has {theirs} bytes" if field == "size" else f"it publishes {field} {theirs}"
        raise MirrorFailed(f"disagrees: provider {field} ≠ manifest", f"{said}, the manifest says {ours}")
    published = source.sha256.lower() if source.sha256 else None
    if artifact.sha256 is not None:
        return artifact.sha256, "pinned (manifest sha256)"
    if published is not None:
        return published, "unpinned (provider sha256)"
    return None, "unpinned (provider md5)" if source.md5 else TOFU


def _exhausted(artifact: Artifact, outcomes: list[Outcome], manifest: Manifest, cache: Cache) -> str:
    """The one line for a failed fetch: each mirror's outcome, and an artifact that works offline."""
    tried = ", ".join(f"{o.kind}: {o.status}" for o in outcomes) or "no mirrors listed"
    if all(o.status == "unpublished" for o in outcomes):
        line = f"{artifact.name} has no published mirror yet ({tried})"
    else:
        line = f"every mirror of {artifact.name} failed ({tried})"
    alternative = _offline_alternative(artifact, manifest, cache)
    return line + (f"; `--model {alternative}` works offline" if alternative else "")


def _offline_alternative(artifact: Artifact, manifest: Manifest, cache: Cache) -> Optional[str]:
    """Another checkpoint that needs no network: cached, or on a published local mirror."""
    if artifact.kind != "checkpoint":
        return None
    for other in manifest.artifacts.values():
        local = any(isinstance(m, LocalMirror) and m.published and m.path.is_file() for m in other.mirrors)
        if other.kind == "checkpoint" and other is not artifact and (local or cache.lookup(other)):
            return other.name
    return None


def _mirror_row(mirror: MirrorBase) -> dict[str, Any]:
    return {"type": mirror.type, "mirror": mirror.describe(), "published": mirror.published}


def _metadata_facts(artifact: Artifact, manifest: Manifest, cache: Cache,
                    offline: Optional[bool]) -> Optional[dict[str, Any]]:
    """The metadata JSON's fields and which of them are not published, or why it is unavailable."""
    try:
        info = fetch_metadata(artifact, manifest=manifest, cache=cache, offline=offline)
    except PhasegptError as err:
        return {"unavailable": str(err)}
    if info is None:
        return None
    return {**info.model_dump(mode="json"), "not_published": info.not_published()}
