"""Provider mirrors (url, hf, zenodo, osf, gdrive) against their emulators, through the real fetch engine.

The payload is the tiny Shakespeare corpus, whose sha256 is published in ../shared: every fetch
below ends in bytes checked against it. Each provider also gets its error mapping (one line,
an outcome tag for the table), a resume after a dropped connection, and, where it has one,
the rule that a token goes to the provider's API origin only, and only when that endpoint is
trusted.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

import gdown
import huggingface_hub.constants
import pytest
import requests
from conftest import CORPUS_SHA256
from emulators.fileserver import Faults, FileServer
from emulators.gdrive import gdown_routed_to
from emulators.zenodo import ZenodoEmulator

from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import MirrorFailed, MirrorsExhausted
from phasegpt_ckpt.source.manifest import Manifest
from phasegpt_ckpt.source.mirrors import gdrive, hf, osf, zenodo
from phasegpt_ckpt.source.transfer import RetryPolicy
from phasegpt_ckpt.source.web import reroute
from phasegpt_ckpt.store.cache import Cache

DRIVE_ID = "1PhaseGptBestModelCheckpoint0123456"
DROP_AT = 300_000  # bytes sent before a dropped connection
QUICK_RETRY = RetryPolicy(backoff=0.01, max_backoff=0.05)


@pytest.fixture
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


@pytest.fixture(autouse=True)
def _no_saved_hf_login(tmp_path, monkeypatch):
    """huggingface_hub fixed its token path at import; point it at an empty place for each test."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_token"))


def fetch_one(tmp_path: Path, mirror: dict, sha256: str | None = CORPUS_SHA256, policy: RetryPolicy | None = None):
    """Fetch a one-mirror artifact into a fresh cache; returns (Fetched, cache root)."""
    manifest = Manifest.model_validate({"version": 1, "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "sha256": sha256, "mirrors": [mirror]}}})
    root = tmp_path / "cache"
    return Store(manifest, root).fetch("corpus", policy=policy), root


def failure(provider, mirror) -> MirrorFailed:
    """The MirrorFailed that resolving ``mirror`` raises, checked to be one line."""
    with pytest.raises(MirrorFailed) as caught:
        provider.resolve(mirror, requests.Session())
    assert "\n" not in str(caught.value)
    return caught.value


def everything_written(root: Path) -> str:
    """Every file under ``root`` (receipts, sidecars) as text, names included."""
    return "\n".join(f"{p}\n{p.read_bytes().decode(errors='replace')}" for p in root.rglob("*") if p.is_file())


# -- plain URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_url_fetch_follows_a_redirect_chain_across_ports_and_resumes_through_it(corpus, tmp_path, status):
    with FileServer() as first, FileServer() as second:
        second.add_file("/files/input.txt", corpus)
        first.add_redirect("/start", "/hop", status)  # relative, same origin
        first.add_redirect("/hop", second.url("/files/input.txt"), status)  # on to another port
        second.set_faults("/files/input.txt", Faults(drop_after=DROP_AT, times=1))
        fetched, _ = fetch_one(tmp_path, {"type": "url", "url": first.url("/start")}, policy=QUICK_RETRY)
        assert fetched.sha256 == CORPUS_SHA256
        assert [(r.path, r.status) for r in first.log] == [("/start", status), ("/hop", status)] * 2
        gets = second.requests_to("/files/input.txt")  # the resumed GET took the whole chain again
        assert [(r.range, r.status) for r in gets] == [(None, 200), (f"bytes={DROP_AT}-", 206)]


def test_url_fetch_from_a_server_refusing_head(corpus, tmp_path):
    with FileServer() as server:
        server.add_file("/input.txt", corpus)
        server.set_faults("/input.txt", Faults(status=405, methods=("HEAD",)))
        head = requests.head(server.url("/input.txt"))
        assert (head.status_code, head.headers["Allow"]) == (405, "GET")
        fetched, _ = fetch_one(tmp_path, {"type": "url", "url": server.url("/input.txt")})
        assert fetched.sha256 == CORPUS_SHA256
        assert [(r.method, r.status) for r in server.log] == [("HEAD", 405), ("GET", 200)]  # ours: GET only


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
    ({}, {"filename": "missing.pt"}, "hf_granted", "404", "missing.pt not found in org/ckpt@main"),
    ({}, {"revision": "v2.0"}, "hf_granted", "revision not found", "'v2.0' not found"),
], ids=["private", "private-other-token", "gated", "gated-no-access", "entry", "revision"])
def test_hf_errors_map_to_one_line(hub_emulator, corpus, monkeypatch, repo, mirror, token, outcome, words):
    """The Hub's error answers quote the request's Authorization back: none of it may reach the message."""
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    hub_emulator.add_repo("org/ckpt", tokens={"hf_granted"}, **repo)
    hub_emulator.put("org/ckpt", "input.txt", corpus)
    mirror = hf.HfMirror(**{"repo": "org/ckpt", "filename": "input.txt", "endpoint": hub_emulator.origin, **mirror})
    hub_emulator.set_faults(f"/org/ckpt/resolve/{mirror.revision}/{mirror.filename}",
                            Faults(echo_authorization=True, methods=("HEAD",)))
    err = failure(hf, mirror)
    assert err.outcome == outcome and words in str(err)
    assert [r.authorization for r in hub_emulator.log] == [f"Bearer {token}" if token else None]  # so it was echoed
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


