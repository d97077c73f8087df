"""Reliability: the fault matrix, many processes at once, kill -9, and a full disk.

The fault matrix: every provider × every fault, through a real ``fetch`` against the emulators.

Each scenario serves the tiny Shakespeare corpus (sha256 pinned by ../shared) from one provider
emulator, switches one fault on where its bytes travel (armed once the mirror is resolved, so
the provider's own API calls are not hit) or breaks the provider itself (401/403/404, a
replaced file), and fetches with a short-timeout, fast-backoff :class:`RetryPolicy`. Every
scenario must end in one of two ways:

- a verified file: the cache's blob, its readable name and the ``--dest`` copy all hash to the
  real bytes; or
- a one-line error whose class maps to exit code 3 (every mirror failed), with the outcome tag
  expected for that fault, and no file at all at a final path, and no partial file left
  behind holding bad bytes.

``python -m tests.reliability_report`` runs the matrix and writes ``docs/reliability.md`` from it.

Then: eight ``phasegpt-ckpt fetch`` processes at once transfer the file once; a fetch killed
with SIGKILL at ten seeded byte counts is finished by the next one, which asks only for the rest;
``train`` killed inside a checkpoint write leaves the previous checkpoint loadable; a disk that
fills during a download or a checkpoint write gives one line, keeps what can be resumed, and
never leaves a truncated file at a final path.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import huggingface_hub.constants
import pytest
import torch
import yaml
from conftest import CORPUS_SHA256, REPO
from emulators.fileserver import Faults, FileServer, LoggedRequest
from emulators.gdrive import QUOTA_PAGE, DriveEmulator
from emulators.hf import HfEmulator
from emulators.osf import OsfEmulator
from emulators.zenodo import ZenodoEmulator
from full_disk import FullDisk

from phasegpt_ckpt import Store, cli
from phasegpt_ckpt.errors import BadInput, MirrorsExhausted, PhasegptError
from phasegpt_ckpt.models.checkpoint import save_checkpoint
from phasegpt_ckpt.source.manifest import Manifest, load_manifest
from phasegpt_ckpt.source.mirrors import resolve as real_resolve
from phasegpt_ckpt.source.transfer import RetryPolicy
from phasegpt_ckpt.store import fetch as fetch_module
from phasegpt_ckpt.store.cache import Cache

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, connect_timeout=2, read_timeout=0.5)
ONCE = RetryPolicy(attempts=1, connect_timeout=2, read_timeout=0.5)
DRIVE_ID = "1PhaseGptBestModelCheckpoint0123456"
HF_GRANTED = "hf_grantedToken"
REPORT_ROWS: list[dict] = []  # one per scenario run; tests/reliability_report.py turns them into a table


def replaced(data: bytes) -> bytes:
    """The same number of bytes with other content: a file replaced upstream."""
    return data[::-1]


# -- the providers: each serves the corpus, or breaks in a named way ("401", "403", "404", ...) ---


@dataclass
class Served:
    """A provider ready to be fetched from: the manifest's mirror entry and where its bytes travel."""

    mirror: dict
    bytes_server: FileServer
    bytes_path: str


def serve_url(stack, data: bytes, case: Optional[str], monkeypatch) -> Served:
    server = stack.enter_context(FileServer())
    server.add_file("/files/input.txt", data)
    return Served({"type": "url", "url": server.url("/files/input.txt")}, server, "/files/input.txt")


def serve_hf(stack, data: bytes, case: Optional[str], monkeypatch) -> Served:
    hub = stack.enter_context(HfEmulator())
    hub.add_repo("org/ckpt", private=case == "401", gated=case == "403", tokens={HF_GRANTED})
    hub.put("org/ckpt", "input.txt", replaced(data) if case == "disagrees" else data)
    if case == "403":
        monkeypatch.setenv("HF_TOKEN", "hf_tokenWithoutAccess")  # gated, and this token is not granted
    filename = "missing.pt" if case == "404" else "input.txt"
    mirror = {"type": "hf", "repo": "org/ckpt", "filename": filename, "endpoint": hub.origin}
    return Served(mirror, hub.cdn, hub.cdn_path("org/ckpt", "input.txt"))


