"""Hostile JSON: provider answers of the wrong shape or size, and metadata files written to break us.

Real loopback servers play a Zenodo or OSF API whose answer is a list where an object belongs, a size
as a string, a checksum as a number, an entry without ``attributes``, 100 000 nested lists, a number
of 5000 digits, a lone surrogate, or no end at all; Google Drive answers a page that never ends or
a Content-Length of 5000 digits. Each is that mirror's failure in one line (the next mirror then
serves the file), read with bounded memory. A metadata JSON of 270 MB, with a 5000-digit number, a
lone surrogate, deep nesting or wrong types is one line too.
"""
from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest
import requests
import yaml
from conftest import CORPUS_SHA256
from emulators.fileserver import Faults, FileServer
from test_hostile_input import assert_one_line_error

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.proof.metadata import load_metadata
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors import gdrive, osf, zenodo

CORPUS_SIZE = 1115394
MD5 = "0" * 32


def manifest(tmp_path: Path, *mirrors: dict) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "default": "corpus", "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": CORPUS_SIZE, "sha256": CORPUS_SHA256,
        "mirrors": list(mirrors)}}}))
    return path


def answering(server: FileServer, pattern: str, body: bytes, content_type: str = "application/json") -> FileServer:
    """``server`` answering ``body`` (200) to every GET of a path matching ``pattern``."""
    server.route(pattern, lambda request: request.send(200, body, content_type))
    return server


def zenodo_mirror(server: FileServer) -> dict:
    return {"type": "zenodo", "record": 123, "filename": "input.txt", "endpoint": server.origin}


def osf_mirror(server: FileServer) -> dict:
    return {"type": "osf", "guid": "abcde", "endpoint": server.origin}


def file_entry(**changes) -> dict:
    return {"key": "input.txt", "size": CORPUS_SIZE, "checksum": f"md5:{MD5}", **changes}


def osf_file(attributes: dict, **changes) -> dict:
    return {"data": {"type": "files", "attributes": attributes,
                     "links": {"download": "http://127.0.0.1:9/download"}, **changes}}


OSF_ATTRIBUTES = {"name": "input.txt", "kind": "file", "size": CORPUS_SIZE, "provider": "osfstorage",
                  "extra": {"hashes": {"sha256": CORPUS_SHA256, "md5": MD5}}}
DEEP = b"[" * 100_000 + b"]" * 100_000

ZENODO_ANSWERS = {
    "a-list-for-the-record": json.dumps([{"id": 123, "files": [file_entry()]}]).encode(),
    "size-as-a-string": json.dumps({"id": 123, "files": [file_entry(size=str(CORPUS_SIZE))]}).encode(),
    "checksum-as-a-number": json.dumps({"id": 123, "files": [file_entry(checksum=12345)]}).encode(),
    "files-as-an-object": json.dumps({"id": 123, "files": {"input.txt": file_entry()}}).encode(),
    "an-entry-as-a-string": json.dumps({"id": 123, "files": ["input.txt"]}).encode(),
    "links-as-a-list": json.dumps({"id": 123, "files": [file_entry(links=["x"])]}).encode(),
    "deep-nesting": DEEP,
    "a-5000-digit-id": b'{"id": ' + b"9" * 5000 + b"}",
    "a-lone-surrogate": b'{"id": 123, "doi": "\\ud800", "files": []}',
    "not-json": b"<html>maintenance</html>",
}
OSF_ANSWERS = {
    "data-a-list-of-numbers": json.dumps({"data": [1, 2]}).encode(),
    "no-attributes": json.dumps({"data": {"type": "files", "links": {}}}).encode(),
    "size-as-a-string": json.dumps(osf_file({**OSF_ATTRIBUTES, "size": "1115394"})).encode(),
    "sha256-as-a-number": json.dumps(osf_file({**OSF_ATTRIBUTES, "extra": {"hashes": {"sha256": 1}}})).encode(),
    "attributes-a-list": json.dumps(osf_file([OSF_ATTRIBUTES])).encode(),
    "download-link-a-number": json.dumps(osf_file(OSF_ATTRIBUTES, links={"download": 5})).encode(),
    "a-document-that-is-a-string": b'"files"',
    "deep-nesting": DEEP,
}


