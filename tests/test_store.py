"""The Store as a Python user holds it: one object, defaults resolved once, silent but for logging."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from conftest import CORPUS_SHA256
from emulators.fileserver import FileServer
from test_cli_engine import PATH, server  # noqa: F401 - the corpus served on 127.0.0.1

import phasegpt_ckpt
from phasegpt_ckpt import Store
from phasegpt_ckpt.source.manifest import Manifest


def unpinned_manifest(server: FileServer) -> Manifest:
    """One artifact with no published sha256: fetching it logs a trust-on-first-use warning."""
    return Manifest.model_validate({"version": 1, "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "mirrors": [{"type": "url", "url": server.url(PATH)}]}}})


def test_fetch_and_verify_print_nothing_and_log_to_the_package_logger(server, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="phasegpt_ckpt")
    store = Store(unpinned_manifest(server), tmp_path / "cache")

    fetched = store.fetch("corpus")
    verdict = store.verify("corpus")

    assert fetched.sha256 == CORPUS_SHA256 and verdict.ok and not verdict.pinned
    out, err = capfd.readouterr()  # file descriptors: nothing reached the terminal by any route
    assert out == "" and err == ""
    records = [r for r in caplog.records if r.name.startswith("phasegpt_ckpt.")]
    assert any(r.levelno == logging.WARNING and "trust on first use" in r.getMessage() for r in records)
    assert {r.name for r in records} <= {f"phasegpt_ckpt.{m}" for m in ("store.fetch", "store.store", "source.transfer",
                                                                         "store.cache", "proof.metadata")}


def test_a_script_that_configures_no_logging_still_sees_nothing(server, tmp_path):
    """Python's last-resort handler prints warnings of unconfigured programs: our NullHandler keeps it quiet."""
    script = textwrap.dedent(f"""
        from phasegpt_ckpt import Store
        from phasegpt_ckpt.source.manifest import Manifest
        manifest = Manifest.model_validate({{"version": 1, "artifacts": {{"corpus": {{
            "kind": "dataset", "filename": "input.txt", "mirrors": [{{"type": "url", "url": "{server.url(PATH)}"}}]}}}}}})
        assert Store(manifest, {str(tmp_path / 'cache')!r}).fetch("corpus").size == 1115394
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr


def test_progress_reaches_the_callback_the_caller_passed(server, tmp_path):
    seen = []
    store = Store(unpinned_manifest(server), tmp_path / "cache",
                  progress=lambda task, done, total, *, unit="B", detail="": seen.append((task, done, total, unit)))
    store.fetch("corpus")
    assert seen and all(unit == "B" for *_, unit in seen)
    assert seen[-1][1] == 1115394 and [done for _, done, _, _ in seen] == sorted(done for _, done, _, _ in seen)


def test_defaults_are_resolved_once_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASEGPT_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("PHASEGPT_OFFLINE", "1")
    store = Store()
    assert store.cache.root == tmp_path / "env-cache" and store.offline
    assert store.manifest_path is None and "phasegpt-tiny" in store.manifest.artifacts  # shipped, layered
    monkeypatch.setenv("PHASEGPT_CACHE", str(tmp_path / "elsewhere"))
    assert store.cache.root == tmp_path / "env-cache"  # read when the Store was made, not at each call


def test_the_store_works_offline_with_what_ships_inside_the_package(tmp_path):
    store = Store(cache_dir=tmp_path / "cache", offline=True)
    corpus = store.corpus()
    verdict = store.verify("phasegpt-tiny")
    rows = {row["name"]: row for row in store.list()}
    assert corpus.read_bytes()[:14] == b"First Citizen:" and store.fetch("tinyshakespeare").sha256 == CORPUS_SHA256
    assert verdict.ok and verdict.pinned and rows["phasegpt-tiny"]["cached"].startswith("pinned")
    assert store.info("phasegpt-tiny")["checkpoint"]["phase_layers"] == store.load("phasegpt-tiny").config.phase_layers
    assert phasegpt_ckpt.__all__[0] == "Store" and "Store(" in repr(store)


def test_the_seeds_corpus_location_is_a_mirror_before_any_network(tmp_path, corpus_path, monkeypatch):
    (tmp_path / "data" / "shakespeare").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare" / "input.txt").write_bytes(corpus_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    store = Store(cache_dir=tmp_path / "cache", offline=True)
    fetched = store.fetch("tinyshakespeare", mirror_type="local")  # the bundled copy first, then the seed's
    assert fetched.sha256 == CORPUS_SHA256
    seeds = store.manifest.artifact("tinyshakespeare").mirrors[1]
    from phasegpt_ckpt.source.mirrors import resolve

    assert resolve(seeds, None).local_path.resolve() == (tmp_path / "data" / "shakespeare" / "input.txt").resolve()
