"""Manifest and metadata JSON: the shipped entries match their sources, every mistake is one BadInput line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.proof.metadata import CheckpointInfo, load_metadata
from phasegpt_ckpt.source.mirrors.local import LocalMirror

SHARED = Path(__file__).resolve().parents[2] / "shared"
SEED_README = SHARED / "seed" / "checkpoints-README.md"
CORPUS_README = SHARED / "data" / "tinyshakespeare" / "README.md"
SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def write(tmp_path: Path, document, name: str = "manifest.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def one_artifact(**entry) -> dict:
    artifact = {"kind": "dataset", "filename": "input.txt",
                "mirrors": [{"type": "url", "url": "https://example.org/input.txt"}], **entry}
    return {"version": 1, "default": "data", "artifacts": {"data": artifact}}


def seed_metadata() -> dict:
    """The metadata JSON block of the seed's checkpoints README, exactly as published."""
    block = re.search(r"```json\n(.*?)```", SEED_README.read_text(), re.S).group(1)
    return json.loads(block)


# -- the shipped manifest -----------------------------------------------------------------------


def test_shipped_manifest_carries_the_seed_and_corpus_facts():
    manifest = load_manifest()
    corpus_facts = CORPUS_README.read_text()
    corpus = manifest.artifact("tinyshakespeare")
    assert f"| size | {corpus.size:,} bytes |" in corpus_facts
    assert f"| sha256 | `{corpus.sha256}` |" in corpus_facts
    bundled, seeds, github = corpus.mirrors  # the copy inside the package, the seed's place: no network needed
    assert (bundled.type, bundled.compression, bundled.path.is_file()) == ("local", "gzip", True)
    assert (seeds.type, seeds.base, seeds.path.as_posix()) == ("local", "cwd", "data/shakespeare/input.txt")
    assert github.url.endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")

    best = manifest.artifact()  # the default
    assert best.name == "best_model" and best.sha256 is None and best.metadata == "best_model_info"
    assert (best.claims["validation_ppl"].value, best.claims["validation_ppl"].tolerance) == (4.85, 0.05)
    assert (best.claims["order_parameter_R"].value, best.claims["order_parameter_R"].tolerance) == (0.8837, 0.0263)
    hub = best.mirrors[0]
    assert (hub.type, hub.repo, hub.filename, hub.revision) == ("hf", "templetwo/phasegpt-checkpoints", "best_model.pt", "main")
    assert [(m.type, m.published) for m in best.mirrors[1:]] == [("zenodo", False), ("osf", False), ("gdrive", False)]

    baseline = manifest.artifact("baseline_gpt2")
    assert baseline.claims["validation_ppl"].value == 4.97
    assert baseline.mirrors and not any(m.published for m in baseline.mirrors)
    assert manifest.artifact("best_model_info").kind == "metadata"


def test_precedence_explicit_path_then_environment_then_shipped(tmp_path, monkeypatch):
    explicit = write(tmp_path, one_artifact(), "explicit.yaml")
    from_env = write(tmp_path, {**one_artifact(), "default": None}, "env.yaml")
    assert load_manifest().default == "best_model"
    monkeypatch.setenv("PHASEGPT_MANIFEST", str(from_env))
    assert load_manifest().default is None
    assert load_manifest(explicit).default == "data"


def test_sha256_is_lowercased_and_loopback_http_allowed(tmp_path):
    manifest = load_manifest(write(tmp_path, one_artifact(
        sha256=SHA.upper(), mirrors=[{"type": "url", "url": "http://127.0.0.1:8000/input.txt"}])))
    assert manifest.artifact("data").sha256 == SHA


def test_local_mirror_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", one_artifact(mirrors=[{"type": "local", "path": "files/input.txt"}]))
    mirror = load_manifest(path).artifact("data").mirrors[0]
    assert isinstance(mirror, LocalMirror) and mirror.path == tmp_path / "sub" / "files" / "input.txt"


def test_placeholders_are_fine_on_unpublished_mirrors(tmp_path):
    mirrors = [{"type": "url", "url": "https://zenodo.org/record/XXXXXXX/files/input.txt", "published": False}]
    assert not load_manifest(write(tmp_path, one_artifact(mirrors=mirrors))).artifact("data").mirrors[0].published


