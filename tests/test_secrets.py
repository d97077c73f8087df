"""Provider tokens (HF_TOKEN, ZENODO_TOKEN, OSF_TOKEN) reach their provider and nothing else.

In every scenario, successful or failing, the token must appear nowhere a person or a log could
read it: stdout, stderr, log records, exception text, the outcome table, receipts, sidecars and
any other file the fetch wrote. And it must never travel to a host the provider did not name: the
emulators' CDNs and storage hosts on other ports keep a log of every request's Authorization.
Each scenario first proves the token was sent where it belongs, so a check that it leaked
nowhere else cannot pass by the token never being used.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from conftest import CORPUS_SHA256
from emulators.fileserver import Faults, FileServer
from emulators.osf import OsfEmulator
from emulators.zenodo import ZenodoEmulator

from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import MirrorsExhausted
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.source.transfer import RetryPolicy

HF_TOKEN = "hf_SecretTokenThatMustNeverShow0123"
ZENODO_TOKEN = "zenodoSecretTokenThatMustNeverShow"
OSF_TOKEN = "osfSecretTokenThatMustNeverShow012"
FAST = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05, connect_timeout=2, read_timeout=0.5)


@pytest.fixture
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


@pytest.fixture(autouse=True)
def _everything_logged(caplog, tmp_path, monkeypatch):
    """Every library's log records at DEBUG, and no saved Hub login."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_token"))


def write_manifest(tmp_path: Path, mirror: dict) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "default": "corpus", "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": 1115394, "sha256": CORPUS_SHA256, "mirrors": [mirror]}}}))
    return path


def readable_everywhere(tmp_path: Path, caplog, *texts: str, log_level: int = logging.DEBUG) -> str:
    """All a person or a log could see: ``texts`` (output, exceptions), log records from ``log_level``
    up, every file written."""
    files = "\n".join(f"{p}\n{p.read_bytes().decode(errors='replace')}" for p in tmp_path.rglob("*")
                      if p.is_file() and p.name != "manifest.yaml")
    records = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= log_level)
    return "\n".join([*texts, records, files])


def cli_fetch(run_cli, tmp_path: Path, mirror: dict) -> tuple[int, str]:
    """``fetch`` through the command line, twice (plain and --json); exit code and everything printed."""
    manifest, cache = write_manifest(tmp_path, mirror), tmp_path / "cache"
    code, out, err = run_cli("--manifest", manifest, "--cache-dir", cache, "fetch", "--dest", tmp_path / "dest")
    again, out_json, err_json = run_cli("--manifest", manifest, "--cache-dir", cache, "fetch", "--json")
    assert again == code
    return code, "\n".join([out, err, out_json, err_json])


def api_fetch(tmp_path: Path, mirror: dict) -> str:
    """``fetch`` through the Python API with short timeouts; the text of the error it raised."""
    with pytest.raises(MirrorsExhausted) as failed:
        Store(load_manifest(write_manifest(tmp_path, mirror)), tmp_path / "cache").fetch("corpus", policy=FAST)
    err = failed.value
    return "\n".join([str(err), repr(err), *(f"{o.status} {o.detail}" for o in err.outcomes)])


# -- Hugging Face Hub -----------------------------------------------------------------------------


@pytest.fixture
def hub(hub_emulator, corpus, monkeypatch):
    """A Hub where HF_TOKEN reads org/private, may not read org/others, and is not granted org/gated."""
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    for repo, options in {"org/private": {"private": True, "tokens": {HF_TOKEN}},
                          "org/others": {"private": True, "tokens": {"hf_someoneElse"}},
                          "org/gated": {"gated": True, "tokens": {"hf_someoneElse"}}}.items():
        hub_emulator.add_repo(repo, **options)
        hub_emulator.put(repo, "input.txt", corpus)
    return hub_emulator


def hf_mirror(hub, repo: str = "org/private", filename: str = "input.txt") -> dict:
    return {"type": "hf", "repo": repo, "filename": filename, "endpoint": hub.origin}


def assert_hub_saw_the_token_and_the_cdn_never(hub) -> None:
    assert hub.log and all(r.authorization == f"Bearer {HF_TOKEN}" for r in hub.log)
    assert all(r.authorization is None for r in hub.cdn.log)


@pytest.mark.parametrize("repo, filename, fault, code", [
    ("org/private", "input.txt", None, 0),
    ("org/private", "input.txt", Faults(status=401, methods=("HEAD",)), 3),  # a revoked token
    ("org/others", "input.txt", None, 3),  # 404: private to others
    ("org/gated", "input.txt", None, 3),  # 403: gated, not granted
    ("org/private", "missing.pt", None, 3),  # 404: no such file
    ("org/private", "input.txt", Faults(status=503, methods=("HEAD",)), 3),
], ids=["success", "401-revoked", "404-private-to-others", "403-gated", "404-missing-file", "503"])
def test_hf_token_never_shows_through_the_command_line(hub, run_cli, tmp_path, caplog, repo, filename, fault, code):
    if fault is not None:
        hub.set_faults(f"/{repo}/resolve/main/{filename}", fault)
    exit_code, printed = cli_fetch(run_cli, tmp_path, hf_mirror(hub, repo, filename))
    assert exit_code == code, printed
    assert_hub_saw_the_token_and_the_cdn_never(hub)
    if code == 0:
        assert (tmp_path / "dest" / "input.txt").is_file() and hub.cdn.log
    assert HF_TOKEN not in readable_everywhere(tmp_path, caplog, printed)