def serve_zenodo(stack, data: bytes, case: Optional[str], monkeypatch) -> Served:
    zenodo = stack.enter_context(ZenodoEmulator())
    zenodo.add_record(7001, {"input.txt": data[:-1] if case == "disagrees" else data},
                      token="zenodo-secret" if case == "403" else None)
    if case == "401":
        zenodo.set_faults("/api/records/7001", Faults(status=401))
    mirror = {"type": "zenodo", "record": 7001, "filename": "missing.pt" if case == "404" else "input.txt",
              "endpoint": zenodo.origin}
    return Served(mirror, zenodo, zenodo.content_path(7001, "input.txt"))


def serve_osf(stack, data: bytes, case: Optional[str], monkeypatch) -> Served:
    osf = stack.enter_context(OsfEmulator(page_cap=10))
    osf.add_node("phgpt", token="osf-secret" if case == "401" else None)
    stored = osf.put("phgpt", "checkpoints/input.txt", replaced(data) if case == "disagrees" else data)
    if case == "403":
        osf.set_faults("/v2/nodes/phgpt/files/osfstorage/", Faults(status=403))
    path = "checkpoints/missing.pt" if case == "404" else "checkpoints/input.txt"
    return Served({"type": "osf", "node": "phgpt", "path": path, "endpoint": osf.origin}, osf.wb, osf.wb_path(stored))


def serve_gdrive(stack, data: bytes, case: Optional[str], monkeypatch) -> Served:
    drive = stack.enter_context(DriveEmulator())
    if case != "404":
        # large: behind the virus-scan form, whose confirmed link differs at every resolution
        drive.add(DRIVE_ID, "input.txt", data, large=True,
                  mode={"401": "private", "quota": "quota"}.get(case, "public"))
    if case == "403":
        drive.set_faults("/uc", Faults(status=403))
    return Served({"type": "gdrive", "id": DRIVE_ID, "endpoint": drive.origin}, drive.content, "/download")


PROVIDERS = {"url": serve_url, "hf": serve_hf, "zenodo": serve_zenodo, "osf": serve_osf, "gdrive": serve_gdrive}


# -- the scenarios ----------------------------------------------------------------------------------

VERIFIED = "verified"


@dataclass
class Scenario:
    """One row of the matrix.

    ``faults`` (Faults fields) are armed on the byte path once the mirror is resolved;
    ``interrupted_at``: an earlier run lost its connection there and gave up, so this run
    resumes across runs; ``case`` breaks the provider itself; ``pinned=False`` leaves the
    manifest without sha256 and size; ``expect`` is "verified" or the outcome tag;
    ``check`` asserts what the byte server saw (its GETs after arming).
    """

    provider: str
    fault: str
    expect: str
    faults: dict = field(default_factory=dict)
    interrupted_at: Optional[int] = None
    case: Optional[str] = None
    pinned: bool = True
    check: Optional[Callable[[list[LoggedRequest]], None]] = None

    @property
    def id(self) -> str:
        return f"{self.provider}-{self.fault.replace(' ', '-')}"


def resumed_at(offset: int) -> Callable[[list[LoggedRequest]], None]:
    def check(gets):
        assert any(r.range == f"bytes={offset}-" and r.status == 206 for r in gets), evidence(gets)
    return check


def range_answered_200(gets):
    assert gets[0].range == "bytes=400000-" and gets[0].status == 200, evidence(gets)


def wrong_start_then_clean(gets):
    assert (gets[0].range, gets[0].status) == ("bytes=400000-", 206) and gets[-1].range is None, evidence(gets)


def retried_once(status: int, at_least: float = 0.0) -> Callable[[list[LoggedRequest]], None]:
    def check(gets):
        assert [r.status for r in gets] == [status, 200], evidence(gets)
        assert gets[1].at - gets[0].at >= at_least, "Retry-After was not honoured"
    return check


