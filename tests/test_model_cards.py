"""Hub model cards: publish writes one (a model-index of the measured claims), verify --eval reads its
claims back when the manifest states none; the card is untrusted input. And the metadata's
training_epochs against the checkpoint's epoch."""
from __future__ import annotations

import hashlib
import json
import logging

import pytest
import yaml
from conftest import CORPUS_SHA256
from olah_server import olah_serving
from tiny_checkpoints import save_ours, tiny_model

from phasegpt_ckpt import Store
from phasegpt_ckpt.proof.claims import MAX_CARD_BYTES, card_claims
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.source.mirrors.hf import HfMirror, model_card_claims

TOKEN = "hf_writerToken0123456789"
REPO = "lab/phasegpt-tiny"
EPOCHS = "epochs (metadata training_epochs vs checkpoint epoch)"
MANIFEST = f"""\
version: 1
artifacts:
  tinyshakespeare:
    kind: dataset
    filename: input.txt
    size: 1115394
    sha256: {CORPUS_SHA256}
    mirrors:
      - {{type: local, path: "CORPUS"}}
"""


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory, corpus_path) -> bytes:
    """A tiny causal checkpoint in our trainer's layout (epoch 18, vocabulary), made once."""
    made = tmp_path_factory.mktemp("checkpoints")
    return save_ours(tiny_model("causal", seed=0), made / "seed0.pt", corpus_path).read_bytes()


@pytest.fixture
def validation_text(tmp_path, corpus_path):
    """The corpus's first 60,000 characters: its last tenth is a validation split quick to measure."""
    path = tmp_path / "first60k.txt"
    path.write_bytes(corpus_path.read_bytes()[:60_000])
    return path


@pytest.fixture
def published(tmp_path, corpus_path, checkpoint_bytes, hub_emulator, monkeypatch, run_cli, validation_text):
    """``publish --eval --to hf:lab/phasegpt-tiny`` against the emulator: (manifest, the CLI's JSON answer)."""
    hub_emulator.add_writer(TOKEN, "lab")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    manifest = tmp_path / "manifest" / "lab.yaml"
    manifest.parent.mkdir()
    manifest.write_text(MANIFEST.replace("CORPUS", str(corpus_path)))
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(checkpoint_bytes)
    code, out, err = run_cli("publish", checkpoint, "--name", "tiny", "--manifest", manifest, "--eval",
                             "--data", validation_text, "--to", f"hf:{REPO}", "--endpoint", hub_emulator.origin,
                             "--json")
    assert code == 0, err
    return manifest, json.loads(out)


