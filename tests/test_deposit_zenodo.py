"""publish --to zenodo through the deposit emulator: draft, publish, new version; faults that leave a draft."""
from __future__ import annotations

import hashlib
import json

import pytest
from deposit_files import error_lines, place
from emulators.zenodo import ZenodoEmulator

from phasegpt_ckpt import Store
from phasegpt_ckpt.source.manifest import load_manifest

TOKEN = "zenodoDepositTokenNeverShown0123"


@pytest.fixture
def zenodo(zenodo_emulator, monkeypatch):
    zenodo_emulator.allow(TOKEN)
    monkeypatch.setenv("ZENODO_TOKEN", TOKEN)
    return zenodo_emulator


def publish_cli(run_cli, zenodo, manifest, path, *extra):
    return run_cli("publish", path, "--name", "tiny", "--manifest", manifest, "--to", "zenodo",
                   "--endpoint", zenodo.origin, *extra)


def zenodo_mirrors(manifest):
    return [m for m in load_manifest(manifest).artifact("tiny").mirrors if m.type == "zenodo"]


def fetch_alone(manifest, cache, mirror_type="zenodo"):
    return Store(load_manifest(manifest), cache).fetch("tiny", mirror_type=mirror_type, force=True)


def test_draft_then_publish_then_new_version(tmp_path, zenodo, checkpoint_bytes, run_cli):
    manifest = tmp_path / "manifest.yaml"
    path = place(tmp_path, checkpoint_bytes[0])

    code, out, err = publish_cli(run_cli, zenodo, manifest, path, "--draft")
    assert code == 0, err
    (draft,) = zenodo.depositions.values()
    info = tmp_path / "run" / "tiny_info.json"
    assert draft.state == "unsubmitted" and draft.files == {"tiny.pt": checkpoint_bytes[0], "tiny_info.json":
                                                             info.read_bytes()}
    assert json.loads(info.read_text())["doi"] == f"10.5281/zenodo.{draft.id}", "the DOI reserved for the draft"
    assert draft.metadata["creators"] == [{"name": "Doe, Jane"}] and draft.metadata["license"] == "mit"
    assert {"identifier": "https://github.com/example/phasegpt", "relation": "isSupplementTo",
            "resource_type": "software"} in draft.metadata["related_identifiers"]
    (mirror,) = zenodo_mirrors(manifest)
    assert (mirror.type, mirror.record, mirror.published) == ("zenodo", str(draft.id), False)
    assert "doi" not in out

    puts_before = len([r for r in zenodo.log if r.method == "PUT" and r.path.startswith("/api/files/")])
    code, out, err = publish_cli(run_cli, zenodo, manifest, path)  # the same command, without --draft
    assert code == 0, err
    assert list(zenodo.depositions) == [draft.id], "the draft was reused, not a second one made"
    assert len([r for r in zenodo.log if r.method == "PUT" and r.path.startswith("/api/files/")]) == puts_before
    doi = f"10.5281/zenodo.{draft.id}"
    assert f"doi {doi}" in out
    entry = load_manifest(manifest).artifact("tiny")
    assert [(m.doi, m.published) for m in zenodo_mirrors(manifest)] == [(doi, True)]
    assert entry.md5 == hashlib.md5(checkpoint_bytes[0]).hexdigest()
    assert json.loads(info.read_text())["doi"] == doi
    assert fetch_alone(manifest, tmp_path / "c1").path.read_bytes() == checkpoint_bytes[0]
    (info_mirror,) = [m for m in load_manifest(manifest).artifact("tiny_info").mirrors if m.type == "zenodo"]
    assert (info_mirror.doi, info_mirror.filename) == (doi, "tiny_info.json")
    described = Store(load_manifest(manifest), tmp_path / "c1").fetch("tiny_info", mirror_type="zenodo")
    assert json.loads(described.path.read_text())["doi"] == doi

    second = place(tmp_path / "v2", checkpoint_bytes[1])
    code, out, err = publish_cli(run_cli, zenodo, manifest, second, "--new-version", doi)
    assert code == 0, err
    newer = max(zenodo.depositions.values(), key=lambda d: d.id)
    assert newer.id != draft.id and newer.concept == draft.concept and newer.state == "done"
    assert newer.files["tiny.pt"] == checkpoint_bytes[1] and set(newer.files) == {"tiny.pt", "tiny_info.json"}
    assert json.loads(newer.files["tiny_info.json"])["doi"] == f"10.5281/zenodo.{newer.id}"
    assert zenodo.records[draft.id].files["tiny.pt"].data == checkpoint_bytes[0], "the first version is untouched"
    entry = load_manifest(manifest).artifact("tiny")
    assert [m.doi for m in zenodo_mirrors(manifest)] == [f"10.5281/zenodo.{newer.id}"]
    assert fetch_alone(manifest, tmp_path / "c2").path.read_bytes() == checkpoint_bytes[1]


