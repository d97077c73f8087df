"""The list, fetch, import, verify and info commands: exit codes, one-line errors, --json documents.

Commands run in-process through ``cli.main`` (the real exit-code mapping); two runs go through
``python -m phasegpt_ckpt`` in a subprocess, as a user's shell would.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CORPUS_SHA256, REPO
from emulators.fileserver import Faults, FileServer


PATH = "/files/input.txt"


@pytest.fixture
def server(corpus_path):
    with FileServer() as server:
        server.add_file(PATH, corpus_path.read_bytes())
        yield server


@pytest.fixture
def manifest(tmp_path, server) -> Path:
    """One corpus artifact: a 404 mirror, an unpublished one, then the server's copy."""
    path = tmp_path / "manifest.yaml"
    mirrors = [{"type": "url", "url": server.url("/files/gone.txt")},
               {"type": "url", "url": server.url("/files/later.txt"), "published": False},
               {"type": "url", "url": server.url(PATH)}]
    path.write_text(yaml.safe_dump({"version": 1, "default": "corpus", "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": 1115394, "sha256": CORPUS_SHA256, "mirrors": mirrors}}}))
    return path


def assert_one_error_line(err: str, code: int, expected_code: int) -> str:
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_import_list_fetch_verify_info_as_json(run_cli, manifest, corpus_path, tmp_path):
    code, out, err = run_cli("--manifest", manifest, "import", "corpus", corpus_path, "--json")
    assert code == 0, err
    assert {k: json.loads(out)[k] for k in ("name", "sha256", "pinned")} == {
        "name": "corpus", "sha256": CORPUS_SHA256, "pinned": True}

    code, out, _ = run_cli("--manifest", manifest, "list", "--json")
    (row,) = json.loads(out)
    assert (row["name"], row["cached"]) == ("corpus", "pinned (manifest sha256)")
    assert [(m["type"], m["published"]) for m in row["mirrors"]] == [("url", True), ("url", False), ("url", True)]

    code, out, err = run_cli("--manifest", manifest, "--offline", "fetch", "--dest", tmp_path / "out", "--json")
    (fetched,) = json.loads(out)
    assert code == 0 and fetched["from_cache"] and fetched["path"] == str(tmp_path / "out" / "input.txt")

    code, out, _ = run_cli("--manifest", manifest, "verify", "--json")  # no name: every cached artifact
    (verdict,) = json.loads(out)
    assert code == 0 and verdict["ok"] and verdict["pinned"] and verdict["subject"] == "corpus"

    code, out, _ = run_cli("--manifest", manifest, "info", tmp_path / "out" / "input.txt", "--json")
    facts = json.loads(out)
    assert code == 0 and facts["artifact"]["name"] == "corpus" and facts["receipt"]["sha256"] == CORPUS_SHA256
    assert facts["file_size"] == 1115394


def test_fetch_prints_where_the_verified_file_is(run_cli, manifest, server):
    code, out, err = run_cli("--manifest", manifest, "fetch", "corpus")
    assert code == 0, err
    assert out.splitlines()[0].startswith("corpus: ") and out.splitlines()[0].endswith("input.txt")
    assert f"sha256 {CORPUS_SHA256}" in out and "pinned (manifest sha256)" in out
    assert "404" in err  # the failed first mirror is a warning on stderr
    assert "mirrors tried, in order" in err and "unpublished" in err  # and the outcome table says why


def test_every_name_is_checked_before_anything_is_fetched(run_cli, manifest, server):
    code, out, err = run_cli("--manifest", manifest, "fetch", "corpus", "nope", "--json")
    assert "unknown artifact 'nope'" in assert_one_error_line(err, code, 2) and out == ""
    assert server.log == []


