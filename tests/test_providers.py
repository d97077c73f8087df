"""Provider mirrors (hf, zenodo, osf, gdrive) against their emulators, through the real fetch engine.

The payload is the tiny Shakespeare corpus, whose sha256 is published in ../shared: every fetch
below ends in bytes checked against it. Each provider also gets its error mapping (one line,
an outcome tag for the table), a resume after a dropped connection, and, where it has one,
the rule that a token goes to the provider's API origin only.
"""
from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import requests
from conftest import CORPUS_SHA256
from emulators.fileserver import Faults

from phasegpt_ckpt.cache import Cache
from phasegpt_ckpt.errors import MirrorFailed, MirrorsExhausted
from phasegpt_ckpt.fetch import fetch
from phasegpt_ckpt.manifest import Manifest
from phasegpt_ckpt.mirrors import gdrive, hf, osf, zenodo

DRIVE_ID = "1PhaseGptBestModelCheckpoint0123456"
DROP_AT = 300_000  # bytes sent before a dropped connection


@pytest.fixture
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


@pytest.fixture(autouse=True)
def _no_saved_hf_login(tmp_path, monkeypatch):
    """huggingface_hub fixed its token path at import; point it at an empty place for each test."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_token"))


def fetch_one(tmp_path: Path, mirror: dict, sha256: str | None = CORPUS_SHA256):
    """Fetch a one-mirror artifact into a fresh cache; returns (Fetched, cache root)."""
    manifest = Manifest.model_validate({"version": 1, "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "sha256": sha256, "mirrors": [mirror]}}})
    root = tmp_path / "cache"
    return fetch("corpus", manifest=manifest, cache=Cache(root)), root


def failure(provider, mirror) -> MirrorFailed:
    """The MirrorFailed that resolving ``mirror`` raises, checked to be one line."""
    with pytest.raises(MirrorFailed) as caught:
        provider.resolve(mirror, requests.Session())
    assert "\n" not in str(caught.value)
    return caught.value


def everything_written(root: Path) -> str:
    """Every file under ``root`` (receipts, sidecars) as text, names included."""
    return "\n".join(f"{p}\n{p.read_bytes().decode(errors='replace')}" for p in root.rglob("*") if p.is_file())


# -- Hugging Face Hub ---------------------------------------------------------------------------


def test_hf_private_repo_token_reaches_the_hub_but_never_the_cdn(hub_emulator, corpus, tmp_path, monkeypatch,
                                                                  capsys):
    hub, token = hub_emulator, "hf_emulatedSecretToken0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    hub.add_repo("templetwo/phasegpt-checkpoints", private=True, tokens={token})
    hub.put("templetwo/phasegpt-checkpoints", "input.txt", corpus)

    fetched, root = fetch_one(tmp_path, {"type": "hf", "repo": "templetwo/phasegpt-checkpoints",
                                         "filename": "input.txt", "endpoint": hub.origin})

    assert fetched.sha256 == CORPUS_SHA256 and fetched.path.read_bytes() == corpus
    assert [r.authorization for r in hub.log] == [f"Bearer {token}"]  # the metadata HEAD
    cdn_gets = hub.cdn.requests_to(hub.cdn_path("templetwo/phasegpt-checkpoints", "input.txt"))
    assert cdn_gets and all(r.authorization is None for r in cdn_gets)
    out = capsys.readouterr()
    assert token not in out.out + out.err + everything_written(root)


def test_hf_saved_login_is_used_and_a_commit_pins_the_revision(hub_emulator, corpus, tmp_path):
    hub = hub_emulator
    (tmp_path / "hf_token").write_text("hf_savedLoginToken")  # where `hf auth login` keeps it
    repo = hub.add_repo("org/ckpt", private=True, tokens={"hf_savedLoginToken"})
    hub.put("org/ckpt", "input.txt", corpus)
    hub.put("org/ckpt", "info.json", b'{"epoch": 3}\n', lfs=False)

    lfs = hf.resolve(hf.HfMirror(repo="org/ckpt", filename="input.txt", revision=repo.commit,
                                 endpoint=hub.origin), requests.Session())
    small = hf.resolve(hf.HfMirror(repo="org/ckpt", filename="info.json", endpoint=hub.origin), requests.Session())

    assert (lfs.sha256, lfs.size, lfs.revision) == (CORPUS_SHA256, len(corpus), repo.commit)
    assert hub.log[0].path == f"/org/ckpt/resolve/{repo.commit}/input.txt"
    assert lfs.headers == {}  # the CDN is another origin
    assert small.sha256 is None  # a small file's ETag is its git sha1, not a sha256
    assert small.headers == {"Authorization": "Bearer hf_savedLoginToken"}  # the Hub itself serves it


@pytest.mark.parametrize("repo, mirror, token, outcome, words", [
    ({"private": True}, {}, None, "repo not found", "not found, or private"),
    ({"private": True}, {}, "hf_noAccess", "repo not found", "not found, or private"),
    ({"gated": True}, {}, None, "gated", "accept its terms"),
    ({"gated": True}, {}, "hf_noAccess", "gated", "not granted"),
    ({}, {"filename": "missing.pt"}, None, "404", "missing.pt not found in org/ckpt@main"),
    ({}, {"revision": "v2.0"}, None, "revision not found", "'v2.0' not found"),
], ids=["private", "private-other-token", "gated", "gated-no-access", "entry", "revision"])
def test_hf_errors_map_to_one_line(hub_emulator, corpus, monkeypatch, repo, mirror, token, outcome, words):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    hub_emulator.add_repo("org/ckpt", tokens={"hf_granted"}, **repo)
    hub_emulator.put("org/ckpt", "input.txt", corpus)
    err = failure(hf, hf.HfMirror(**{"repo": "org/ckpt", "filename": "input.txt",
                                     "endpoint": hub_emulator.origin, **mirror}))
    assert err.outcome == outcome and words in str(err)
    assert not token or token not in str(err)


def test_hf_unreachable_endpoint_and_the_hf_endpoint_variable(hub_emulator, corpus, monkeypatch):
    err = failure(hf, hf.HfMirror(repo="org/ckpt", filename="input.txt", endpoint="http://127.0.0.1:9"))
    assert err.outcome == "network"
    hub_emulator.add_repo("org/ckpt")
    hub_emulator.put("org/ckpt", "input.txt", corpus)
    monkeypatch.setenv("HF_ENDPOINT", hub_emulator.origin + "/")  # read at resolve time, not at import
    assert hf.resolve(hf.HfMirror(repo="org/ckpt", filename="input.txt"), requests.Session()).sha256 == CORPUS_SHA256


def test_hf_resumes_after_a_dropped_connection(hub_emulator, corpus, tmp_path):
    hub = hub_emulator
    hub.add_repo("org/ckpt")
    hub.put("org/ckpt", "input.txt", corpus)
    path = hub.cdn_path("org/ckpt", "input.txt")
    hub.cdn.set_faults(path, Faults(drop_after=DROP_AT, times=1))
    fetched, _ = fetch_one(tmp_path, {"type": "hf", "repo": "org/ckpt", "filename": "input.txt",
                                      "endpoint": hub.origin})
    assert fetched.sha256 == CORPUS_SHA256
    resumed = hub.cdn.requests_to(path)[1]
    assert (resumed.range, resumed.if_range, resumed.status) == (f"bytes={DROP_AT}-", f'"{CORPUS_SHA256}"', 206)


# -- Zenodo ---------------------------------------------------------------------------------------


def zenodo_mirror(server, **fields) -> zenodo.ZenodoMirror:
    return zenodo.ZenodoMirror(**{"filename": "input.txt", "endpoint": server.origin, **fields})


def test_zenodo_concept_doi_gets_the_latest_version_checked_by_md5(zenodo_emulator, corpus, tmp_path):
    zenodo_emulator.add_record(7001, {"input.txt": corpus[:1000]}, concept=7000)
    zenodo_emulator.add_record(7002, {"input.txt": corpus}, concept=7000)

    fetched, _ = fetch_one(tmp_path, {"type": "zenodo", "doi": "10.5281/zenodo.7000", "filename": "input.txt",
                                      "endpoint": zenodo_emulator.origin}, sha256=None)

    assert fetched.sha256 == CORPUS_SHA256  # the manifest pins nothing: the published md5 was checked
    assert fetched.outcomes[-1].detail == "unpinned (provider md5)"
    assert [r.path for r in zenodo_emulator.log[:3]] == [
        "/api/records/7000", "/api/records/7000/versions/latest", "/api/records/7002"]


def test_zenodo_legacy_file_entries_and_corrupted_bytes_caught_by_md5(zenodo_emulator, corpus, tmp_path):
    record = zenodo_emulator.add_record(8001, {"input.txt": corpus}, legacy=True)  # filename, filesize, bare md5
    source = zenodo.resolve(zenodo_mirror(zenodo_emulator, record=8001), requests.Session())
    content = zenodo_emulator.url(zenodo_emulator.content_path(8001, "input.txt"))
    assert (source.size, source.url) == (len(corpus), content)
    assert source.md5 == record.files["input.txt"].headers["Content-MD5"]

    zenodo_emulator.set_faults(zenodo_emulator.content_path(8001, "input.txt"), Faults(corrupt=True))
    with pytest.raises(MirrorsExhausted) as exhausted:
        fetch_one(tmp_path, {"type": "zenodo", "record": 8001, "filename": "input.txt",
                             "endpoint": zenodo_emulator.origin}, sha256=None)
    assert exhausted.value.outcomes[0].status == "hash mismatch"


def test_zenodo_errors_and_restricted_records(zenodo_emulator, corpus, monkeypatch):
    zenodo_emulator.add_record(9001, {"input.txt": corpus}, token="zenodo-secret")
    zenodo_emulator.add_record(9101, {"other.txt": corpus})
    restricted = failure(zenodo, zenodo_mirror(zenodo_emulator, record=9001))
    assert restricted.outcome == "403" and "ZENODO_TOKEN" in str(restricted)
    assert failure(zenodo, zenodo_mirror(zenodo_emulator, record=5)).outcome == "404"
    missing = failure(zenodo, zenodo_mirror(zenodo_emulator, record=9101))
    assert missing.outcome == "404" and "no file 'input.txt'" in str(missing)

    monkeypatch.setenv("ZENODO_TOKEN", "zenodo-secret")
    source = zenodo.resolve(zenodo_mirror(zenodo_emulator, record=9001), requests.Session())
    assert source.headers == {"Authorization": "Bearer zenodo-secret"}  # the file is on the API's origin


def test_zenodo_identifiers():
    assert zenodo.ZenodoMirror(doi="10.5072/zenodo.42", filename="x").base_url() == "https://sandbox.zenodo.org"
    assert zenodo.ZenodoMirror(doi="10.5281/zenodo.42", filename="x").base_url() == "https://zenodo.org"
    assert zenodo.ZenodoMirror(record=42, filename="x").record_id() == "42"
    placeholder = zenodo.ZenodoMirror(doi="10.5281/zenodo.XXXXXXX", published=False)  # no filename needed yet
    assert placeholder.describe() == "zenodo 10.5281/zenodo.XXXXXXX"
    for bad in ({"doi": "10.1234/foo.1", "filename": "x"}, {"record": 1, "doi": "10.5281/zenodo.1", "filename": "x"},
                {"record": 1}):
        with pytest.raises(ValueError):
            zenodo.ZenodoMirror(**bad)


def test_zenodo_server_ignoring_range_restarts_cleanly(zenodo_emulator, corpus, tmp_path):
    record = zenodo_emulator.add_record(7101, {"input.txt": corpus})
    record.files["input.txt"].ranges = False
    path = zenodo_emulator.content_path(7101, "input.txt")
    zenodo_emulator.set_faults(path, Faults(drop_after=DROP_AT, times=1))
    fetched, _ = fetch_one(tmp_path, {"type": "zenodo", "record": 7101, "filename": "input.txt",
                                      "endpoint": zenodo_emulator.origin})
    assert fetched.sha256 == CORPUS_SHA256
    first, second = zenodo_emulator.requests_to(path)
    assert (second.range, second.status) == (f"bytes={DROP_AT}-", 200)  # asked to resume, got it all again


# -- OSF ------------------------------------------------------------------------------------------


def osf_project(server, corpus, **node):
    """A project whose storage root holds 12 logs (two pages of 10) and the folder checkpoints/."""
    server.add_node("phgpt", **node)
    for n in range(12):
        server.put("phgpt", f"run{n:02d}.log", b"epoch %d\n" % n)
    return server.put("phgpt", "checkpoints/input.txt", corpus)


def osf_mirror(server, **fields) -> osf.OsfMirror:
    return osf.OsfMirror(endpoint=server.origin, **fields)


def test_osf_node_and_path_walk_pages_and_folders(osf_emulator, corpus, tmp_path):
    stored = osf_project(osf_emulator, corpus)
    fetched, _ = fetch_one(tmp_path, {"type": "osf", "node": "phgpt", "path": "checkpoints/input.txt",
                                      "endpoint": osf_emulator.origin})
    assert fetched.sha256 == CORPUS_SHA256
    listings = [r.path for r in osf_emulator.log if "/files/osfstorage/" in r.path]
    assert len(listings) == 3  # the root's two pages (links.next), then the folder
    assert osf_emulator.web.log[0].path == f"/download/{stored.guid}/"  # links.download ...
    assert osf_emulator.wb.log[0].query.startswith("action=download")  # ... redirects to WaterButler


def test_osf_guid_publishes_sha256_and_md5(osf_emulator, corpus):
    stored = osf_project(osf_emulator, corpus)
    source = osf.resolve(osf_mirror(osf_emulator, guid=stored.guid), requests.Session())
    assert (source.sha256, source.size) == (CORPUS_SHA256, len(corpus))
    assert source.md5 and source.url == osf_emulator.web.url(f"/download/{stored.guid}/")


def test_osf_errors(osf_emulator, corpus, monkeypatch):
    stored = osf_project(osf_emulator, corpus, token="osf-secret")
    private = failure(osf, osf_mirror(osf_emulator, node="phgpt", path="checkpoints/input.txt"))
    assert private.outcome == "401" and "OSF_TOKEN" in str(private)
    monkeypatch.setenv("OSF_TOKEN", "osf-secret")
    assert osf.resolve(osf_mirror(osf_emulator, guid=stored.guid), requests.Session()).sha256 == CORPUS_SHA256

    assert failure(osf, osf_mirror(osf_emulator, node="nope1", path="input.txt")).outcome == "404"
    missing = failure(osf, osf_mirror(osf_emulator, node="phgpt", path="checkpoints/best_model.pt"))
    assert missing.outcome == "404" and "checkpoints/best_model.pt" in str(missing)
    assert failure(osf, osf_mirror(osf_emulator, guid="phgpt")).outcome == "not a file"
    stored.deleted = True
    assert failure(osf, osf_mirror(osf_emulator, guid=stored.guid)).outcome == "410"


def test_osf_file_over_the_5_gb_limit(osf_emulator):
    osf_emulator.add_node("big01")
    osf_emulator.put("big01", "huge.pt", b"listed, never served", listed_size=6 * 1024**3)
    err = failure(osf, osf_mirror(osf_emulator, node="big01", path="huge.pt"))
    assert err.outcome == "too large" and "5 GB single-file limit" in str(err)


def test_osf_resumes_after_a_dropped_connection(osf_emulator, corpus, tmp_path):
    stored = osf_project(osf_emulator, corpus)
    path = osf_emulator.wb_path(stored)
    osf_emulator.wb.set_faults(path, Faults(drop_after=DROP_AT, times=1))
    fetched, _ = fetch_one(tmp_path, {"type": "osf", "guid": stored.guid, "endpoint": osf_emulator.origin})
    assert fetched.sha256 == CORPUS_SHA256
    resumed = osf_emulator.wb.requests_to(path)[1]
    # WaterButler sends no ETag: If-Range carries the Last-Modified date.
    assert (resumed.range, resumed.if_range, resumed.status) == (f"bytes={DROP_AT}-", stored.blob.last_modified, 206)


def test_osf_mirror_needs_guid_or_node_and_path():
    for bad in ({}, {"node": "abcde"}, {"guid": "abcde", "path": "x.pt"}):
        with pytest.raises(ValueError):
            osf.OsfMirror(**bad)


# -- Google Drive ---------------------------------------------------------------------------------


def drive_mirror(server, file_id: str = DRIVE_ID) -> dict:
    return {"type": "gdrive", "id": file_id, "endpoint": server.origin}


@pytest.mark.parametrize("options", [{}, {"large": True}, {"mode": "legacy"}],
                         ids=["small", "virus-scan-form", "legacy-confirm-link"])
def test_gdrive_fetch_through_drive_pages(drive_emulator, corpus, tmp_path, monkeypatch, options):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    drive_emulator.add(DRIVE_ID, "input.txt", corpus, **options)
    fetched, _ = fetch_one(tmp_path, drive_mirror(drive_emulator))
    assert fetched.sha256 == CORPUS_SHA256
    assert not (tmp_path / "home").exists()  # no cookie file, no gdown cache in the user's home
    served = [r for r in drive_emulator.content.log if r.status == 200 and "uuid" in r.query]
    assert bool(served) == bool(options.get("large"))  # the file came only through the submitted form


@pytest.mark.parametrize("options, outcome, words", [
    ({"mode": "quota"}, "quota", "quota exceeded on Google Drive; trying the next mirror"),
    ({"mode": "private"}, "not shared", "Anyone with the link"),
    (None, "404", "has no file"),
], ids=["quota", "sign-in", "missing"])
def test_gdrive_errors(drive_emulator, corpus, options, outcome, words):
    if options is not None:
        drive_emulator.add(DRIVE_ID, "input.txt", corpus, **options)
    err = failure(gdrive, gdrive.GdriveMirror(id=DRIVE_ID, endpoint=drive_emulator.origin))
    assert err.outcome == outcome and words in str(err)


def test_gdrive_resumes_after_a_dropped_connection(drive_emulator, corpus, tmp_path):
    drive_emulator.add(DRIVE_ID, "input.txt", corpus, large=True)
    # GETs of /download: the warning page, resolve's look at the file's headers, then the transfer.
    drive_emulator.content.set_faults("/download", Faults(drop_after=DROP_AT, times=3))
    fetched, _ = fetch_one(tmp_path, drive_mirror(drive_emulator))
    assert fetched.sha256 == CORPUS_SHA256
    resumed = [r for r in drive_emulator.content.log if r.range]
    assert [(r.range, r.status) for r in resumed] == [(f"bytes={DROP_AT}-", 206)]
    assert "uuid=" in resumed[0].query  # the confirmed URL, cookies and all, was reused


def test_gdrive_id_is_validated():
    with pytest.raises(ValueError):
        gdrive.GdriveMirror(id="short")
    assert gdrive.GdriveMirror(id="XXXXXXX", published=False).describe() == "gdrive XXXXXXX"