@pytest.mark.parametrize("token, words", [(None, "set ZENODO_TOKEN"),
                                          ("t\u00f6k\u00ebn\u2713", "ZENODO_TOKEN holds a character an HTTP header")],
                         ids=["missing", "not-latin-1"])
def test_a_missing_or_unsendable_token_is_one_line_before_any_request(tmp_path, zenodo_emulator, checkpoint_bytes,
                                                                      run_cli, monkeypatch, token, words):
    if token is not None:
        monkeypatch.setenv("ZENODO_TOKEN", token)
    path = place(tmp_path, checkpoint_bytes[0])
    code, out, err = publish_cli(run_cli, zenodo_emulator, tmp_path / "m.yaml", path)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert zenodo_emulator.log == [] and not (tmp_path / "m.yaml").exists()


def test_metadata_zenodo_needs_or_rejects_is_one_line(tmp_path, zenodo, checkpoint_bytes, run_cli):
    path = place(tmp_path, checkpoint_bytes[0], creators=())
    code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", path)
    assert code == 2 and "creators" in err and len(err.strip().splitlines()) == 1
    assert zenodo.log == [], "refused before any byte moves"

    info = tmp_path / "run" / "tiny_info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "creators": ["Doe, Jane"], "license": "WTFPL"}))
    code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", path)
    assert code == 2
    assert error_lines(err) == ["error: Zenodo refused the deposit: metadata.license: Invalid value. (HTTP 400)"]
    assert zenodo.depositions == {} and not (tmp_path / "m.yaml").exists()


