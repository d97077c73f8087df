"""Hostile input: checkpoints whose pickle would run code, and manifests and metadata written to break us.

A pickle payload is never run: every command that reads a checkpoint refuses it with one line
and a non-zero exit, and the file the payload would create never appears. Manifests and metadata
documents come from hypothesis, random and adversarial (path traversal, absolute paths, negative
or huge sizes, plain http off loopback, malformed hashes, wrong types, unknown keys, junk nested
deep): each is accepted, or refused with one line, exit 2 and no traceback. Never anything else.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_checkpoints import tiny_model, training_dict

from phasegpt_ckpt import cli
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.proof.metadata import CheckpointInfo, load_metadata

HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_main(*args) -> tuple[int, str, str]:
    """``phasegpt-ckpt ARGS`` through ``cli.main`` (the real exit-code mapping): (exit code, stdout, stderr).

    No pytest fixture: hypothesis calls it many times within one test.
    """
    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["phasegpt-ckpt", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            cli.main()
    finally:
        sys.argv = argv
    return exited.value.code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, expected_code: int) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


# -- pickles that would run code ---------------------------------------------------------------------


class CreatesMarker:
    """Unpickled with full pickle, this creates the directory ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class ExecsCode:
    """Unpickled with full pickle, this runs Python source that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({self.marker!r}).mkdir()",))


@pytest.fixture(scope="module", params=["reduce-in-extras", "exec-in-state-dict"])
def hostile(request, tmp_path_factory, corpus_path):
    """A tiny PhaseGPT checkpoint carrying a payload, its manifest (artifact ``hostile``) and the marker."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    checkpoint = training_dict(tiny_model())

    def save_with_payload(path: Path, marker: Path) -> Path:
        if request.param == "reduce-in-extras":
            checkpoint["rng_state"] = CreatesMarker(marker)
        else:
            checkpoint["model_state_dict"]["lm_head.payload"] = ExecsCode(marker)
        torch.save(checkpoint, path)
        return path

    control = tmp_path / "control-ran"  # the payload is live: full unpickling runs it
    torch.load(save_with_payload(tmp_path / "control.pt", control), weights_only=False)
    assert control.is_dir()
    marker = tmp_path / "the-payload-ran"
    path = save_with_payload(tmp_path / "hostile.pt", marker)
    data = path.read_bytes()
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "default": "hostile", "artifacts": {
        "hostile": {"kind": "checkpoint", "filename": "hostile.pt", "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "mirrors": [{"type": "local", "path": str(path)}]},
        "tinyshakespeare": {"kind": "dataset", "filename": "input.txt", "mirrors": [
            {"type": "local", "path": str(corpus_path)}]}}}))
    return path, manifest, marker


