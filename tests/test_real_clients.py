"""The real third-party clients against our emulators, and our hf client against olah.

Our provider tests run against emulators we wrote from our reading of each protocol. Here the
reference clients (huggingface_hub, gdown, osfclient) download from those same emulators, so an
emulator that drifted from the real service would fail a client that works against it. olah
(a self-hosted Hub mirror nobody here wrote) then serves a whole file to our own hf client.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import gdown
import pytest
from conftest import CORPUS_SHA256
from emulators.fileserver import Faults
from emulators.gdrive import gdown_routed_to
from gdown.exceptions import DownloadError, FileURLRetrievalError
from olah_server import olah_serving

from phasegpt_ckpt import Store
from phasegpt_ckpt.source.manifest import Manifest

pytestmark = pytest.mark.clients

DRIVE_ID = "1PhaseGptBestModelCheckpoint0123456"


@pytest.fixture
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


# -- huggingface_hub ------------------------------------------------------------------------------

HF_SCRIPT = """
import hashlib, json, sys
from huggingface_hub import hf_hub_download
results = {}
for name, kwargs in json.loads(sys.argv[1]).items():
    try:
        path = hf_hub_download(**kwargs, cache_dir=f"{sys.argv[2]}/{name}")  # no case finds another's file
        results[name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    except Exception as err:
        results[name] = type(err).__name__
print(json.dumps(results))
"""
MiB = 1024 * 1024


def test_hf_hub_download_against_the_emulator(hub_emulator, corpus, tmp_path):
    """huggingface_hub reads HF_ENDPOINT at import: it runs in a child process configured for the emulator,
    with no HF_TOKEN and no saved login, so each case is anonymous unless it passes its token."""
    hub, token = hub_emulator, "hf_realClientToken"
    hub.add_repo("org/ckpt", private=True, tokens={token}, branches=("main", "refs/pr/1"))
    hub.put("org/ckpt", "input.txt", corpus)
    small = b'{"epoch": 3}\n'
    hub.put("org/ckpt", "info.json", small, lfs=False)
    big = corpus * 11  # 11.7 MiB: more than the client's 10 MiB read
    hub.put("org/ckpt", "big.bin", big)
    hub.cdn.set_faults(hub.cdn_path("org/ckpt", "big.bin"), Faults(drop_after=11 * MiB, times=1))
    hub.add_repo("org/gated", gated=True)
    hub.add_repo("org/public")
    hub.put("org/public", "input.txt", corpus)
    hub.add_repo("datasets/org/corpus")
    hub.put("datasets/org/corpus", "info.json", small, lfs=False)
    authorized = {"repo_id": "org/ckpt", "token": token}
    cases = {"lfs": {**authorized, "filename": "input.txt"}, "small": {**authorized, "filename": "info.json"},
             "pr": {**authorized, "filename": "input.txt", "revision": "refs/pr/1"},
             "resumed": {**authorized, "filename": "big.bin"},
             "entry": {**authorized, "filename": "missing.pt"},
             "revision": {**authorized, "filename": "input.txt", "revision": "v9"},
             "repo": {"repo_id": "org/none", "filename": "input.txt", "token": token},
             "gated": {"repo_id": "org/gated", "filename": "input.txt", "token": token},
             "anonymous-private": {"repo_id": "org/ckpt", "filename": "info.json"},
             "anonymous-public": {"repo_id": "org/public", "filename": "input.txt"},
             "anonymous-dataset": {"repo_id": "org/corpus", "filename": "info.json", "repo_type": "dataset"}}
    env = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    env.update(HF_ENDPOINT=hub.origin, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run([sys.executable, "-c", HF_SCRIPT, json.dumps(cases), str(tmp_path / "hub")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)

    small_sha256 = hashlib.sha256(small).hexdigest()
    assert results == {"lfs": CORPUS_SHA256, "small": small_sha256, "pr": CORPUS_SHA256,
                       "resumed": hashlib.sha256(big).hexdigest(),
                       "entry": "RemoteEntryNotFoundError", "revision": "RevisionNotFoundError",
                       "repo": "RepositoryNotFoundError", "gated": "GatedRepoError",
                       "anonymous-private": "RepositoryNotFoundError",  # 401 + X-Error-Code over http://
                       "anonymous-public": CORPUS_SHA256, "anonymous-dataset": small_sha256}
    cdn = hub.cdn.requests_to(hub.cdn_path("org/ckpt", "input.txt"))
    assert [r.method for r in cdn] == ["GET"] * 3  # "lfs", "pr" and "anonymous-public": the same content
    assert all(r.authorization is None for r in hub.cdn.log)  # the client, too, keeps the token off the CDN
    resumed = hub.cdn.requests_to(hub.cdn_path("org/ckpt", "big.bin"))
    assert [(r.range, r.status) for r in resumed] == [(None, 200), (f"bytes={10 * MiB}-", 206)]  # its own resume
    anonymous = [r for r in hub.log if r.path.startswith(("/org/public/", "/datasets/", "/api/resolve-cache/datasets/"))
                 or r.path == "/org/ckpt/resolve/main/info.json" and r.status == 401]
    assert len(anonymous) == 5 and all(r.authorization is None for r in anonymous)
    assert all(r.authorization == f"Bearer {token}" for r in hub.log if r not in anonymous)
    assert "/org/ckpt/resolve/refs%2Fpr%2F1/input.txt" in [r.path for r in hub.log]
    # the small files came through the same-origin /api/resolve-cache hop, which the client followed
    assert [r.status for r in hub.log if r.path.startswith("/api/resolve-cache/")] == [200, 200, 200, 200]


# -- gdown ----------------------------------------------------------------------------------------


@pytest.fixture
def gdown_on_emulator(drive_emulator, monkeypatch):
    """gdown hard-codes Google's hosts: route its session's requests for them to the emulator."""
    gdown_routed_to(drive_emulator, monkeypatch)
    return drive_emulator


@pytest.mark.parametrize("options", [{"large": True}, {"mode": "legacy"}], ids=["virus-scan-form", "legacy-link"])
def test_gdown_download_through_the_confirm_pages(gdown_on_emulator, corpus, tmp_path, options):
    gdown_on_emulator.add(DRIVE_ID, "input.txt", corpus, **options)
    path = gdown.download(id=DRIVE_ID, output=str(tmp_path) + "/", quiet=True, use_cookies=False)
    assert Path(path).name == "input.txt" and Path(path).read_bytes() == corpus  # name from Content-Disposition


def test_gdown_resumes_a_part_file_with_range(gdown_on_emulator, corpus, tmp_path):
    gdown_on_emulator.add(DRIVE_ID, "input.txt", corpus, large=True)
    (tmp_path / "input.txtABCDEFGH.part").write_bytes(corpus[:500_000])  # gdown's own partial-file name
    path = gdown.download(id=DRIVE_ID, output=str(tmp_path / "input.txt"), quiet=True, use_cookies=False,
                          resume=True)
    assert Path(path).read_bytes() == corpus
    ranged = [r for r in gdown_on_emulator.content.log if r.range]
    assert [(r.range, r.status) for r in ranged] == [("bytes=500000-", 206)]


@pytest.mark.parametrize("faults", [
    Faults(ignore_range=True),
    Faults(times=2, then_content=...),  # the warning page, the probe GET; then the file changes
], ids=["range-ignored", "etag-changed-after-the-probe"])
def test_gdown_refuses_a_resume_the_server_did_not_honour(gdown_on_emulator, corpus, tmp_path, faults):
    """gdown probes the file (a plain GET: its ETag), then asks for the rest with Range and If-Range:
    a 200 instead of the 206 must fail, the partial file untouched and no output written."""
    drive = gdown_on_emulator
    drive.add(DRIVE_ID, "input.txt", corpus, large=True)
    part = tmp_path / "input.txtABCDEFGH.part"
    part.write_bytes(corpus[:500_000])
    if faults.then_content is ...:
        faults.then_content = corpus[::-1]
    drive.content.set_faults("/download", faults)
    with pytest.raises(DownloadError, match="did not honor the requested byte range"):
        gdown.download(id=DRIVE_ID, output=str(tmp_path / "input.txt"), quiet=True, use_cookies=False, resume=True)
    assert part.read_bytes() == corpus[:500_000] and not (tmp_path / "input.txt").exists()
    probe, resumed = [r for r in drive.content.log if "uuid=" in r.query]
    assert (probe.range, probe.status) == (None, 200)
    assert (resumed.range, resumed.if_range, resumed.status) == ("bytes=500000-", f'"{CORPUS_SHA256}"', 200)


def test_gdown_reads_the_quota_page(gdown_on_emulator, corpus, tmp_path):
    gdown_on_emulator.add(DRIVE_ID, "input.txt", corpus, mode="quota")
    with pytest.raises(FileURLRetrievalError, match="Too many users"):
        gdown.download(id=DRIVE_ID, output=str(tmp_path) + "/", quiet=True, use_cookies=False)


# -- osfclient ------------------------------------------------------------------------------------


def test_osfclient_lists_and_downloads(osf_emulator, corpus, tmp_path):
    """osfclient pages by 10 and recurses into folders; it sleeps 1 s between requests (~6 s here)."""
    from osfclient import OSF

    osf_emulator.add_node("phgpt")
    for n in range(11):
        osf_emulator.put("phgpt", f"run{n:02d}.log", b"epoch %d\n" % n)
    osf_emulator.put("phgpt", "checkpoints/input.txt", corpus)
    client = OSF()
    client.session.base_url = osf_emulator.url("/v2/")
    storage = client.project("phgpt").storage("osfstorage")
    files = {f.path: f for f in storage.files}
    assert len(files) == 12  # both pages of the root, and the folder's file
    with open(tmp_path / "input.txt", "wb") as out:
        files["/checkpoints/input.txt"].write_to(out)
    assert (tmp_path / "input.txt").read_bytes() == corpus


# -- olah: a real Hub mirror serving a local git repository ----------------------------------------


def lfs_repository(root: Path, repo_id: str, filename: str, data: bytes, sha256: str) -> None:
    """A git repository holding ``filename`` as a Git LFS pointer, laid out by hand (no git-lfs needed)."""
    repo = root / "models" / repo_id
    repo.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    (repo / filename).write_text(pointer)
    obj = repo / ".git" / "lfs" / "objects" / sha256[:2] / sha256[2:4] / sha256
    obj.parent.mkdir(parents=True)
    obj.write_bytes(data)
    subprocess.run([*git, "add", filename], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkpoint"], check=True)


@pytest.fixture
def olah(tmp_path, corpus):
    """olah in offline mode (OLAH.md), serving org/ckpt with input.txt committed through LFS."""
    lfs_repository(tmp_path / "mirrors", "org/ckpt", "input.txt", corpus, CORPUS_SHA256)
    with olah_serving(tmp_path / "mirrors", tmp_path, "/org/ckpt/resolve/main/input.txt") as origin:
        yield origin


def test_our_hf_client_fetches_a_whole_file_from_olah(olah, corpus, tmp_path):
    manifest = Manifest.model_validate({"version": 1, "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": len(corpus), "sha256": CORPUS_SHA256,
        "mirrors": [{"type": "hf", "repo": "org/ckpt", "filename": "input.txt", "endpoint": olah}]}}})
    fetched = Store(manifest, tmp_path / "cache").fetch("corpus")
    assert fetched.sha256 == CORPUS_SHA256 and fetched.path.read_bytes() == corpus
    assert fetched.outcomes[-1].status == "ok"
