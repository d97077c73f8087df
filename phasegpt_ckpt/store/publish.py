"""Publish a checkpoint: hash it, write its metadata JSON, upload it, and list it in a manifest.

What a checkpoint says about itself (epoch, step, validation numbers, config, versions) fills the
seed's ``best_model_info.json`` fields; a metadata JSON already beside the file that describes the
same bytes (the trainer's) adds what the file cannot know (hardware, date, PyTorch version); with
``measure=True`` the validation PPL and R are measured in float32 — the numbers ``verify --eval``
reproduces — and recorded as the artifact's claims. The manifest keeps its order and comments: it is
edited with ruamel.yaml's round trip, validated, and replaced atomically.

    published = publish("runs/tiny/best_model.pt", "my-tiny", hub_repo="me/phasegpt", measure=True)
    published.sha256, published.revision, published.mirrors
    publish("best_model.pt", "best_model", records=["zenodo:1234567"])   # a record made by hand
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import requests
from pydantic import TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from phasegpt_ckpt.atomic import atomic_path, write_text
from phasegpt_ckpt.errors import BadInput, MirrorFailed, MirrorsExhausted, PhasegptError, VerificationFailed
from phasegpt_ckpt.models.checkpoint import LoadedCheckpoint, load_checkpoint
from phasegpt_ckpt.models.data import corpus_or_bundled
from phasegpt_ckpt.paths import user_path
from phasegpt_ckpt.proof.digest import FileFacts, hash_file
from phasegpt_ckpt.proof.metadata import DIGITS, build_info, info_path, metadata_document, save_info
from phasegpt_ckpt.proof.verify import describes, disagreement
from phasegpt_ckpt.reporting import Progress
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.manifest import (
    Artifact,
    ArtifactName,
    Manifest,
    first_error,
    load_manifest,
    renamed,
    user_manifest_path,
)
from phasegpt_ckpt.source.mirrors import resolve
from phasegpt_ckpt.source.mirrors.base import MirrorBase, Source
from phasegpt_ckpt.source.mirrors.hf import CARD_FILENAME, REPO_ID, HfMirror
from phasegpt_ckpt.source.mirrors.local import LocalMirror
from phasegpt_ckpt.source.mirrors.osf import OsfMirror
from phasegpt_ckpt.source.mirrors.zenodo import ZenodoMirror
from phasegpt_ckpt.store.deposit import Deposit, Deposited, Metadata, Upload, parts

log = logging.getLogger(__name__)

# Each claim's tolerance, as a fraction of its value. The claims are measured here in float32, and a
# float32 re-measurement on another machine or batch size changes only the order of the sums (the
# bundled checkpoint's PPL moves by 1.4e-7 relative between batch sizes 16 and 256). Precision can
# move it more: `verify --eval --device cuda` runs bf16 autocast (two to three significant digits per
# matmul), which tests/test_evaluate.py bounds at 1 % of PPL against CPU float32 — a bound, not a
# measured difference. 0.5 % is thus ~10^4 times the float32 noise, yet 6 times tighter than the 3 %
# by which phasegpt-tiny's validation PPL fell over its last epoch (7.657 to 7.428): another checkpoint
# of the same run fails it.
DEFAULT_TOLERANCE = 0.005
ENTRY_KEYS = ("kind", "filename", "size", "sha256", "md5", "parts", "metadata", "claims", "mirrors")  # the order entries are written in


@dataclass
class Published:
    """What ``publish`` wrote: the artifact's facts, its metadata JSON and the mirrors now listed."""

    name: str
    path: Path
    size: int
    sha256: str
    metadata: str  # the metadata artifact's name
    metadata_path: Path
    manifest: Path
    claims: dict[str, dict[str, float]] = field(default_factory=dict)
    mirrors: list[str] = field(default_factory=list)  # the checkpoint's mirrors, in the manifest's order
    revision: Optional[str] = None  # the Hub commit, when uploaded
    doi: Optional[str] = None  # minted by Zenodo, when published there
    parts: int = 0  # how many parts the file was split into (0: kept whole)
    deposit: str = ""  # where a Zenodo or OSF deposit is (a draft's address)


