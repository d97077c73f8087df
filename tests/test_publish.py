"""publish: metadata JSON, manifest entries that keep the file's comments, Hub uploads, Zenodo/OSF records."""
from __future__ import annotations

import hashlib
import json

import pytest
from conftest import CORPUS_SHA256
from tiny_checkpoints import save_ours, tiny_model

from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import VerificationFailed
from phasegpt_ckpt.proof.metadata import load_metadata
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.source.mirrors.osf import OsfMirror
from phasegpt_ckpt.source.mirrors.zenodo import ZenodoMirror
from phasegpt_ckpt.store.cache import Cache
from phasegpt_ckpt.store.publish import publish

LAB_MANIFEST = """\
# Our lab's checkpoints: published with phasegpt-ckpt publish, edited by hand too.
version: 1
default: tinyshakespeare   # what commands use when given no name

artifacts:
  # The corpus comes first.
  tinyshakespeare:
    kind: dataset
    filename: input.txt
    size: 1115394
    sha256: {sha256}
    mirrors:
      - {{type: local, path: "{corpus}"}}   # a copy on this disk

  old:
    kind: checkpoint   # kept as it was written
    filename: old.pt
    size: null         # not known yet
    mirrors:
      - {{type: url, url: "https://example.org/old.pt", published: false}}
      # The record is announced, not made yet.
      - {{type: zenodo, doi: "10.5281/zenodo.XXXXXXX", filename: old.pt, published: false}}
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, corpus_path):
    """Two tiny causal checkpoints in our trainer's layout (weights, AdamW state, vocabulary), made once."""
    made = tmp_path_factory.mktemp("checkpoints")
    return [save_ours(tiny_model("causal", seed=seed), made / f"seed{seed}.pt", corpus_path).read_bytes()
            for seed in (0, 1)]


@pytest.fixture
def lab(tmp_path, corpus_path, checkpoints):
    """A hand-written manifest with comments, and a tiny checkpoint in the same directory."""
    manifest = tmp_path / "lab.yaml"
    manifest.write_text(LAB_MANIFEST.format(sha256=CORPUS_SHA256, corpus=corpus_path))
    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(checkpoints[0])
    return manifest, checkpoint


@pytest.fixture
def validation_text(tmp_path, corpus_path):
    """The corpus's first 60,000 characters: its last tenth is a validation split quick to measure."""
    path = tmp_path / "first60k.txt"
    path.write_bytes(corpus_path.read_bytes()[:60_000])
    return path


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_writes_metadata_and_entries_and_keeps_the_manifest_readable(lab, validation_text, run_cli):
    manifest, checkpoint = lab
    original = manifest.read_text()

    published = publish(checkpoint, "tiny", manifest=manifest, measure=True, data=validation_text)

    text = manifest.read_text()
    assert text.startswith(original)  # every comment, blank line and entry above stays byte for byte
    entries = load_manifest(manifest).artifacts
    assert list(entries) == ["tinyshakespeare", "old", "tiny", "tiny_info"]
    tiny, info_entry = entries["tiny"], entries["tiny_info"]
    assert (tiny.kind, tiny.filename, tiny.size, tiny.sha256, tiny.metadata) == (
        "checkpoint", "tiny.pt", checkpoint.stat().st_size, sha256_of(checkpoint), "tiny_info")
    assert [(m.type, m.path) for m in tiny.mirrors] == [("local", checkpoint)]  # relative in the file, beside it
    assert "- {type: local, path: tiny.pt}" in text and "validation_ppl: {value: " in text

    info_path = manifest.parent / "tiny_info.json"
    assert (published.metadata_path, info_entry.sha256, info_entry.size) == (
        info_path, sha256_of(info_path), info_path.stat().st_size)
    info = load_metadata(info_path)
    assert (info.sha256, info.file_size_bytes, info.training_epochs, info.global_step, info.coupling_mode) == (
        tiny.sha256, tiny.size, 18, 3240, "causal")  # the file's own facts, and what save_ours put in it
    assert info.config == "Layer 1, 4 oscillators, K=1.0, causal coupling" and info.size_agrees(tiny.size)
    assert (info.validation_ppl, info.order_parameter_R) == (
        tiny.claims["validation_ppl"].value, tiny.claims["order_parameter_R"].value)
    assert tiny.claims["validation_ppl"].tolerance == pytest.approx(0.005 * info.validation_ppl, abs=1e-4)

    code, out, _ = run_cli("--manifest", manifest, "verify", "tiny", "--eval", "--data", validation_text, "--json")
    (verdict,) = json.loads(out)
    assert code == 0 and verdict["pinned"] and verdict["evaluation"]["passed"]  # the claims reproduce
    assert {(c["claim"], c["source"], c["verdict"]) for c in verdict["evaluation"]["claims"]} == {
        ("validation_ppl", "manifest", "pass"), ("order_parameter_R", "manifest", "pass"),
        ("validation_loss", "metadata", "no tolerance")}  # the metadata's PPL and R are the claims, not repeated
    rows = {row["check"]: row["status"] for row in verdict["checks"]}
    assert rows["validation_loss (metadata)"] == "no tolerance"  # shown, not judged; it is published
    R_std = verdict["evaluation"]["order_parameter_R"][0]["std"]  # one phase layer: its spread is the model's
    assert info.order_parameter_R_std == pytest.approx(R_std, abs=1e-4) and info.validation_tokens > 0