COMMANDS = {
    "info": lambda ref, corpus: ["info", ref],
    "verify": lambda ref, corpus: ["verify", ref],
    "verify --eval": lambda ref, corpus: ["verify", ref, "--eval", "--data", corpus, "--device", "cpu"],
    "generate --model": lambda ref, corpus: ["generate", "To be", "--model", ref, "--data", corpus,
                                             "--max-new-tokens", "5", "--device", "cpu"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_pickle_that_would_run_code_is_refused_everywhere(hostile, command, corpus_path):
    path, manifest, marker = hostile
    code, _, err = run_main("--manifest", manifest, "--cache-dir", path.parent / "cache", "fetch", "hostile")
    assert code == 0, err  # its bytes are the ones the manifest pins: fetching moves bytes, never unpickles
    for ref in (path, "hostile"):  # as a file path, and as a verified artifact of the manifest
        code, out, err = run_main("--manifest", manifest, "--cache-dir", path.parent / "cache",
                                  *COMMANDS[command](ref, corpus_path))
        line = assert_one_line_error(code, err, 1)
        assert "refused" in line and "arbitrary pickle code" in line and "not run" in line
        assert "To be" not in out  # generate wrote nothing
    assert not marker.exists()


# -- manifests from hypothesis ----------------------------------------------------------------------

SHA = "ab" * 32

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)

valid_mirrors = st.sampled_from([
    {"type": "url", "url": "https://example.org/best_model.pt"},
    {"type": "url", "url": "http://127.0.0.1:8000/best_model.pt"},
    {"type": "local", "path": "checkpoints/best_model.pt"},
    {"type": "hf", "repo": "templetwo/phasegpt-checkpoints", "filename": "best_model.pt"},
    {"type": "zenodo", "doi": "10.5281/zenodo.XXXXXXX", "published": False},
    {"type": "zenodo", "record": 1234567, "filename": "best_model.pt"},
    {"type": "osf", "guid": "ab12c"},
    {"type": "gdrive", "id": "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"},
])


@st.composite
def valid_artifacts(draw) -> dict:
    return {
        "kind": draw(st.sampled_from(["checkpoint", "dataset"])),
        "filename": draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(
            lambda name: name not in (".", ".."))),
        "size": draw(st.none() | st.integers(0, 2**62)),
        "sha256": draw(st.none() | st.sampled_from([SHA, SHA.upper()])),
        "mirrors": draw(st.lists(valid_mirrors, max_size=3)),
    }


# Each is a mistake a manifest must be refused for: (where it goes, the value).
ADVERSARIAL = [
    ("filename", "../../x"), ("filename", "/etc/passwd"), ("filename", "checkpoints/best_model.pt"),
    ("filename", ".."), ("filename", ""), ("filename", "a\\b"), ("filename", "x\0y"), ("filename", 7),
    ("size", -1), ("size", -(2**63)), ("size", 2**63), ("size", 10**30), ("size", "1115394"), ("size", 1.5),
    ("size", True), ("sha256", "abc"), ("sha256", "g" * 64), ("sha256", SHA[:-1]), ("sha256", SHA + "0"),
    ("sha256", 12345), ("sha256", ["ab"]), ("kind", "weights"), ("kind", None), ("mirrors", {"type": "url"}),
    ("mirrors", "https://example.org/x"), ("metadata", "nope"), ("claims", {"ppl": 4.85}),
    ("claims", {"ppl": {"value": 4.85, "tolerance": -1}}), ("unknown_key", 1),
    ("mirrors", [{"type": "url", "url": "http://example.org/best_model.pt"}]),
    ("mirrors", [{"type": "url", "url": "http://10.0.0.1/best_model.pt"}]),
    ("mirrors", [{"type": "url", "url": "ftp://127.0.0.1/best_model.pt"}]),
    ("mirrors", [{"type": "url", "url": "file:///etc/passwd"}]),
    ("mirrors", [{"type": "url", "url": "javascript:alert(1)"}]),
    ("mirrors", [{"type": "url", "url": "//example.org/x"}]),
    ("mirrors", [{"type": "ftp", "url": "ftp://example.org/x"}]),
    ("mirrors", [{"type": "zenodo", "doi": "10.5281/zenodo.XXXXXXX"}]),  # a placeholder, published
    ("mirrors", [{"type": "gdrive", "id": "../../etc/passwd"}]),
    ("mirrors", [{"type": "url", "url": "https://example.org/x", "token": "secret"}]),
]