BAD_MANIFESTS = {
    "placeholder id": (one_artifact(mirrors=[{"type": "url", "url": "https://zenodo.org/record/XXXXXXX/files/x"}]),
                       "artifacts.data.mirrors", "published: false"),
    "plain http": (one_artifact(mirrors=[{"type": "url", "url": "http://example.org/input.txt"}]),
                   "artifacts.data.mirrors.0.url.url", "http"),
    "path in filename": (one_artifact(filename="../input.txt"), "artifacts.data.filename", "plain file name"),
    "dot-dot filename": (one_artifact(filename=".."), "artifacts.data.filename", "plain file name"),
    "short sha256": (one_artifact(sha256="abc123"), "artifacts.data.sha256", "64 hex"),
    "negative size": (one_artifact(size=-1), "artifacts.data.size", "greater than or equal to 0"),
    "size as text": (one_artifact(size="1115394"), "artifacts.data.size", "integer"),
    "unknown default": ({**one_artifact(), "default": "nope"}, "default", "nope"),
    "unknown metadata": (one_artifact(metadata="nope"), "artifacts.data.metadata", "nope"),
    "metadata of wrong kind": (one_artifact(metadata="data"), "artifacts.data.metadata", "kind metadata"),
    "unknown top-level key": ({**one_artifact(), "mirrors": []}, "mirrors", "Extra inputs"),
    "unknown artifact key": (one_artifact(sha1="abc"), "artifacts.data.sha1", "Extra inputs"),
    "unknown mirror key": (one_artifact(mirrors=[{"type": "url", "url": "https://e.org/x", "sha": 1}]),
                           "artifacts.data.mirrors.0.url.sha", "Extra inputs"),
    "unknown mirror type": (one_artifact(mirrors=[{"type": "ftp", "url": "ftp://e.org/x"}]),
                            "artifacts.data.mirrors.0", "ftp"),
    "unknown kind": (one_artifact(kind="weights"), "artifacts.data.kind", "checkpoint"),
    "version 2": ({**one_artifact(), "version": 2}, "version", "1"),
    "negative tolerance": (one_artifact(claims={"validation_ppl": {"value": 4.85, "tolerance": -1}}),
                           "artifacts.data.claims.validation_ppl.tolerance", "greater than or equal to 0"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_bad_manifest_is_one_line_naming_the_field(tmp_path, case):
    document, field, words = BAD_MANIFESTS[case]
    with pytest.raises(BadInput) as raised:
        load_manifest(write(tmp_path, document))
    message = str(raised.value)
    assert "\n" not in message and f": {field}: " in message and words in message, message


@pytest.mark.parametrize("content, words", [
    (None, "is a directory"),
    ("", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20, "not a UTF-8 text file"),
    ("version: 1\nartifacts: {data: [unclosed\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_unreadable_manifest_files_are_one_line(tmp_path, content, words):
    path = tmp_path / "m.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(BadInput, match=re.escape(words)) as raised:
        load_manifest(path)
    assert "\n" not in str(raised.value)
    with pytest.raises(BadInput, match="not found"):
        load_manifest(tmp_path / "absent.yaml")


def test_unknown_artifact_lists_the_known_names():
    with pytest.raises(BadInput, match="unknown artifact 'nope' .*best_model, best_model_info"):
        load_manifest().artifact("nope")


# -- metadata JSON ------------------------------------------------------------------------------


def test_seed_metadata_reads_with_placeholders_as_not_published(tmp_path):
    raw = seed_metadata()
    path = tmp_path / "best_model_info.json"
    path.write_text(json.dumps(raw))
    info = load_metadata(path)
    assert info.sha256 is None and info.doi is None  # "[hash]" and "10.5281/zenodo.XXXXXXX"
    assert set(info.not_published()) == {"sha256", "doi"}
    assert (info.validation_ppl, info.order_parameter_R, info.file_size_mb) == (
        raw["validation_ppl"], raw["order_parameter_R"], raw["file_size_mb"])
    assert set(raw) <= set(type(info).model_fields)  # a field for every seed key


def test_metadata_keeps_fields_our_trainer_adds_and_checks_size_rounding():
    info = CheckpointInfo.model_validate({**seed_metadata(), "sha256": SHA.upper(), "file_size_bytes": 1115394,
                                          "order_parameter_R_std": 0.0263})
    assert info.sha256 == SHA and info.model_extra == {"file_size_bytes": 1115394, "order_parameter_R_std": 0.0263}
    # the seed's "970" MB is whole megabytes: anything that rounds to 970 MB or 970 MiB agrees
    assert info.size_agrees(970 * 2**20) and info.size_agrees(970_400_000)
    assert not info.size_agrees(971 * 2**20) and not info.size_agrees(969_000_000)
    assert CheckpointInfo(file_size_mb=1.1).size_agrees(1115394)  # 1.115 MB written to one decimal
    assert not CheckpointInfo(file_size_mb=1.13).size_agrees(1115394)  # 1.125-1.135 MB, 1.125-1.135 MiB
    assert CheckpointInfo().size_agrees(1) is None


@pytest.mark.parametrize("content, words", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "JSON object"),
    ('{"sha256": "abc"}', "sha256: must be 64 hex digits"),
    ('{"validation_ppl": "low"}', "validation_ppl"),
])
def test_bad_metadata_files_are_one_line(tmp_path, content, words):
    path = tmp_path / "info.json"
    path.write_text(content)
    with pytest.raises(BadInput, match=re.escape(words)) as raised:
        load_metadata(path)
    assert "\n" not in str(raised.value)