def publish(
    path: str | Path,
    name: str,
    *,
    manifest: str | Path | None = None,
    hub_repo: Optional[str] = None,
    endpoint: Optional[str] = None,
    records: Sequence[Union[str, MirrorBase]] = (),
    measure: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    data: str | Path | None = None,
    device: str = "cpu",
    to_dir: str | Path | None = None,
    deposit: Optional[Deposit] = None,
    known: Optional[Manifest] = None,
    progress: Optional[Progress] = None,
) -> Published:
    """Add (or update) checkpoint ``path`` as artifact ``name`` in ``manifest``, with its metadata JSON.

    ``manifest``: the file to edit (default: ``$PHASEGPT_MANIFEST``, else the user's own manifest, which
    is laid over the shipped one: the installed package is never written; created when missing);
    ``known``: the manifest names are looked up in (default: that file's). The
    metadata JSON is written beside the checkpoint as ``<stem>_info.json`` and listed as artifact
    ``<name>_info`` (or the one the entry already names). A file inside the manifest's directory gets
    a ``local`` mirror relative to it (a bundled checkpoint). ``hub_repo`` ("ORG/REPO") uploads both
    files, and the repository's model card (README.md, :func:`model_card`), in one commit and pins the
    Hub mirrors to it; ``records`` ("zenodo:ID", "zenodo:DOI",
    "osf:GUID", or mirror entries) are listed after their published size and hash agree with the file.
    ``to_dir`` copies both files into that folder and lists them there as ``local`` mirrors.
    ``deposit`` (:func:`~phasegpt_ckpt.store.deposit.target`: Zenodo, OSF Storage) uploads the checkpoint,
    in parts when it exceeds the provider's per-file limit, and lists it once the provider holds its
    bytes; a DOI Zenodo mints goes into the metadata JSON's ``doi``.
    ``progress`` hears how far each deposit upload got.
    ``measure`` records the measured validation PPL and R as claims, ± ``tolerance`` × value, measured
    on ``data`` (default: the corpus bundled with the package).

    An entry no one could fetch is refused before anything is written: give ``hub_repo``, ``records``
    or ``to_dir``, or keep the checkpoint in the manifest's own folder.
    """
    path = _checkpoint_file(path)
    manifest_path = user_path(manifest or os.environ.get("PHASEGPT_MANIFEST") or user_manifest_path(), "--manifest")
    current = known if known is not None else _existing(manifest_path)
    filename, metadata_name, metadata_filename = _names(current, name, path)
    hub = None if hub_repo is None else _hub_mirror(hub_repo, filename, endpoint)
    _require_a_mirror(current, name, manifest_path, path, hub or records or to_dir or deposit)
    ours = hash_file(path, want_md5=True)
    recorded = [_record_mirror(r, filename) for r in records]
    published_md5 = [_checked(mirror, ours).md5 is not None for mirror in recorded]
    previous = current.artifacts.get(name)
    # Recorded whenever a provider publishes md5 (fetch compares it before any byte moves), and kept
    # true for the new bytes when the entry already had one.
    md5 = ours.md5 if any(published_md5) or (previous is not None and previous.md5) else None
    ckpt = load_checkpoint(path, data=data, load_training_state=True)
    measured = _measure(ckpt, corpus_or_bundled(data), device) if measure else None
    info_file = info_path(path)
    info = build_info(name, ckpt.config, ckpt.training_state or {}, size=ours.size, sha256=ours.sha256,
                      validation=measured and measured.summary(), known=_known_info(info_file, ours))
    save_info(info, info_file)
    deposited, uploads = (_deposit(deposit, name, filename, path, ours, info, info_file, metadata_filename,
                                   current.artifacts.get(name), progress) if deposit else (None, []))
    info_facts = hash_file(info_file)

    if to_dir is not None:
        path, info_file = _copy_to(Path(to_dir), {filename: path, metadata_filename: info_file})
    ckpt_mirrors, info_mirrors = _local_mirrors(manifest_path, path, info_file, anywhere=to_dir is not None)
    revision = None
    claims = _claims(measured, tolerance) if measured else {}
    if hub is not None:
        card = model_card(name, filename, info, sha256=ours.sha256, measured=measured, claims=claims)
        revision = upload_to_hub(hub, {filename: path, metadata_filename: info_file, CARD_FILENAME: card.encode()})
        ckpt_mirrors.append(_uploaded(hub, filename, revision, ours))
        info_mirrors.append(_uploaded(hub, metadata_filename, revision, info_facts))
    ckpt_mirrors += recorded
    split = len(uploads) > 1
    if deposited is not None:
        ckpt_mirrors.append(renamed(deposited.mirrors[uploads[0].key], filename) if split
                            else deposited.mirrors[filename])
        md5 = None if split else ours.md5  # Zenodo and OSF publish the md5 fetch compares first
        info_mirrors += [deposited.mirrors[metadata_filename]] if metadata_filename in deposited.mirrors else []
    superseded = [_identity(_mirror_fields(m)) for m in (previous.mirrors if previous else [])
                  if deposit is not None and deposit.supersedes(m)]
    pieces = [{"filename": u.key, "size": u.facts.size, "sha256": u.facts.sha256} for u in uploads] if split else None
    entries = {
        name: {"kind": "checkpoint", "filename": filename, "size": ours.size, "sha256": ours.sha256,
               **({"md5": md5} if md5 else {}), "parts": [_flow(p) for p in pieces] if pieces else None,
               "metadata": metadata_name, "claims": claims, "mirrors": ckpt_mirrors, "superseded": superseded},
        metadata_name: {"kind": "metadata", "filename": metadata_filename, "size": info_facts.size,
                        "sha256": info_facts.sha256, "mirrors": info_mirrors},
    }
    for entry_name, entry in entries.items():
        _warn_stale(current, entry_name, entry)
    updated = update_manifest(manifest_path, entries)
    return Published(name, path, ours.size, ours.sha256, metadata_name, info_file, manifest_path, claims,
                     [m.describe() for m in updated.artifact(name).mirrors], revision,
                     deposited and deposited.doi, len(pieces or []), deposited.note if deposited else "")