@st.composite
def adversarial_manifests(draw) -> dict:
    """A valid manifest with one thing made wrong: a field, the artifact name, or the whole shape."""
    artifact = draw(valid_artifacts())
    where = draw(st.sampled_from(["field", "name", "shape", "junk"]))
    name = "best_model"
    if where == "field":
        key, value = draw(st.sampled_from(ADVERSARIAL))
        artifact[key] = value
    elif where == "name":
        name = draw(st.sampled_from(["../../x", "/abs", "a/b", ".hidden", "", "-x", "x y", "x\ny"]))
    elif where == "shape":
        return draw(st.sampled_from([
            {"version": 2, "artifacts": {name: artifact}}, {"version": "1", "artifacts": {name: artifact}},
            {"artifacts": {name: artifact}}, {"version": 1, "artifacts": [artifact]},
            {"version": 1, "artifacts": {name: [artifact]}}, {"version": 1, "default": "../../x", "artifacts": {}},
            {"version": 1, "artifacts": {name: artifact}, "extra": True}]))
    else:  # junk where a plain value or a list of mirrors belongs: never valid, however it is drawn
        key = draw(st.sampled_from(["kind", "filename", "size", "sha256", "mirrors", "claims", "metadata"]))
        artifact[key] = draw(st.lists(junk, min_size=1, max_size=3)
                             | st.dictionaries(st.text(max_size=8), junk, min_size=1, max_size=3))
    return {"version": 1, "artifacts": {name: artifact}}


def write(tmp_path: Path, document, name: str = "manifest.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


@HYPOTHESIS
@given(document=adversarial_manifests())
def test_an_adversarial_manifest_is_one_line_exit_2(document, tmp_path):
    manifest = write(tmp_path, document)
    for command in (["list", "--json"], ["--offline", "fetch"]):
        code, out, err = run_main("--manifest", manifest, "--cache-dir", tmp_path / "cache", *command)
        assert "invalid manifest" in assert_one_line_error(code, err, 2) and out == ""


@HYPOTHESIS
@given(artifacts=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True), valid_artifacts(),
                                 min_size=1, max_size=3))
def test_a_valid_random_manifest_lists_and_fetches_offline_cleanly(artifacts, tmp_path):
    manifest = write(tmp_path, {"version": 1, "default": next(iter(artifacts)), "artifacts": artifacts})
    code, out, err = run_main("--manifest", manifest, "--cache-dir", tmp_path / "cache", "list", "--json")
    assert code == 0, err
    assert [row["name"] for row in json.loads(out)] == list(artifacts)
    code, out, err = run_main("--manifest", manifest, "--cache-dir", tmp_path / "cache", "--offline", "fetch")
    assert_one_line_error(code, err, 3)  # nothing cached, and no local file at the mirrors' paths


@HYPOTHESIS
@given(content=(st.text(max_size=200) | st.binary(max_size=200) | junk.map(yaml.safe_dump)).filter(
    lambda content: "version" not in str(content)))  # {"version": 1} alone is a valid, empty manifest
def test_random_text_bytes_or_yaml_is_never_a_manifest(content, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run_main("--manifest", manifest, "--cache-dir", tmp_path / "cache", "list")
    assert_one_line_error(code, err, 2)


@pytest.mark.parametrize("content, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("version: 1\nartifacts: " + "{a: " * 3000 + "1" + "}" * 3000, "nested too deeply"),
    ("version: 1\nartifacts: {x: {kind: dataset, filename: f, size: " + "9" * 5000 + "}}", "cannot be read"),
    ("version: 1\ncreated: 2024-13-45\nartifacts: {}", "cannot be read"),
    # a billion laughs: nine levels of aliases, ten times each
    ("version: 1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 9))
     + "artifacts: {x: {kind: dataset, filename: f, mirrors: *a8}}\n", "invalid manifest"),
], ids=["deep-list", "deep-map", "5000-digit-size", "impossible-date", "billion-laughs"])
def test_manifests_built_to_exhaust_the_parser_are_one_line_exit_2(tmp_path, content, words):
    code, _, err = run_main("--manifest", write(tmp_path, content), "list")
    assert words in assert_one_line_error(code, err, 2)


def test_manifest_options_that_are_not_files(tmp_path):
    """A directory, an empty file and binary junk are refused in test_cli_engine; these are the rest."""
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    for path, words in ((tmp_path / "absent.yaml", "not found"), (loop, "cannot read manifest"),
                        (Path("/dev/null"), "is empty")):
        code, _, err = run_main("--manifest", path, "list")
        assert words in assert_one_line_error(code, err, 2)