def test_upload_dropped_mid_body_is_retried_without_a_duplicate(tmp_path, zenodo, checkpoint_bytes, run_cli):
    path = place(tmp_path, checkpoint_bytes[0])
    key_path = zenodo.bucket_path(zenodo.next_id(), "tiny.pt")
    zenodo.cut_upload(key_path, after=len(checkpoint_bytes[0]) // 2)
    code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", path)
    assert code == 0, err
    puts = [r for r in zenodo.log if r.method == "PUT" and r.path == key_path]
    assert len(puts) == 2 and puts[0].status is None and puts[1].status == 201
    assert all(r.headers["Content-Length"] == str(len(checkpoint_bytes[0])) for r in puts)
    (deposition,) = zenodo.depositions.values()
    assert list(deposition.files) == ["tiny.pt", "tiny_info.json"] and deposition.state == "done"


def test_lost_publish_answer_is_read_back(tmp_path, zenodo, checkpoint_bytes, run_cli):
    path = place(tmp_path, checkpoint_bytes[0])
    upcoming = zenodo.next_id()
    zenodo.lose_answer(zenodo.deposition_path(upcoming, "publish"), method="POST")
    code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", path)
    assert code == 0, err
    assert f"doi 10.5281/zenodo.{upcoming}" in out
    assert len(zenodo.requests_to(zenodo.deposition_path(upcoming, "publish"))) == 1, "publish is never repeated"


def test_5xx_on_publish_leaves_the_draft_and_the_manifest(tmp_path, zenodo, checkpoint_bytes, run_cli):
    from emulators.fileserver import Faults

    path = place(tmp_path, checkpoint_bytes[0])
    manifest = tmp_path / "m.yaml"
    upcoming = zenodo.next_id()
    zenodo.set_faults(zenodo.deposition_path(upcoming, "publish"), Faults(status=500, methods=("POST",), times=1))
    code, out, err = publish_cli(run_cli, zenodo, manifest, path)
    assert code == 3
    (line,) = error_lines(err)
    assert f"draft {upcoming}" in line and "left unpublished" in line
    assert not manifest.exists() and zenodo.records == {}
    assert json.loads((tmp_path / "run" / "tiny_info.json").read_text())["doi"] is None, "no DOI nothing has"

    code, out, err = publish_cli(run_cli, zenodo, manifest, path)  # the same command resumes
    assert code == 0, err
    assert list(zenodo.depositions) == [upcoming] and f"doi 10.5281/zenodo.{upcoming}" in out


def test_a_checksum_the_server_disagrees_with_publishes_nothing(tmp_path, zenodo, checkpoint_bytes, run_cli):
    path = place(tmp_path, checkpoint_bytes[0])
    manifest = tmp_path / "m.yaml"
    zenodo.checksum_lies = True
    code, out, err = publish_cli(run_cli, zenodo, manifest, path)
    assert code == 1
    (draft,) = zenodo.depositions.values()
    (line,) = error_lines(err)
    assert "md5" in line and f"draft {draft.id}" in line
    assert draft.state == "unsubmitted" and zenodo.records == {} and not manifest.exists()


def test_a_retried_put_whose_answer_was_lost_replaces_rather_than_duplicates(tmp_path, zenodo, checkpoint_bytes,
                                                                             run_cli):
    path = place(tmp_path, checkpoint_bytes[0])
    key_path = zenodo.bucket_path(zenodo.next_id(), "tiny.pt")
    zenodo.lose_answer(key_path)
    code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", path)
    assert code == 0, err
    assert [r.status for r in zenodo.requests_to(key_path)] == [None, 201], "stored, answer lost, stored again"
    (deposition,) = zenodo.depositions.values()
    assert list(deposition.files) == ["tiny.pt", "tiny_info.json"]
    assert zenodo.records[deposition.id].files["tiny.pt"].data == checkpoint_bytes[0]


def test_sandbox_mints_a_test_prefix_doi_that_fetch_follows(tmp_path, checkpoint_bytes, run_cli, monkeypatch):
    from emulators.zenodo import ZenodoEmulator

    monkeypatch.setenv("ZENODO_TOKEN", TOKEN)
    with ZenodoEmulator(sandbox=True) as sandbox:
        sandbox.allow(TOKEN)
        manifest = tmp_path / "m.yaml"
        code, out, err = run_cli("publish", place(tmp_path, checkpoint_bytes[0]), "--name", "tiny", "--manifest",
                                 manifest, "--to", "zenodo-sandbox", "--endpoint", sandbox.origin)
        assert code == 0, err
        (mirror,) = zenodo_mirrors(manifest)
        assert mirror.doi.startswith("10.5072/zenodo.")
        assert fetch_alone(manifest, tmp_path / "c").path.read_bytes() == checkpoint_bytes[0]


def test_a_new_version_that_failed_to_publish_is_resumed_not_versioned_again(tmp_path, zenodo, checkpoint_bytes,
                                                                             run_cli):
    from emulators.fileserver import Faults

    manifest = tmp_path / "m.yaml"
    assert publish_cli(run_cli, zenodo, manifest, place(tmp_path, checkpoint_bytes[0]))[0] == 0
    (first,) = zenodo.depositions
    second = place(tmp_path / "v2", checkpoint_bytes[1])
    draft = zenodo.next_id()
    zenodo.set_faults(zenodo.deposition_path(draft, "publish"), Faults(status=503, methods=("POST",)))
    code, out, err = publish_cli(run_cli, zenodo, manifest, second, "--new-version", str(first))
    assert code == 3 and f"draft {draft}" in err
    assert [m.doi for m in zenodo_mirrors(manifest)] == [f"10.5281/zenodo.{first}"], "the manifest is untouched"
    zenodo.set_faults(zenodo.deposition_path(draft, "publish"), None)
    code, out, err = publish_cli(run_cli, zenodo, manifest, second, "--new-version", str(first))
    assert code == 0, err
    assert len(zenodo.requests_to(zenodo.deposition_path(first, "newversion"))) == 1
    assert len(zenodo.depositions) == 2 and all(d.state == "done" for d in zenodo.depositions.values())


def test_a_token_zenodo_refuses_is_one_line_exit_2(tmp_path, zenodo_emulator, checkpoint_bytes, run_cli, monkeypatch):
    zenodo_emulator.allow(TOKEN, scopes=("deposit:write",))  # may not publish
    monkeypatch.setenv("ZENODO_TOKEN", "zenodoNotAKnownToken000000000000")
    code, out, err = publish_cli(run_cli, zenodo_emulator, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]))
    assert code == 2
    (line,) = error_lines(err)
    assert "Zenodo refused ZENODO_TOKEN" in line and not (tmp_path / "m.yaml").exists()