# -- Zenodo and OSF deposits ------------------------------------------------------------------------


def _deposit(deposit: Deposit, name: str, filename: str, path: Path, ours: FileFacts, info: dict[str, Any],
             info_file: Path, metadata_filename: str, previous: Optional[Artifact],
             progress: Optional[Progress]) -> tuple[Deposited, list[Upload]]:
    """Upload the checkpoint (whole, or in parts over the provider's limit) and its metadata JSON, which
    carries the DOI the deposit will have; read each published copy back. The checkpoint's uploads."""
    same_bytes = previous is not None and previous.parts and previous.sha256 == ours.sha256
    listed = [part.size for part in previous.parts] if same_bytes else None  # another mirror's parts: keep them
    uploads = parts(path, deposit.limit, filename, listed) or [Upload(filename, path, ours)]
    uploads = [replace(upload, progress=progress) for upload in uploads]
    if len(uploads) > 1:
        log.info(f"{path} has {ours.size} bytes, more than {deposit.describe()} takes in one file "
                 f"({deposit.limit}): uploading it in {len(uploads)} parts")
    metadata = deposit_metadata(name, filename, info, ours, previous)
    with _documented_answers(deposit):
        promised = deposit.reserve(uploads, metadata)
    if promised:
        save_info({**info, "doi": promised}, info_file)
    described = Upload(metadata_filename, info_file, hash_file(info_file, want_md5=True), progress=progress)
    try:
        with _documented_answers(deposit):
            deposited = deposit.send([*uploads, described], metadata)
    except PhasegptError:
        if promised:
            save_info(info, info_file)  # no DOI that nothing was published under
        raise
    if deposited.doi and deposited.doi != promised:  # the copy deposited names the DOI the draft promised
        log.warning(f"{deposit.describe()} minted {deposited.doi}, not the {promised} its draft promised: "
                    f"{metadata_filename} there says {promised}, so it is not listed")
        save_info({**info, "doi": deposited.doi}, info_file)
        deposited.mirrors.pop(metadata_filename, None)
    for upload in [*uploads, described]:
        mirror = deposited.mirrors.get(upload.key)
        if mirror is not None and mirror.published:  # what fetch will see: the provider's size and hashes, read back
            _checked(mirror, upload.facts)
    return deposited, uploads


@contextlib.contextmanager
def _documented_answers(deposit: Deposit) -> Iterator[None]:
    """A provider answer missing a field its API documents (a hostile or broken server) is one line, exit 3."""
    try:
        yield
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise MirrorsExhausted(f"{deposit.describe()} answered without what its API documents "
                               f"({type(err).__name__}: {web.scrub(str(err))[:80]}); nothing more was sent: "
                               "the same command again resumes any draft left") from None