def test_a_record_replaces_its_placeholder_in_place_and_serves_the_file(lab, zenodo_emulator, checkpoints):
    manifest, _ = lab
    old = manifest.parent / "old.pt"
    old.write_bytes(checkpoints[1])
    zenodo_emulator.add_record(4321, {"old.pt": old.read_bytes()})
    record = ZenodoMirror(record="4321", filename="old.pt", endpoint=zenodo_emulator.origin)

    publish(old, "old", manifest=manifest, records=[record])

    text = manifest.read_text()
    entry_text = text[text.index("  old:"):text.index("  old_info:")]
    assert "kind: checkpoint   # kept as it was written" in entry_text and "# The record is announced" in entry_text
    assert f"sha256: {sha256_of(old)}" in entry_text and "metadata: old_info" in entry_text
    entry = load_manifest(manifest).artifact("old")
    assert [m.describe() for m in entry.mirrors] == [  # the placeholder became the record, in its place
        "url https://example.org/old.pt", "zenodo record 4321", f"local {old}"]
    md5 = hashlib.md5(old.read_bytes()).hexdigest()  # Zenodo publishes md5 only: fetch checks it up front
    assert entry.md5 == md5 and f"md5: {md5}" in entry_text

    fetched = Store(load_manifest(manifest), manifest.parent / "fresh").fetch("old", mirror_type="zenodo")
    assert fetched.pinned and fetched.path.read_bytes() == old.read_bytes()


def test_a_record_holding_other_bytes_is_refused_and_nothing_is_written(lab, zenodo_emulator, osf_emulator):
    manifest, checkpoint = lab
    original, data = manifest.read_text(), checkpoint.read_bytes()
    other = data[:-1] + bytes([data[-1] ^ 1])  # same size, one bit flipped
    zenodo_emulator.add_record(11, {"tiny.pt": other})
    osf_emulator.add_node("lab01")
    wrong = osf_emulator.put("lab01", "checkpoints/tiny.pt", other)
    right = osf_emulator.put("lab01", "mirror/tiny.pt", data)

    with pytest.raises(VerificationFailed, match=r"zenodo record 11 has md5 \w+, .* has \w+: it holds other bytes"):
        publish(checkpoint, "tiny", manifest=manifest, records=[
            ZenodoMirror(record="11", filename="tiny.pt", endpoint=zenodo_emulator.origin)])
    with pytest.raises(VerificationFailed, match=f"osf {wrong.guid} has sha256 {hashlib.sha256(other).hexdigest()}"):
        publish(checkpoint, "tiny", manifest=manifest, records=[OsfMirror(guid=wrong.guid, endpoint=osf_emulator.origin)])
    assert manifest.read_text() == original and not (manifest.parent / "tiny_info.json").exists()

    publish(checkpoint, "tiny", manifest=manifest, records=[OsfMirror(guid=right.guid, endpoint=osf_emulator.origin)])
    fetched = Store(load_manifest(manifest), manifest.parent / "fresh").fetch("tiny", mirror_type="osf")
    assert fetched.pinned and fetched.path.read_bytes() == data


