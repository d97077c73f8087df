"""What authors claim a checkpoint does (validation PPL, loss, R) against what was measured.

A claim comes from the manifest (with a tolerance), from the Hub repository's model card when the
manifest states none (its ``model-index`` results, with the tolerance ``publish`` wrote beside each),
or from the metadata JSON (a number, no tolerance: shown beside the measurement, never judged). Like sizes and hashes, claims are judged
here and nowhere else; a failed claim fails the file's :class:`~phasegpt_ckpt.proof.verify.Verdict`.

>>> from types import SimpleNamespace
>>> measured = SimpleNamespace(ppl=4.855, loss=1.58, R_mean=None)
>>> [c.verdict for c in check_claims([Claim("validation_ppl", "manifest", 4.85, 0.05)], measured)]
['pass']
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from phasegpt_ckpt.proof.verify import FAIL, OK, UNAVAILABLE, Check, Verdict

if TYPE_CHECKING:
    from phasegpt_ckpt.proof.metadata import CheckpointInfo
    from phasegpt_ckpt.source.manifest import Artifact

NO_TOLERANCE = "no tolerance"
# claim name (manifest / metadata JSON) -> the attribute of a measurement (models.evaluate.Measurement) it is about
MEASURED = {"validation_ppl": "ppl", "validation_loss": "loss", "order_parameter_R": "R_mean"}
# A model card is untrusted text from a Hub repository: one larger than this is refused unread (the
# cards publish writes are about 1 KiB; the Hub's own template is under 10 KiB).
MAX_CARD_BYTES = 256 * 1024
CARD = "model card"
# Metric types a model card may carry that are not judged (per-layer R: shown on the Hub only).
CARD_ONLY = re.compile(r"order_parameter_R_layer_\d{1,4}")
# The card's YAML front matter, as huggingface_hub.repocard finds it.
FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
log = logging.getLogger(__name__)
STATUS = {"pass": OK, "FAIL": FAIL, NO_TOLERANCE: NO_TOLERANCE, "not measured": UNAVAILABLE}  # -> verdict rows


@dataclass
class Claim:
    """One claimed number, where it was stated, how far a re-measurement may stray, and what was measured."""

    claim: str  # its name: validation_ppl, validation_loss, order_parameter_R, ...
    source: str  # "manifest", "model card" or "metadata"
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


def gather_claims(artifact: Optional["Artifact"] = None, metadata: Optional["CheckpointInfo"] = None,
                  card: Iterable[Claim] = ()) -> list[Claim]:
    """The claims to check: the manifest artifact's (else ``card``'s, the model card's, when the manifest
    states none), then the metadata JSON's measured values that differ from them (judged within the
    stated tolerance for that name, if one is given).

    >>> gather_claims(None, None)
    []
    >>> [(c.source, c.value) for c in gather_claims(None, None, [Claim("validation_ppl", CARD, 4.85, 0.02)])]
    [('model card', 4.85)]
    """
    stated = artifact.claims if artifact is not None else {}
    claims = [Claim(name, "manifest", claim.value, claim.tolerance) for name, claim in stated.items()]
    if not claims:
        claims = list(card)
    by_name = {claim.claim: claim for claim in claims}
    for name in MEASURED:
        value, same = getattr(metadata, name, None), by_name.get(name)
        if value is not None and (same is None or same.value != value):
            claims.append(Claim(name, "metadata", value, same.tolerance if same else None))
    return claims


def card_claims(text: str, *, sha256: Optional[str] = None, where: str = CARD) -> list[Claim]:
    """The claims a Hub model card states in its ``model-index``: each metric whose type names a claim
    (validation_ppl, validation_loss, order_parameter_R) with a finite value, and its ``args.tolerance``
    (none: shown, not judged). ``sha256``: the checkpoint's; a result whose ``args.sha256`` names other
    bytes is about another file and is skipped. The card is untrusted: too large, not YAML, or not a
    model-index is a warning and no claims, never an exception.

    >>> card = "---\\nmodel-index:\\n- name: tiny\\n  results:\\n  - task: {type: text-generation}\\n"
    >>> card += "    dataset: {type: tinyshakespeare, name: tinyshakespeare}\\n"
    >>> card += "    metrics:\\n    - {type: validation_ppl, value: 4.85, args: {tolerance: 0.02}}\\n---\\n"
    >>> [(c.claim, c.value, c.tolerance) for c in card_claims(card)]
    [('validation_ppl', 4.85, 0.02)]
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CARD_BYTES:
        log.warning(f"{where} is larger than {MAX_CARD_BYTES // 1024} KiB: not read for claims")
        return []
    front = FRONT_MATTER.match(text)
    if front is None:
        return []
    document = _card_yaml(front.group(2), where)
    model_index = document.get("model-index") if isinstance(document, dict) else None
    if model_index is None:
        return []
    from huggingface_hub.repocard_data import model_index_to_eval_results

    try:
        _, results = model_index_to_eval_results(model_index)
    except Exception as err:  # noqa: BLE001 - untrusted structure: KeyError, TypeError, AttributeError, ...
        log.warning(f"{where} has a model-index huggingface_hub cannot read ({type(err).__name__}): no claims from it")
        return []
    claims: dict[str, Claim] = {}
    for result in results:
        claim = _card_claim(result, sha256, where)
        if claim is None:
            continue
        earlier = claims.setdefault(claim.claim, claim)
        if earlier is not claim and (earlier.value, earlier.tolerance) != (claim.value, claim.tolerance):
            log.warning(f"{where} states {claim.claim} twice, differently: the first ({earlier.value:g}) is checked")
    return list(claims.values())


def _card_yaml(text: str, where: str) -> Any:
    """The front matter through the project's bounded safe loader; a malformed one is a warning and None."""
    import yaml

    from phasegpt_ckpt.errors import BadInput
    from phasegpt_ckpt.yamlio import load_text

    try:
        return load_text(text, CARD, Path(where))
    except BadInput as err:  # aliases expanding past the bound, or looping
        log.warning(f"{where} is refused: {str(err).split(': ', 1)[-1]}")
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 2}" if mark is not None else ""  # +1 for 0-based, +1 for the opening ---
        log.warning(f"{where} is not valid YAML{at} ({type(err).__name__}): no claims from it")
    return None


def _card_claim(result: Any, sha256: Optional[str], where: str) -> Optional[Claim]:
    """One model-index metric as a claim, or None (not a claim's name, not a finite number, other bytes)."""
    name, value, args = result.metric_type, result.metric_value, result.metric_args
    if not isinstance(name, str) or CARD_ONLY.fullmatch(name):
        return None
    if name not in MEASURED:
        log.info(f"{where}: metric {name[:40]!r} is no claim this tool checks; ignored")
        return None
    if not isinstance(args, dict):
        args = {}
    about = args.get("sha256")
    if sha256 is not None and about is not None and str(about).lower() != sha256.lower():
        log.info(f"{where}: its {name} is about other bytes (sha256 {str(about)[:64]}); ignored")
        return None
    number, tolerance = _finite(value), _finite(args.get("tolerance"))
    if number is None:
        log.warning(f"{where}: {name} is not a finite number; ignored")
        return None
    if tolerance is not None and tolerance < 0:
        log.warning(f"{where}: {name} has a negative tolerance; shown, not judged")
        tolerance = None
    return Claim(name, CARD, number, tolerance)


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # a 400-digit integer
        return None
    return number if math.isfinite(number) else None


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