def deposit_metadata(name: str, filename: str, info: dict[str, Any], ours: FileFacts,
                     previous: Optional[Artifact] = None) -> Metadata:
    """What a record says about the checkpoint, from its metadata JSON: ``creators`` (or ``authors``),
    ``license``, ``version``, ``title``, ``description``, ``code_repository``; the Hub copy the manifest lists.

    >>> facts = FileFacts(Path("tiny.pt"), 3, "ab" * 32)
    >>> deposit_metadata("tiny", "tiny.pt", {"creators": ["Doe, Jane"], "license": "MIT"}, facts).creators
    [{'name': 'Doe, Jane'}]
    """
    people = info.get("creators") or info.get("authors") or []
    creators = [p if isinstance(p, dict) else {"name": str(p)} for p in (people if isinstance(people, list) else [people])]
    facts = [f"<li>{label}: {info[key]}</li>" for key, label in (
        ("config", "architecture"), ("dataset", "dataset"), ("validation_ppl", "validation perplexity"),
        ("order_parameter_R", "order parameter R"), ("training_epochs", "training epochs")) if info.get(key) is not None]
    description = info.get("description") or (
        f"<p>{name}: a PhaseGPT checkpoint, a character-level GPT-2 whose attention couples Kuramoto phase "
        f"oscillators.</p><ul>{''.join(facts)}<li>file: {filename}, {ours.size} bytes, sha256 {ours.sha256}</li></ul>"
        f"<p>Fetch and verify it with <code>phasegpt-ckpt fetch {name}</code>.</p>")
    related = [{"identifier": info["code_repository"], "relation": "isSupplementTo", "resource_type": "software"}
               ] if info.get("code_repository") else []
    related += [{"identifier": f"https://huggingface.co/{m.repo}", "relation": "isIdenticalTo"}
                for m in (previous.mirrors if previous else []) if isinstance(m, HfMirror) and m.published]
    return Metadata(title=info.get("title") or f"PhaseGPT checkpoint {name}", description=description,
                    creators=creators, license=str(info.get("license") or "mit").lower(),
                    version=str(info.get("version") or ours.sha256[:12]), related=related,
                    keywords=["phasegpt", "kuramoto", "checkpoint"])


# -- the metadata JSON ------------------------------------------------------------------------------


def _known_info(path: Path, ours: FileFacts) -> Optional[dict]:
    """A metadata JSON already at ``path`` that vouches for these very bytes (the trainer's, a
    previous publish), else None: a JSON about other bytes says nothing about this file."""
    try:
        known = metadata_document(path)
    except (OSError, ValueError, BadInput):
        return None
    return known if isinstance(known, dict) and describes(known.get("sha256"), ours) else None


def _measure(ckpt: LoadedCheckpoint, corpus: Path, device: str):
    """The checkpoint's validation numbers, measured on the model already loaded."""
    from phasegpt_ckpt.models.evaluate import measure, validation_loader

    log.info(f"measuring {ckpt.path} on the validation split ({device}) ...")
    return measure(ckpt.model, validation_loader(ckpt, corpus), device=device)


def _claims(measured, tolerance: float) -> dict[str, dict[str, float]]:
    """Measured PPL (and R, for a phase model) as claims, each ± ``tolerance`` of its value."""
    values = {"validation_ppl": measured.ppl}
    if measured.R:
        values["order_parameter_R"] = measured.R_mean
    return {claim: {"value": _rounded(value), "tolerance": max(_rounded(abs(value) * tolerance), 10**-DIGITS)}
            for claim, value in values.items()}


def _rounded(value: Optional[float], digits: int = DIGITS) -> Optional[float]:
    return None if value is None else round(float(value), digits)


# -- the Hub repository's model card ----------------------------------------------------------------

CARD_TAGS = ["phasegpt", "kuramoto", "phase-attention", "oscillators", "gpt2", "char-level", "pytorch"]
CARD_DATASET = "tinyshakespeare"