def test_hf_small_file_is_found_through_the_resolve_cache_hop(hub_emulator, corpus, tmp_path):
    """A plain git file: 307 to /api/resolve-cache/..., whose answer alone carries X-Repo-Commit."""
    repo = hub_emulator.add_repo("org/ckpt")
    hub_emulator.put("org/ckpt", "input.txt", corpus, lfs=False)
    fetched, _ = fetch_one(tmp_path, {"type": "hf", "repo": "org/ckpt", "filename": "input.txt",
                                      "endpoint": hub_emulator.origin})
    assert fetched.sha256 == CORPUS_SHA256
    cached = f"/api/resolve-cache/models/org/ckpt/{repo.commit}/input.txt"
    assert [(r.method, r.path, r.status) for r in hub_emulator.log] == [
        ("HEAD", "/org/ckpt/resolve/main/input.txt", 307), ("HEAD", cached, 200), ("GET", cached, 200)]


def test_hf_repo_type_prefix_selects_the_repository(hub_emulator, corpus):
    hub = hub_emulator
    for name, data in (("datasets/org/corpus", corpus), ("spaces/org/corpus", corpus[::-1])):
        hub.add_repo(name)
        hub.put(name, "input.txt", data)

    def mirror(repo_type: str) -> hf.HfMirror:
        return hf.HfMirror(repo="org/corpus", filename="input.txt", repo_type=repo_type, endpoint=hub.origin)

    assert hf.resolve(mirror("dataset"), requests.Session()).sha256 == CORPUS_SHA256
    assert hf.resolve(mirror("space"), requests.Session()).sha256 == hashlib.sha256(corpus[::-1]).hexdigest()
    assert failure(hf, mirror("model")).outcome == "repo not found"  # no model of that name
    assert [r.path.partition("/resolve/")[0] for r in hub.log] == [
        "/datasets/org/corpus", "/spaces/org/corpus", "/org/corpus"]


def test_hf_pull_request_revision_travels_percent_encoded(hub_emulator, corpus, tmp_path):
    hub_emulator.add_repo("org/ckpt", branches=("main", "refs/pr/1"))
    hub_emulator.put("org/ckpt", "input.txt", corpus)
    fetched, _ = fetch_one(tmp_path, {"type": "hf", "repo": "org/ckpt", "filename": "input.txt",
                                      "revision": "refs/pr/1", "endpoint": hub_emulator.origin})
    assert fetched.sha256 == CORPUS_SHA256
    assert hub_emulator.log[0].path == "/org/ckpt/resolve/refs%2Fpr%2F1/input.txt"
    unknown = hf.HfMirror(repo="org/ckpt", filename="input.txt", revision="refs/pr/2", endpoint=hub_emulator.origin)
    assert failure(hf, unknown).outcome == "revision not found"


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
    zenodo_emulator.add_record(8001, {"input.txt": corpus}, legacy=True)  # filename, filesize, bare md5
    source = zenodo.resolve(zenodo_mirror(zenodo_emulator, record=8001), requests.Session())
    content = zenodo_emulator.url(zenodo_emulator.content_path(8001, "input.txt"))
    assert (source.size, source.url) == (len(corpus), content)
    assert source.md5 == hashlib.md5(corpus).hexdigest() == requests.head(content).headers["Content-MD5"]

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