def download_card(hub, revision: str, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download

    path = hf_hub_download(REPO, "README.md", revision=revision, endpoint=hub.origin, local_dir=tmp_path / "card")
    return ModelCard.load(path)


def without_claims(manifest, revision: str | None = None):
    """A fresh manifest whose ``tiny`` states no claims (its Hub mirror pinned to ``revision``, if given)."""
    document = yaml.safe_load(manifest.read_text())
    tiny = document["artifacts"]["tiny"]
    tiny.pop("claims", None)
    if revision is not None:
        for mirror in tiny["mirrors"]:
            mirror["revision"] = revision
    fresh = manifest.with_name(f"fresh-{revision or 'same'}.yaml")
    fresh.write_text(yaml.safe_dump(document, sort_keys=False))
    assert load_manifest(fresh).artifact("tiny").claims == {}
    return fresh


def claim_rows(run_cli, manifest, validation_text) -> tuple[int, set]:
    code, out, err = run_cli("--manifest", manifest, "verify", "tiny", "--eval", "--data", validation_text, "--json")
    (verdict,) = json.loads(out)
    return code, {(c["claim"], c["source"], c["verdict"]) for c in verdict["evaluation"]["claims"]}


def test_publish_writes_the_model_card_in_the_same_commit(published, hub_emulator, tmp_path):
    manifest, answer = published
    repo = hub_emulator.repos[REPO]
    assert set(repo.files) == {"best.pt", "best_info.json", "README.md"} and answer["revision"] == repo.commit
    assert len(hub_emulator.commits) == 1  # the card travels with the files

    card = download_card(hub_emulator, answer["revision"], tmp_path)
    claims = load_manifest(manifest).artifact("tiny").claims
    assert card.data.license == "mit" and card.data.datasets == ["tinyshakespeare"]
    assert {"phasegpt", "kuramoto"} <= set(card.data.tags)
    metrics = {r.metric_type: r for r in card.data.eval_results}
    assert set(metrics) == {"validation_ppl", "order_parameter_R", "order_parameter_R_layer_1"}
    for name in ("validation_ppl", "order_parameter_R"):
        assert metrics[name].metric_value == claims[name].value
        assert metrics[name].metric_args["tolerance"] == claims[name].tolerance
        assert metrics[name].metric_args["sha256"] == answer["sha256"]
    assert metrics["order_parameter_R_layer_1"].metric_value == pytest.approx(claims["order_parameter_R"].value,
                                                                              abs=1e-4)  # one phase layer


def test_publish_without_eval_writes_a_card_without_results(tmp_path, corpus_path, checkpoint_bytes, hub_emulator,
                                                            monkeypatch, run_cli):
    hub_emulator.add_writer(TOKEN, "lab")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    manifest = tmp_path / "lab.yaml"
    manifest.write_text(MANIFEST.replace("CORPUS", str(corpus_path)))
    (tmp_path / "run").mkdir()
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.write_bytes(checkpoint_bytes)
    code, out, err = run_cli("publish", checkpoint, "--name", "tiny", "--manifest", manifest,
                             "--to", f"hf:{REPO}", "--endpoint", hub_emulator.origin, "--json")
    assert code == 0, err
    card = download_card(hub_emulator, json.loads(out)["revision"], tmp_path)
    assert card.data.eval_results is None and card.data.license == "mit" and "phasegpt" in card.data.tags
    assert "model-index" not in card.content


def test_verify_reads_the_claims_of_the_card_when_the_manifest_states_none(published, run_cli, validation_text):
    manifest, answer = published
    code, rows = claim_rows(run_cli, without_claims(manifest), validation_text)
    assert code == 0
    assert rows == {("validation_ppl", "model card", "pass"), ("order_parameter_R", "model card", "pass"),
                    ("validation_loss", "metadata", "no tolerance")}  # the metadata's PPL and R agree: not repeated


def test_a_tampered_card_fails_its_claim(published, hub_emulator, run_cli, validation_text, tmp_path):
    from huggingface_hub import HfApi

    manifest, answer = published
    card = download_card(hub_emulator, answer["revision"], tmp_path)
    ppl = next(r for r in card.data.eval_results if r.metric_type == "validation_ppl")
    tampered = str(card).replace(f"value: {ppl.metric_value}", f"value: {ppl.metric_value * 0.9:.4f}", 1)
    assert tampered != str(card)
    commit = HfApi(endpoint=hub_emulator.origin).upload_file(
        path_or_fileobj=tampered.encode(), path_in_repo="README.md", repo_id=REPO, commit_message="Better numbers")

    code, rows = claim_rows(run_cli, without_claims(manifest, commit.oid), validation_text)
    assert code == 1
    assert ("validation_ppl", "model card", "FAIL") in rows and ("order_parameter_R", "model card", "pass") in rows


def test_the_manifest_claims_win_over_the_card(published, run_cli, validation_text):
    manifest, _ = published
    code, rows = claim_rows(run_cli, manifest, validation_text)
    assert code == 0 and {source for _, source, _ in rows} == {"manifest", "metadata"}


def test_offline_reads_the_card_from_the_hub_cache_only(published, hub_emulator, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read once per process, at import
    manifest, answer = published
    mirror = load_manifest(manifest).artifact("tiny").mirrors[0]
    assert isinstance(mirror, HfMirror) and mirror.revision == answer["revision"]
    before = len(hub_emulator.log)
    assert model_card_claims(mirror, offline=True) == []  # never downloaded: nothing
    assert len(hub_emulator.log) == before  # and nothing asked
    online = model_card_claims(mirror, sha256=answer["sha256"])
    assert [c.claim for c in online] == ["validation_ppl", "order_parameter_R"]
    before = len(hub_emulator.log)
    assert model_card_claims(mirror, sha256=answer["sha256"], offline=True) == online
    assert len(hub_emulator.log) == before


def test_a_card_about_other_bytes_gives_no_claims(published):
    manifest, answer = published
    mirror = load_manifest(manifest).artifact("tiny").mirrors[0]
    assert model_card_claims(mirror, sha256="0" * 64) == []


# -- the card is untrusted input ---------------------------------------------------------------------


def card_repo(hub, text: bytes) -> HfMirror:
    hub.add_repo("lab/cards")
    hub.put("lab/cards", "README.md", text, lfs=False)
    return HfMirror(repo="lab/cards", filename="best.pt", endpoint=hub.origin)


@pytest.mark.parametrize("card", [
    b"---\nmodel-index: [unclosed\n---\n# card\n",
    (b"---\nmodel-index:\n- name: x\n  results:\n  - task: {type: t}\n    metrics: [{type: validation_ppl, "
     b"value: 1}]\n    dataset: \n---\n"),  # no dataset: huggingface_hub cannot read the model-index
    (b"---\na: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     b"e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n---\n"),  # a billion laughs, small
])
def test_a_malformed_card_is_a_warning_and_no_claims(hub_emulator, caplog, card):
    mirror = card_repo(hub_emulator, card)
    with caplog.at_level(logging.WARNING, logger="phasegpt_ckpt"):
        assert model_card_claims(mirror) == []
    assert any(r.levelno == logging.WARNING and "lab/cards" in r.getMessage() for r in caplog.records)


def test_a_card_over_the_size_limit_is_refused_before_it_is_downloaded(hub_emulator, caplog):
    big = b"---\nlicense: mit\n---\n" + b"x" * MAX_CARD_BYTES
    mirror = card_repo(hub_emulator, big)
    with caplog.at_level(logging.WARNING, logger="phasegpt_ckpt"):
        assert model_card_claims(mirror) == []
    assert "over 256 KiB" in caplog.text
    assert not [r for r in hub_emulator.log if r.method == "GET" and "README.md" in r.path]  # HEAD only
    assert card_claims(big.decode()) == []  # the parser refuses it too


@pytest.mark.parametrize("metric, kept", [
    ("{type: validation_ppl, value: .nan, args: {tolerance: 0.1}}", []),
    ("{type: validation_ppl, value: .inf}", []),
    ("{type: validation_ppl, value: '4.85'}", []),
    ("{type: validation_ppl, value: true}", []),
    ("{type: rm -rf, value: 4.85}", []),
    ("{type: validation_ppl, value: 4.85, args: {tolerance: -1}}", [("validation_ppl", 4.85, None)]),
    ("{type: validation_ppl, value: 4.85, args: [1]}", [("validation_ppl", 4.85, None)]),
    ("{type: order_parameter_R, value: 0.5, args: {tolerance: 0.01}}", [("order_parameter_R", 0.5, 0.01)]),
])
def test_only_known_names_with_finite_numbers_become_claims(metric, kept):
    card = ("---\nmodel-index:\n- name: tiny\n  results:\n  - task: {type: text-generation}\n"
            f"    dataset: {{type: tinyshakespeare, name: tinyshakespeare}}\n    metrics:\n    - {metric}\n---\n")
    assert [(c.claim, c.value, c.tolerance) for c in card_claims(card)] == kept


def test_a_repository_without_a_card_gives_no_claims(hub_emulator, caplog):
    hub_emulator.add_repo("lab/bare")
    with caplog.at_level(logging.WARNING, logger="phasegpt_ckpt"):
        assert model_card_claims(HfMirror(repo="lab/bare", filename="x.pt", endpoint=hub_emulator.origin)) == []
    assert not caplog.records  # no card is no problem


# -- training_epochs against the checkpoint's epoch ------------------------------------------------------


@pytest.mark.parametrize("training_epochs, status, words", [
    (20, "ok", "training_epochs is the planned total"),
    (18, "ok", "the epoch this checkpoint was saved at"),
    (17, "fail", "past the 17 epochs"),
])
def test_training_epochs_against_the_checkpoint_epoch(tmp_path, corpus_path, checkpoint_bytes, training_epochs,
                                                      status, words):
    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(checkpoint_bytes)  # its epoch is 18, as the seed's best model
    sha256 = hashlib.sha256(checkpoint_bytes).hexdigest()
    info = tmp_path / "tiny_info.json"
    info.write_text(json.dumps({"model_name": "tiny", "training_epochs": training_epochs, "sha256": sha256}))

    def local(path, kind, **extra):
        data = path.read_bytes()
        return {"kind": kind, "filename": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                **extra, "mirrors": [{"type": "local", "path": str(path)}]}

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "artifacts": {
        "tiny": local(checkpoint, "checkpoint", metadata="tiny_info"), "tiny_info": local(info, "metadata"),
        "tinyshakespeare": local(corpus_path, "dataset")}}))

    verdict = Store(load_manifest(manifest), tmp_path / "cache").verify("tiny")
    (row,) = [row for row in verdict.checks if row.check == EPOCHS]
    assert row.status == status and words in row.actual and verdict.ok == (status == "ok")
    assert row.expected == f"at most {training_epochs}"