@pytest.mark.parametrize("fault", [Faults(stall=2), Faults(status=500), Faults(redirect_loop=True)],
                         ids=["cdn-timeout", "cdn-500", "cdn-redirect-loop"])
def test_hf_token_never_shows_when_the_cdn_fails(hub, tmp_path, caplog, capsys, fault):
    hub.cdn.set_faults(hub.cdn_path("org/private", "input.txt"), fault)
    error = api_fetch(tmp_path, hf_mirror(hub))
    assert_hub_saw_the_token_and_the_cdn_never(hub)
    assert hub.cdn.log
    out = capsys.readouterr()
    assert HF_TOKEN not in readable_everywhere(tmp_path, caplog, error, out.out, out.err)


def test_hf_token_echoed_back_by_a_broken_hub_is_scrubbed(tmp_path, caplog, run_cli, monkeypatch):
    """A server error that quotes the request's Authorization header back must not pass it on."""
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)

    def echo(request):
        said = f"upstream failure for {request.headers.get('Authorization')}"
        request.send_json({"error": said}, 500, headers={"X-Error-Message": said, "X-Error-Code": "Internal"})

    with FileServer() as broken:
        broken.route(r"/.*", echo)
        exit_code, printed = cli_fetch(run_cli, tmp_path, hf_mirror(broken))
        assert exit_code == 3 and "HTTP 500" in printed
        assert all(r.authorization == f"Bearer {HF_TOKEN}" for r in broken.log)
    # httpcore2's DEBUG trace prints response headers verbatim, the echoed one too: only someone who
    # turns that library's debug logging on sees it. From INFO up, nothing may carry it.
    assert HF_TOKEN not in readable_everywhere(tmp_path, caplog, printed, log_level=logging.INFO)


# -- Zenodo ---------------------------------------------------------------------------------------


class ZenodoBehindStorage(ZenodoEmulator):
    """Zenodo whose file content redirects to a storage host on another origin, as presigned S3 links do."""

    def __init__(self, storage: FileServer):
        super().__init__()
        self.storage = storage

    def content(self, request) -> None:
        record = self._readable(request)
        if record:
            key = request.path.split("/files/")[1].removesuffix("/content")
            self.storage.add_file(request.path, record.files[key].data)
            request.redirect(self.storage.url(request.path))


@pytest.mark.parametrize("token, record, code", [
    (ZENODO_TOKEN, 7001, 0), ("zenodoWrongToken", 7001, 3), (ZENODO_TOKEN, 7999, 3)],
    ids=["success", "403-wrong-token", "404-no-record"])
def test_zenodo_token_stays_with_zenodo(corpus, tmp_path, caplog, run_cli, monkeypatch, token, record, code):
    monkeypatch.setenv("ZENODO_TOKEN", token)
    with FileServer() as storage, ZenodoBehindStorage(storage) as zenodo:
        zenodo.add_record(7001, {"input.txt": corpus}, token=ZENODO_TOKEN)
        mirror = {"type": "zenodo", "record": record, "filename": "input.txt", "endpoint": zenodo.origin}
        exit_code, printed = cli_fetch(run_cli, tmp_path, mirror)

        assert exit_code == code, printed
        assert zenodo.log and all(r.authorization == f"Bearer {token}" for r in zenodo.log)
        assert bool(storage.log) == (code == 0) and all(r.authorization is None for r in storage.log)
    assert token not in readable_everywhere(tmp_path, caplog, printed)


# -- OSF ------------------------------------------------------------------------------------------


class OsfBehindStorage(OsfEmulator):
    """OSF whose WaterButler hands downloads on to signed cloud storage on another origin."""

    def __init__(self, storage: FileServer):
        super().__init__(page_cap=10)
        self.storage = storage

    def waterbutler(self, request) -> None:
        osf_file = self.osf_files[request.params["id"]]
        if self._readable(request, osf_file.node):
            self.storage.add_file(f"/signed/{osf_file.id}", osf_file.blob.data)
            request.redirect(self.storage.url(f"/signed/{osf_file.id}"))


def private_project(osf: OsfEmulator, corpus: bytes, monkeypatch) -> dict:
    """A private project that OSF_TOKEN may read; the manifest mirror of its file."""
    monkeypatch.setenv("OSF_TOKEN", OSF_TOKEN)
    osf.add_node("phgpt", token=OSF_TOKEN)
    osf.put("phgpt", "checkpoints/input.txt", corpus)
    return {"type": "osf", "node": "phgpt", "path": "checkpoints/input.txt", "endpoint": osf.origin}