def test_zenodo_rate_limit_headers_and_a_429_waited_out(zenodo_emulator, corpus, tmp_path):
    zenodo = zenodo_emulator
    zenodo.add_record(7201, {"input.txt": corpus})
    first, second = (requests.get(zenodo.url("/api/records/7201")) for _ in range(2))
    assert first.headers["X-RateLimit-Limit"] == "60"
    assert [int(r.headers["X-RateLimit-Remaining"]) for r in (first, second)] == [59, 58]
    assert first.headers["X-RateLimit-Reset"] == second.headers["X-RateLimit-Reset"]
    assert 0 < int(first.headers["X-RateLimit-Reset"]) - time.time() <= 61

    zenodo.limit_rate(1, per=1.0)  # the record fits in the window; the download gets 429 + Retry-After: 1
    fetched, _ = fetch_one(tmp_path, {"type": "zenodo", "record": 7201, "filename": "input.txt",
                                      "endpoint": zenodo.origin})
    assert fetched.sha256 == CORPUS_SHA256
    path = zenodo.content_path(7201, "input.txt")
    limited, served = zenodo.requests_to(path)
    assert (limited.status, served.status) == (429, 200) and served.at - limited.at >= 1.0


def test_zenodo_api_rate_limited_is_asked_again_after_retry_after(zenodo_emulator, corpus):
    zenodo_emulator.add_record(7202, {"input.txt": corpus})
    requests.get(zenodo_emulator.url("/api/records/7202"))  # spends the window's one call
    zenodo_emulator.limit_rate(1, per=1.0)
    requests.get(zenodo_emulator.url("/api/records/7202"))
    source = zenodo.resolve(zenodo.ZenodoMirror(record="7202", filename="input.txt",
                                                endpoint=zenodo_emulator.origin), requests.Session())
    assert source.md5 == hashlib.md5(corpus).hexdigest()
    limited, served = zenodo_emulator.requests_to("/api/records/7202")[-2:]
    assert (limited.status, served.status) == (429, 200) and served.at - limited.at >= 1.0


def test_zenodo_record_with_another_doi_is_refused(zenodo_emulator, corpus):
    zenodo_emulator.add_record(7302, {"input.txt": corpus})  # production: DOI 10.5281/zenodo.7302
    wrong = failure(zenodo, zenodo.ZenodoMirror(doi="10.5072/zenodo.7302", filename="input.txt",
                                                endpoint=zenodo_emulator.origin))
    assert wrong.outcome == "bad answer" and "has DOI 10.5281/zenodo.7302, not 10.5072/zenodo.7302" in str(wrong)


def test_zenodo_web_file_link_is_inline_unless_download_is_asked(zenodo_emulator, corpus, tmp_path):
    zenodo_emulator.add_record(7401, {"input.txt": corpus})
    web = zenodo_emulator.url("/records/7401/files/input.txt")
    api = zenodo_emulator.url(zenodo_emulator.content_path(7401, "input.txt"))
    assert [requests.head(url).headers["Content-Disposition"] for url in (web, web + "?download=1", api)] == [
        "inline; filename=input.txt", "attachment; filename=input.txt", "inline; filename=input.txt"]
    fetched, _ = fetch_one(tmp_path, {"type": "url", "url": web + "?download=1"})  # a link copied from the page
    assert fetched.sha256 == CORPUS_SHA256


def test_zenodo_sandbox_instance_is_reached_by_a_test_prefix_doi(zenodo_emulator, corpus, tmp_path, monkeypatch):
    production = zenodo_emulator
    production.add_record(7301, {"input.txt": corpus[::-1]})  # same record id, other bytes
    with ZenodoEmulator(sandbox=True) as sandbox:
        sandbox.add_record(7301, {"input.txt": corpus})
        fetched, _ = fetch_one(tmp_path, {"type": "zenodo", "doi": "10.5072/zenodo.7301", "filename": "input.txt",
                                          "endpoint": sandbox.origin})
        assert fetched.sha256 == CORPUS_SHA256
        assert requests.get(sandbox.url("/api/records/7301")).json()["doi"] == "10.5072/zenodo.7301"

        # No endpoint: the test prefix alone picks https://sandbox.zenodo.org (routed to the sandbox
        # instance here), a public Zenodo service, so ZENODO_TOKEN goes with the API calls.
        monkeypatch.setenv("ZENODO_TOKEN", "sandbox-token")
        session = requests.Session()
        reroute(session, sandbox.origin, "https://sandbox.zenodo.org/")
        reroute(session, production.origin, "https://zenodo.org/")
        seen = len(sandbox.log)
        source = zenodo.resolve(zenodo.ZenodoMirror(doi="10.5072/zenodo.7301", filename="input.txt"), session)
        assert source.md5 == hashlib.md5(corpus).hexdigest()
        asked = [(r.path, r.authorization) for r in sandbox.log[seen:]]
        assert asked == [("/api/records/7301", "Bearer sandbox-token")]
    assert production.log == []


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
    osf_emulator.add_node("phgpt")
    for n in range(12):  # listed first, and let through by OSF's name filter (a substring match): two pages
        osf_emulator.put("phgpt", f"old-checkpoints-{n:02d}/run.log", b"epoch %d\n" % n)
    stored = osf_emulator.put("phgpt", "checkpoints/input.txt", corpus)
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


