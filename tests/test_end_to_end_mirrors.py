"""One artifact listed on every kind of mirror, through the command line as a user runs it.

The first mirrors fail in different ways (unpublished, a missing file, bytes with the wrong
sha256, Drive's quota page, a provider publishing another sha256, a missing local file); the
last one delivers. The outcome of each is reported, and ``list`` shows each mirror's kind and
whether it is published.
"""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import CORPUS_SHA256
from emulators.fileserver import FileServer

DRIVE_ID = "1PhaseGptBestModelCheckpoint0123456"
FAILING = ["unpublished", "404", "hash mismatch", "quota", "disagrees: provider sha256 ≠ manifest", "not found"]


@pytest.fixture
def mirrors(corpus_path, tmp_path, hub_emulator, zenodo_emulator, osf_emulator, drive_emulator):
    """The mirror list, every emulator set up for its part: all fail but the last (zenodo)."""
    corpus = corpus_path.read_bytes()
    other = corpus[::-1]  # same size, other sha256
    hub_emulator.add_repo("templetwo/phasegpt-checkpoints")  # ... without the file
    drive_emulator.add(DRIVE_ID, "input.txt", corpus, mode="quota")
    osf_emulator.add_node("phgpt")
    osf_emulator.put("phgpt", "input.txt", other)  # replaced upstream: OSF publishes its sha256
    zenodo_emulator.add_record(7002, {"input.txt": corpus})
    plain = FileServer().start()
    plain.add_file("/input.txt", other)
    yield [
        {"type": "zenodo", "doi": "10.5281/zenodo.XXXXXXX", "published": False},
        {"type": "hf", "repo": "templetwo/phasegpt-checkpoints", "filename": "input.txt",
         "endpoint": hub_emulator.origin},
        {"type": "url", "url": plain.url("/input.txt")},
        {"type": "gdrive", "id": DRIVE_ID, "endpoint": drive_emulator.origin},
        {"type": "osf", "node": "phgpt", "path": "input.txt", "endpoint": osf_emulator.origin},
        {"type": "local", "path": str(tmp_path / "nowhere" / "input.txt")},
        {"type": "zenodo", "record": 7002, "filename": "input.txt", "endpoint": zenodo_emulator.origin},
    ]
    plain.stop()


def cli_on(run_cli, tmp_path, mirrors: list, *args: str) -> tuple[int, str, str]:
    """``phasegpt-ckpt --manifest M --cache-dir C ARGS`` with a one-artifact manifest listing ``mirrors``."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "default": "corpus", "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": 1115394, "sha256": CORPUS_SHA256, "mirrors": mirrors}}}))
    return run_cli("--manifest", manifest, "--cache-dir", tmp_path / "cache", *args)


def test_fetch_reports_every_mirror_and_ends_verified_from_the_last(mirrors, run_cli, tmp_path):
    code, out, _ = cli_on(run_cli, tmp_path, mirrors, "fetch", "--json")
    (fetched,) = json.loads(out)
    assert code == 0 and fetched["sha256"] == CORPUS_SHA256
    assert [o["kind"] for o in fetched["outcomes"]] == [m["type"] for m in mirrors]
    assert [o["status"] for o in fetched["outcomes"]] == [*FAILING, "ok"]
    assert "quota exceeded on Google Drive; trying the next mirror" in fetched["outcomes"][3]["detail"]


def test_every_mirror_failing_exits_3_naming_each(mirrors, run_cli, tmp_path):
    code, out, _ = cli_on(run_cli, tmp_path, mirrors[:-1], "fetch", "--json")
    (failed,) = json.loads(out)
    assert code == 3
    assert [o["status"] for o in failed["outcomes"]] == FAILING
    assert not list((tmp_path / "cache").rglob("input.txt"))  # nothing placed


def test_list_shows_each_mirror_kind_and_whether_it_is_published(mirrors, run_cli, tmp_path):
    code, out, _ = cli_on(run_cli, tmp_path, mirrors, "list", "--json")
    (row,) = json.loads(out)
    assert code == 0
    assert [(m["type"], m["published"]) for m in row["mirrors"]] == [
        ("zenodo", False), ("hf", True), ("url", True), ("gdrive", True), ("osf", True), ("local", True),
        ("zenodo", True)]