def model_card(name: str, filename: str, info: dict[str, Any], *, sha256: str, measured=None,
               claims: Optional[dict[str, dict[str, float]]] = None) -> str:
    """The repository's README.md: huggingface_hub's ``ModelCard`` with license, dataset and tags, and,
    when the claims were measured (``--eval``), a ``model-index`` the Hub displays: validation PPL, R
    per phase layer and mean R. Each judged metric carries its tolerance and the checkpoint's sha256 in
    ``args``, which ``verify --eval`` reads back (:func:`~phasegpt_ckpt.source.mirrors.hf.model_card_claims`)
    when a manifest entry states no claims."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = []
    if measured is not None and claims:
        def result(metric: str, label: str, value: float, args: Optional[dict] = None) -> EvalResult:
            return EvalResult(task_type="text-generation", task_name="Character-level language modeling",
                              dataset_type=CARD_DATASET, dataset_name="Tiny Shakespeare (char-level)",
                              dataset_split="validation", metric_type=metric, metric_name=label,
                              metric_value=value, metric_args=args)

        for claim, label in (("validation_ppl", "Validation perplexity"), ("order_parameter_R", "Mean order parameter R")):
            if claim in claims:
                results.append(result(claim, label, claims[claim]["value"],
                                      {"tolerance": claims[claim]["tolerance"], "sha256": sha256, "file": filename}))
        for layer in measured.R:  # shown on the Hub; verify judges the mean
            results.append(result(f"order_parameter_R_layer_{layer.layer}", f"Order parameter R (layer {layer.layer})",
                                  _rounded(layer.mean)))
    data = ModelCardData(license=str(info.get("license") or "mit").lower(), datasets=[CARD_DATASET],
                         tags=list(CARD_TAGS), library_name="pytorch", model_name=name,
                         eval_results=results or None)
    facts = [("file", f"`{filename}`"), ("sha256", f"`{sha256}`"), ("architecture", info.get("config")),
             ("training_epochs", info.get("training_epochs")),
             ("dataset", info.get("dataset"))]
    rows = "\n".join(f"| {label} | {value} |" for label, value in facts if value)
    numbers = ("Validation numbers measured in float32 by `phasegpt-ckpt publish --eval`; `phasegpt-ckpt verify "
               f"{name} --eval` measures them again." if results else
               "No validation numbers were measured at publication (`phasegpt-ckpt publish --eval` adds them).")
    body = (f"# {name}\n\nA PhaseGPT checkpoint: a character-level GPT-2 whose attention couples Kuramoto phase "
            f"oscillators.\n\n| | |\n|---|---|\n{rows}\n\n{numbers}\n\n"
            f"Fetch and verify it with `phasegpt-ckpt fetch {name}`.\n")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


# -- where the bytes are ----------------------------------------------------------------------------


def upload_to_hub(mirror: HfMirror, files: dict[str, Union[Path, bytes]]) -> str:
    """Upload ``files`` (name in the repo → local file, or its bytes) to ``mirror.repo`` in one commit; its sha.

    The repository is created when it does not exist and the token may create it. The token is
    ``HF_TOKEN`` or the saved login (never printed); the endpoint is ``mirror.base_url()``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    token = get_token()  # HF_TOKEN, else the saved login: read once
    if token:
        web.require_sendable(token, "HF_TOKEN (or the saved Hub login)")
    api = HfApi(endpoint=mirror.base_url())
    quiet = not are_progress_bars_disabled()  # the library prints nothing, huggingface_hub's bars included
    if quiet:
        disable_progress_bars()
    try:
        try:
            api.repo_info(mirror.repo)
        except RepositoryNotFoundError:  # create_repo(exist_ok) alone misreads a non-HF endpoint on 403
            log.info(f"creating {mirror.repo} on {mirror.base_url()}")
            api.create_repo(mirror.repo, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=source if isinstance(source, bytes)
                                         else str(source)) for name, source in files.items()]
        commit = api.create_commit(mirror.repo, operations, commit_message=f"Publish {', '.join(files)}")
    except Exception as err:  # huggingface_hub raises HTTP, transport and ValueError subclasses
        raise _upload_failed(mirror, err) from None
    finally:
        if quiet:
            enable_progress_bars()
    log.info(f"uploaded {', '.join(files)} to {mirror.repo} at commit {commit.oid}")
    return commit.oid


def _uploaded(hub: HfMirror, filename: str, revision: str, ours: FileFacts) -> HfMirror:
    """The Hub mirror of one uploaded file, pinned to the commit, once the Hub serves what was sent."""
    pinned = hub.model_copy(update={"filename": filename, "revision": revision})
    _checked(pinned, ours, need_hash=False)  # a small file carries a git sha1 only
    return pinned