def test_osf_listing_filters_before_paging(osf_emulator, corpus, tmp_path):
    """A big folder is never paged through whole: resolve asks with filter[name], keeps it on every
    page it follows, and of what OSF's substring filter lets through takes the exact name only."""
    osf_emulator.add_node("phgpt")
    for n in range(120):  # what the filter keeps out: 12 pages of 10 unfiltered
        osf_emulator.put("phgpt", f"checkpoints/epoch_{n:03d}.pt", b"epoch %d\n" % n)
    decoys = ["INPUT.TXT", "input.txt.bak", *(f"old-input.txt-{n}" for n in range(10))]
    for n, name in enumerate(decoys):  # let through by the filter (a substring, any case), listed first
        osf_emulator.put("phgpt", f"checkpoints/{name}", b"not the corpus %d\n" % n)
    stored = osf_emulator.put("phgpt", "checkpoints/input.txt", corpus)  # 13th match: on the second page

    fetched, _ = fetch_one(tmp_path, {"type": "osf", "node": "phgpt", "path": "checkpoints/input.txt",
                                      "endpoint": osf_emulator.origin})

    assert fetched.sha256 == CORPUS_SHA256 and fetched.path.read_bytes() == corpus
    assert osf_emulator.web.log[0].path == f"/download/{stored.guid}/"  # the exact name, not a decoy
    listings = [(r.path, parse_qs(r.query)) for r in osf_emulator.log if "/files/osfstorage/" in r.path]
    root, folder = "/v2/nodes/phgpt/files/osfstorage/", listings[-1][0]
    assert [path for path, _ in listings] == [root, folder, folder]  # 1 + ceil(13 / 10) pages, not 1 + 14
    assert [query["filter[name]"] for _, query in listings] == [["checkpoints"], ["input.txt"], ["input.txt"]]
    assert [query.get("page") for _, query in listings] == [None, None, ["2"]]  # links.next, filter kept on


def test_osf_mirror_needs_guid_or_node_and_path():
    for bad in ({}, {"node": "abcde"}, {"guid": "abcde", "path": "x.pt"}):
        with pytest.raises(ValueError):
            osf.OsfMirror(**bad)


# -- Google Drive ---------------------------------------------------------------------------------


def drive_mirror(server, file_id: str = DRIVE_ID) -> dict:
    return {"type": "gdrive", "id": file_id, "endpoint": server.origin}


def gdown_home(monkeypatch, home: Path) -> Path:
    """Make ``home`` the user's home, for gdown too: it fixed its default cookie file from $HOME at
    import. Returns that default cookie file."""
    monkeypatch.setenv("HOME", str(home))
    cookies = home / ".cache" / "gdown" / "cookies.txt"
    monkeypatch.setattr(sys.modules["gdown.download"], "DEFAULT_COOKIES_FILE", str(cookies))  # the module, not
    # the function gdown.download
    return cookies


@pytest.mark.parametrize("options", [{}, {"large": True}, {"mode": "legacy"}],
                         ids=["small", "virus-scan-form", "legacy-confirm-link"])
def test_gdrive_fetch_through_drive_pages(drive_emulator, corpus, tmp_path, monkeypatch, options):
    gdown_home(monkeypatch, tmp_path / "home")
    drive_emulator.nid_cookie = True
    drive_emulator.add(DRIVE_ID, "input.txt", corpus, **options)
    fetched, _ = fetch_one(tmp_path, drive_mirror(drive_emulator))
    assert fetched.sha256 == CORPUS_SHA256
    assert not (tmp_path / "home").exists()  # no cookie file, no gdown cache in the user's home
    served = [r for r in drive_emulator.content.log if r.status == 200 and "uuid" in r.query]
    assert bool(served) == bool(options.get("large"))  # the file came only through the submitted form


def test_gdown_itself_would_save_cookies_in_home(drive_emulator, corpus, tmp_path, monkeypatch):
    """What the check above guards against: gdown.download, with its default use_cookies, saves
    the session's cookies to ~/.cache/gdown after every Drive answer."""
    cookies = gdown_home(monkeypatch, tmp_path / "home")
    drive_emulator.nid_cookie = True
    drive_emulator.add(DRIVE_ID, "input.txt", corpus, large=True)
    gdown_routed_to(drive_emulator, monkeypatch)
    gdown.download(id=DRIVE_ID, output=str(tmp_path / "input.txt"), quiet=True)
    assert cookies.is_file() and (tmp_path / "input.txt").read_bytes() == corpus