def test_upload_to_the_hub_pins_the_commit_and_a_fresh_fetch_verifies(tmp_path, corpus_path, checkpoints,
                                                                        hub_emulator, monkeypatch, run_cli):
    hub, token = hub_emulator, "hf_writerToken0123456789"
    hub.add_writer(token, "lab")
    monkeypatch.setenv("HF_TOKEN", token)
    manifest = tmp_path / "manifest" / "lab.yaml"  # the checkpoint lies elsewhere: no local mirror
    manifest.parent.mkdir()
    manifest.write_text(LAB_MANIFEST.format(sha256=CORPUS_SHA256, corpus=corpus_path))
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(checkpoints[0])

    code, out, err = run_cli("publish", checkpoint, "--name", "tiny", "--manifest", manifest,
                             "--to", "hf:lab/phasegpt-tiny", "--endpoint", hub.origin, "--json")

    assert code == 0 and token not in out + err
    assert token not in manifest.read_text() and token not in checkpoint.with_name("best_info.json").read_text()
    published = json.loads(out)
    repo = hub.repos["lab/phasegpt-tiny"]
    assert published["revision"] == repo.commit and repo.lfs == {"best.pt"} and set(repo.files) == {
        "best.pt", "best_info.json", "README.md"}  # the model card travels in the same commit
    assert sorted(op["key"] for op in hub.commits[-1]["operations"]) == ["file", "file", "lfsFile"]
    entries = load_manifest(manifest).artifacts
    assert [m.describe() for m in entries["tiny"].mirrors] == [f"hf lab/phasegpt-tiny@{repo.commit}"]
    assert [m.describe() for m in entries["tiny_info"].mirrors] == [f"hf lab/phasegpt-tiny@{repo.commit}"]

    cache = Cache(tmp_path / "fresh")
    for name, local in (("tiny", checkpoint), ("tiny_info", checkpoint.with_name("best_info.json"))):
        fetched = Store(load_manifest(manifest), cache.root).fetch(name)
        assert fetched.pinned and fetched.path.read_bytes() == local.read_bytes()


def test_upload_without_write_access_is_one_line_and_leaves_the_manifest(lab, hub_emulator, monkeypatch, run_cli):
    manifest, checkpoint = lab
    original, token = manifest.read_text(), "hf_elsewhereToken0123456789"
    hub_emulator.add_writer(token, "someone")  # a valid token, for another namespace
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_ENDPOINT", hub_emulator.origin)

    code, out, err = run_cli("publish", checkpoint, "--name", "tiny", "--manifest", manifest, "--to", "hf:lab/new")

    error = err.splitlines()[-1]  # after the progress line "creating lab/new ..."
    assert code == 2 and out == "" and error.startswith("error: ") and err.count("error") == 1
    assert "may not write to lab/new" in error and "HTTP 403" in error and token not in err
    assert manifest.read_text() == original and "lab/new" not in hub_emulator.repos


@pytest.mark.parametrize("args, words", [
    (["--to", "zenodo:123"], "write --to zenodo (a new record) or add --new-version RECORD"),
    (["--to", "osf:ab/cd", "--draft"], "--draft and --new-version go with --to zenodo"),
    (["--to", "osf:a.b"], "write osf:NODE or osf:NODE/folder"),
    (["--to", "zenodo", "--new-version", "abc"], "give the record id or DOI"),
    (["--to", "osf:lab01", "--endpoint", "http://example.org"], "--endpoint: refusing plain http://"),
    (["--to", "hf:not a repo"], "is not a Hub repository id"),
    (["--to", "hf:phasegpt-tiny"], "names no namespace: write ORG/phasegpt-tiny"),
    (["--to", "hf:lab/tiny.git"], "not a Hub repository id"),
    (["--to", "hf:lab/tiny", "--endpoint", "http://example.org"], "--endpoint http://example.org"),
    (["--record", "dropbox:abc"], "write zenodo:ID"),
    (["--record", "zenodo:abc"], "not a Zenodo record id or DOI"),
    (["--name", "two words"], "cannot name an artifact"),
    (["--name", "tinyshakespeare"], "is a dataset artifact"),
])
def test_bad_targets_and_names_are_one_line_exit_2(lab, run_cli, args, words):
    manifest, checkpoint = lab
    original = manifest.read_text()
    name = [] if "--name" in args else ["--name", "tiny"]
    code, out, err = run_cli("publish", checkpoint, "--manifest", manifest, *name, *args)
    assert code == 2 and words in err and err.count("\n") == 1
    assert manifest.read_text() == original