def test_a_token_never_goes_to_an_endpoint_no_one_trusted(tmp_path, zenodo, checkpoint_bytes, run_cli, monkeypatch):
    monkeypatch.delenv("PHASEGPT_TRUSTED_ENDPOINTS")
    code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not sending ZENODO_TOKEN" in err and "PHASEGPT_TRUSTED_ENDPOINTS" in err and TOKEN not in err
    assert zenodo.log == []


@pytest.mark.parametrize("action", ["create", "newversion"])
def test_a_draft_whose_creation_answer_was_lost_is_found_not_made_twice(tmp_path, zenodo, checkpoint_bytes, run_cli,
                                                                       action):
    manifest, extra = tmp_path / "m.yaml", []
    if action == "newversion":
        assert publish_cli(run_cli, zenodo, manifest, place(tmp_path, checkpoint_bytes[0]))[0] == 0
        (first,) = zenodo.depositions
        zenodo.lose_answer(zenodo.deposition_path(first, "newversion"), method="POST")
        extra = ["--new-version", str(first)]
    else:
        zenodo.lose_answer(zenodo.deposition_path(0).rsplit("/", 1)[0], method="POST")
    code, out, err = publish_cli(run_cli, zenodo, manifest, place(tmp_path / "v", checkpoint_bytes[1]), *extra)
    assert code == 0, err
    assert "although its answer was lost" in err
    assert len(zenodo.depositions) == (2 if extra else 1) and all(d.state == "done" for d in zenodo.depositions.values())


def test_the_doi_replaces_the_placeholder_that_announced_it(tmp_path, zenodo, checkpoint_bytes, run_cli):
    manifest = tmp_path / "home" / "m.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        "version: 1\nartifacts:\n  tiny:\n    kind: checkpoint   # ours\n    filename: tiny.pt\n    mirrors:\n"
        '      - {type: url, url: "https://example.org/tiny.pt", published: false}\n'
        '      - {type: zenodo, doi: "10.5281/zenodo.XXXXXXX", filename: tiny.pt, published: false}  # to come\n')
    code, out, err = publish_cli(run_cli, zenodo, manifest, place(tmp_path, checkpoint_bytes[0]))
    assert code == 0, err
    (record,) = zenodo.records
    mirrors = load_manifest(manifest).artifact("tiny").mirrors
    assert [(m.type, m.published) for m in mirrors] == [("url", False), ("zenodo", True)]
    assert mirrors[1].doi == f"10.5281/zenodo.{record}" and "XXXXXXX" not in manifest.read_text()
    assert "# ours" in manifest.read_text() and "# to come" in manifest.read_text()


class ZenodoAnsweringBadly(ZenodoEmulator):
    """A Zenodo whose answer to a new deposition lacks what the API documents (``links``, or an object)."""

    answer = None

    def create(self, request) -> None:
        request.send_json(self.answer, 201)


@pytest.mark.parametrize("answer", [{"id": 9}, [], {"id": 9, "links": "elsewhere"}],
                         ids=["no-links", "a-list", "links-a-string"])
def test_a_deposition_answer_without_what_the_api_documents_is_one_line_exit_3(
        tmp_path, checkpoint_bytes, run_cli, monkeypatch, answer):
    monkeypatch.setenv("ZENODO_TOKEN", TOKEN)
    with ZenodoAnsweringBadly() as zenodo:
        zenodo.allow(TOKEN)
        zenodo.answer = answer
        code, out, err = publish_cli(run_cli, zenodo, tmp_path / "m.yaml", place(tmp_path, checkpoint_bytes[0]))
    (line,) = error_lines(err)
    assert code == 3 and "answered without what its API documents" in line and "Traceback" not in err
    assert not (tmp_path / "m.yaml").exists()
