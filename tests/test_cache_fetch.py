"""fetch, cache, locate, import and verify against a real HTTP server on 127.0.0.1.

The payload is the tiny Shakespeare corpus; its size and sha256 come from ../shared's README
(conftest.CORPUS_SHA256), so every "verified" below is checked against a published value.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from conftest import CORPUS_SHA256
from emulators.fileserver import Faults, FileServer

from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import BadInput, MirrorFailed, MirrorsExhausted, VerificationFailed
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.source.mirrors import resolve
from phasegpt_ckpt.source.transfer import RetryPolicy, transfer
from phasegpt_ckpt.store.cache import TOFU, Cache

PATH = "/files/input.txt"


@pytest.fixture
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


@pytest.fixture
def server(corpus):
    with FileServer() as server:
        server.add_file(PATH, corpus)
        yield server


def write_manifest(tmp_path: Path, artifacts: dict, **top) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **top, "artifacts": artifacts}, sort_keys=False))
    return path


def corpus_artifact(*mirrors, sha256=CORPUS_SHA256, size=1115394, **extra) -> dict:
    return {"kind": "dataset", "filename": "input.txt", "size": size, "sha256": sha256, "mirrors": list(mirrors), **extra}


def url(server: FileServer, path: str = PATH, **extra) -> dict:
    return {"type": "url", "url": server.url(path), **extra}


def gets(server: FileServer, path: str = PATH) -> list:
    return [r for r in server.requests_to(path) if r.method == "GET"]


def leftovers(cache: Cache) -> list[Path]:
    """Partial and temporary files that a finished fetch must not leave behind."""
    return [p for p in cache.root.rglob("*") if p.is_file() and (".part" in p.name or p.name.endswith(".tmp"))]


# -- mirrors in order -----------------------------------------------------------------------------


def test_mirrors_are_tried_in_order_and_each_outcome_recorded(tmp_path, server, corpus):
    server.add_file("/files/tampered.txt", corpus[:-1] + b"!")  # right size, wrong bytes
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(
        url(server, "/files/missing.txt"), url(server, "/files/tampered.txt"),
        url(server, "/files/elsewhere.txt", published=False), url(server))}))
    cache = Cache(tmp_path / "cache")

    fetched = Store(manifest, cache.root).fetch("corpus")

    assert [o.status for o in fetched.outcomes] == ["404", "hash mismatch", "unpublished", "ok"]
    assert fetched.outcomes[-1].mirror == f"url {server.url(PATH)}"
    assert fetched.path == cache.path(manifest.artifact("corpus")) and fetched.path.read_bytes() == corpus
    assert (fetched.sha256, fetched.size, fetched.pinned, fetched.from_cache) == (CORPUS_SHA256, len(corpus), True, False)
    assert server.requests_to("/files/elsewhere.txt") == []  # unpublished: never asked
    receipt = cache.receipt("corpus")
    assert (receipt.sha256, receipt.size, receipt.pinned, receipt.mirror) == (
        CORPUS_SHA256, len(corpus), True, f"url {server.url(PATH)}")
    assert os.path.samefile(fetched.path, cache.blob(CORPUS_SHA256)) and leftovers(cache) == []


def test_every_mirror_failing_leaves_nothing_and_names_each_outcome(tmp_path, server, corpus):
    tiny = tmp_path / "tiny.pt"
    tiny.write_bytes(b"a small bundled checkpoint")
    server.add_file("/files/short.txt", corpus[:1000])
    manifest = load_manifest(write_manifest(tmp_path, {
        "best": corpus_artifact(url(server, "/files/missing.txt"), url(server, "/files/short.txt"),
                                kind="checkpoint", filename="best.pt"),
        "tiny": {"kind": "checkpoint", "filename": "tiny.pt", "mirrors": [{"type": "local", "path": "tiny.pt"}]},
    }))
    cache = Cache(tmp_path / "cache")

    with pytest.raises(MirrorsExhausted) as exhausted:
        Store(manifest, cache.root).fetch("best")

    assert [o.status for o in exhausted.value.outcomes] == ["404", "size mismatch"]
    assert str(exhausted.value) == ("every mirror of best failed (url: 404, url: size mismatch); "
                                    "tiny is at hand offline")
    assert not (cache.root / "blobs").exists() or not any((cache.root / "blobs").iterdir())
    assert cache.receipt("best") is None and not cache.path(manifest.artifact("best")).exists()


def test_an_artifact_with_no_published_mirror_asks_no_one(tmp_path, server):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server, published=False))}))
    with pytest.raises(MirrorsExhausted, match=r"corpus has no published mirror yet \(url: unpublished\)"):
        Store(manifest, tmp_path / "cache").fetch("corpus")
    assert server.log == []


def test_mirror_type_forces_one_kind_and_unknown_kinds_are_refused(tmp_path, server, corpus):
    local = tmp_path / "input.txt"
    local.write_bytes(corpus)
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server), {"type": "local", "path": "input.txt"})}))
    fetched = Store(manifest, tmp_path / "cache").fetch("corpus", mirror_type="local")
    assert fetched.origin == f"local {local}" and server.log == []
    with pytest.raises(BadInput, match="corpus has no hf mirror"):
        Store(manifest, tmp_path / "other").fetch("corpus", mirror_type="hf")
    with pytest.raises(BadInput, match="unknown mirror type 'ftp'"):
        Store(manifest, tmp_path / "other").fetch("corpus", mirror_type="ftp")


def test_a_local_mirror_of_the_wrong_size_is_skipped_before_copying(tmp_path, server, corpus):
    (tmp_path / "old.txt").write_bytes(corpus[:5000])
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact({"type": "local", "path": "old.txt"}, url(server))}))
    fetched = Store(manifest, tmp_path / "cache").fetch("corpus")
    assert [o.status for o in fetched.outcomes] == ["disagrees: provider size ≠ manifest", "ok"]


# -- pre-flight agreement with a provider that publishes sha256 (the Hub) ---------------------------


def test_hub_sha256_disagreeing_with_the_manifest_is_skipped_without_a_byte_moved(
        tmp_path, server, corpus, hub_emulator, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_token"))
    hub_emulator.add_repo("org/replaced")
    hub_emulator.put("org/replaced", "input.txt", corpus.replace(b"ROMEO", b"JULIET"))  # replaced upstream
    hub = {"type": "hf", "repo": "org/replaced", "filename": "input.txt", "endpoint": hub_emulator.origin}
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(hub, url(server), size=None)}))

    fetched = Store(manifest, tmp_path / "cache").fetch("corpus")

    assert [o.status for o in fetched.outcomes] == ["disagrees: provider sha256 ≠ manifest", "ok"]
    assert "the manifest says " + CORPUS_SHA256 in fetched.outcomes[0].detail
    assert [r for r in hub_emulator.cdn.log if r.method == "GET"] == []


def test_hub_sha256_checks_the_bytes_when_the_manifest_has_none(tmp_path, corpus, hub_emulator, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_token"))
    hub_emulator.add_repo("org/data")
    hub_emulator.put("org/data", "input.txt", corpus)
    hub_emulator.cdn.set_faults(hub_emulator.cdn_path("org/data", "input.txt"), Faults(corrupt=True, times=1))
    hub = {"type": "hf", "repo": "org/data", "filename": "input.txt", "endpoint": hub_emulator.origin}
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(hub, sha256=None, size=None)}))
    cache = Cache(tmp_path / "cache")

    with pytest.raises(MirrorsExhausted, match=r"\(hf: hash mismatch\)"):
        Store(manifest, cache.root).fetch("corpus")
    fetched = Store(manifest, cache.root).fetch("corpus")

    assert (fetched.sha256, fetched.pinned, fetched.pin) == (CORPUS_SHA256, False, "unpinned (provider sha256)")


# -- the cache ------------------------------------------------------------------------------------


def test_offline_uses_the_cache_only(tmp_path, server, monkeypatch):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))}))
    cache = Cache(tmp_path / "cache")
    with pytest.raises(MirrorsExhausted, match=r"not in the cache .* offline mode .*`phasegpt-ckpt import corpus FILE`"):
        Store(manifest, cache.root, offline=True).fetch("corpus")
    assert server.log == []

    Store(manifest, cache.root).fetch("corpus")
    cache.path(manifest.artifact("corpus")).unlink()  # the readable name is restored from the blob
    monkeypatch.setenv("PHASEGPT_OFFLINE", "1")
    again = Store(manifest, cache.root).fetch("corpus")

    assert again.from_cache and again.path.read_bytes() and len(gets(server)) == 1
    assert (again.origin, again.pin) == (f"url {server.url(PATH)}", "pinned (manifest sha256)")


def test_a_manifest_pinning_other_bytes_invalidates_the_cached_copy(tmp_path, server, corpus):
    cache = Cache(tmp_path / "cache")
    Store(load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))})), cache.root).fetch("corpus")
    new = corpus + b"\nTHE END\n"
    server.files[PATH].replace(new)
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(
        url(server), sha256=hashlib.sha256(new).hexdigest(), size=len(new))}))
    fetched = Store(manifest, cache.root).fetch("corpus")
    assert not fetched.from_cache and fetched.path.read_bytes() == new and len(gets(server)) == 2


def test_dest_places_a_read_only_hard_link_of_the_verified_blob(tmp_path, server, corpus):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))}))
    cache = Cache(tmp_path / "cache")
    dest = tmp_path / "checkpoints"
    for _ in range(2):  # the second call finds the file already in place
        fetched = Store(manifest, cache.root).fetch("corpus", dest=dest)
    assert fetched.path == dest / "input.txt" and fetched.path.read_bytes() == corpus
    assert os.path.samefile(fetched.path, cache.blob(CORPUS_SHA256))
    assert not os.stat(fetched.path).st_mode & 0o222  # editing it in place would corrupt the cache
    assert [p.name for p in dest.iterdir()] == ["input.txt"]


def test_unknown_sha256_is_recorded_as_trust_on_first_use(tmp_path, server, corpus, caplog):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server), sha256=None, size=None)}))
    cache = Cache(tmp_path / "cache")

    first = Store(manifest, cache.root).fetch("corpus")
    assert (first.sha256, first.pinned, first.pin) == (CORPUS_SHA256, False, TOFU)
    assert cache.receipt("corpus").pin == TOFU and not cache.receipt("corpus").pinned
    assert any(r.levelname == "WARNING" and "trust on first use" in r.getMessage() for r in caplog.records)

    server.files[PATH].replace(corpus[::-1])  # upstream changes: the first download stays the reference
    assert Store(manifest, cache.root).fetch("corpus").sha256 == CORPUS_SHA256
    verdict = Store(manifest, cache.root).verify("corpus")
    assert verdict.ok and not verdict.pinned
    assert [(c.check, c.status) for c in verdict.checks] == [
        ("size (manifest)", "not published"), ("sha256 (manifest)", "not published"), ("sha256 (receipt)", "ok")]


def test_a_part_left_by_an_earlier_run_is_resumed_by_fetch(tmp_path, server, corpus):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))}))
    artifact, cache = manifest.artifact("corpus"), Cache(tmp_path / "cache")
    server.set_faults(PATH, Faults(drop_after=400_000, times=1))
    part = cache.part_path(artifact, artifact.mirrors[0])
    with pytest.raises(MirrorFailed):  # an earlier run that gave up mid-transfer
        transfer(resolve(artifact.mirrors[0], None), part, expected_size=len(corpus), expected_sha256=CORPUS_SHA256,
                 policy=RetryPolicy(attempts=1))
    assert part.stat().st_size == 400_000

    fetched = Store(manifest, cache.root).fetch("corpus")

    assert fetched.path.read_bytes() == corpus and gets(server)[-1].range == "bytes=400000-"
    assert leftovers(cache) == []


# -- one transfer for many callers ----------------------------------------------------------------


def test_eight_threads_fetching_one_artifact_transfer_it_once(tmp_path, server, corpus):
    server.set_faults(PATH, Faults(bytes_per_second=4_000_000))  # ~0.3 s: the callers overlap
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))}))
    results, errors = [], []

    def one_caller():
        try:
            results.append(Store(manifest, tmp_path / "cache").fetch("corpus"))
        except Exception as err:  # reported below, with the others' results
            errors.append(err)

    threads = [threading.Thread(target=one_caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and len(gets(server)) == 1
    assert sorted(r.from_cache for r in results) == [False] + [True] * 7
    assert {r.sha256 for r in results} == {CORPUS_SHA256} and all(r.path.read_bytes() == corpus for r in results)


def _fetch_in_child(manifest_path: str, cache_root: str, answers) -> None:
    fetched = Store(load_manifest(manifest_path), cache_root).fetch("corpus")
    answers.put((fetched.from_cache, fetched.sha256))


def test_three_processes_fetching_one_artifact_transfer_it_once(tmp_path, server):
    server.set_faults(PATH, Faults(bytes_per_second=4_000_000))
    manifest_path = write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))})
    context = multiprocessing.get_context("fork")  # the server lives in this process; children only fetch
    answers = context.Queue()
    children = [context.Process(target=_fetch_in_child, args=(str(manifest_path), str(tmp_path / "cache"), answers))
                for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)

    assert [child.exitcode for child in children] == [0, 0, 0]
    assert sorted(answers.get(timeout=5) for _ in children) == [(False, CORPUS_SHA256)] + [(True, CORPUS_SHA256)] * 2
    assert len(gets(server)) == 1


# -- import and locate ----------------------------------------------------------------------------


def test_import_checks_a_local_copy_and_refuses_a_wrong_one(tmp_path, corpus_path, corpus):
    manifest = load_manifest()  # the shipped entry: size and sha256 from ../shared's README
    cache = Cache(tmp_path / "cache")
    wrong = tmp_path / "input.txt"
    wrong.write_bytes(corpus.replace(b"ROMEO", b"JULIE"))  # same size, other bytes

    with pytest.raises(VerificationFailed, match=f"input.txt is not tinyshakespeare: .*expected sha256 {CORPUS_SHA256}"):
        Store(manifest, cache.root).import_file("tinyshakespeare", wrong)
    assert cache.receipt("tinyshakespeare") is None and leftovers(cache) == []
    with pytest.raises(BadInput, match="is not a file"):
        Store(manifest, cache.root).import_file("tinyshakespeare", tmp_path / "absent.txt")

    imported = Store(manifest, cache.root).import_file("tinyshakespeare", corpus_path)
    assert (imported.sha256, imported.pinned) == (CORPUS_SHA256, True)
    assert Store(manifest, cache.root, offline=True).fetch("tinyshakespeare").from_cache


def test_locate_names_paths_and_nonsense(tmp_path, server, corpus):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))}))
    cache = Cache(tmp_path / "cache")
    by_name = Store(manifest, cache.root).locate("corpus")
    assert (by_name.artifact.name, by_name.sha256, by_name.path.read_bytes()) == ("corpus", CORPUS_SHA256, corpus)

    placed = Store(manifest, cache.root).fetch("corpus", dest=tmp_path / "out").path
    assert Store(manifest, cache.root).locate(str(placed)).sha256 == CORPUS_SHA256  # a hard link: known
    stranger = tmp_path / "mine.pt"
    stranger.write_bytes(b"my own run")
    assert (Store(manifest, cache.root).locate(str(stranger)).artifact,
            Store(manifest, cache.root).locate(str(stranger)).sha256) == (None, None)
    with pytest.raises(BadInput, match="is a directory"):
        Store(manifest, cache.root).locate(str(tmp_path))
    with pytest.raises(BadInput, match="neither an artifact of the manifest \\(corpus\\) nor an existing file"):
        Store(manifest, cache.root).locate("nope")


# -- verify ---------------------------------------------------------------------------------------


def metadata_server_manifest(tmp_path: Path, server: FileServer, info: dict) -> Path:
    server.add_file("/files/info.json", json.dumps(info).encode())
    return write_manifest(tmp_path, {
        "corpus": corpus_artifact(url(server), metadata="corpus_info"),
        "corpus_info": {"kind": "metadata", "filename": "info.json", "mirrors": [url(server, "/files/info.json")]},
    })


def test_verify_cross_checks_manifest_receipt_and_metadata(tmp_path, server, corpus):
    manifest = load_manifest(metadata_server_manifest(tmp_path, server, {
        "sha256": CORPUS_SHA256, "file_size_mb": 1.1, "doi": "10.5281/zenodo.XXXXXXX"}))
    cache = Cache(tmp_path / "cache")
    Store(manifest, cache.root).fetch("corpus")

    verdict = Store(manifest, cache.root).verify("corpus")

    assert verdict.ok and verdict.pinned
    assert [(c.check, c.status) for c in verdict.checks] == [
        ("size (manifest)", "ok"), ("sha256 (manifest)", "ok"), ("sha256 (receipt)", "ok"),
        ("sha256 (metadata corpus_info)", "ok"), ("size (metadata corpus_info)", "ok")]
    copy = tmp_path / "copy.txt"
    copy.write_bytes(corpus)  # not a link: recognised by its sha256
    assert Store(manifest, cache.root).verify(str(copy)).artifact.name == "corpus"
    assert [v.subject for v in Store(manifest, cache.root).verify_available()] == ["corpus", "corpus_info"]


def test_verify_reports_metadata_that_disagrees_or_is_not_published(tmp_path, server, corpus):
    manifest = load_manifest(metadata_server_manifest(tmp_path, server, {"sha256": "[hash]", "file_size_mb": 970}))
    cache = Cache(tmp_path / "cache")
    Store(manifest, cache.root).fetch("corpus")
    rows = {c.check: c.status for c in Store(manifest, cache.root).verify("corpus").checks}
    assert rows["sha256 (metadata corpus_info)"] == "not published" and rows["size (metadata corpus_info)"] == "fail"


def test_verify_finds_a_tampered_cache_file(tmp_path, server, corpus):
    manifest = load_manifest(write_manifest(tmp_path, {"corpus": corpus_artifact(url(server))}))
    cache = Cache(tmp_path / "cache")
    path = Store(manifest, cache.root).fetch("corpus").path
    os.chmod(path, 0o644)
    with open(path, "r+b") as file:  # same size, one byte changed in place
        file.seek(1000)
        file.write(b"#")

    verdict = Store(manifest, cache.root).verify("corpus")

    assert not verdict.ok and verdict.path == path
    assert {c.check for c in verdict.checks if c.status == "fail"} == {"sha256 (manifest)", "sha256 (receipt)"}
    assert cache.receipt("corpus") is None  # the corrupt copy is dropped: the next fetch renews it
    renewed = Store(manifest, cache.root).fetch("corpus")
    assert not renewed.from_cache and renewed.path.read_bytes() == corpus and len(gets(server)) == 2