@pytest.mark.parametrize("body", ZENODO_ANSWERS.values(), ids=ZENODO_ANSWERS)
def test_a_zenodo_record_of_the_wrong_shape_fails_that_mirror_in_one_line(run_cli, tmp_path, body):
    with answering(FileServer(), r"/api/records/.*", body) as server:
        code, _, err = run_cli("--manifest", manifest(tmp_path, zenodo_mirror(server)), "fetch")
    assert assert_one_line_error(code, err, 3).endswith("(zenodo: bad answer)")


@pytest.mark.parametrize("body", OSF_ANSWERS.values(), ids=OSF_ANSWERS)
def test_an_osf_answer_of_the_wrong_shape_fails_that_mirror_in_one_line(run_cli, tmp_path, body):
    with answering(FileServer(), r"/v2/.*", body) as server:
        code, _, err = run_cli("--manifest", manifest(tmp_path, osf_mirror(server)), "fetch")
    assert assert_one_line_error(code, err, 3).endswith("(osf: bad answer)")


def test_osf_listing_pages_of_the_wrong_shape_fail_that_mirror(tmp_path):
    """node + path walks listings: entries that are no objects, a folder without its files link, a next
    link that is a number."""
    mirror = osf.OsfMirror(node="abcde", path="data/input.txt")
    folder = {"type": "files", "attributes": {"name": "data", "kind": "folder"}, "relationships": {"files": []}}
    for page in ({"data": ["data"]}, {"data": [folder]}, {"data": [], "links": {"next": 7}}, {"data": {"x": 1}}):
        with answering(FileServer(), r"/v2/.*", json.dumps(page).encode()) as server:
            with pytest.raises(MirrorFailed) as failed:
                osf.resolve(mirror.model_copy(update={"endpoint": server.origin}), requests.Session())
        assert "\n" not in str(failed.value) and failed.value.outcome in ("bad answer", "404"), str(failed.value)


def test_a_wrong_answer_moves_fetch_to_the_next_mirror(run_cli, tmp_path, corpus_path):
    with answering(FileServer(), r"/api/records/.*", ZENODO_ANSWERS["size-as-a-string"]) as server:
        mirrors = zenodo_mirror(server), {"type": "local", "path": str(corpus_path)}
        code, out, err = run_cli("--manifest", manifest(tmp_path, *mirrors), "fetch", "--json")
    assert code == 0 and "Traceback" not in err, err
    (entry,) = json.loads(out)
    assert [o["status"] for o in entry["outcomes"]][:2] == ["bad answer", "ok"]
    assert "files.0.size" in entry["outcomes"][0]["detail"]
    assert hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest() == CORPUS_SHA256


def peak_memory_of(call) -> int:
    """Peak bytes Python allocated while ``call()`` ran (the reader's buffers included)."""
    tracemalloc.start()
    try:
        call()
    except MirrorFailed as err:
        assert "\n" not in str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_an_endless_api_answer_is_read_up_to_a_cap_in_bounded_memory():
    """A provider answering JSON for ever (a 321 MB answer, or more) costs the cap, not its size."""
    with FileServer() as server:
        server.add_file("/api/records/123", b'{"files": [' + b'{"key": "x"},' * 4096, content_type="application/json")
        server.set_faults("/api/records/123", Faults(endless=True))
        with pytest.raises(MirrorFailed) as failed:
            zenodo.resolve(zenodo.ZenodoMirror(**zenodo_mirror(server)), requests.Session())
        assert failed.value.outcome == "too large" and "16 MiB" in str(failed.value)
        peak = peak_memory_of(lambda: zenodo.resolve(zenodo.ZenodoMirror(**zenodo_mirror(server)), requests.Session()))
    assert peak < 3 * web.MAX_JSON_BYTES, peak


