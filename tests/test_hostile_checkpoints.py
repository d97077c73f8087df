"""Hostile checkpoints and manifest paths: each is one clear line and the right exit code, never a traceback.

A checkpoint whose ``vocab`` is a number, whose state dict holds a non-tensor or names a weight by a
number, whose ``schedule`` is a string, whose weights are int8 or NaN, a safetensors file marked as ours
with metadata that is no JSON (or JSON of the wrong shape), and a config claiming sizes the weights do
not have: refused before the model is built, so a claimed ``max_seq_len`` allocates nothing (measured
in a subprocess with ``resource.getrusage``). A manifest ``local`` path under ``~nosuchuser`` or with
a NUL byte names the manifest and the field.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_model
from test_hostile_input import assert_one_line_error
from tiny_checkpoints import tiny_model, training_dict

from phasegpt_ckpt.models.data import CharDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ours(corpus_path) -> dict:
    """A tiny training dict as our trainer writes it (vocabulary and coupling mode included)."""
    checkpoint = training_dict(tiny_model())
    checkpoint["config"]["model"]["coupling_mode"] = "original"
    checkpoint.update(vocab=CharDataset(corpus_path).chars, coupling_mode="original")
    return checkpoint


def changed(checkpoint: dict, change) -> dict:
    checkpoint = copy.deepcopy(checkpoint)
    change(checkpoint)
    return checkpoint


def weights(transform):
    def change(checkpoint):
        checkpoint["model_state_dict"] = transform(checkpoint["model_state_dict"])
    return change


# -- what the file holds: verify's contents row fails (exit 1), info shows why (exit 0) -------------

UNUSABLE = {
    "vocab-a-number": (lambda c: c.update(vocab=65), "entry vocab"),
    "schedule-a-string": (lambda c: c.update(schedule="cosine"), "entry schedule"),
    "epoch-a-string": (lambda c: c.update(epoch="eighteen"), "entry epoch"),
    "a-weight-that-is-a-number": (weights(lambda s: {**s, "ln_f.weight": 5}), "weight 'ln_f.weight' is a int"),
    "an-extra-non-tensor": (weights(lambda s: {**s, "extra": [1, 2]}), "weight 'extra' is a list"),
    "a-weight-named-by-a-number": (weights(lambda s: {**s, 7: torch.zeros(1)}), "named by a int"),
    "config-a-string": (lambda c: c.update(config="gpt2"), "entry config"),
    "config-data-a-list": (lambda c: c["config"].update(data=["shakespeare"]), "entry config"),
    "schedule-extension-deep": (lambda c: c.update(schedule={"extensions": [[[[]]]]}), "entry schedule"),
    "metrics-a-list": (lambda c: c.update(metrics=[4.85]), "entry metrics"),
    "provenance-a-list": (lambda c: c.update(provenance=["H100"]), "entry provenance"),
    "training-time-a-word": (lambda c: c.update(training_time_s="long"), "entry training_time_s"),
}


@pytest.mark.parametrize("change, words", UNUSABLE.values(), ids=UNUSABLE)
def test_a_checkpoint_with_entries_of_the_wrong_type_is_one_line(run_cli, tmp_path, ours, change, words):
    path = tmp_path / "hostile.pt"
    torch.save(changed(ours, change), path)
    line = assert_one_line_error(*run_cli("verify", path)[::2], 1)
    assert words in line and "not a usable checkpoint" in line, line
    code, out, err = run_cli("info", path, "--json")
    assert code == 0 and "Traceback" not in err, err
    assert words in json.loads(out)["checkpoint"]["unreadable"]


@pytest.mark.parametrize("metadata, words", [
    ({"config": "{not json", "vocab": "[1"}, "metadata 'config' is not readable JSON"),
    ({"config": "{}", "vocab": "1" + "0" * 5000}, "metadata 'vocab' is not readable JSON (ValueError)"),
    ({"config": "[" * 100_000 + "]" * 100_000}, "metadata 'config' is not readable JSON (RecursionError)"),
    ({"config": "{}", "training": "[3]"}, "metadata 'training' is not a JSON object"),
    ({"config": "{}", "vocab": "5"}, "entry vocab"),
    ({"config": "{}", "training": '{"schedule": 1}'}, "entry schedule"),
], ids=["not-json", "5000-digits", "deep-nesting", "training-a-list", "vocab-a-number", "schedule-a-number"])
def test_a_safetensors_file_marked_as_ours_with_bad_metadata_is_one_line(run_cli, tmp_path, metadata, words):
    path = tmp_path / "hostile.safetensors"
    save_model(tiny_model(), str(path), metadata={"format": "phasegpt-ckpt", **metadata})
    for command in ("verify", "config"):
        code, _, err = run_cli(command, path)
        assert words in assert_one_line_error(code, err, 1 if command == "verify" else 2)


@pytest.mark.parametrize("metrics", [{"val_ppl": "low"}, {"val_loss": [1.5]}])
def test_publish_of_metrics_that_are_no_numbers_is_one_line(run_cli, tmp_path, ours, metrics):
    path = tmp_path / "hostile.pt"
    torch.save(changed(ours, lambda c: c.update(metrics=metrics)), path)
    line = assert_one_line_error(*run_cli("publish", path, "--name", "hostile", "--to", tmp_path / "lab")[::2], 2)
    assert f"the checkpoint's {next(iter(metrics))} is not a number" in line, line
    assert not (tmp_path / "hostile_info.json").exists() and not (tmp_path / "lab").exists()


# -- what the weights are: refused before the model is built --------------------------------------

def to_int8(state):
    return {k: v.to(torch.int8) for k, v in state.items()}


def to_nan(state):
    return {k: torch.full_like(v, float("nan")) for k, v in state.items()}


def claiming(**sizes):
    return lambda checkpoint: checkpoint["config"]["model"].update(sizes)


UNBUILDABLE = {
    "int8-weights": (weights(to_int8), 2, "is int8; PhaseGPT weights are floating point"),
    "nan-weights": (weights(to_nan), 1, "NaN or infinite values"),
    "max-seq-len-past-the-limit": (claiming(max_seq_len=10**6), 2, "max_seq_len 1000000 is over the limit"),
    "d-model-past-the-limit": (claiming(d_model=2**20, d_ff=None), 2, "d_model 1048576 is over the limit"),
    "vocab-past-the-limit": (claiming(vocab_size=10**9), 2, "vocab_size 1000000000 is over the limit"),
    "sizes-the-weights-lack": (claiming(max_seq_len=16384, n_layers=3), 2, "do not fit the model config"),
}


@pytest.mark.parametrize("change, code, words", UNBUILDABLE.values(), ids=UNBUILDABLE)
def test_weights_no_model_can_take_are_one_line(run_cli, tmp_path, ours, change, code, words):
    path = tmp_path / "hostile.pt"
    torch.save(changed(ours, change), path)
    line = assert_one_line_error(*run_cli("generate", "--model", path, "--max-new-tokens", "1", "To be")[::2], code)
    assert words in line, line


def test_a_claimed_max_seq_len_allocates_nothing(tmp_path, ours):
    """The causal mask is max_seq_len² floats per layer (16384: 1 GiB each): the claim is checked against the
    weights before any of it exists. Peak memory of the load, in a fresh process."""
    path = tmp_path / "claims.pt"
    torch.save(changed(ours, claiming(max_seq_len=16384, n_layers=4)), path)
    script = textwrap.dedent(f"""
        import resource, sys
        from phasegpt_ckpt.errors import BadInput
        from phasegpt_ckpt.models.checkpoint import load_checkpoint
        try:
            load_checkpoint({str(path)!r})
        except BadInput as err:
            print(err)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    message, peak_kib = done.stdout.splitlines()
    assert "max_seq_len (the file has 64 positions)" in message, done.stderr
    assert int(peak_kib) < 1024**2, f"peak {int(peak_kib) // 1024} MiB"  # one mask alone would be 1 GiB


