"""``cache ls | rm | prune`` through the real command line and the library: what the cache holds, what
may go, and what must stay (bytes another artifact shares, a download another process is writing)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.store.cache import Cache, CacheEntry, Pruned, Removed

CONTENT = os.urandom(200_000)  # bigger than any receipt, so "freed" tells whether the blob went


@pytest.fixture
def cache() -> Cache:
    return Cache()  # $PHASEGPT_CACHE, a fresh one per test (conftest)


@pytest.fixture
def twins(tmp_path) -> Path:
    """A manifest with two artifacts of identical content, both on a local mirror, and one never fetched."""
    (tmp_path / "data.bin").write_bytes(CONTENT)
    sha256 = hashlib.sha256(CONTENT).hexdigest()
    twin = {"kind": "dataset", "size": len(CONTENT), "sha256": sha256,
            "mirrors": [{"type": "local", "path": "data.bin"}]}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "artifacts": {
        "first": {**twin, "filename": "first.bin"},
        "second": {**twin, "filename": "second.bin"},
        "big": {**twin, "filename": "big.bin", "mirrors": [{"type": "url", "url": "https://example.org/big.bin"}]},
    }}, sort_keys=False))
    return path


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "" and err.startswith("error: "), (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    return err


def stale_partial(cache: Cache, name: str) -> list[Path]:
    """A download interrupted long ago: its .part and sidecar, as transfer leaves them."""
    part = cache.root / "partial" / name / "url-0123456789ab.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(CONTENT[:5000])
    sidecar = part.with_name(part.name + ".json")
    sidecar.write_text(json.dumps({"url": "https://example.org/big.bin", "expected_size": len(CONTENT)}))
    return [part, sidecar]


class HeldLock:
    """Another process holding an artifact's lock, as a fetch in progress does (store/cache.py's FileLock)."""

    def __init__(self, path: Path, release_after: float | None = None):
        script = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
                  "print('held', flush=True); "
                  + ("time.sleep(float(sys.argv[2]))" if release_after else "sys.stdin.read()"))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", script, str(path), str(release_after)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


# -- ls -------------------------------------------------------------------------------------------


def test_ls_of_an_empty_cache_says_so_and_writes_nothing(run_cli, cache):
    code, out, err = run_cli("cache", "ls")
    assert code == 0 and "nothing cached" in out and str(cache.root) in out
    code, out, err = run_cli("cache", "ls", "--json")
    assert code == 0 and json.loads(out) == {"root": str(cache.root), "artifacts": [], "blob_bytes": 0,
                                             "partial_bytes": 0}
    assert not cache.root.exists()


def test_ls_shows_each_fetched_artifact_its_size_pin_last_use_and_partials(run_cli, cache):
    code, out, err = run_cli("--offline", "fetch", "phasegpt-tiny", "phasegpt-tiny_info", "tinyshakespeare", "-q")
    assert code == 0
    stale_partial(cache, "best_model")

    code, out, err = run_cli("cache", "ls", "--json")
    document = json.loads(out)
    rows = {row["name"]: row for row in document["artifacts"]}
    assert code == 0 and list(rows) == ["best_model", "phasegpt-tiny", "phasegpt-tiny_info", "tinyshakespeare"]
    tiny = rows["phasegpt-tiny"]
    assert tiny["state"] == "cached" and tiny["size"] == 9699597 and tiny["pinned"] is True
    assert tiny["sha256"] == "d1f03db2f9ee81792803a42ea2509bab25f20bc83eae2a9cab8054b8b0b915f1"
    assert tiny["last_used"] >= tiny["fetched"] and tiny["partials"] == [] and tiny["shared_with"] == []
    assert rows["tinyshakespeare"]["size"] == 1115394 and rows["phasegpt-tiny_info"]["size"] == 727
    assert document["blob_bytes"] == 9699597 + 727 + 1115394  # numbers as numbers
    (partial,) = rows["best_model"]["partials"]
    assert rows["best_model"]["state"] == "partial" and rows["best_model"]["size"] is None
    assert (partial["size"], partial["expected_size"], partial["in_progress"]) == (5000, len(CONTENT), False)
    assert document["partial_bytes"] == 5000

    code, out, err = run_cli("cache", "ls")
    assert code == 0 and err == ""
    for words in ("phasegpt-tiny", "9.7 MB", "pinned", "just now", "tinyshakespeare", "partial 5000 B", "resumable"):
        assert words in out


def test_last_used_moves_when_the_cache_serves_an_artifact(cache):
    store = Store(offline=True)
    store.fetch("tinyshakespeare")
    (entry,) = cache.entries()
    assert isinstance(entry, CacheEntry) and entry.last_used == entry.fetched  # fetched is a use; nothing since
    time.sleep(0.05)
    assert store.fetch("tinyshakespeare").from_cache
    (entry,) = cache.entries()
    assert entry.last_used > entry.fetched and (cache.root / "used" / "tinyshakespeare").is_file()


# -- rm -------------------------------------------------------------------------------------------


def test_rm_of_one_twin_keeps_the_blob_the_other_receipt_points_to(run_cli, twins, cache):
    code, out, err = run_cli("--manifest", twins, "--offline", "fetch", "first", "second", "-q")
    assert code == 0
    rows = {e.name: e for e in cache.entries()}
    assert rows["first"].sha256 == rows["second"].sha256 and rows["first"].shared_with == ["second"]
    blob = cache.blob(rows["first"].sha256)

    code, out, err = run_cli("cache", "rm", "first", "--json")
    (removed,) = json.loads(out)["removed"]
    assert code == 0 and removed["kept_blob_for"] == ["second"] and blob.read_bytes() == CONTENT
    assert "blob" not in {f["kind"] for f in removed["files"]}
    assert [e.name for e in cache.entries()] == ["second"] and not (cache.root / "artifacts" / "first").exists()
    fetched = Store(twins, offline=True).fetch("second")
    assert fetched.from_cache and fetched.path.read_bytes() == CONTENT

    code, out, err = run_cli("cache", "rm", "second")
    assert code == 0 and out.startswith("removed second: 0.2 MB freed") and not blob.exists()
    assert cache.entries() == [] and not list((cache.root / "blobs").iterdir())


def test_rm_through_the_library_returns_what_went(twins, cache):
    store = Store(twins, offline=True)
    store.fetch("first")
    removed = store.cache.remove("first")
    assert isinstance(removed, Removed) and removed.kept_blob_for == [] and removed.freed >= len(CONTENT)
    assert {f.kind for f in removed.files} == {"receipt", "readable name", "blob"}
    with pytest.raises(BadInput, match="not in the cache"):
        store.cache.remove("first")


def test_rm_of_an_unknown_name_is_exit_2_in_one_line_and_removes_nothing(run_cli, cache):
    assert run_cli("--offline", "fetch", "tinyshakespeare", "-q")[0] == 0
    before = files_under(cache.root)
    err = one_line_error(*run_cli("cache", "rm", "tinyshakespeare", "no-such-artifact"))
    assert "no-such-artifact" in err and "tinyshakespeare" in err  # and what the cache does hold
    assert files_under(cache.root) == before


def test_rm_of_an_artifact_being_fetched_refuses_in_one_line_or_waits(run_cli, cache):
    assert run_cli("--offline", "fetch", "tinyshakespeare", "-q")[0] == 0
    lock = cache.root / "locks" / "tinyshakespeare.lock"
    with HeldLock(lock):
        err = one_line_error(*run_cli("cache", "rm", "tinyshakespeare"))
        assert "being fetched" in err and "--wait" in err
        assert [e.state for e in cache.entries()] == ["cached"]
    with HeldLock(lock, release_after=0.5):
        started = time.monotonic()
        code, out, err = run_cli("cache", "rm", "tinyshakespeare", "--wait")
    assert code == 0 and out.startswith("removed tinyshakespeare") and time.monotonic() - started >= 0.3
    assert cache.entries() == []


# -- prune ----------------------------------------------------------------------------------------


def test_prune_removes_orphan_blobs_stale_partials_and_quarantine_and_dry_run_removes_nothing(run_cli, twins, cache):
    assert run_cli("--manifest", twins, "--offline", "fetch", "first", "-q")[0] == 0
    orphan = cache.blob("0" * 64)
    orphan.write_bytes(b"no receipt points here")
    partial = stale_partial(cache, "big")
    blob = cache.blob(hashlib.sha256(CONTENT).hexdigest())  # a blob changed on disk is quarantined when next used
    blob.chmod(0o644)
    blob.write_bytes(CONTENT[::-1])
    code, out, err = run_cli("--manifest", twins, "--offline", "fetch", "first", "-q")
    assert code == 0 and blob.read_bytes() == CONTENT
    (quarantined,) = (cache.root / "quarantine").iterdir()
    before = files_under(cache.root)

    code, out, err = run_cli("cache", "prune", "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["dry_run"] is True and files_under(cache.root) == before  # frees nothing
    assert {(row["kind"], row["path"]) for row in plan["removed"]} == {
        ("orphan blob", str(orphan)), ("partial", str(partial[0])), ("partial", str(partial[1])),
        ("quarantined", str(quarantined))}
    assert plan["kept"] == [] and plan["freed"] == sum(Path(row["path"]).stat().st_size for row in plan["removed"])
    code, out, err = run_cli("cache", "prune", "--dry-run")
    assert code == 0 and "would remove orphan blob" in out and "dry run: nothing removed" in out
    assert files_under(cache.root) == before

    code, out, err = run_cli("cache", "prune")
    assert code == 0 and f"removed orphan blob {orphan}" in out and "freed" in out
    assert not orphan.exists() and not any(p.exists() for p in partial) and not quarantined.exists()
    assert blob.read_bytes() == CONTENT and [e.state for e in cache.entries()] == ["cached"]
    assert run_cli("--manifest", twins, "verify", "first")[0] == 0
    code, out, err = run_cli("cache", "prune")
    assert code == 0 and "nothing to prune" in out


def test_prune_keeps_the_partial_of_a_download_in_progress(run_cli, cache):
    partial = stale_partial(cache, "best_model")
    orphan = cache.blob("1" * 64)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"maybe the bytes a fetch is storing right now")
    with HeldLock(cache.root / "locks" / "best_model.lock"):
        (entry,) = cache.entries()
        assert entry.partials[0].in_progress
        code, out, err = run_cli("cache", "prune", "--json")
        result = json.loads(out)
        assert code == 0 and result["removed"] == [] and result["freed"] == 0
        assert {(row["kind"], row["path"]) for row in result["kept"]} == {
            ("partial", str(partial[0])), ("partial", str(partial[1])), ("orphan blob", str(orphan))}
        assert all("in progress" in row["reason"] for row in result["kept"])
        assert all(p.exists() for p in partial) and orphan.exists()
    pruned = cache.prune()  # the fetch ended without finishing: now its partial is stale
    assert isinstance(pruned, Pruned) and pruned.kept == [] and len(pruned.removed) == 3
    assert not any(p.exists() for p in partial) and not orphan.exists()
