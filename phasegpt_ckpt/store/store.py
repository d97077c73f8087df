"""The Store: the one object a Python user holds, as pooch's ``Pooch`` is.

It resolves the defaults once (the shipped manifest or ``--manifest``/``$PHASEGPT_MANIFEST``, the
platform's cache directory or ``$PHASEGPT_CACHE``, ``$PHASEGPT_OFFLINE``) and answers everything the
command line does, as return values: fetch, import, locate, verify (with ``evaluate=True`` the
claims too), info, list, load, analyze, compare, train, resume, publish; ``store.cache`` keeps the
files (``entries``, ``remove``, ``prune``). It logs to ``logging`` and prints
nothing; pass ``progress`` to hear how far a download or a training epoch got.

>>> from phasegpt_ckpt import Store
>>> store = Store(offline=True)                                        # doctest: +SKIP
>>> verdict = store.verify("phasegpt-tiny", evaluate=True)             # doctest: +SKIP
>>> verdict.ok, verdict.evaluation.measurement.ppl                     # doctest: +SKIP
(True, 7.4279...)
>>> store.fetch("tinyshakespeare").path                                # doctest: +SKIP
PosixPath('.../artifacts/tinyshakespeare/input.txt')
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from phasegpt_ckpt.errors import BadInput, MirrorsExhausted, PhasegptError, VerificationFailed
from phasegpt_ckpt.models.formats import Sniffed, sniff
from phasegpt_ckpt.proof import verify as proof
from phasegpt_ckpt.proof.digest import hash_file
from phasegpt_ckpt.proof.metadata import CheckpointInfo
from phasegpt_ckpt.reporting import Progress
from phasegpt_ckpt.source.manifest import Artifact, Manifest, load_manifest
from phasegpt_ckpt.source.transfer import RetryPolicy
from phasegpt_ckpt.store import fetch as fetching
from phasegpt_ckpt.store.cache import Cache
from phasegpt_ckpt.store.fetch import Fetched, Located

if TYPE_CHECKING:
    from phasegpt_ckpt.models.checkpoint import LoadedCheckpoint
    from phasegpt_ckpt.store.publish import Published
    from phasegpt_ckpt.training.train import RunResult

log = logging.getLogger(__name__)

CORPUS = "tinyshakespeare"  # the artifact whose text models are measured on when no --data is given


class Store:
    """A manifest, a cache and the offline switch, resolved once; every operation of the tool as a method.

    ``manifest``: a YAML path or a :class:`Manifest` (default ``$PHASEGPT_MANIFEST``, else the shipped
    one); ``cache_dir``: default ``$PHASEGPT_CACHE``, else the platform's user cache; ``offline``:
    default ``$PHASEGPT_OFFLINE`` (cache and ``local`` mirrors only); ``progress``: a
    :class:`~phasegpt_ckpt.reporting.Progress` callback for downloads and training.
    """

    def __init__(self, manifest: str | Path | Manifest | None = None, cache_dir: str | Path | None = None,
                 offline: Optional[bool] = None, *, progress: Optional[Progress] = None):
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        # The file named (argument, $PHASEGPT_MANIFEST) and so the one publish writes; None for the shipped
        # manifest layered with the user's own, where publish writes the user's.
        self.manifest_path = _named_manifest(manifest)
        self.cache = Cache(cache_dir)
        self.offline = _env_flag("PHASEGPT_OFFLINE") if offline is None else offline
        self.progress = progress

    def __repr__(self) -> str:
        return f"Store(manifest={str(self.manifest_path or '<object>')!r}, cache_dir={str(self.cache.root)!r}, " \
               f"offline={self.offline})"

    # -- bytes in ------------------------------------------------------------------------------------

    def fetch(self, name: Optional[str] = None, *, mirror_type: Optional[str] = None, dest: str | Path | None = None,
              force: bool = False, policy: Optional[RetryPolicy] = None, mirror_order: Optional[str] = None) -> Fetched:
        """Artifact ``name`` (the manifest's default when None) as a verified local file.

        The cache first (unless ``force``), then each mirror in the manifest's order; ``mirror_type``
        tries only mirrors of that type; ``dest`` also places the file at ``dest/<filename>``; ``policy``
        sets each transfer's timeouts and retries. Concurrent calls for one artifact, from threads or
        processes, transfer it once. ``mirror_order="fastest"`` (or the artifact's ``mirror_order`` key) probes
        the mirrors and starts with the quickest. Raises ``MirrorsExhausted`` (with ``.outcomes``) when no
        mirror delivers.
        """
        return fetching.fetch(self, name, mirror_type=mirror_type, dest=dest, policy=policy, force=force,
                              mirror_order=mirror_order)

    def fetch_all(self, names: Sequence[str], **options: Any) -> list[Fetched | MirrorsExhausted]:
        """:meth:`fetch` each of ``names`` (every name checked before anything moves); a failed one is
        its ``MirrorsExhausted`` in the list, so one dead artifact does not stop the others."""
        for name in names:
            self.manifest.artifact(name)
        results: list[Fetched | MirrorsExhausted] = []
        for name in names:
            try:
                results.append(self.fetch(name, **options))
            except MirrorsExhausted as err:
                err.name = name
                results.append(err)
        return results

    def import_file(self, name: str, path: str | Path) -> Fetched:
        """Check a file obtained elsewhere against artifact ``name`` and keep it in the cache.

        How air-gapped machines and CI get artifacts: ``store.import_file("tinyshakespeare", "input.txt")``.
        Raises ``VerificationFailed`` when the file's size or sha256 differ from the manifest.
        """
        return fetching.import_file(self, name, path)

    def locate(self, ref: Optional[str] = None) -> Located:
        """``NAME|PATH`` as a local file: a name is fetched (verified), a path taken as it is.

        None means the manifest's default checkpoint; when it cannot be had (not published, no network),
        the best checkpoint that can be (cached, or on a local mirror such as the bundled one) stands in,
        and a warning says which and why. A name given explicitly never falls back.
        """
        if ref is not None:
            return fetching.locate(self, ref)
        default = self.manifest.artifact()
        try:
            return fetching.locate(self, default.name)
        except MirrorsExhausted as err:
            alternative = fetching.offline_alternative(self, default)
            if alternative is None:
                raise
            log.warning(f"using {alternative}: the default checkpoint {default.name} cannot be had "
                        f"({err.summary}); name {default.name} to insist")
            return fetching.locate(self, alternative)

    def metadata(self, artifact: Artifact) -> Optional[CheckpointInfo]:
        """The metadata JSON of ``artifact`` (fetched if needed), or None when it names none."""
        return fetching.fetch_metadata(self, artifact)

    def corpus(self, data: str | Path | None = None) -> Path:
        """The text models are measured and trained on: ``data`` when given, else the verified corpus artifact."""
        return Path(data) if data is not None else self.fetch(CORPUS).path

    def list(self) -> list[dict[str, Any]]:
        """One row per artifact: what the manifest says, whether it is cached, and each mirror's state."""
        return fetching.list_artifacts(self)

    def info(self, ref: Optional[str] = None, *, config=None) -> dict[str, Any]:
        """What is known about ``NAME|PATH`` without downloading a checkpoint: manifest entry, receipt,
        metadata JSON, and for a checkpoint what it holds (epoch, parameters, ...), no weight read."""
        facts = fetching.artifact_info(self, ref)
        kind = facts.get("artifact", {}).get("kind")
        if facts["path"] is not None and kind in (None, "checkpoint"):
            path, receipt = Path(facts["path"]), facts["receipt"] or {}
            artifact = self.manifest.artifacts.get(receipt.get("artifact", ""))
            self._require_cached_bytes(Located(path, artifact, receipt.get("sha256")), action="not reading it")
            try:
                facts["checkpoint"] = _describe(path, config)
            except BadInput as err:  # a file no artifact vouches for may be anything; a refused pickle still fails
                if kind is not None:
                    raise
                facts["checkpoint"] = {"unreadable": str(err)}
        return facts

    # -- proof ---------------------------------------------------------------------------------------

    def verify(self, ref: str, *, evaluate: bool = False, **evaluation: Any) -> proof.Verdict:
        """Re-hash ``NAME|PATH`` and check it against everything that says what it should be.

        A NAME is checked in the cache (fetched first if absent); a PATH is matched to an artifact by
        being the cached file (hard link) or by its sha256. A file no artifact describes passes with a
        "not published" row. A checkpoint whose bytes pass must also load weights-only. Bytes that
        changed since they were cached are dropped from the cache (the next fetch renews them).

        ``evaluate`` (or ``causality``) also measures a checkpoint that passed and adds a row per claim;
        ``evaluation`` goes to :func:`~phasegpt_ckpt.models.evaluate.evaluate_checkpoint` (``data``,
        ``device``, ``causality``, ``causality_windows``, ``config``). The report is ``verdict.evaluation``.
        """
        path, artifact = self._subject(ref)
        sniffed = sniff(path)
        if sniffed.problem is None and sniffed.kind != "unknown":
            _import_in_background("phasegpt_ckpt.models.checkpoint")  # torch loads while the file is hashed
        facts = hash_file(path)
        artifact = artifact or self._artifact_with(facts.sha256)
        receipt = self.cache.receipt(artifact.name) if artifact else None
        metadata = self._metadata_or_reason(artifact)
        verdict = proof.judge(ref, facts, artifact, receipt_sha256=receipt and receipt.sha256, metadata=metadata)
        if receipt is not None and not verdict.ok:
            self._discard_if_cached(verdict, receipt.sha256)
        metadata_json = metadata if isinstance(metadata, CheckpointInfo) else None  # else its row says why
        if not verdict.ok or (artifact is not None and artifact.kind != "checkpoint"):
            return verdict  # bytes that fail are never unpickled; a corpus or a JSON is no checkpoint
        refused, unreadable, described = _read_contents(path, sniffed)
        proof.contents(verdict, refused, unreadable)
        if verdict.ok and artifact is not None and metadata_json and metadata_json.training_epochs is not None:
            proof.epochs(verdict, metadata_json.training_epochs, described.get("epoch"))
        if verdict.ok and (evaluate or evaluation.get("causality")):
            self._evaluate(verdict, metadata_json, **evaluation)
        return verdict

    def verify_available(self, **options: Any) -> list[proof.Verdict]:
        """:meth:`verify` every artifact at hand: cached, or on a local mirror (the bundled ones included).

        Raises ``VerificationFailed`` when there is nothing to verify: a verification that checked
        nothing must not read as a success.
        """
        cached = {r.artifact for r in self.cache.receipts()}
        names = [a.name for a in self.manifest.artifacts.values()
                 if a.name in cached or fetching.on_local_mirror(a)]
        if not names:
            raise VerificationFailed(f"nothing to verify: no artifact is cached in {self.cache.root} or on a local "
                                     "mirror; fetch one, or name a file")
        return [self.verify(name, **options) for name in names]

    # -- use -------------------------------------------------------------------------------------------

    def load(self, ref: Optional[str] = None, *, data: str | Path | None = None, device: str = "cpu",
             config=None, training_state: bool = False) -> "LoadedCheckpoint":
        """``NAME|PATH`` located (fetched if needed, its sha256 checked) and loaded weights-only.

        The vocabulary comes from the file, else from the corpus ``data`` (default: the bundled copy).
        """
        from phasegpt_ckpt.models.checkpoint import load_checkpoint

        located = self.locate(ref)
        self._require_cached_bytes(located)
        return load_checkpoint(located.path, config=config, data=data, device=device,
                               load_training_state=training_state)

    def analyze(self, ref: Optional[str] = None, *, data: str | Path | None = None, **options: Any) -> dict:
        """R statistics of each phase layer of ``NAME|PATH`` (see :func:`~phasegpt_ckpt.models.analyze.analyze_checkpoint`)."""
        from phasegpt_ckpt.models.analyze import analyze_checkpoint

        located = self.locate(ref)
        self._require_cached_bytes(located)
        return analyze_checkpoint(located.path, data=self.corpus(data), **options)

    def compare(self, refs_a: str | Sequence[str], refs_b: str | Sequence[str], *, data: str | Path | None = None,
                device: str = "cpu", config=None, **options: Any):
        """Is B's PPL really different from A's? Each side one ``NAME|PATH`` or several (one per training seed),
        each loaded through :meth:`load`, measured on the same validation windows of ``data`` (default: the
        corpus). Returns a :class:`~phasegpt_ckpt.models.compare.Comparison`; see
        :func:`~phasegpt_ckpt.models.compare.compare` for ``resamples``, ``seed``, ``batch_size``."""
        from phasegpt_ckpt.models.compare import compare

        refs_a, refs_b = ([refs] if isinstance(refs, str) else list(refs) for refs in (refs_a, refs_b))
        corpus = self.corpus(data)
        loaded: dict[str, "LoadedCheckpoint"] = {}  # a ref on both sides is loaded (and measured) once
        for ref in refs_a + refs_b:
            if ref not in loaded:
                loaded[ref] = self.load(ref, data=corpus, device=device, config=config)
        return compare([loaded[r] for r in refs_a], [loaded[r] for r in refs_b], corpus, device=device,
                       progress=self.progress, labels_a=refs_a, labels_b=refs_b, **options)

    def export_config(self, ref: Optional[str] = None, out: str | Path | None = None, *, config=None) -> str:
        """The checkpoint's config as YAML (also written to ``out``), no weight read."""
        from phasegpt_ckpt.models.checkpoint import export_config

        located = self.locate(ref)
        self._require_cached_bytes(located)
        return export_config(located.path, out, config=config)

    def train(self, config, *, data: str | Path | None = None, **options: Any) -> "RunResult":
        """Train a config (shipped NAME, YAML PATH or RunConfig) from scratch on ``data`` (default: the corpus)."""
        from phasegpt_ckpt.training.train import train

        return train(config, data=self.corpus(data), progress=self.progress, **options)

    def resume(self, ref: Optional[str] = None, *, data: str | Path | None = None,
               save_dir: str | Path | None = None, **options: Any) -> "RunResult":
        """Continue checkpoint ``NAME|PATH`` exactly where it stopped; ``save_dir`` defaults to the file's
        directory for a PATH and to ``checkpoints/<NAME>`` for an artifact."""
        from phasegpt_ckpt.training.train import resume

        located = self.locate(ref)
        self._require_cached_bytes(located)
        if save_dir is None:
            save_dir = located.path.parent if located.artifact is None else Path("checkpoints") / located.artifact.name
        return resume(located.path, data=self.corpus(data), save_dir=save_dir, progress=self.progress, **options)

    def publish(self, path: str | Path, name: str, *, manifest: str | Path | None = None,
                data: str | Path | None = None, measure: bool = False, **options: Any) -> "Published":
        """Hash, describe, upload and list checkpoint ``path`` as artifact ``name`` in ``manifest`` (default:
        this store's manifest file, else the user's own manifest; never the installed package's); see
        :func:`~phasegpt_ckpt.store.publish.publish` for ``hub_repo``, ``records``, ``to_dir``, ``tolerance``, and
        ``deposit`` (Zenodo, OSF Storage: :func:`phasegpt_ckpt.store.deposit.target`)."""
        from phasegpt_ckpt.store.publish import publish

        target = Path(manifest).expanduser() if manifest else self.manifest_path
        corpus = self.corpus(data) if measure or data is not None else None
        return publish(path, name, manifest=target, known=None if target else self.manifest, data=corpus,
                       measure=measure, progress=self.progress, **options)

    # -- internals -----------------------------------------------------------------------------------

    def _subject(self, ref: str) -> tuple[Path, Optional[Artifact]]:
        """The file to check: a cached artifact as it is now (never silently refetched), else ``locate``."""
        if ref in self.manifest.artifacts:
            artifact = self.manifest.artifact(ref)
            path = self.cache.path(artifact)
            if not path.is_file():
                path = self.fetch(ref).path
            return path, artifact
        located = self.locate(ref)
        return located.path, located.artifact

    def _artifact_with(self, sha256: str) -> Optional[Artifact]:
        """The artifact whose manifest or receipt sha256 is ``sha256`` (a copy placed elsewhere)."""
        names = [a.name for a in self.manifest.artifacts.values() if a.sha256 == sha256]
        names += [r.artifact for r in self.cache.receipts() if r.sha256 == sha256 and r.artifact in self.manifest.artifacts]
        return self.manifest.artifacts[names[0]] if names else None

    def _metadata_or_reason(self, artifact: Optional[Artifact]) -> CheckpointInfo | str | None:
        if artifact is None or artifact.metadata is None:
            return None
        try:
            return self.metadata(artifact)
        except PhasegptError as err:
            return str(err)

    def _discard_if_cached(self, verdict: proof.Verdict, cached_sha256: str) -> None:
        """Bytes that changed since they were verified are corrupt: drop the cached copy so fetch renews it."""
        blob = self.cache.blob(cached_sha256)
        if blob.is_file() and os.path.samefile(verdict.path, blob):
            self.cache.discard(verdict.artifact.name)
            log.warning(f"removed the corrupt cached copy of {verdict.artifact.name}; "
                        f"`phasegpt-ckpt fetch {verdict.artifact.name}` downloads it again")

    def _require_cached_bytes(self, located: Located, action: str = "not loading it") -> None:
        """A cached artifact's sha256 is checked before a byte of it is unpickled."""
        if located.sha256 is not None:
            name = located.artifact.name if located.artifact else None
            fix = f"; `phasegpt-ckpt fetch {name} --force` downloads it again" if name else ""
            proof.require(hash_file(located.path), sha256=located.sha256, action=action + fix)

    def _evaluate(self, verdict: proof.Verdict, metadata: Optional[CheckpointInfo], *,
                  data: str | Path | None = None, **options: Any) -> None:
        """Measure a verified checkpoint and add one row per claim (manifest and ``metadata``, the artifact's
        metadata JSON as verify read it) to ``verdict``."""
        from phasegpt_ckpt.models.evaluate import evaluate_checkpoint
        from phasegpt_ckpt.proof.claims import gather_claims, judge_claims
        from phasegpt_ckpt.proof.metadata import metadata_beside

        log.info(f"evaluating {verdict.subject} on the validation split ...")
        if verdict.artifact is None:
            metadata = metadata_beside(verdict.facts)
        card = []  # a manifest entry stating no claims: those of its Hub repository's model card, if any
        hub = next((m for m in verdict.artifact.mirrors if m.type == "hf" and m.published), None) \
            if verdict.artifact is not None and not verdict.artifact.claims else None
        if hub is not None:
            from phasegpt_ckpt.source.mirrors.hf import model_card_claims

            card = model_card_claims(hub, sha256=verdict.sha256, offline=self.offline)
        report = evaluate_checkpoint(verdict.path, claims=gather_claims(verdict.artifact, metadata, card),
                                     data=self.corpus(data), progress=self.progress, **options)
        judge_claims(verdict, report.checks)
        verdict.evaluation = report


def _describe(path: Path, config) -> dict:
    """What ``info`` shows of a checkpoint; a file whose first bytes tell it is none is answered without torch."""
    sniffed = sniff(path)
    if sniffed.problem is not None:
        raise BadInput(sniffed.problem)
    from phasegpt_ckpt.models.checkpoint import describe

    return describe(path, config=config)


def _read_contents(path: Path, sniffed: Sniffed) -> tuple[Optional[str], Optional[str], dict]:
    """(why the file was refused, why it is unreadable, what it holds): one weights-only read of ``path``.
    A file whose first bytes already tell it is no checkpoint is judged without loading torch."""
    if sniffed.problem is not None:
        return None, sniffed.problem, {}
    from phasegpt_ckpt.models.checkpoint import describe

    try:
        return None, None, describe(path)
    except VerificationFailed as refused:
        return str(refused), None, {}
    except BadInput as unreadable:
        return None, str(unreadable), {}


def _import_in_background(module: str) -> None:
    """Import ``module`` on a daemon thread (hashing releases the GIL, so the two overlap); a failure is
    left for the real import, in the caller's thread, to report."""
    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the caller's own import raises it again, with its traceback
            pass

    threading.Thread(target=run, name=f"import {module}", daemon=True).start()


def _named_manifest(given: str | Path | Manifest | None) -> Optional[Path]:
    if isinstance(given, Manifest):
        return None
    named = given or os.environ.get("PHASEGPT_MANIFEST")
    return Path(named).expanduser() if named else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