# -- metadata JSON from hypothesis -------------------------------------------------------------------

metadata_values = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
                   | st.sampled_from(["[hash]", "10.5281/zenodo.XXXXXXX", SHA, "g" * 64, "", "NaN"]) | junk)


@HYPOTHESIS
@given(document=st.dictionaries(st.sampled_from([*CheckpointInfo.model_fields, "unknown", "file_size_bytes"]),
                                metadata_values, max_size=8)
       | junk | st.text(max_size=100))
def test_random_metadata_reads_or_is_one_line_bad_input(document, tmp_path):
    path = tmp_path / "info.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    try:
        info = load_metadata(path)
    except BadInput as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert isinstance(document, dict)
    info.size_agrees(1_017_118_720)  # what verify does with it: never an exception
    info.model_dump(mode="json")  # what info prints


@pytest.mark.parametrize("content, words", [
    ('{"file_size_mb": ' + "9" * 400 + "}", "file_size_mb"),
    ('{"file_size_mb": -970}', "file_size_mb"),
    ('{"validation_ppl": NaN}', "validation_ppl"),
    ('{"order_parameter_R": Infinity}', "order_parameter_R"),
    ('{"sha256": "' + "G" * 64 + '"}', "sha256"),
    ('{"training_epochs": 1.5}', "training_epochs"),
    ("[" * 100_000 + "]" * 100_000, "not readable JSON"),
    ('{"extra": ' + '{"a": ' * 900 + "1" + "}" * 900 + "}", "nested more than"),
], ids=["huge-size", "negative-size", "nan-ppl", "infinite-R", "bad-hash", "fractional-epochs", "deep-list",
        "deep-extras"])
def test_adversarial_metadata_is_one_line_bad_input(tmp_path, content, words):
    path = tmp_path / "info.json"
    path.write_text(content)
    with pytest.raises(BadInput) as refused:
        load_metadata(path)
    assert words in str(refused.value) and "\n" not in str(refused.value)


CACHE_WORDS = "the cache directory (--cache-dir, $PHASEGPT_CACHE)"


@pytest.mark.parametrize("where, args, env", [
    (CACHE_WORDS, ("--cache-dir", "{}", "list"), None),
    (CACHE_WORDS, ("cache", "ls"), "PHASEGPT_CACHE"),
    ("--manifest", ("--manifest", "{}", "list"), None),
    ("--manifest", ("list",), "PHASEGPT_MANIFEST"),
    ("PHASEGPT_USER_MANIFEST", ("list",), "PHASEGPT_USER_MANIFEST"),
    ("--config", ("train", "--config", "{}"), None),
    ("import", ("import", "tinyshakespeare", "{}"), None),
], ids=["cache-dir", "PHASEGPT_CACHE", "manifest", "PHASEGPT_MANIFEST", "PHASEGPT_USER_MANIFEST", "config", "import"])
def test_a_home_that_cannot_be_expanded_is_one_line_exit_2(monkeypatch, where, args, env):
    home = "~nosuchuser-phasegpt/x"
    if env:
        monkeypatch.setenv(env, home)
    code, _, err = run_main(*(arg.format(home) for arg in args))
    assert assert_one_line_error(code, err, 2) == (
        f"error: {where}: cannot expand the home directory in {home!r}; give the path in full (or set HOME)")


@pytest.mark.parametrize("args, option", [
    (("--cache-dir", "a\0b", "list"), "--cache-dir"),
    (("--manifest", "a\0b", "list"), "--manifest"),
    (("train", "--config", "a\0b"), "--config"),
    (("import", "tinyshakespeare", "a\0b"), "path"),
], ids=["cache-dir", "manifest", "config", "import"])
def test_a_path_with_a_nul_byte_is_one_line_exit_2(args, option):
    code, _, err = run_main(*args)
    line = assert_one_line_error(code, err, 2)
    assert option in line and ("NUL byte" in line or "null byte" in line), line