def _upload_failed(mirror: HfMirror, err: Exception) -> PhasegptError:
    """One line per kind of upload failure; the token never appears in it."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    where = f"{mirror.repo} on {mirror.base_url()}"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        said = (web.scrub(err.server_message or "", get_token()).strip().splitlines() or [""])[0]
        if status == 401:
            return BadInput(f"the Hub refused to upload to {where}: not logged in (set HF_TOKEN or run `hf auth login`)")
        if status in (403, 404):
            return BadInput(f"your Hub token may not write to {where} (HTTP {status}{': ' + said if said else ''})")
        if status < 500:
            return BadInput(f"the Hub refused the upload to {where}: HTTP {status}{': ' + said if said else ''}")
        return MirrorsExhausted(f"the Hub failed to take the upload to {where}: HTTP {status}; try again later")
    if isinstance(err, (ValueError, TypeError, KeyError)):
        return MirrorsExhausted(f"{mirror.base_url()} answered the upload to {mirror.repo} in a way "
                                f"huggingface_hub cannot use ({type(err).__name__}); is it a Hugging Face Hub?")
    return MirrorsExhausted(f"cannot reach {mirror.base_url()} to upload to {mirror.repo} ({type(err).__name__})")


def parse_target(target: str) -> tuple[Optional[str], Optional[Path]]:
    """``--to hf:ORG/REPO`` (a Hub repository) or ``--to DIR`` (a folder): (repo, None) or (None, folder);
    Zenodo and OSF targets are :func:`~phasegpt_ckpt.store.deposit.target`'s.

    >>> parse_target("hf:templetwo/phasegpt-checkpoints")
    ('templetwo/phasegpt-checkpoints', None)
    >>> parse_target("/data/mirror")
    (None, PosixPath('/data/mirror'))
    """
    kind, _, repo = target.partition(":")
    if kind == "hf":
        return _hub_repo(repo), None
    return None, user_path(target, "--to")


def parse_record(spec: str, filename: str) -> MirrorBase:
    """``zenodo:ID``, ``zenodo:DOI`` or ``osf:GUID`` as the mirror entry of ``filename`` in that record.

    >>> parse_record("zenodo:1234567", "best_model.pt").describe()
    'zenodo record 1234567'
    >>> parse_record("osf:ab3cd", "best_model.pt").describe()
    'osf ab3cd'
    """
    kind, _, ref = spec.partition(":")
    try:
        if kind == "zenodo" and ref:
            return ZenodoMirror(**{"doi" if "/" in ref else "record": ref}, filename=filename)
        if kind == "osf" and ref:
            return OsfMirror(guid=ref)
    except ValidationError as err:
        raise BadInput(f"--record {spec!r}: {first_error(err)}") from None
    raise BadInput(f"--record {spec!r}: write zenodo:ID (or zenodo:DOI) or osf:GUID")


def _hub_repo(repo: str) -> str:
    """An upload target: a Hub repository id with its namespace. (A bare NAME would land under whoever
    the token belongs to, a repository the manifest could not name.)"""
    if not REPO_ID.fullmatch(repo):
        raise BadInput(f"{repo!r} is not a Hub repository id: write ORG/REPO (hf:templetwo/phasegpt-checkpoints)")
    if "/" not in repo:
        raise BadInput(f"{repo!r} names no namespace: write ORG/{repo} (the user or organisation to upload to)")
    return repo


def _hub_mirror(repo: str, filename: str, endpoint: Optional[str]) -> HfMirror:
    try:
        return HfMirror(repo=_hub_repo(repo), filename=filename, endpoint=endpoint)
    except ValidationError as err:  # what the mirror itself refuses: a repo ending in .git, an endpoint not https
        raise BadInput(f"--to hf:{repo}{f' --endpoint {endpoint}' if endpoint else ''}: {first_error(err)}") from None


def _record_mirror(record: Union[str, MirrorBase], filename: str) -> MirrorBase:
    """A record given as ``zenodo:``/``osf:`` text, or as a mirror entry (a private endpoint, a node path)."""
    return parse_record(record, filename) if isinstance(record, str) else record


def _checked(mirror: MirrorBase, ours: FileFacts, need_hash: bool = True) -> Source:
    """What ``mirror``'s provider publishes, once its size and every hash it publishes agree with the file.

    Refused with one line when one disagrees, or when ``need_hash`` and the provider publishes no hash.
    """
    with requests.Session() as session:
        try:
            source = resolve(mirror, session)
        except MirrorFailed as err:
            unreachable = err.outcome in ("network", "timeout") or err.outcome.startswith("5")
            raise (MirrorsExhausted if unreachable else BadInput)(f"cannot list {mirror.describe()}: {err}") from None
    # fetch compares the same fields before any byte moves: every one must hold
    mismatch = disagreement(source.published(), {"size": ours.size, "sha256": ours.sha256,
                                                  "md5": ours.md5 if source.md5 else None})
    if mismatch is not None and mismatch[0] == "size":
        raise VerificationFailed(f"{mirror.describe()} has {mismatch[1]} bytes, {ours.path} has {ours.size}: "
                                 "not listing it")
    if need_hash and not (source.sha256 or source.md5):
        raise VerificationFailed(f"{mirror.describe()} publishes no sha256 or md5 to compare {ours.path} with: "
                                 "not listing it")
    if mismatch is not None:
        field, theirs, mine = mismatch
        raise VerificationFailed(f"{mirror.describe()} has {field} {theirs}, {ours.path} has {mine}: it holds "
                                 "other bytes; not listing it")
    return source


def _local_mirrors(manifest_path: Path, *paths: Path, anywhere: bool = False) -> list[list[MirrorBase]]:
    """For each path, a ``local`` mirror: relative to the manifest when it lies in the manifest's directory,
    absolute when ``anywhere`` (a folder the user published to), else none (a path no other machine has)."""
    base = manifest_path.resolve().parent
    mirrors = []
    for path in paths:
        if path.resolve().is_relative_to(base):
            mirrors.append([LocalMirror(path=Path(path.resolve().relative_to(base).as_posix()))])
        else:
            mirrors.append([LocalMirror(path=path.resolve())] if anywhere else [])
    return mirrors


def _require_a_mirror(current: Manifest, name: str, manifest_path: Path, path: Path, elsewhere) -> None:
    """Refuse (before any file is written) an entry that would list no place to fetch the checkpoint from."""
    previous = current.artifacts.get(name)
    if elsewhere or path.resolve().is_relative_to(manifest_path.resolve().parent):
        return
    if previous is not None and any(m.published for m in previous.mirrors):
        return
    raise BadInput(f"{name} would be listed with no mirror, so no one could fetch it: publish with --to DIR "
                   "(a folder, listed as a local mirror), --to hf:ORG/REPO, or --record zenodo:ID|osf:GUID")


def _copy_to(folder: Path, files: dict[str, Path]) -> list[Path]:
    """Copy ``files`` (name → local file) into ``folder`` atomically; the copies, in order."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"--to {folder}: cannot create the folder ({err.strerror})") from None
    copies = []
    for filename, source in files.items():
        target = folder / filename
        if not (target.exists() and target.resolve() == source.resolve()):
            with atomic_path(target) as temp:
                shutil.copyfile(source, temp)
        copies.append(target)
    log.info(f"copied {', '.join(files)} to {folder}")
    return copies


