"""publish --to osf:NODE[/folder] through the WaterButler emulator; osfclient's upload against it too."""
from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest
from deposit_files import error_lines, place

from phasegpt_ckpt import Store
from phasegpt_ckpt.source.manifest import load_manifest

TOKEN = "osfWriteTokenNeverShown012345678"


@pytest.fixture
def osf(osf_emulator, monkeypatch):
    osf_emulator.add_node("lab01", write_token=TOKEN)
    monkeypatch.setenv("OSF_TOKEN", TOKEN)
    return osf_emulator


def publish_cli(run_cli, osf, manifest, path, target="osf:lab01/checkpoints/tiny"):
    return run_cli("publish", path, "--name", "tiny", "--manifest", manifest, "--to", target,
                   "--endpoint", osf.origin)


def osf_mirrors(manifest):
    return [m for m in load_manifest(manifest).artifact("tiny").mirrors if m.type == "osf"]


def test_new_file_then_new_version_in_folders_made_on_the_way(tmp_path, osf, checkpoint_bytes, run_cli):
    manifest = tmp_path / "manifest.yaml"
    code, out, err = publish_cli(run_cli, osf, manifest, place(tmp_path, checkpoint_bytes[0]))
    assert code == 0, err
    stored = osf.file_at("lab01", "/checkpoints/tiny/tiny.pt")
    assert stored.blob.data == checkpoint_bytes[0] and stored.version == 1
    assert [(m.node, m.path) for m in osf_mirrors(manifest)] == [("lab01", "checkpoints/tiny/tiny.pt")]
    fetched = Store(load_manifest(manifest), tmp_path / "c1").fetch("tiny", mirror_type="osf")
    assert fetched.path.read_bytes() == checkpoint_bytes[0]

    code, out, err = publish_cli(run_cli, osf, manifest, place(tmp_path / "v2", checkpoint_bytes[1]))
    assert code == 0, err
    assert osf.file_at("lab01", "/checkpoints/tiny/tiny.pt") is stored and stored.version == 2
    assert len(osf_mirrors(manifest)) == 1
    fetched = Store(load_manifest(manifest), tmp_path / "c2").fetch("tiny", mirror_type="osf")
    assert fetched.path.read_bytes() == checkpoint_bytes[1]
    puts = [r for r in osf.wb.log if r.method == "PUT"]
    assert [(r.query.partition("&")[0], r.status) for r in puts] == [
        ("kind=folder", 201), ("kind=folder", 201), ("kind=file", 201), ("kind=file", 201), ("", 200), ("", 200)]
    assert [int(r.headers["Content-Length"]) for r in puts[2::2]] == [len(checkpoint_bytes[0]), len(checkpoint_bytes[1])]
    info = Store(load_manifest(manifest), tmp_path / "c3").fetch("tiny_info", mirror_type="osf")
    assert info.path.read_bytes() == (tmp_path / "v2" / "run" / "tiny_info.json").read_bytes()


def test_a_create_whose_answer_was_lost_meets_409_and_is_done(tmp_path, osf, checkpoint_bytes, run_cli):
    osf.put("lab01", "checkpoints/keep.txt", b"a file already there")
    osf.wb.lose_answer(osf.folder_upload_path("lab01", "/checkpoints/"))
    code, out, err = publish_cli(run_cli, osf, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]),
                                 "osf:lab01/checkpoints")
    assert code == 0, err
    statuses = [r.status for r in osf.wb.log if r.method == "PUT" and "name=tiny.pt" in r.query]
    assert statuses == [None, 409], "the retry met the file the lost answer had made"
    assert osf.file_at("lab01", "/checkpoints/tiny.pt").version == 1


def test_upload_dropped_mid_body_is_sent_again(tmp_path, osf, checkpoint_bytes, run_cli):
    osf.wb.cut_upload(osf.folder_upload_path("lab01"), after=1000)
    code, out, err = publish_cli(run_cli, osf, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]), "osf:lab01")
    assert code == 0, err
    assert [r.status for r in osf.wb.log if r.method == "PUT" and "name=tiny.pt" in r.query] == [None, 201]
    assert osf.file_at("lab01", "/tiny.pt").blob.data == checkpoint_bytes[0]


def test_a_sha256_the_server_disagrees_with_is_not_listed(tmp_path, osf, checkpoint_bytes, run_cli):
    manifest = tmp_path / "m.yaml"
    osf.sha256_lies = True
    code, out, err = publish_cli(run_cli, osf, manifest, place(tmp_path, checkpoint_bytes[0]))
    assert code == 1
    (line,) = error_lines(err)
    assert "sha256" in line and "not listing it" in line and not manifest.exists()


@pytest.mark.parametrize("target, token, words", [
    ("osf:nosuch", TOKEN, "OSF project nosuch"),
    ("osf:lab01", "someoneElsesToken0000000000000000", "OSF refused to let OSF_TOKEN write to project lab01"),
    ("osf:lab01", None, "set OSF_TOKEN"),
    ("osf:lab01", "t\u00f6k\u00ebn\u2713-no-header-carries-it", "OSF_TOKEN holds a character an HTTP header cannot carry"),
    ("osf:lab01/a/../../b", TOKEN, "a folder cannot be . or .."),
])
def test_a_node_that_is_missing_or_not_writable_is_one_line(tmp_path, osf, checkpoint_bytes, run_cli, monkeypatch,
                                                           target, token, words):
    if token is None:
        monkeypatch.delenv("OSF_TOKEN")
    else:
        monkeypatch.setenv("OSF_TOKEN", token)
    code, out, err = publish_cli(run_cli, osf, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]), target)
    assert code == 2
    (line,) = error_lines(err)
    assert words in line and not (tmp_path / "m.yaml").exists()
    if "OSF project" not in words and "OSF refused" not in words:
        assert osf.log == []  # refused before any request