def test_no_epochs_row_without_training_epochs(tmp_path, corpus_path, checkpoint_bytes):
    from tiny_checkpoints import manifest_for

    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(checkpoint_bytes)
    verdict = Store(load_manifest(manifest_for(tmp_path, checkpoint, corpus_path)), tmp_path / "cache").verify("tiny")
    assert verdict.ok and EPOCHS not in [row.check for row in verdict.checks]


# -- through olah: a real Hub mirror (it takes no uploads: the card publish wrote is committed by hand) -----


def test_our_card_reader_through_olah(tmp_path):
    import subprocess
    from types import SimpleNamespace

    from phasegpt_ckpt.store.publish import model_card

    sha256 = "ab" * 32
    card = model_card("tiny", "best.pt", {}, sha256=sha256, measured=SimpleNamespace(R=[]),
                      claims={"validation_ppl": {"value": 7.4281, "tolerance": 0.0371}})
    repo = tmp_path / "mirrors" / "models" / "org" / "ckpt"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text(card)
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "card"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    with olah_serving(tmp_path / "mirrors", tmp_path, "/org/ckpt/resolve/main/README.md") as origin:
        mirror = HfMirror(repo="org/ckpt", filename="best.pt", revision=commit, endpoint=origin)
        claims = model_card_claims(mirror, sha256=sha256)
    assert [(c.claim, c.source, c.value, c.tolerance) for c in claims] == [
        ("validation_ppl", "model card", 7.4281, 0.0371)]
