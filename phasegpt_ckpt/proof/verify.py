"""Prove a file is the artifact it should be: size and sha256 against the manifest, the cache's
receipt and the artifact's metadata JSON, one :class:`Check` row each.

A :class:`Verdict` is a list of rows so later checks (checkpoint contents, claims) append theirs::

    >>> verdict = Verdict("demo", Path("x.pt"), None, size=3, sha256="ab" * 32)
    >>> verdict.expect("size (manifest)", 3, 3).status, verdict.expect("sha256 (manifest)", None, "ab").status
    ('ok', 'not published')
    >>> verdict.ok
    True
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from phasegpt_ckpt import console
from phasegpt_ckpt.store.cache import Cache
from phasegpt_ckpt.proof.digest import hash_file
from phasegpt_ckpt.errors import BadInput, PhasegptError, VerificationFailed
from phasegpt_ckpt.store.fetch import fetch, fetch_metadata, locate
from phasegpt_ckpt.source.manifest import Artifact, Manifest, load_manifest

OK, FAIL, NOT_PUBLISHED, UNAVAILABLE = "ok", "fail", "not published", "unavailable"


@dataclass
class Check:
    """One row: what was checked, the value it should have, the value found, and the status."""

    check: str
    expected: Optional[str]
    actual: Optional[str]
    status: str  # ok | fail | not published | unavailable
    pins: bool = False  # compares with a published sha256: an ok row proves the bytes


@dataclass
class Verdict:
    """Every check made on one file; it passes unless a row failed."""

    subject: str
    path: Path
    artifact: Optional[Artifact]
    size: int
    sha256: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    @property
    def pinned(self) -> bool:
        """True when a published sha256 vouches for the bytes; else at best "trust on first use"."""
        return self.ok and any(check.pins and check.status == OK for check in self.checks)

    def expect(self, check: str, expected: Any, actual: Any, pins: bool = False) -> Check:
        """Add a row comparing ``actual`` with ``expected`` (None: nothing published to compare with)."""
        status = NOT_PUBLISHED if expected is None else OK if expected == actual else FAIL
        row = Check(check, None if expected is None else str(expected), str(actual), status, pins)
        self.checks.append(row)
        return row

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "path": str(self.path), "artifact": self.artifact and self.artifact.name,
            "size": self.size, "sha256": self.sha256, "ok": self.ok, "pinned": self.pinned,
            "checks": [asdict(c) for c in self.checks],
        }


def verify(ref: str, *, manifest: Optional[Manifest] = None, cache: Optional[Cache] = None,
           offline: Optional[bool] = None) -> Verdict:
    """Re-hash ``NAME|PATH`` and check it against everything that says what it should be.

    A NAME is checked in the cache (fetched first if absent); a PATH is matched to an artifact
    by being the cached file (hard link) or by its sha256. A file that matches no artifact
    passes with a "not published" row: nothing says what it should be. A checkpoint (or a
    file no artifact vouches for) whose bytes pass must also load weights-only: a pickle that
    would run code fails.
    """
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    path, artifact = _subject(ref, manifest, cache, offline)
    size, sha256 = hash_file(path)
    artifact = artifact or _artifact_with(sha256, manifest, cache)
    verdict = Verdict(ref, path, artifact, size=size, sha256=sha256)
    if artifact is None:
        verdict.checks.append(Check("artifact", None, f"no artifact of the manifest has sha256 {sha256}", NOT_PUBLISHED))
    else:
        _check_bytes(verdict, artifact, manifest, cache, offline)
    if verdict.ok and (artifact is None or artifact.kind == "checkpoint"):  # bytes that fail are never unpickled
        _check_contents(verdict)
    return verdict


def _check_bytes(verdict: Verdict, artifact: Artifact, manifest: Manifest, cache: Cache,
                 offline: Optional[bool]) -> None:
    """Rows for size and sha256 against the manifest, the receipt and the metadata JSON."""
    verdict.expect("size (manifest)", artifact.size, verdict.size)
    verdict.expect("sha256 (manifest)", artifact.sha256, verdict.sha256, pins=True)
    receipt = cache.receipt(artifact.name)
    if receipt is not None and verdict.expect("sha256 (receipt)", receipt.sha256, verdict.sha256).status == FAIL:
        _discard_if_cached(verdict, artifact, cache)
    if artifact.metadata is not None:
        _check_metadata(verdict, artifact, manifest, cache, offline)


def verify_cached(*, manifest: Optional[Manifest] = None, cache: Optional[Cache] = None,
                  offline: Optional[bool] = None) -> list[Verdict]:
    """Verify every artifact of the manifest that has a copy in the cache."""
    manifest = manifest or load_manifest()
    cache = cache or Cache()
    names = [r.artifact for r in cache.receipts() if r.artifact in manifest.artifacts]
    return [verify(name, manifest=manifest, cache=cache, offline=offline) for name in names]


def _subject(ref: str, manifest: Manifest, cache: Cache, offline: Optional[bool]) -> tuple[Path, Optional[Artifact]]:
    """The file to check: a cached artifact as it is now (never silently refetched), else ``locate``."""
    if ref in manifest.artifacts:
        artifact = manifest.artifact(ref)
        path = cache.path(artifact)
        if not path.is_file():
            path = fetch(ref, manifest=manifest, cache=cache, offline=offline).path
        return path, artifact
    located = locate(ref, manifest=manifest, cache=cache, offline=offline)
    return located.path, located.artifact


def _check_contents(verdict: Verdict) -> None:
    """A row saying whether the file loads weights-only, read without running any of its pickle.

    A file no artifact vouches for may be anything (a corpus, a YAML): only a checkpoint that
    cannot be read, or any file whose pickle would run code, fails.
    """
    from phasegpt_ckpt.models.checkpoint import describe  # torch loads only when a checkpoint is verified

    check = "contents (weights-only load)"
    try:
        describe(verdict.path)
    except VerificationFailed as refused:
        verdict.checks.append(Check(check, "plain tensors and containers", str(refused), FAIL))
    except BadInput as unreadable:
        if verdict.artifact is not None:
            verdict.checks.append(Check(check, "a readable checkpoint", str(unreadable), FAIL))
    else:
        verdict.checks.append(Check(check, "plain tensors and containers", "plain tensors and containers", OK))


def _discard_if_cached(verdict: Verdict, artifact: Artifact, cache: Cache) -> None:
    """Bytes that changed since they were verified are corrupt: drop the cached copy so fetch renews it."""
    blob = cache.blob(cache.receipt(artifact.name).sha256)
    if blob.is_file() and os.path.samefile(verdict.path, blob):
        cache.discard(artifact.name)
        console.warn(f"removed the corrupt cached copy of {artifact.name}; "
                     f"`phasegpt-ckpt fetch {artifact.name}` downloads it again")


def _artifact_with(sha256: str, manifest: Manifest, cache: Cache) -> Optional[Artifact]:
    """The artifact whose manifest or receipt sha256 is ``sha256`` (a copy placed elsewhere)."""
    names = [a.name for a in manifest.artifacts.values() if a.sha256 == sha256]
    names += [r.artifact for r in cache.receipts() if r.sha256 == sha256 and r.artifact in manifest.artifacts]
    return manifest.artifacts[names[0]] if names else None


def _check_metadata(verdict: Verdict, artifact: Artifact, manifest: Manifest, cache: Cache,
                    offline: Optional[bool]) -> None:
    """Rows for the metadata JSON's sha256 and file_size_mb; a row saying why when it can't be read."""
    try:
        info = fetch_metadata(artifact, manifest=manifest, cache=cache, offline=offline)
    except PhasegptError as err:
        verdict.checks.append(Check(f"metadata ({artifact.metadata})", "readable", str(err), UNAVAILABLE))
        return
    verdict.expect(f"sha256 (metadata {artifact.metadata})", info.sha256, verdict.sha256, pins=True)
    agrees = info.size_agrees(verdict.size)
    status = NOT_PUBLISHED if agrees is None else OK if agrees else FAIL
    expected = None if info.file_size_mb is None else f"{info.file_size_mb} MB"
    verdict.checks.append(Check(f"size (metadata {artifact.metadata})", expected, f"{verdict.size} bytes", status))