def never_spliced(gets):
    """The resume carried the first answer's validator in If-Range; the file had changed, so the
    server sent it whole (200), and nothing of the old bytes was kept in front of it."""
    assert len(gets) >= 2 and (gets[1].range, gets[1].status) == ("bytes=500000-", 200), evidence(gets)
    assert gets[1].if_range and not gets[1].if_range.startswith("W/"), f"no If-Range: {evidence(gets)}"


BYTE_FAULTS = [  # (fault, Faults fields, interrupted_at, expected outcome, check)
    ("dropped connection", dict(drop_after=300_000, times=1), None, VERIFIED, resumed_at(300_000)),
    ("stall past read timeout", dict(stall=2, stall_at=200_000, times=1), None, VERIFIED, None),
    ("Range ignored", dict(ignore_range=True), 400_000, VERIFIED, range_answered_200),
    ("wrong Content-Range", dict(wrong_range_start=1000, times=1), 400_000, VERIFIED, wrong_start_then_clean),
    ("ETag changed", dict(drop_after=500_000, times=1, then_content=...), None, "hash mismatch", never_spliced),
    ("503 then success", dict(status=503, times=1), None, VERIFIED, retried_once(503)),
    ("429 + Retry-After", dict(status=429, retry_after=1, times=1), None, VERIFIED, retried_once(429, 1.0)),
    ("corrupt bytes", dict(corrupt=True), None, "hash mismatch", None),
    ("extra bytes", dict(extra_bytes=100), None, "too long", None),
    ("HTML quota page", dict(html_page=QUOTA_PAGE), None, "html page", None),
    ("redirect loop", dict(redirect_loop=True), None, "redirect loop", None),
    ("endless body", dict(endless=True), None, "too long", None),
]

PROVIDER_FAULTS = {  # (fault, case, expected outcome) where the provider itself refuses or disagrees
    "hf": [("401 private repo", "401", "repo not found"), ("403 gated, token not granted", "403", "gated"),
           ("404 missing file", "404", "404"),
           ("provider sha256 disagrees", "disagrees", "disagrees: provider sha256 ≠ manifest")],
    "zenodo": [("401", "401", "401"), ("403 restricted record", "403", "403"), ("404 missing file", "404", "404"),
               ("provider size disagrees", "disagrees", "disagrees: provider size ≠ manifest")],
    "osf": [("401 private node", "401", "401"), ("403", "403", "403"), ("404 missing file", "404", "404"),
            ("provider sha256 disagrees", "disagrees", "disagrees: provider sha256 ≠ manifest")],
    "gdrive": [("401 not shared (sign-in page)", "401", "not shared"), ("403", "403", "403"),
               ("404 missing file", "404", "404"), ("quota exceeded page", "quota", "quota")],
}


SCENARIOS = (
    [Scenario(provider, fault, expect, faults, interrupted_at, check=check)
     for provider in PROVIDERS for fault, faults, interrupted_at, expect, check in BYTE_FAULTS]
    # a plain URL has no API: its 401/403/404 come from the byte server itself
    + [Scenario("url", status, status, faults=dict(status=int(status))) for status in ("401", "403", "404")]
    + [Scenario(provider, fault, expect, case=case)
       for provider, cases in PROVIDER_FAULTS.items() for fault, case, expect in cases]
    + [  # nothing pinned in the manifest: what the provider publishes must still catch bad bytes
        Scenario("hf", "corrupt bytes, manifest unpinned", "hash mismatch", dict(corrupt=True), pinned=False),
        Scenario("zenodo", "corrupt bytes, manifest unpinned", "hash mismatch", dict(corrupt=True), pinned=False),
        Scenario("osf", "corrupt bytes, manifest unpinned", "hash mismatch", dict(corrupt=True), pinned=False),
        Scenario("url", "ETag changed, manifest unpinned", VERIFIED,
                 dict(drop_after=500_000, times=1, then_content=...), pinned=False, check=never_spliced),
    ]
)