@pytest.mark.clients
def test_osfclient_uploads_to_the_emulator_and_meets_409(osf, checkpoint_bytes, tmp_path, monkeypatch):
    """The reference client: new folder, new file, then the same name again (FileExistsError on the 409),
    then --force's update of the existing file."""
    from osfclient import OSF

    # its 1 request/s pacing is courtesy to osf.io, not behaviour under test (17 s here with it)
    monkeypatch.setattr("osfclient.models.session.time", SimpleNamespace(time=time.time, sleep=lambda _: None))
    client = OSF(token=TOKEN)
    client.session.base_url = osf.url("/v2/")
    storage = client.project("lab01").storage("osfstorage")
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    first.write_bytes(checkpoint_bytes[0])
    second.write_bytes(checkpoint_bytes[1])
    with open(first, "rb") as fp:
        storage.create_file("ckpt/tiny.pt", fp)
    stored = osf.file_at("lab01", "/ckpt/tiny.pt")
    assert stored.blob.data == checkpoint_bytes[0]
    with pytest.raises(FileExistsError), open(second, "rb") as fp:
        storage.create_file("ckpt/tiny.pt", fp)
    with open(second, "rb") as fp:
        storage.create_file("ckpt/tiny.pt", fp, force=True)
    assert stored.blob.data == checkpoint_bytes[1] and stored.version == 2
    sent = [r for r in osf.wb.log if r.method == "PUT"]
    assert sent[0].query == "kind=folder&name=ckpt" and sent[0].status == 201
    assert hashlib.sha256(stored.blob.data).hexdigest() == hashlib.sha256(checkpoint_bytes[1]).hexdigest()


@pytest.mark.parametrize("switch, words", [("quota_full", "The quota on this osfstorage project has been exceeded"),
                                           ("max_body", "Bad Request (HTTP 400)")])
def test_a_full_project_or_an_oversized_body_is_one_line_and_asked_once(tmp_path, osf, checkpoint_bytes, run_cli,
                                                                         switch, words):
    setattr(osf, switch, True if switch == "quota_full" else 1000)
    code, out, err = publish_cli(run_cli, osf, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]), "osf:lab01")
    assert code == 2
    (line,) = error_lines(err)
    assert words in line and not (tmp_path / "m.yaml").exists()
    assert len([r for r in osf.wb.log if r.method == "PUT"]) == 1, "never retried"


def test_uploads_report_their_progress(tmp_path, osf, checkpoint_bytes):
    from phasegpt_ckpt.store.deposit.osf import OsfDeposit
    from phasegpt_ckpt.store.publish import publish

    seen: dict[str, list] = {}
    publish(place(tmp_path, checkpoint_bytes[0]), "tiny", manifest=tmp_path / "home" / "m.yaml",
            deposit=OsfDeposit("lab01", endpoint=osf.origin),
            progress=lambda task, done, total, **_: seen.setdefault(task, []).append((done, total)))
    sent = seen["upload tiny.pt"]
    assert sent[-1] == (len(checkpoint_bytes[0]), len(checkpoint_bytes[0])) and len(sent) > 1
    assert [done for done, _ in sent] == sorted(done for done, _ in sent)
    assert "upload tiny_info.json" in seen


def test_a_5xx_is_asked_again_and_a_lasting_one_lists_nothing(tmp_path, osf, checkpoint_bytes, run_cli):
    from emulators.fileserver import Faults

    from phasegpt_ckpt.errors import MirrorsExhausted
    from phasegpt_ckpt.source.web import RetryPolicy
    from phasegpt_ckpt.store.deposit.osf import OsfDeposit
    from phasegpt_ckpt.store.publish import publish

    path = place(tmp_path, checkpoint_bytes[0])
    osf.wb.set_faults(osf.folder_upload_path("lab01"), Faults(status=503, methods=("PUT",), times=1))
    assert publish_cli(run_cli, osf, tmp_path / "a.yaml", path, "osf:lab01")[0] == 0
    assert [r.status for r in osf.wb.log if "name=tiny.pt" in r.query] == [503, 201]

    osf.wb.set_faults(osf.wb_path(osf.file_at("lab01", "/tiny.pt")), Faults(status=502, methods=("PUT",)))
    fast = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02)
    with pytest.raises(MirrorsExhausted, match=r"HTTP 502\).*nothing was listed"):
        publish(place(tmp_path / "v2", checkpoint_bytes[1]), "tiny", manifest=tmp_path / "b.yaml",
                deposit=OsfDeposit("lab01", endpoint=osf.origin, policy=fast))
    assert not (tmp_path / "b.yaml").exists()
    assert [r.status for r in osf.wb.log if r.method == "PUT"][-3:] == [502, 502, 502]