def _existing(manifest_path: Path) -> Manifest:
    """The manifest at ``manifest_path``; an empty one when the file does not exist yet (the user's own)."""
    if manifest_path.is_file():
        return load_manifest(manifest_path)
    return Manifest(version=1)


# -- the manifest -----------------------------------------------------------------------------------


def update_manifest(path: Path, entries: dict[str, dict[str, Any]]) -> Manifest:
    """Add or update ``entries`` (name → fields) in the manifest at ``path``, keeping order and comments.

    An existing entry keeps its other keys, its comments and its other mirrors: a mirror with the same
    identity (type and location, revision aside) is replaced in place, else the first unpublished one
    of its type (the placeholder that announced it), else it is appended. The result is validated
    with :func:`~phasegpt_ckpt.source.manifest.load_manifest` before it atomically replaces the file.
    """
    yaml = _round_trip()
    if not path.exists():
        _start_manifest(path)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"))
    except Exception as err:  # load_manifest already read it: only ruamel's own limits remain
        raise BadInput(f"cannot edit {path} while keeping its comments: {type(err).__name__}") from None
    artifacts = document.get("artifacts")
    if not isinstance(artifacts, CommentedMap):
        artifacts = document["artifacts"] = CommentedMap()
    for name, fields in entries.items():
        if name in artifacts:
            _update_entry(artifacts[name], fields)
        else:
            artifacts[name] = _new_entry(fields)
            if len(artifacts) > 1:
                artifacts.yaml_set_comment_before_after_key(name, before="\n")  # a blank line, as between the others
    text = io.StringIO()
    yaml.dump(document, text)
    with atomic_path(path) as temp:
        temp.write_text(text.getvalue(), encoding="utf-8")
        return _valid_manifest(temp)


def _start_manifest(path: Path) -> None:
    """A new, empty manifest file (the user's own, the first time they publish)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"cannot create {path.parent} for the manifest: {err.strerror}") from None
    write_text("# Your own artifacts, laid over the manifest that ships with phasegpt-ckpt "
               "(`phasegpt-ckpt publish` writes here).\nversion: 1\nartifacts: {}\n", path)


def _valid_manifest(temp: Path) -> Manifest:
    """The written manifest, validated as fetch will read it (relative local paths alike: it lies beside)."""
    try:
        return load_manifest(temp)
    except BadInput as err:
        raise BadInput(f"publishing would leave the manifest invalid: {str(err).partition(': ')[2]}") from None


def _round_trip() -> YAML:
    """ruamel.yaml in round-trip mode, indented as the shipped manifest, ``null`` written as such."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _new_entry(fields: dict[str, Any]) -> CommentedMap:
    entry = CommentedMap()
    _update_entry(entry, fields)
    return entry