def test_osf_private_file_downloads_with_the_token_sent_only_where_the_api_points(osf_emulator, corpus, tmp_path,
                                                                                   caplog, run_cli, monkeypatch):
    osf = osf_emulator
    exit_code, printed = cli_fetch(run_cli, tmp_path, private_project(osf, corpus, monkeypatch))
    assert exit_code == 0, printed
    assert hashlib.sha256((tmp_path / "dest" / "input.txt").read_bytes()).hexdigest() == CORPUS_SHA256
    for server in (osf, osf.wb):  # the API, and WaterButler: the download origin the API names
        assert server.log and all(r.authorization == f"Bearer {OSF_TOKEN}" for r in server.log)
    assert all(r.authorization is None for r in osf.web.log)
    assert OSF_TOKEN not in readable_everywhere(tmp_path, caplog, printed)


def test_osf_token_never_follows_a_redirect_off_waterbutler(corpus, tmp_path, caplog, monkeypatch):
    with FileServer() as storage, OsfBehindStorage(storage) as osf:
        mirror = private_project(osf, corpus, monkeypatch)
        fetched = Store(load_manifest(write_manifest(tmp_path, mirror)), tmp_path / "cache").fetch("corpus", policy=FAST)
        assert fetched.sha256 == CORPUS_SHA256
        assert osf.wb.log and all(r.authorization == f"Bearer {OSF_TOKEN}" for r in osf.wb.log)
        assert storage.log and all(r.authorization is None for r in storage.log)
    assert OSF_TOKEN not in readable_everywhere(tmp_path, caplog)


# -- publishing: Zenodo deposits and OSF uploads ---------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus_path) -> bytes:
    from deposit_files import two_checkpoints

    return two_checkpoints(tmp_path_factory.mktemp("secret-checkpoints"), corpus_path)[0]


def publish_everywhere_readable(tmp_path: Path, caplog, printed: str) -> str:
    """All a person could read after a publish: output, logs, every file written, the manifest included."""
    manifest = tmp_path / "home" / "manifest.yaml"
    return readable_everywhere(tmp_path, caplog, printed) + (manifest.read_text() if manifest.exists() else "")


@pytest.mark.parametrize("fault, code", [
    (None, 0), (Faults(status=500, methods=("POST",), echo_authorization=True), 3)],
    ids=["success", "publish-500-echoing-the-token"])
def test_zenodo_token_never_shows_when_publishing(zenodo_emulator, checkpoint, tmp_path, caplog, run_cli, monkeypatch,
                                                  fault, code):
    from deposit_files import place

    zenodo_emulator.allow(ZENODO_TOKEN)
    monkeypatch.setenv("ZENODO_TOKEN", ZENODO_TOKEN)
    if fault:
        zenodo_emulator.set_faults(zenodo_emulator.deposition_path(zenodo_emulator.next_id(), "publish"), fault)
    exit_code, out, err = run_cli("publish", place(tmp_path, checkpoint), "--name", "tiny", "--manifest",
                                  tmp_path / "home" / "manifest.yaml", "--to", "zenodo", "--endpoint",
                                  zenodo_emulator.origin)
    assert exit_code == code, err
    assert zenodo_emulator.log and all(r.authorization == f"Bearer {ZENODO_TOKEN}" for r in zenodo_emulator.log)
    assert code == 0 or "request had Authorization" in err, "the server did echo it"
    assert ZENODO_TOKEN not in publish_everywhere_readable(tmp_path, caplog, out + err)


@pytest.mark.parametrize("token, code", [(OSF_TOKEN, 0), ("osfSomeoneElsesTokenNeverShown99", 2)],
                         ids=["success", "403-echoing-the-token"])
def test_osf_token_never_shows_when_publishing(osf_emulator, checkpoint, tmp_path, caplog, run_cli, monkeypatch,
                                               token, code):
    from deposit_files import place

    osf_emulator.add_node("lab01", write_token=OSF_TOKEN)
    osf_emulator.wb.set_faults(osf_emulator.folder_upload_path("lab01"), Faults(echo_authorization=True, methods=("PUT",)))
    monkeypatch.setenv("OSF_TOKEN", token)
    exit_code, out, err = run_cli("publish", place(tmp_path, checkpoint), "--name", "tiny", "--manifest",
                                  tmp_path / "home" / "manifest.yaml", "--to", "osf:lab01", "--endpoint",
                                  osf_emulator.origin)
    assert exit_code == code, err
    for server in (osf_emulator, osf_emulator.wb):
        assert server.log and all(r.authorization == f"Bearer {token}" for r in server.log)
    assert code == 0 or "request had Authorization" in err, "the server did echo it"
    assert token not in publish_everywhere_readable(tmp_path, caplog, out + err)