def test_gdrive_confirm_uuid_works_only_for_the_file_it_was_issued_for(drive_emulator, corpus, tmp_path):
    """Each fetch submits the virus-scan form of its own file's page, with the uuid issued for that
    file; a page handing out another file's uuid gets the warning again, and resolve gives up
    after MAX_PAGES with one line instead of taking a page for the file or asking forever."""
    drive, other, small = drive_emulator, DRIVE_ID[:-1] + "7", corpus[:1000]
    drive.nid_cookie = True
    drive.add(DRIVE_ID, "input.txt", corpus, large=True)
    drive.add(other, "other.txt", small, large=True)

    fetched, _ = fetch_one(tmp_path / "a", drive_mirror(drive))
    fetched_other, _ = fetch_one(tmp_path / "b", drive_mirror(drive, other), sha256=hashlib.sha256(small).hexdigest())

    assert fetched.path.read_bytes() == corpus and fetched_other.path.read_bytes() == small
    confirmed = [parse_qs(r.query) for r in drive.content.log if "uuid" in r.query]
    assert [(q["id"], q["confirm"]) for q in confirmed] == [([DRIVE_ID], ["t"])] * 2 + [([other], ["t"])] * 2
    assert all(drive.issued_uuids[q["uuid"][0]] == q["id"][0] for q in confirmed)  # each its own file's uuid

    drive.drive_files[DRIVE_ID].uuid_for = other  # the page for DRIVE_ID now hands out other's uuid
    seen = len(drive.content.log)
    with pytest.raises(MirrorsExhausted) as exhausted:
        fetch_one(tmp_path / "c", drive_mirror(drive))
    (outcome,) = exhausted.value.outcomes
    assert outcome.status == "bad answer" and f"kept answering pages instead of file {DRIVE_ID}" in outcome.detail
    asked = drive.content.log[seen:]  # the first page, then each submitted form: no transfer began
    assert len(asked) == gdrive.MAX_PAGES and "uuid" not in asked[0].query
    assert [drive.issued_uuids[parse_qs(r.query)["uuid"][0]] for r in asked[1:]] == [other] * (gdrive.MAX_PAGES - 1)
    cache = Cache(tmp_path / "c" / "cache")
    assert not [p for p in cache.root.rglob("*") if p.is_file() and p.parent.name != "locks"], "a file was kept"


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


# -- tokens and untrusted endpoints ---------------------------------------------------------------


def public_hf(request, corpus) -> tuple[dict, list[FileServer]]:
    hub = request.getfixturevalue("hub_emulator")
    hub.add_repo("org/ckpt")
    hub.put("org/ckpt", "input.txt", corpus)
    return {"type": "hf", "repo": "org/ckpt", "filename": "input.txt", "endpoint": hub.origin}, [hub, hub.cdn]


def public_zenodo(request, corpus) -> tuple[dict, list[FileServer]]:
    server = request.getfixturevalue("zenodo_emulator")
    server.add_record(7501, {"input.txt": corpus})
    return {"type": "zenodo", "record": 7501, "filename": "input.txt", "endpoint": server.origin}, [server]


def public_osf(request, corpus) -> tuple[dict, list[FileServer]]:
    server = request.getfixturevalue("osf_emulator")
    server.add_node("phgpt")
    stored = server.put("phgpt", "input.txt", corpus)
    return {"type": "osf", "guid": stored.guid, "endpoint": server.origin}, [server, server.web, server.wb]


@pytest.mark.parametrize("variable, public", [("HF_TOKEN", public_hf), ("ZENODO_TOKEN", public_zenodo),
                                              ("OSF_TOKEN", public_osf)], ids=["hf", "zenodo", "osf"])
def test_untrusted_endpoint_gets_no_token_and_is_asked_anonymously(request, corpus, tmp_path, monkeypatch, caplog,
                                                                   variable, public):
    token = "tokenForThePublicServiceOnly0123"
    monkeypatch.setenv(variable, token)
    monkeypatch.setenv("PHASEGPT_TRUSTED_ENDPOINTS", "https://mirror.example.org, 10.0.0.1")  # not 127.0.0.1
    mirror, servers = public(request, corpus)
    fetched, _ = fetch_one(tmp_path, mirror)
    assert fetched.sha256 == CORPUS_SHA256
    seen = [r for server in servers for r in server.log]
    assert seen and all(r.authorization is None and token not in r.query for r in seen)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    err = "\n".join(warnings)
    assert any(w.startswith(f"not sending {variable} to {mirror['endpoint']}: ") for w in warnings)
    assert "PHASEGPT_TRUSTED_ENDPOINTS" in err
    assert token not in err