# -- a manifest's local path --------------------------------------------------------------------------

@pytest.mark.parametrize("path, words", [
    ("~nosuchuser-phasegpt/input.txt", "cannot expand '~nosuchuser-phasegpt': no such user"),
    ("/data/in\0put.txt", "a path cannot contain a NUL byte"),
], ids=["unknown-user", "nul-byte"])
def test_a_local_path_no_system_call_takes_is_one_line_naming_the_field(run_cli, tmp_path, path, words):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "artifacts": {"corpus": {
        "kind": "dataset", "filename": "input.txt", "size": 3, "sha256": "a" * 64,
        "mirrors": [{"type": "local", "path": path}]}}}))
    for command in ("fetch", "list"):
        line = assert_one_line_error(*run_cli("--manifest", manifest, command)[::2], 2)
        assert str(manifest) in line or manifest.name in line, line
        assert f"artifacts.corpus.mirrors.0.local.path: {words}" in line, line


# -- a from_pretrained folder's config.json -----------------------------------------------------------

@pytest.mark.parametrize("content, words", [
    (b'{"vocab_size": ' + b"6" * 5000 + b"}", "not a JSON model config (ValueError)"),
    (b"[" * 30_000 + b"]" * 30_000, "not a JSON model config (RecursionError)"),
    (b'{"d_model": "\xff"}', "not a JSON model config (UnicodeDecodeError)"),
    ("HUGE", "over 64 KiB"),
    ("EVERY-SIZE-BELOW-ITS-LIMIT", "over the limit of 4.3e+09"),
], ids=["5000-digits", "deep-nesting", "not-utf8", "huge-file", "a-model-of-terabytes"])
def test_a_hostile_config_json_is_refused_before_any_weight(tmp_path, content, words):
    from model import GPT2Model

    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    config = folder / "config.json"
    if content == "HUGE":
        with open(config, "wb") as file:
            file.truncate(10**9)  # sparse: no disk used, and never read past its cap
    elif content == "EVERY-SIZE-BELOW-ITS-LIMIT":  # 1024 layers of 16384² causal masks: 1 TiB
        config.write_text(json.dumps({**tiny_model().config.to_dict(), "n_layers": 1024, "max_seq_len": 16384,
                                      "phase_layer_idx": [1]}))
    else:
        config.write_bytes(content)
    with pytest.raises(ValueError) as refused:
        GPT2Model.from_pretrained(folder)
    assert words in str(refused.value) and str(config) in str(refused.value) and "\n" not in str(refused.value)
