"""What authors claim a checkpoint does (validation PPL, loss, R) against what was measured.

A claim comes from the manifest (with a tolerance) or from the metadata JSON (a number, no
tolerance: shown beside the measurement, never judged). Like sizes and hashes, claims are judged
here and nowhere else; a failed claim fails the file's :class:`~phasegpt_ckpt.proof.verify.Verdict`.

>>> from types import SimpleNamespace
>>> measured = SimpleNamespace(ppl=4.855, loss=1.58, R_mean=None)
>>> [c.verdict for c in check_claims([Claim("validation_ppl", "manifest", 4.85, 0.05)], measured)]
['pass']
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from phasegpt_ckpt.proof.verify import FAIL, OK, UNAVAILABLE, Check, Verdict

if TYPE_CHECKING:
    from phasegpt_ckpt.proof.metadata import CheckpointInfo
    from phasegpt_ckpt.source.manifest import Artifact

NO_TOLERANCE = "no tolerance"
# claim name (manifest / metadata JSON) -> the attribute of a measurement (models.evaluate.Measurement) it is about
MEASURED = {"validation_ppl": "ppl", "validation_loss": "loss", "order_parameter_R": "R_mean"}
STATUS = {"pass": OK, "FAIL": FAIL, NO_TOLERANCE: NO_TOLERANCE, "not measured": UNAVAILABLE}  # -> verdict rows


@dataclass
class Claim:
    """One claimed number, where it was stated, how far a re-measurement may stray, and what was measured."""

    claim: str  # its name: validation_ppl, validation_loss, order_parameter_R, ...
    source: str  # "manifest" or "metadata"
    value: float
    tolerance: Optional[float]
    measured: Optional[float] = None

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "not measured"
        if self.tolerance is None:
            return NO_TOLERANCE
        return "pass" if abs(self.measured - self.value) <= self.tolerance else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verdict": self.verdict}


def gather_claims(artifact: Optional["Artifact"] = None, metadata: Optional["CheckpointInfo"] = None) -> list[Claim]:
    """The claims to check: the manifest artifact's, then the metadata JSON's measured values that
    differ from them (judged within the manifest's tolerance for that name, if it gives one).

    >>> gather_claims(None, None)
    []
    """
    stated = artifact.claims if artifact is not None else {}
    claims = [Claim(name, "manifest", claim.value, claim.tolerance) for name, claim in stated.items()]
    for name in MEASURED:
        value, same = getattr(metadata, name, None), stated.get(name)
        if value is not None and (same is None or same.value != value):
            claims.append(Claim(name, "metadata", value, same.tolerance if same else None))
    return claims


def check_claims(claims: list[Claim], measurement: Any) -> list[Claim]:
    """Each claim with the number ``measurement`` has for it (None: it measured nothing of the kind)."""
    return [dataclasses.replace(claim, measured=getattr(measurement, MEASURED[claim.claim])
                                if claim.claim in MEASURED else None)
            for claim in claims]


def judge_claims(verdict: Verdict, claims: list[Claim]) -> None:
    """A row per measured claim on ``verdict``: a failed claim fails the file."""
    for claim in claims:
        verdict.checks.append(Check(f"{claim.claim} ({claim.source})", claim.value, claim.measured,
                                    STATUS[claim.verdict], tolerance=claim.tolerance))
