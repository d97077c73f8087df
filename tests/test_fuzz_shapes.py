"""Fuzzed shapes: provider JSON and checkpoint dicts from hypothesis, never anything but a result or one line.

Provider answers: a valid Zenodo record or OSF JSON:API document with one part replaced by random JSON
(or random JSON outright), served by a loopback server to each provider's ``resolve``: it gives a
``Source`` whose published facts have the types fetch compares, or fails that mirror with one
:class:`MirrorFailed` line. Checkpoints: a valid tiny training dict with entries replaced by random
values (numbers, text, containers, tensors of any dtype, NaN), saved with ``torch.save``: ``verify``,
``info`` and ``generate`` through the command line end in a result or one ``error:`` line with exit 1
or 2, never a traceback.
"""
from __future__ import annotations

import copy
import json

import pytest
import requests
import torch
from conftest import CORPUS_SHA256
from emulators.fileserver import FileServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_input import run_main
from tiny_checkpoints import tiny_model, training_dict

from phasegpt_ckpt.errors import MirrorFailed
from phasegpt_ckpt.models.data import CharDataset
from phasegpt_ckpt.source.mirrors import osf, zenodo

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["input.txt", "files", "file", "folder", "osfstorage", "md5:" + "0" * 32, CORPUS_SHA256,
                              "http://127.0.0.1:9/x", "https://evil.example/x", "\ud800"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def paths_of(document, prefix=()) -> list[tuple]:
    """Every path (keys and indices) into ``document``, the root included."""
    found = [prefix]
    children = document.items() if isinstance(document, dict) else enumerate(document) \
        if isinstance(document, list) else ()
    for key, child in children:
        found += paths_of(child, (*prefix, key))
    return found


@st.composite
def mutated(draw, valid) -> object:
    """``valid`` with the value at one of its paths replaced by random JSON (or the key removed)."""
    document = copy.deepcopy(valid)
    path = draw(st.sampled_from(paths_of(document)))
    if not path:
        return draw(json_values)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return document


ZENODO_RECORD = {"id": 123, "doi": "10.5281/zenodo.123", "conceptdoi": "10.5281/zenodo.122",
                 "files": [{"key": "input.txt", "size": 1115394, "checksum": "md5:" + "0" * 32,
                            "links": {"self": "http://127.0.0.1:9/api/records/123/files/input.txt/content"}}]}
OSF_FILE = {"data": {"type": "files", "id": "f1",
                     "attributes": {"name": "input.txt", "kind": "file", "provider": "osfstorage", "size": 1115394,
                                    "current_version": 1,
                                    "extra": {"hashes": {"sha256": CORPUS_SHA256, "md5": "0" * 32}}},
                     "links": {"download": "http://127.0.0.1:9/download/f1"},
                     "relationships": {"files": {"links": {"related": {"href": "http://127.0.0.1:9/v2/x/"}}}}},
            "links": {"next": None}}
OSF_LISTING = {**OSF_FILE, "data": [OSF_FILE["data"]]}


@pytest.fixture(scope="module")
def answer():
    """A loopback server answering ``answer.body`` to every request: the fuzzed provider."""
    with FileServer() as server:
        server.body = b"{}"
        server.route(r"/.*", lambda request: request.send(200, server.body, "application/json"))
        yield server


def assert_resolves_or_fails_in_one_line(resolve, server: FileServer, document) -> None:
    server.body = json.dumps(document).encode()
    try:
        source = resolve()
    except MirrorFailed as err:
        assert "\n" not in str(err) and err.outcome
        return
    assert isinstance(source.url, str)
    assert source.size is None or (isinstance(source.size, int) and source.size >= 0)
    assert all(value is None or isinstance(value, str) for value in (source.sha256, source.md5, source.revision))


@FUZZ
@given(document=mutated(ZENODO_RECORD) | json_values)
def test_fuzzed_zenodo_records(answer, document):
    mirror = zenodo.ZenodoMirror(doi="10.5281/zenodo.123", filename="input.txt", endpoint=answer.origin)
    assert_resolves_or_fails_in_one_line(lambda: zenodo.resolve(mirror, requests.Session()), answer, document)


@FUZZ
@given(document=mutated(OSF_FILE) | json_values)
def test_fuzzed_osf_file_documents(answer, document):
    mirror = osf.OsfMirror(guid="abcde", endpoint=answer.origin)
    assert_resolves_or_fails_in_one_line(lambda: osf.resolve(mirror, requests.Session()), answer, document)


@FUZZ
@given(document=mutated(OSF_LISTING))
def test_fuzzed_osf_listings(answer, document):
    mirror = osf.OsfMirror(node="abcde", path="input.txt", endpoint=answer.origin)
    assert_resolves_or_fails_in_one_line(lambda: osf.resolve(mirror, requests.Session()), answer, document)


# -- checkpoint dicts ---------------------------------------------------------------------------------

tensors = st.builds(lambda dtype, shape, fill: torch.full(shape, fill).to(dtype),
                    st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64,
                                     torch.bool]),
                    st.lists(st.integers(0, 3), max_size=3).map(tuple),
                    st.sampled_from([0.0, 1.0, float("nan"), float("inf")]))
