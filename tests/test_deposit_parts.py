"""A checkpoint over a provider's per-file limit: published in parts to Zenodo and OSF, fetched back whole."""
from __future__ import annotations

import hashlib

import pytest
from deposit_files import place
from emulators.fileserver import Faults

from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import VerificationFailed
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.store.deposit.osf import OsfDeposit
from phasegpt_ckpt.store.deposit.zenodo import ZenodoDeposit
from phasegpt_ckpt.store.publish import publish

ZENODO_TOKEN, OSF_TOKEN = "zenodoPartsTokenNeverShown012345", "osfPartsTokenNeverShown0123456789"
LIMIT = 150_000  # the tiny checkpoint (~357 kB) goes in three parts


@pytest.fixture
def data(checkpoint_bytes) -> bytes:
    return checkpoint_bytes[0]


@pytest.fixture
def published(tmp_path, data, zenodo_emulator, osf_emulator, monkeypatch):
    """The checkpoint in parts on Zenodo and on OSF, listed as one artifact; (manifest, zenodo, osf)."""
    zenodo_emulator.allow(ZENODO_TOKEN)
    osf_emulator.add_node("lab01", write_token=OSF_TOKEN)
    monkeypatch.setenv("ZENODO_TOKEN", ZENODO_TOKEN)
    monkeypatch.setenv("OSF_TOKEN", OSF_TOKEN)
    manifest = tmp_path / "home" / "manifest.yaml"
    path = place(tmp_path, data)
    first = publish(path, "tiny", manifest=manifest,
                    deposit=ZenodoDeposit(endpoint=zenodo_emulator.origin, limit=LIMIT))
    assert first.parts == 3
    publish(path, "tiny", manifest=manifest, deposit=OsfDeposit("lab01/ckpt", endpoint=osf_emulator.origin,
                                                                 limit=LIMIT + 10_000))  # the same parts still fit
    return manifest, zenodo_emulator, osf_emulator


def test_parts_are_listed_once_with_the_whole_and_each_provider_holds_them(published, data):
    manifest, zenodo, osf = published
    entry = load_manifest(manifest).artifact("tiny")
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    pieces = [data[i:i + LIMIT] for i in range(0, len(data), LIMIT)]
    assert [(p.filename, p.size, p.sha256) for p in entry.parts] == [
        (f"tiny.pt.{i + 1:03d}-of-003", len(b), hashlib.sha256(b).hexdigest()) for i, b in enumerate(pieces)]
    assert [m.type for m in entry.mirrors] == ["zenodo", "osf"]
    assert entry.mirrors[0].filename == "tiny.pt" and entry.mirrors[1].path == "ckpt/tiny.pt"
    (record,) = zenodo.records.values()
    assert {k: b.data for k, b in record.files.items() if k != "tiny_info.json"} == {
        p.filename: b for p, b in zip(entry.parts, pieces)}
    assert [osf.file_at("lab01", f"/ckpt/{p.filename}").blob.data for p in entry.parts] == pieces


@pytest.mark.parametrize("mirror_type", ["zenodo", "osf"])
def test_each_mirror_alone_serves_the_whole(published, data, tmp_path, mirror_type):
    manifest, _, _ = published
    fetched = Store(load_manifest(manifest), tmp_path / "cache").fetch("tiny", mirror_type=mirror_type)
    assert fetched.path.read_bytes() == data and fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.path.name == "tiny.pt"
    cache = Store(load_manifest(manifest), tmp_path / "cache").cache
    assert [r.artifact for r in cache.receipts()] == ["tiny"], "the parts left the cache once joined"
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == [fetched.sha256]


def test_parts_come_from_whichever_mirror_has_them(published, data, tmp_path):
    manifest, zenodo, osf = published
    entry = load_manifest(manifest).artifact("tiny")
    (record_id,) = zenodo.records
    zenodo.set_faults(zenodo.content_path(record_id, entry.parts[0].filename), Faults(status=404))
    broken = osf.file_at("lab01", f"/ckpt/{entry.parts[1].filename}")
    osf.wb.set_faults(osf.wb_path(broken), Faults(status=404))
    fetched = Store(load_manifest(manifest), tmp_path / "cache").fetch("tiny")
    assert fetched.path.read_bytes() == data
    served = [(o.kind, o.status) for o in fetched.outcomes]
    assert served.count(("zenodo", "404")) == 1 and served.count(("osf", "ok")) == 1
    assert served.count(("zenodo", "ok")) == 2, "parts 2 and 3 from Zenodo, part 1 from OSF"


def test_parts_that_do_not_make_the_whole_are_refused(published, tmp_path):
    manifest, _, _ = published
    text = manifest.read_text()
    entry = load_manifest(manifest).artifact("tiny")
    manifest.write_text(text.replace(entry.sha256, "f" * 64))
    with pytest.raises(VerificationFailed, match="join into other bytes"):
        Store(load_manifest(manifest), tmp_path / "cache").fetch("tiny", mirror_type="osf")
    assert not (tmp_path / "cache" / "artifacts" / "tiny").exists()


def test_parts_already_fetched_are_kept_when_another_fails(published, data, tmp_path):
    from phasegpt_ckpt.errors import MirrorsExhausted

    manifest, zenodo, _ = published
    entry = load_manifest(manifest).artifact("tiny")
    (record_id,) = zenodo.records
    paths = [zenodo.content_path(record_id, part.filename) for part in entry.parts]
    zenodo.set_faults(paths[1], Faults(status=404))
    store = Store(load_manifest(manifest), tmp_path / "cache")
    with pytest.raises(MirrorsExhausted, match=f"part {entry.parts[1].filename}"):
        store.fetch("tiny", mirror_type="zenodo")
    zenodo.set_faults(paths[1], None)
    assert store.fetch("tiny", mirror_type="zenodo").path.read_bytes() == data
    assert [len([r for r in zenodo.requests_to(p) if r.method == "GET"]) for p in paths] == [1, 2, 1]


def test_a_whole_copy_on_disk_serves_a_split_artifact(tmp_path, data, osf_emulator, monkeypatch):
    osf_emulator.add_node("lab01", write_token=OSF_TOKEN)
    monkeypatch.setenv("OSF_TOKEN", OSF_TOKEN)
    manifest = tmp_path / "manifest.yaml"  # the checkpoint lies in its folder: a local mirror of the whole
    publish(place(tmp_path, data), "tiny", manifest=manifest,
            deposit=OsfDeposit("lab01", endpoint=osf_emulator.origin, limit=LIMIT))
    entry = load_manifest(manifest).artifact("tiny")
    assert len(entry.parts) == 3 and [m.type for m in entry.mirrors] == ["local", "osf"]
    requests_before = len(osf_emulator.wb.log)
    fetched = Store(load_manifest(manifest), tmp_path / "cache").fetch("tiny")
    assert fetched.path.read_bytes() == data and len(osf_emulator.wb.log) == requests_before