# -- running one ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


@pytest.fixture(autouse=True)
def _no_saved_hf_login(tmp_path, monkeypatch):
    """huggingface_hub fixed its token path at import; point it at an empty place for each test."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_token"))


class Armed:
    """Arms faults on the byte path when ``fetch`` resolves the mirror; keeps the GETs seen since."""

    def __init__(self, served: Served, monkeypatch):
        self.served, self.faults, self.since = served, None, 0
        monkeypatch.setattr(fetch_module, "resolve", self._resolve)

    def _resolve(self, mirror, session):
        source = real_resolve(mirror, session)
        if self.faults is not None:
            self.since = len(self.served.bytes_server.log)
            self.served.bytes_server.set_faults(self.served.bytes_path, Faults(**self.faults))
        return source

    def gets(self) -> list[LoggedRequest]:
        return [r for r in self.served.bytes_server.log[self.since:]
                if r.path == self.served.bytes_path and r.method == "GET"]


def manifest_for(mirror: dict, data: Optional[bytes]) -> Manifest:
    """One artifact ``corpus`` on ``mirror``; pinned to ``data``'s size and sha256 unless None."""
    pins = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} if data is not None else {}
    return Manifest.model_validate({"version": 1, "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", **pins, "mirrors": [mirror]}}})


def final_files(cache: Cache, dest: Path) -> list[Path]:
    """Every file at a final path: the cache's blobs and readable names, and the --dest directory."""
    return [p for root in (cache.root / "blobs", cache.root / "artifacts", dest) if root.exists()
            for p in root.rglob("*") if p.is_file()]


def partial_files(cache: Cache) -> list[Path]:
    return [p for p in (cache.root / "partial").rglob("*") if p.is_file()] if (cache.root / "partial").exists() else []