values = st.recursive(scalars.filter(lambda v: v != "\ud800") | tensors,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=3), max_leaves=8)
config_numbers = st.sampled_from([0, -1, 1, 3, 64, 2**14, 2**14 + 1, 10**6, 10**12]) | st.integers(-(2**64), 2**64)


@pytest.fixture(scope="module")
def tiny_ours(corpus_path) -> dict:
    checkpoint = training_dict(tiny_model())
    del checkpoint["optimizer_state_dict"]  # smaller files, faster examples; nothing read here looks at it
    checkpoint["config"]["model"]["coupling_mode"] = "original"
    checkpoint.update(vocab=CharDataset(corpus_path).chars, coupling_mode="original")
    return checkpoint


@st.composite
def checkpoint_changes(draw):
    """A list of (where, key, value): top-level entries, weights and model-config settings replaced."""
    top = st.tuples(st.just("top"), st.sampled_from(["vocab", "schedule", "config", "epoch", "global_step",
                                                     "coupling_mode", "model_state_dict", "best_val_ppl", "metrics",
                                                     "provenance", "training_time_s"]), values)
    weight = st.tuples(st.just("weights"), st.sampled_from([
        "token_embedding.weight", "position_embedding.weight", "ln_f.weight", "blocks.0.attention.causal_mask",
        "blocks.0.ffn.0.weight", "blocks.1.attention.natural_freq", "blocks.7.attention.natural_freq",
        "blocks." + "9" * 5000 + ".ffn.0.weight", "blocks.99999999999999.ln1.weight", "extra"]), values)
    setting = st.tuples(st.just("model"), st.sampled_from(["vocab_size", "d_model", "n_layers", "n_heads", "d_ff",
                                                           "max_seq_len", "num_oscillators", "phase_layer_idx"]),
                        config_numbers)
    bare = st.tuples(st.just("bare"), st.none(), st.none())  # the weights alone, as a bare state dict
    return draw(st.lists(top | weight | setting | bare, min_size=1, max_size=3))


def apply(checkpoint: dict, changes) -> object:
    checkpoint = copy.deepcopy(checkpoint)
    for where, key, value in changes:
        if not isinstance(checkpoint, dict):  # a bare state dict became something else already
            break
        if where == "top":
            checkpoint[key] = value
        elif where == "bare":
            checkpoint = checkpoint.get("model_state_dict", checkpoint)
        elif isinstance(weights := checkpoint.get("model_state_dict", checkpoint), dict) and where == "weights":
            weights[key] = value
        elif where == "model" and isinstance(checkpoint.get("config"), dict) \
                and isinstance(checkpoint["config"].get("model"), dict):
            checkpoint["config"]["model"][key] = value
    return checkpoint


def assert_result_or_one_line(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), err
    if code:
        assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err


@FUZZ
@given(changes=checkpoint_changes())
def test_fuzzed_checkpoint_dicts(tiny_ours, tmp_path_factory, changes):
    path = tmp_path_factory.mktemp("fuzz") / "fuzzed.pt"
    torch.save(apply(tiny_ours, changes), path)
    for command in (["verify", path], ["info", path, "--json"], ["generate", "--model", path, "--max-new-tokens", "2",
                                                                 "--temperature", "0", "To"]):
        code, out, err = run_main("-q", *command)
        assert_result_or_one_line(code, err)
        if command[0] == "info" and code == 0:
            json.loads(out)  # the document is one JSON document, whatever the file held


def test_the_fuzz_reaches_each_outcome(tiny_ours, tmp_path):
    """The strategies are not all refusals: an untouched dict verifies and generates; a NaN weight fails
    (exit 1); a config past the limits is bad input (exit 2)."""
    cases = [([], 0), ([("weights", "ln_f.weight", torch.full((32,), float("nan")))], 1),
             ([("model", "max_seq_len", 10**12)], 2)]
    for changes, expected in cases:
        path = tmp_path / f"case{expected}.pt"
        torch.save(apply(tiny_ours, changes), path)
        code, _, err = run_main("-q", "generate", "--model", path, "--max-new-tokens", "2", "To")
        assert code == expected, err
        assert_result_or_one_line(code, err)

