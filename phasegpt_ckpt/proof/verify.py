"""The one verification stage: facts about bytes against what says they should be, as a :class:`Verdict`.

Pure functions, no I/O: the callers gather the facts (a file's size and hashes, what a provider
publishes, the cache's receipt, the metadata JSON, whether the file loads as a checkpoint) and the
expectations (the manifest), and this module alone compares a size or a hash. fetch, import, load,
publish and ``verify`` all come here; the cache keeps only what passed.

A :class:`Verdict` is a list of rows, so later checks (the file's contents, the claims) append theirs::

    >>> from pathlib import Path
    >>> facts = FileFacts(Path("x.pt"), 3, "ab" * 32)
    >>> verdict = Verdict("demo", facts, None)
    >>> verdict.expect("size (manifest)", 3, 3).status, verdict.expect("sha256 (manifest)", None, "ab").status
    ('ok', 'not published')
    >>> verdict.ok
    True
    >>> mismatch(facts, size=4)
    ('size', 'expected 4 bytes, got 3')
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from phasegpt_ckpt.errors import VerificationFailed
from phasegpt_ckpt.proof.digest import FileFacts

if TYPE_CHECKING:
    from phasegpt_ckpt.proof.metadata import CheckpointInfo
    from phasegpt_ckpt.source.manifest import Artifact

OK, FAIL, NOT_PUBLISHED, UNAVAILABLE = "ok", "fail", "not published", "unavailable"


@dataclass
class Check:
    """One row: what was checked, the value it should have (± ``tolerance`` for a claim), the value found,
    and the status. Values stay what they are (a size an int, a PPL a float), so ``--json`` has numbers."""

    check: str
    expected: Any
    actual: Any
    status: str  # ok | fail | not published | unavailable | no tolerance
    pins: bool = False  # compares with a published sha256: an ok row proves the bytes
    tolerance: Optional[float] = None

    @property
    def expected_text(self) -> str:
        return f"{self.expected:g} ± {self.tolerance:g}" if self.tolerance is not None else str(self.expected)

    def explanation(self) -> str:
        """The row as one clause: ``sha256 (manifest) is X, expected Y``; a contents row says its finding."""
        if self.check.startswith("contents"):
            return str(self.actual)
        actual = f"{self.actual:.4f}" if isinstance(self.actual, float) else self.actual
        return f"{self.check} is {actual}, expected {self.expected_text}"


@dataclass
class Verdict:
    """Every check made on one file; it passes unless a row failed."""

    subject: str
    facts: FileFacts
    artifact: Optional["Artifact"]
    checks: list[Check] = field(default_factory=list)
    evaluation: Any = None  # the EvalReport of ``verify --eval``, when one was made

    @property
    def path(self) -> Path:
        return self.facts.path

    @property
    def size(self) -> int:
        return self.facts.size

    @property
    def sha256(self) -> str:
        return self.facts.sha256

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
        row = Check(check, expected, actual, status, pins)
        self.checks.append(row)
        return row

    def first_failure(self) -> Optional[Check]:
        return next((check for check in self.checks if check.status == FAIL), None)

    def as_dict(self) -> dict[str, Any]:
        document = {
            "subject": self.subject, "path": str(self.path), "artifact": self.artifact and self.artifact.name,
            "size": self.size, "sha256": self.sha256, "ok": self.ok, "pinned": self.pinned,
            "checks": [asdict(c) for c in self.checks],
        }
        if self.evaluation is not None:
            document["evaluation"] = self.evaluation.to_dict()
        return document


# -- bytes against expectations ------------------------------------------------------------------------


def mismatch(facts: FileFacts, *, size: Optional[int] = None, sha256: Optional[str] = None,
             md5: Optional[str] = None) -> Optional[tuple[str, str]]:
    """The first expectation (None: unknown, not checked) that ``facts`` miss: (field, words); None when all hold.

    >>> mismatch(FileFacts(Path("x"), 3, "ab" * 32), sha256="AB" * 32) is None
    True
    """
    if size is not None and facts.size != size:
        return "size", f"expected {size} bytes, got {facts.size}"
    if sha256 is not None and facts.sha256 != sha256.lower():
        return "sha256", f"expected sha256 {sha256.lower()}, got {facts.sha256}"
    if md5 is not None and (facts.md5 or "") != md5.lower():
        return "md5", f"md5 {facts.md5} of the bytes received is not the {md5.lower()} published"
    return None


def require(facts: FileFacts, *, sha256: Optional[str] = None, size: Optional[int] = None, action: str) -> None:
    """Refuse ``facts.path`` (VerificationFailed) unless it has ``sha256`` and ``size``, before ``action``.

    >>> require(FileFacts(Path("x.pt"), 3, "ab" * 32), sha256="cd" * 32, action="not loading it")
    Traceback (most recent call last):
    ...
    phasegpt_ckpt.errors.VerificationFailed: x.pt has sha256 abababababababababababababababababababababababababababababababab, expected cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd; not loading it
    """
    if sha256 is not None and facts.sha256 != sha256.lower():
        raise VerificationFailed(f"{facts.path} has sha256 {facts.sha256}, expected {sha256.lower()}; {action}")
    if size is not None and facts.size != size:
        raise VerificationFailed(f"{facts.path} has {facts.size} bytes, expected {size}; {action}")


def disagreement(published: dict[str, Any], known: dict[str, Any]) -> Optional[tuple[str, Any, Any]]:
    """The first of size, sha256, md5 that a provider publishes and that differs from what is known
    (None on either side: not compared): ``(field, published, known)``, or None when all agree.

    Asked before any byte moves (fetch's pre-flight) and before a record is listed (publish).

    >>> disagreement({"size": 3, "md5": "AB"}, {"size": 3, "sha256": "cd" * 32, "md5": "ef"})
    ('md5', 'ab', 'ef')
    """
    for name in ("size", "sha256", "md5"):
        theirs, ours = published.get(name), known.get(name)
        if isinstance(theirs, str):
            theirs = theirs.lower()
        if ours is not None and theirs is not None and theirs != ours:
            return name, theirs, ours
    return None


def describes(claimed_sha256: Any, facts: FileFacts) -> bool:
    """Does a metadata JSON whose ``sha256`` field is ``claimed_sha256`` describe these very bytes?

    >>> describes("AB" * 32, FileFacts(Path("x"), 3, "ab" * 32)), describes(None, FileFacts(Path("x"), 3, "ab" * 32))
    (True, False)
    """
    return isinstance(claimed_sha256, str) and claimed_sha256.lower() == facts.sha256


def judge(subject: str, facts: FileFacts, artifact: Optional["Artifact"], *, receipt_sha256: Optional[str] = None,
          metadata: "CheckpointInfo | str | None" = None) -> Verdict:
    """Rows for size and sha256 against the manifest's ``artifact``, the cache's receipt and the metadata JSON.

    ``metadata`` is the artifact's metadata JSON, or why it could not be read (a string), or None when
    the artifact names none. A file no artifact describes gets one "not published" row.
    """
    verdict = Verdict(subject, facts, artifact)
    if artifact is None:
        verdict.checks.append(Check("artifact", None, f"no artifact of the manifest has sha256 {facts.sha256}",
                                    NOT_PUBLISHED))
        return verdict
    verdict.expect("size (manifest)", artifact.size, facts.size)
    verdict.expect("sha256 (manifest)", artifact.sha256, facts.sha256, pins=True)
    if receipt_sha256 is not None:
        verdict.expect("sha256 (receipt)", receipt_sha256, facts.sha256)
    if isinstance(metadata, str):
        verdict.checks.append(Check(f"metadata ({artifact.metadata})", "readable", metadata, UNAVAILABLE))
    elif metadata is not None:
        verdict.expect(f"sha256 (metadata {artifact.metadata})", metadata.sha256, facts.sha256, pins=True)
        agrees = metadata.size_agrees(facts.size)
        status = NOT_PUBLISHED if agrees is None else OK if agrees else FAIL
        expected = None if metadata.file_size_mb is None else f"{metadata.file_size_mb} MB"
        verdict.checks.append(Check(f"size (metadata {artifact.metadata})", expected, f"{facts.size} bytes", status))
    return verdict


def contents(verdict: Verdict, refused: Optional[str], unreadable: Optional[str]) -> None:
    """A row saying whether the file loads weights-only as a checkpoint: ``refused`` when its pickle would
    run code, ``unreadable`` when it is truncated or no checkpoint at all. Asked of checkpoint artifacts
    and of any file no artifact describes: verifying a file proves it is what it claims to be."""
    check = "contents (weights-only load)"
    if refused is not None:
        verdict.checks.append(Check(check, "plain tensors and containers", refused, FAIL))
    elif unreadable is not None:
        verdict.checks.append(Check(check, "a readable checkpoint", unreadable, FAIL))
    else:
        verdict.checks.append(Check(check, "plain tensors and containers", "plain tensors and containers", OK))


EPOCHS = "epochs (metadata training_epochs vs checkpoint epoch)"


def epochs(verdict: Verdict, training_epochs: Any, epoch: Any) -> None:
    """A row comparing the metadata JSON's ``training_epochs`` with the epoch the checkpoint was saved at,
    when both are whole numbers. The seed's best model is epoch 18 of a 20-epoch run: its metadata's
    training_epochs is the run's planned total, the checkpoint's epoch when the best was saved, so the
    epoch may be lower, never higher.

    >>> verdict = Verdict("demo", FileFacts(Path("x.pt"), 3, "ab" * 32), None)
    >>> epochs(verdict, 20, 18); epochs(verdict, 20, 21); [row.status for row in verdict.checks]
    ['ok', 'fail']
    >>> verdict.checks[0].actual
    'epoch 18: saved before the end of the 20 epochs the metadata plans (training_epochs is the planned total)'
    """
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (training_epochs, epoch)):
        return
    expected = f"at most {training_epochs}"
    if epoch > training_epochs:
        actual = f"epoch {epoch}, past the {training_epochs} epochs the metadata's training_epochs says the run had"
        verdict.checks.append(Check(EPOCHS, expected, actual, FAIL))
        return
    if epoch < training_epochs:
        actual = (f"epoch {epoch}: saved before the end of the {training_epochs} epochs the metadata plans "
                  "(training_epochs is the planned total)")
    else:
        actual = f"epoch {epoch}: training_epochs is the epoch this checkpoint was saved at (or the run ended then)"
    verdict.checks.append(Check(EPOCHS, expected, actual, OK))