def evidence(gets: list[LoggedRequest]) -> str:
    """What the byte server saw, as ``GET bytes=N- → 206`` steps."""
    steps = [f"GET{' ' + r.range.removeprefix('bytes=') if r.range else ''} → {r.status}" for r in gets]
    return "; ".join(steps) or "—"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_fault_ends_verified_or_in_one_clear_error(scenario: Scenario, corpus, tmp_path, monkeypatch):
    served_data = corpus
    faults = dict(scenario.faults)
    if faults.get("then_content") is ...:
        faults["then_content"] = replaced(corpus)
        served_data = replaced(corpus) if scenario.expect == VERIFIED else corpus
    cache, dest = Cache(tmp_path / "cache"), tmp_path / "dest"
    with contextlib.ExitStack() as stack:
        served = PROVIDERS[scenario.provider](stack, corpus, scenario.case, monkeypatch)
        armed = Armed(served, monkeypatch)
        manifest = manifest_for(served.mirror, corpus if scenario.pinned else None)
        if scenario.interrupted_at is not None:
            armed.faults = dict(drop_after=scenario.interrupted_at, times=1)
            with pytest.raises(MirrorsExhausted):
                Store(manifest, cache.root).fetch("corpus", dest=dest, policy=ONCE)
            assert [p.stat().st_size for p in partial_files(cache) if p.suffix == ".part"] == [scenario.interrupted_at]
        armed.faults = faults or None
        outcome = _fetch_outcome(manifest, cache, dest)
        gets = armed.gets()

    REPORT_ROWS.append({"id": scenario.id, "provider": scenario.provider, "fault": scenario.fault,
                        "expected": scenario.expect, "outcome": outcome, "evidence": evidence(gets) if faults else "—"})
    assert outcome.split(" (")[0].removeprefix("exit 3: ") == scenario.expect
    if scenario.expect == VERIFIED:
        real = hashlib.sha256(served_data).hexdigest()
        files = final_files(cache, dest)
        assert len(files) == 3 and {hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == {real}
        assert cache.blob(real).is_file() and partial_files(cache) == []
    else:
        assert final_files(cache, dest) == [], "a failed fetch left a file at a final path"
        assert partial_files(cache) == [], "bad bytes were kept for a resume"
    if scenario.check is not None:
        scenario.check(gets)


def _fetch_outcome(manifest: Manifest, cache: Cache, dest: Path) -> str:
    """``verified (sha256 …)`` or ``exit N: <outcome tag>``, after checking the error is one line."""
    try:
        fetched = Store(manifest, cache.root).fetch("corpus", dest=dest, policy=FAST)
    except PhasegptError as err:
        assert "\n" not in str(err) and isinstance(err, MirrorsExhausted), repr(err)
        assert err.exit_code == 3
        (failed,) = err.outcomes
        return f"exit {err.exit_code}: {failed.status}"
    assert fetched.path == dest / "input.txt"
    return f"{VERIFIED} (sha256 {fetched.sha256[:12]}…)"


def test_a_file_changed_under_an_unchanged_etag_is_refused_not_kept(corpus, tmp_path):
    """A server that changes a file but not its ETag answers the If-Range resume with a 206 of the
    new bytes. The spliced part fails sha256, one clean download from 0 decides, and the manifest
    refuses the new file: nothing is placed or kept."""
    cache = Cache(tmp_path / "cache")
    with FileServer() as server:
        server.add_file("/files/input.txt", corpus, etag='"v1"')  # verbatim: it does not follow the content
        server.set_faults("/files/input.txt", Faults(drop_after=500_000, times=1, then_content=replaced(corpus)))
        with pytest.raises(MirrorsExhausted) as failed:
            Store(manifest_for({"type": "url", "url": server.url("/files/input.txt")}, corpus), cache.root).fetch("corpus", policy=FAST)
        gets = [(r.range, r.if_range, r.status) for r in server.requests_to("/files/input.txt")]
    assert [o.status for o in failed.value.outcomes] == ["hash mismatch"]
    assert gets == [(None, None, 200), ("bytes=500000-", '"v1"', 206), (None, None, 200)]
    assert final_files(cache, tmp_path / "dest") == [] and partial_files(cache) == []


# -- eight processes at once --------------------------------------------------------------------------

CLI = [sys.executable, "-m", "phasegpt_ckpt"]


def write_manifest(tmp_path: Path, mirror: dict, data: bytes) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "default": "corpus", "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "mirrors": [mirror]}}}))
    return path


def test_eight_processes_fetching_at_once_transfer_once(hub_emulator, corpus, tmp_path):
    hub = hub_emulator
    hub.add_repo("org/ckpt")
    hub.put("org/ckpt", "input.txt", corpus)
    cdn_path = hub.cdn_path("org/ckpt", "input.txt")
    hub.cdn.set_faults(cdn_path, Faults(bytes_per_second=300_000))  # ~4 s: the others start while it runs
    manifest = write_manifest(tmp_path, {"type": "hf", "repo": "org/ckpt", "filename": "input.txt",
                                         "endpoint": hub.origin}, corpus)
    runs = [subprocess.Popen([*CLI, "--manifest", manifest, "--cache-dir", tmp_path / "cache", "fetch",
                              "--dest", tmp_path / f"dest{i}", "--json"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    outputs = [run.communicate(timeout=120) for run in runs]

    assert [run.returncode for run in runs] == [0] * 8, [err for _, err in outputs]
    documents = [json.loads(out)[0] for out, _ in outputs]
    assert sorted(d["from_cache"] for d in documents) == [False] + [True] * 7
    for i, document in enumerate(documents):
        placed = Path(document["path"])
        assert placed == tmp_path / f"dest{i}" / "input.txt"
        assert hashlib.sha256(placed.read_bytes()).hexdigest() == document["sha256"] == CORPUS_SHA256
    assert [r.method for r in hub.cdn.requests_to(cdn_path)] == ["GET"]  # one body transfer ...
    assert [r.method for r in hub.log] == ["HEAD"]  # ... and one resolution: the others found the cache
    assert any("waiting for another fetch of corpus" in err for _, err in outputs)  # they did overlap


# -- kill -9 at ten points, then fetch again ------------------------------------------------------------

BIG_COPIES = 6  # the corpus six times over (6.7 MB): the part grows in 1 MiB reads, so several points apart


def _cli_in_child(argv: list[str]) -> None:
    """The command line, in a forked process (no interpreter start-up to wait for)."""
    sys.argv = ["phasegpt-ckpt", *argv]
    cli.main()


def test_kill_9_at_ten_seeded_points_then_fetch_again(corpus, tmp_path):
    data = corpus * BIG_COPIES
    points = sorted(random.Random(8).sample(range(1, len(data)), 9)) + [len(data)]
    context = multiprocessing.get_context("fork")  # the server lives in this process; the child only fetches
    with FileServer() as server:
        server.add_file("/files/big.txt", data)
        manifest_path = write_manifest(tmp_path, {"type": "url", "url": server.url("/files/big.txt")}, data)
        manifest = load_manifest(manifest_path)
        artifact = manifest.artifact("corpus")
        resumed = 0  # kills that left a partial file, finished by asking only for the rest
        for i, point in enumerate(points):
            cache = Cache(tmp_path / f"cache{i}")
            part = cache.part_path(artifact, artifact.mirrors[0])
            server.set_faults("/files/big.txt", Faults(bytes_per_second=8e6))
            child = context.Process(target=_cli_in_child, args=(
                ["--manifest", str(manifest_path), "--cache-dir", str(cache.root), "--quiet", "fetch"],))
            child.start()
            while child.is_alive() and not (part.exists() and part.stat().st_size >= point):
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            left = part.stat().st_size if part.exists() else 0

            for path in final_files(cache, tmp_path / "no-dest"):  # a killed fetch left nothing wrong in place
                assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256, f"kill at {point}: {path}"
            assert data.startswith(part.read_bytes()) if part.exists() else True

            server.set_faults("/files/big.txt", None)
            seen = len(server.log)
            fetched = Store(manifest, cache.root).fetch("corpus", dest=tmp_path / f"dest{i}", policy=FAST)
            files = final_files(cache, tmp_path / f"dest{i}")
            assert len(files) == 3 and {hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == {artifact.sha256}
            assert fetched.sha256 == artifact.sha256
            if 0 < left < len(data):  # asked only for the rest
                assert [r.range for r in server.log[seen:]] == [f"bytes={left}-"], f"kill at {point}"
                resumed += 1
    assert resumed >= 7, f"only {resumed} of {len(points)} kills left a partial file to resume"


def test_train_killed_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, corpus_path):
    """A writer that stops halfway through epoch 2's first checkpoint (the temp file is half written)
    is killed with SIGKILL there; every checkpoint at a final path still loads weights-only."""
    text = corpus_path.read_text()[:30_000]  # the first scenes: validation stays quick
    corpus = tmp_path / "input.txt"
    corpus.write_text(text)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_RUN, "model": {**TINY_RUN["model"], "vocab_size": len(set(text))}}))
    save_dir = tmp_path / "run"
    victim = subprocess.Popen([sys.executable, "-c", SLOW_SECOND_EPOCH_SAVE, "train", "--config", str(config),
                               "--epochs", "2", "--save-dir", str(save_dir), "--data", str(corpus),
                               "--device", "cpu"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = victim.stdout.readline()  # printed from inside the atomic save, with half the bytes on disk
    assert line.startswith("inside the atomic save: "), victim.stderr.read()
    temp = Path(line.split(": ", 1)[1].strip())
    assert temp.parent == save_dir and temp.stat().st_size > 0
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    finals = sorted(p.name for p in save_dir.glob("*.pt"))  # glob skips the hidden temp files
    assert "best_model.pt" in finals and "epoch_1.pt" in finals and "epoch_2.pt" not in finals
    for name in finals:
        checkpoint = torch.load(save_dir / name, weights_only=True)
        assert checkpoint["epoch"] == 1 and checkpoint["model_state_dict"], name


TINY_RUN = {
    "model": {"vocab_size": 65, "n_layers": 1, "d_model": 16, "n_heads": 2, "max_seq_len": 32, "dropout": 0.0,
              "use_phase_attention": True, "phase_layer_idx": [0], "num_oscillators": 4, "coupling_mode": "causal"},
    "training": {"batch_size": 32, "learning_rate": 3e-3, "max_epochs": 2, "warmup_steps": 1, "steps_per_epoch": 2,
                 "save_interval": 1},
    "data": {"block_size": 32},
    "experiment": {"name": "crash-test", "seed": 1},
}

# The CLI with torch.save slowed to a halt in epoch 2: half the bytes reach the temp file, then it waits.
SLOW_SECOND_EPOCH_SAVE = """
import io, os, sys, time
import torch
from phasegpt_ckpt import cli

real_save = torch.save

def save(obj, f, *args, **kwargs):
    if not (isinstance(obj, dict) and obj.get("epoch") == 2):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    with open(f, "wb") as out:
        out.write(buffer.getvalue()[: buffer.tell() // 2])
        out.flush()
        os.fsync(out.fileno())
    print("inside the atomic save:", f, flush=True)
    time.sleep(600)

torch.save = save
sys.argv = ["phasegpt-ckpt", *sys.argv[1:]]
cli.main()
"""


# -- disk full ----------------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    disk = FullDisk(tmp_path)
    yield disk
    disk.close()


def test_disk_full_during_a_download_keeps_the_part_and_resumes(full_disk, corpus, tmp_path, run_cli):
    data = corpus * 2  # 2.2 MB: the first 1 MiB read lands, the disk fills during the second
    with FileServer() as server:
        server.add_file("/files/big.txt", data)
        manifest = write_manifest(tmp_path, {"type": "url", "url": server.url("/files/big.txt")}, data)
        cache, dest = Cache(full_disk.root / "cache"), full_disk.root / "dest"
        full_disk.fill(leave=1_500_000)

        code, out, err = run_cli("--manifest", manifest, "--cache-dir", cache.root, "fetch", "--dest", dest)

        assert code == 2 and out == "" and "Traceback" not in err
        (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
        assert "disk full" in line and "resume" in line
        assert final_files(cache, dest) == []
        (part,) = [p for p in partial_files(cache) if p.suffix == ".part"]
        kept = part.stat().st_size
        assert 1024**2 <= kept < len(data) and data.startswith(part.read_bytes())

        full_disk.free()
        code, out, err = run_cli("--manifest", manifest, "--cache-dir", cache.root, "fetch", "--dest", dest)

        assert code == 0, err
        files = final_files(cache, dest)
        assert len(files) == 3 and {hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == {
            hashlib.sha256(data).hexdigest()}
        assert [r.range for r in server.requests_to("/files/big.txt")] == [None, f"bytes={kept}-"]


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(full_disk):
    path = full_disk.root / "best_model.pt"
    save_checkpoint({"epoch": 1, "w": torch.arange(1000.0)}, path)
    full_disk.fill(leave=200_000)

    with pytest.raises(BadInput) as refused:
        save_checkpoint({"epoch": 2, "w": torch.zeros(250_000)}, path)  # a 1 MB checkpoint

    assert "disk full" in str(refused.value) and "\n" not in str(refused.value)
    assert sorted(p.name for p in full_disk.root.iterdir() if p.name != "ballast") == ["best_model.pt"]
    previous = torch.load(path, weights_only=True)
    assert previous["epoch"] == 1 and torch.equal(previous["w"], torch.arange(1000.0))
    full_disk.free()
    save_checkpoint({"epoch": 2, "w": torch.zeros(250_000)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 2