def _update_entry(entry: CommentedMap, fields: dict[str, Any]) -> None:
    for key in ENTRY_KEYS:
        if key == "parts" and key in fields and fields[key] is None:
            entry.pop("parts", None)  # kept whole now
            continue
        if key not in fields or (key == "claims" and not fields[key]):
            continue  # nothing measured: claims already written stay as they are
        if key == "claims":
            claims = entry.get("claims") if isinstance(entry.get("claims"), CommentedMap) else CommentedMap()
            for claim, value in fields["claims"].items():
                claims[claim] = _flow(value)
            _put(entry, "claims", claims)
        elif key == "mirrors":
            mirrors = entry.get("mirrors") if isinstance(entry.get("mirrors"), CommentedSeq) else CommentedSeq()
            for index in reversed(range(len(mirrors))):  # an older version's record, replaced by the new one
                if _identity(mirrors[index]) in fields.get("superseded", ()):
                    del mirrors[index]
            for mirror in fields["mirrors"]:
                _merge_mirror(mirrors, mirror)
            _put(entry, "mirrors", mirrors)
        else:
            _put(entry, key, fields[key])


def _put(entry: CommentedMap, key: str, value: Any) -> None:
    """Set ``key`` in place (its comment stays), or insert it after the keys that precede it in ENTRY_KEYS."""
    if key in entry:
        entry[key] = value
        return
    before = ENTRY_KEYS[: ENTRY_KEYS.index(key)]
    position = max((i + 1 for i, k in enumerate(entry) if k in before), default=0)
    entry.insert(position, key, value)


def _merge_mirror(mirrors: CommentedSeq, mirror: MirrorBase) -> None:
    written = _flow(_mirror_fields(mirror))
    same = [i for i, m in enumerate(mirrors) if _identity(m) == _identity(written)]
    placeholder = [i for i, m in enumerate(mirrors) if m.get("type") == mirror.type and m.get("published") is False]
    index = (same or placeholder or [None])[0]
    if index is None:
        mirrors.append(written)
    else:
        mirrors[index] = written


def _mirror_fields(mirror: MirrorBase) -> dict[str, Any]:
    """The mirror as a manifest writes it: ``type`` first, defaults left out."""
    fields = mirror.model_dump(mode="json", exclude_defaults=True, exclude={"type"})
    return {"type": mirror.type, **fields}


def _identity(mirror: Any) -> Optional[tuple]:
    """Type and location of a written mirror; the revision may change, the place may not."""
    if not isinstance(mirror, dict):
        return None
    return tuple(sorted((k, str(v)) for k, v in mirror.items() if k not in ("revision", "published")))


def _flow(fields: dict[str, Any]) -> CommentedMap:
    """A mapping written on one line, as the manifest writes mirrors and claims."""
    mapping = CommentedMap(fields)
    mapping.fa.set_flow_style()
    return mapping


def _warn_stale(current: Manifest, name: str, entry: dict[str, Any]) -> None:
    """New bytes under an old name: mirrors not refreshed now, and claims not re-measured, are about the old ones."""
    previous = current.artifacts.get(name)
    if previous is None or previous.sha256 in (None, entry["sha256"]):
        return
    fresh = {_identity(_mirror_fields(m)) for m in entry["mirrors"]} | set(entry.get("superseded", ()))
    stale = [m.describe() for m in previous.mirrors
             if m.published and _identity(_mirror_fields(m)) not in fresh and not isinstance(m, LocalMirror)]
    if stale:
        log.warning(f"{name} has new bytes; its mirrors {', '.join(stale)} still serve the previous ones "
                     "(fetch skips them on the hash): publish there again or remove them from the manifest")
    if previous.claims and not entry.get("claims", True):
        log.warning(f"{name} has new bytes but keeps the claims measured on the previous ones: "
                     "publish with --eval to measure these")


# -- inputs -----------------------------------------------------------------------------------------


def _checkpoint_file(path: str | Path) -> Path:
    path = user_path(path, "publish")
    if not path.is_file():
        raise BadInput(f"{path} is not a file" if path.exists() else f"{path} does not exist")
    return path


def _names(current: Manifest, name: str, path: Path) -> tuple[str, str, str]:
    """(checkpoint filename, metadata artifact name, metadata filename): an existing entry's, else new ones."""
    try:
        TypeAdapter(ArtifactName).validate_python(name)
    except ValidationError:
        raise BadInput(f"{name!r} cannot name an artifact: use letters, digits, '.', '_' and '-'") from None
    entry = current.artifacts.get(name)
    if entry is not None and entry.kind != "checkpoint":
        raise BadInput(f"{name} is a {entry.kind} artifact in the manifest; publish the checkpoint under another name")
    filename = entry.filename if entry else path.name
    metadata_name = (entry and entry.metadata) or f"{name}_info"
    metadata = current.artifacts.get(metadata_name)
    if metadata is not None and metadata.kind != "metadata":
        raise BadInput(f"{metadata_name} is a {metadata.kind} artifact; publish {name} under another name")
    return filename, metadata_name, metadata.filename if metadata else f"{Path(filename).stem}_info.json"