def test_an_endless_drive_page_is_cut_short():
    with FileServer() as server:
        server.add_file("/uc", b"<html>" + b"<p>please wait</p>" * 1000, content_type="text/html")
        server.set_faults("/uc", Faults(endless=True))
        mirror = gdrive.GdriveMirror(id="1" * 33, endpoint=server.origin)
        with pytest.raises(MirrorFailed) as failed:
            gdrive.resolve(mirror, requests.Session())
    assert failed.value.outcome == "bad answer" and "1 MiB" in str(failed.value)


@pytest.mark.parametrize("length", ["9" * 5000, "abc", "²", "-5"])
def test_a_drive_content_length_that_is_no_length_is_no_published_size(length):
    with FileServer() as server:
        server.route(r"/uc", lambda request: request.send(
            200, b"", headers={"Content-Disposition": 'attachment; filename="input.txt"', "Content-Length": length}),
            methods=("GET",))
        source = gdrive.resolve(gdrive.GdriveMirror(id="1" * 33, endpoint=server.origin), requests.Session())
    assert source.size is None


# -- metadata JSON -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content, words", [
    ('{"file_size_mb": ' + "9" * 5000 + "}", "not readable JSON (ValueError)"),
    ('{"model_name": "\\ud800"}', "not Unicode"),
    ('{"hardware": "ok", "doi": "\\udfff\\ud800"}', "not Unicode"),
    ("[" * 100_000 + "]" * 100_000, "not readable JSON (RecursionError)"),
    ('{"training_epochs": "eighteen"}', "training_epochs"),
    ('{"sha256": 12345}', "sha256"),
    ('{"validation_ppl": [4.85]}', "validation_ppl"),
    ("\udcff", "not readable JSON"),
], ids=["5000-digits", "lone-surrogate", "reversed-pair", "deep-nesting", "epochs-a-word", "sha256-a-number",
        "ppl-a-list", "not-utf8"])
def test_hostile_metadata_is_one_line(tmp_path, content, words):
    path = tmp_path / "info.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(BadInput) as refused:
        load_metadata(path)
    assert words in str(refused.value) and "\n" not in str(refused.value) and str(path) in str(refused.value)


def test_a_huge_metadata_file_is_refused_without_loading_it(tmp_path):
    """270 MB (sparse here: no disk used) is refused after reading its first MiB, not parsed."""
    path = tmp_path / "info.json"
    with open(path, "wb") as file:
        file.write(b'{"model_name": "')
        file.truncate(270 * 10**6)
    peak = peak_memory_of(lambda: pytest.raises(BadInput, load_metadata, path).match("over 1 MiB"))
    assert peak < 8 * 2**20, peak


def test_hostile_metadata_of_an_artifact_is_one_line_in_info(run_cli, tmp_path, corpus_path):
    """``info NAME`` shows why an artifact's metadata JSON is unavailable, in one line, and carries on."""
    info = tmp_path / "input_info.json"
    info.write_bytes(b'{"validation_ppl": ' + b"1" * 5000 + b"}")
    data = info.read_bytes()
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "default": "corpus", "artifacts": {
        "corpus": {"kind": "dataset", "filename": "input.txt", "size": CORPUS_SIZE, "sha256": CORPUS_SHA256,
                   "metadata": "corpus-info", "mirrors": [{"type": "local", "path": str(corpus_path)}]},
        "corpus-info": {"kind": "metadata", "filename": info.name, "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(), "mirrors": [{"type": "local", "path": str(info)}]},
    }}))
    code, out, err = run_cli("--manifest", path, "info", "corpus", "--json")
    assert code == 0 and "Traceback" not in err, err
    unavailable = json.loads(out)["metadata"]["unavailable"]
    assert "not readable JSON" in unavailable and "\n" not in unavailable