@pytest.mark.parametrize("args, words", [
    (("generate",), "Missing argument 'prompt'; see `phasegpt-ckpt generate --help`"),
    (("analyze", "--bogus"), "No such option: --bogus"),
    (("verify", "--causality-windows", "0"), "--causality-windows"),
    (("nosuch",), "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_exit_2(run_cli, args, words):
    code, out, err = run_cli(*args)
    assert words in assert_one_error_line(err, code, 2) and out == ""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_fetch_exits_130_keeps_the_part_and_the_next_fetch_resumes(
        manifest, server, tmp_path, stop):
    server.set_faults(PATH, Faults(stall=30, stall_at=400_000, times=1))  # hold the transfer mid-body
    env = {**os.environ, "PHASEGPT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "phasegpt_ckpt", "--manifest", str(manifest), "fetch", "corpus"]
    fetching = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "cache" / "partial" / "corpus"
    deadline = time.monotonic() + 20
    while sum(p.stat().st_size for p in parts.glob("*.part")) < 400_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    fetching.send_signal(stop)
    _, err = fetching.communicate(timeout=20)

    assert fetching.returncode == 130 and err.splitlines()[-1] == "interrupted" and "Traceback" not in err
    (part,) = parts.glob("*.part")
    assert part.stat().st_size == 400_000
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and f"sha256 {CORPUS_SHA256}" in again.stdout
    assert server.requests_to(PATH)[-1].range == "bytes=400000-"


def test_every_mirror_failing_exits_3_with_the_outcomes(run_cli, manifest, server):
    server.files.pop(PATH)
    code, out, err = run_cli("--manifest", manifest, "fetch", "corpus", "--json")
    line = assert_one_error_line(err, code, 3)
    assert line == "error: every mirror of corpus failed (url: 404, url: unpublished, url: 404)"
    (document,) = json.loads(out)
    assert [o["status"] for o in document["outcomes"]] == ["404", "unpublished", "404"]
    assert "mirrors tried, in order" in err and "unpublished" in err  # the table, on stderr


def test_verify_of_a_tampered_cache_file_exits_1(run_cli, manifest):
    assert run_cli("--manifest", manifest, "fetch")[0] == 0
    cached = Path(os.environ["PHASEGPT_CACHE"]) / "artifacts" / "corpus" / "input.txt"  # conftest's cache
    os.chmod(cached, 0o644)
    with open(cached, "r+b") as file:
        file.write(b"X")

    code, out, err = run_cli("--manifest", manifest, "verify", "corpus")

    line = assert_one_error_line(err, code, 1)
    assert line.startswith("error: corpus failed verification: sha256 (manifest) is ")
    assert "fail" in out and "FAILED" in out


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text(""), "is empty"),
    (lambda p: p.write_bytes(os.urandom(64) + b"\xff\xfe"), "not a UTF-8 text file"),
    (lambda p: p.write_text("artifacts: [\n"), "not valid YAML"),
    (lambda p: p.write_text("version: 1\nartifacts: {}\nextra: 1\n"), "extra: Extra inputs are not permitted"),
])
def test_bad_manifests_exit_2_with_one_line(run_cli, tmp_path, make, words):
    path = tmp_path / "bad.yaml"
    make(path)
    code, out, err = run_cli("--manifest", path, "list")
    assert words in assert_one_error_line(err, code, 2) and out == ""


@pytest.mark.parametrize("args, words", [
    (("fetch", "nope"), "unknown artifact 'nope'"),
    (("fetch", "--mirror", "ftp"), "unknown mirror type 'ftp'"),
    (("import", "corpus", "absent.txt"), "is not a file"),
    (("verify", "absent.txt"), "neither an artifact of the manifest (corpus) nor an existing file"),
])
def test_bad_arguments_exit_2_with_one_line(run_cli, manifest, args, words):
    code, _, err = run_cli("--manifest", manifest, *args)
    assert words in assert_one_error_line(err, code, 2)


def test_the_installed_entry_point_maps_errors_to_exit_codes(tmp_path, manifest, server):
    """Through a real process: a directory as manifest (2); offline from the environment (3)."""
    command = [sys.executable, "-m", "phasegpt_ckpt"]
    bad = subprocess.run([*command, "--manifest", str(tmp_path), "list"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "is a directory" in bad.stderr

    env = {**os.environ, "PHASEGPT_OFFLINE": "1"}
    offline = subprocess.run([*command, "--manifest", str(manifest), "fetch"], cwd=REPO, capture_output=True,
                             text=True, env=env)
    assert offline.returncode == 3 and "offline mode forbids downloading" in offline.stderr
    assert server.log == []
