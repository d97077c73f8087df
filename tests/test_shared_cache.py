"""A cache other users can write (a group cache on a cluster) is a way to write, chmod or delete elsewhere
unless the tool trusts nothing it finds there. Each test plants what a hostile co-user would plant, runs
the real command line, and checks the file outside the cache is untouched and the command still works."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from phasegpt_ckpt.store.cache import Cache

CONTENT = os.urandom(100_000)
SHA256 = hashlib.sha256(CONTENT).hexdigest()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def manifest(tmp_path, monkeypatch) -> Path:
    """One artifact ``data`` on a local mirror, made the manifest of every command in the test."""
    (tmp_path / "data.bin").write_bytes(CONTENT)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "artifacts": {"data": {
        "kind": "dataset", "filename": "data.bin", "size": len(CONTENT), "sha256": SHA256,
        "mirrors": [{"type": "local", "path": "data.bin"}]}}}))
    monkeypatch.setenv("PHASEGPT_MANIFEST", str(path))
    return path


@pytest.fixture
def cache() -> Cache:
    return Cache()  # $PHASEGPT_CACHE, fresh per test (conftest)


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's outside the cache, with a mode and an mtime to watch."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text("precious")
    path.chmod(0o640)
    os.utime(path, (1_000_000, 1_000_000))
    return path


def untouched(path: Path) -> bool:
    status = path.stat()
    return (path.read_text(), stat.S_IMODE(status.st_mode), status.st_mtime) == ("precious", 0o640, 1_000_000)


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def fetched(run_cli) -> dict:
    """``fetch data --json``'s one result, after checking the bytes at its path."""
    code, out, err = run_cli("fetch", "data", "--json")
    assert code == 0, err
    [result] = json.loads(out)
    assert hashlib.sha256(Path(result["path"]).read_bytes()).hexdigest() == SHA256
    return result


@pytest.mark.parametrize("where", [
    "locks/data.lock",            # filelock opens with O_TRUNC: following it would empty the file
    "used/data",                  # the use record's utime would touch the target's mtime
    "blobs/" + SHA256,            # the blob's chmod would make the target read-only
    "artifacts/data/data.bin",    # the readable name is replaced, never written through
    "receipts/data.json",         # the receipt is written beside and renamed over the link
])
def test_a_link_planted_at_a_cache_file_is_replaced_not_followed(manifest, cache, victim, run_cli, where):
    plant(cache.root / where, victim)
    fetched(run_cli)
    assert untouched(victim)
    code, _, err = run_cli("fetch", "data")  # the second run finds the cache as the first one left it
    assert code == 0, err
    assert untouched(victim)


@pytest.mark.parametrize("folder", ["partial", "artifacts", "receipts", "locks", "used", "blobs"])
def test_a_link_planted_at_a_cache_folder_is_removed_and_the_folder_made(manifest, cache, victim, run_cli, folder):
    plant(cache.root / folder, victim.parent)
    fetched(run_cli)
    fetched(run_cli)  # served from the cache: the use record is written
    assert sorted(p.name for p in victim.parent.iterdir()) == ["precious.txt"] and untouched(victim)
    assert (cache.root / folder).is_dir() and not (cache.root / folder).is_symlink()


def test_a_lock_that_is_a_link_loop_does_not_crash(manifest, cache, run_cli):
    lock = cache.root / "locks" / "data.lock"
    plant(lock, lock)  # ELOOP on open
    fetched(run_cli)


def test_a_receipt_whose_sha256_is_a_path_deletes_and_moves_nothing(manifest, cache, victim, run_cli):
    fetched(run_cli)
    receipt = cache.root / "receipts" / "data.json"
    forged = json.loads(receipt.read_text())
    forged["sha256"] = os.path.relpath(victim, cache.root / "blobs")
    receipt.write_text(json.dumps(forged))
    for command in (["verify", "data"], ["fetch", "data"], ["cache", "rm", "data"], ["cache", "prune"]):
        run_cli(*command)
        assert untouched(victim), command


def test_a_receipt_naming_another_folder_is_unreadable(cache):
    cache.root.joinpath("receipts").mkdir(parents=True)
    good = {"artifact": "data", "filename": "data.bin", "sha256": SHA256, "size": 1, "mirror": "m",
            "time": "2026-01-01T00:00:00Z", "tool_version": "0", "pinned": True, "pin": "pinned"}
    for field, value in [("filename", "../../outside"), ("artifact", ".."), ("sha256", "AB" * 32)]:
        (cache.root / "receipts" / "data.json").write_text(json.dumps({**good, field: value}))
        assert cache.receipt("data") is None, field
    (cache.root / "receipts" / "data.json").write_text(json.dumps(good))
    assert cache.receipt("data") is not None


def test_a_receipt_linked_to_an_endless_device_is_not_read_for_ever(cache):
    plant(cache.root / "receipts" / "data.json", Path("/dev/zero"))
    assert cache.receipt("data") is None
    assert [entry.state for entry in cache.entries()] == ["unreadable receipt"]


def test_a_partial_folder_linked_elsewhere_is_neither_listed_nor_emptied(manifest, cache, victim, run_cli):
    plant(cache.root / "partial" / "data", victim.parent)
    (victim.parent / "x.part").write_bytes(b"123")
    for command in (["cache", "ls"], ["cache", "prune"], ["fetch", "data"], ["cache", "rm", "data"]):
        run_cli(*command)
        assert (victim.parent / "x.part").read_bytes() == b"123" and untouched(victim), command


@pytest.mark.parametrize("source_mode, umask, cached_mode", [
    (0o600, 0o022, 0o400),  # a file only its owner may read stays so in a shared cache
    (0o644, 0o077, 0o400),  # the umask limits what the cache makes readable
    (0o644, 0o022, 0o444),  # a shared file stays readable to all
])
def test_a_cached_file_keeps_the_most_restrictive_of_its_source_mode_and_the_umask(
        manifest, run_cli, source_mode, umask, cached_mode):
    (manifest.parent / "data.bin").chmod(source_mode)
    previous = os.umask(umask)
    try:
        path = Path(fetched(run_cli)["path"])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == cached_mode


def test_a_read_only_cache_serves_what_it_holds_and_refuses_to_download_in_one_line(manifest, cache, run_cli):
    """A cache an administrator fills and users only read: mounted read-only (a private mount namespace,
    so the test needs no privilege beyond what `unshare` grants), each command run as a user would."""
    fetched(run_cli)
    other = manifest.parent / "other.bin"
    other.write_bytes(CONTENT[::-1])
    document = yaml.safe_load(manifest.read_text())
    document["artifacts"]["other"] = {**document["artifacts"]["data"], "filename": "other.bin",
                                      "sha256": hashlib.sha256(CONTENT[::-1]).hexdigest(),
                                      "mirrors": [{"type": "local", "path": "other.bin"}]}
    manifest.write_text(yaml.safe_dump(document))
    cli = f"{shlex.quote(sys.executable)} -m phasegpt_ckpt"
    script = (f"mount --bind {cache.root} {cache.root} && mount -o remount,bind,ro {cache.root} && "
              f"{cli} fetch data; echo rc=$?; {cli} verify data; echo rc=$?; {cli} fetch other; echo rc=$?")
    namespace = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    done = subprocess.run([*namespace, "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("rc=")] == ["rc=0", "rc=0", "rc=2"], done
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: cannot use the cache directory {cache.root / 'partial' / 'other'}: Read-only file "
                      "system; give one you can write with --cache-dir or $PHASEGPT_CACHE"]
