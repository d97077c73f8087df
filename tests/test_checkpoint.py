"""Loading checkpoints: the published layout, our own, bare state dicts, safetensors; hostile pickles refused."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from tiny_checkpoints import manifest_for, save_ours, save_published, tiny_model, training_dict

from model import GPT2Config
from phasegpt_ckpt import Store
from phasegpt_ckpt.errors import BadInput, VerificationFailed
from phasegpt_ckpt.models.checkpoint import convert, describe, export_config, load_checkpoint
from phasegpt_ckpt.models.data import CharDataset
from phasegpt_ckpt.source.manifest import load_manifest


def same_logits(a, b) -> bool:
    ids = torch.randint(65, (2, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return torch.equal(a(ids)[0], b(ids)[0])


class RunsCode:
    """A pickle payload that would create ``marker`` when unpickled with full pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_published_training_dict_loads_as_the_original_model(tmp_path, corpus_path):
    model = tiny_model("original")
    path = save_published(model, tmp_path / "best_model.pt")

    ckpt = load_checkpoint(path, data=corpus_path)

    assert ckpt.kind == "phasegpt" and ckpt.coupling_mode == "original"
    assert ckpt.vocab == CharDataset(corpus_path).chars and len(ckpt.vocab) == 65
    assert (ckpt.epoch, ckpt.global_step, ckpt.best_val_loss, ckpt.best_val_ppl) == (18, 3240, 1.5788, None)
    assert ckpt.config.ignored == {"type": "gpt2", "natural_freq": 1.0, "dt": 0.01, "n_sync_steps": 5}
    assert ckpt.config.phase_iterations == 10  # what the published code used, whatever n_sync_steps says
    assert any("coupling mode 'original'" in note for note in ckpt.inferred)
    assert not ckpt.model.training and ckpt.training_state is None
    assert ckpt.model.lm_head.weight is ckpt.model.token_embedding.weight  # still tied after assign=True
    assert same_logits(ckpt.model, model)


def test_training_state_is_there_for_resume_when_asked(tmp_path, corpus_path):
    model = tiny_model("causal")
    path = save_published(model, tmp_path / "ckpt.pt")

    ckpt = load_checkpoint(path, data=corpus_path, load_training_state=True)

    optimizer = torch.optim.AdamW(ckpt.model.parameters(), lr=3e-4)
    optimizer.load_state_dict(ckpt.training_state["optimizer_state_dict"])  # one entry per (tied) parameter
    assert "model_state_dict" not in ckpt.training_state
    assert set(ckpt.training_state["optimizer_state_dict"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_our_checkpoint_carries_vocab_and_coupling_mode(tmp_path, corpus_path):
    model = tiny_model("causal")
    path = save_ours(model, tmp_path / "ours.pt", corpus_path)

    ckpt = load_checkpoint(path)  # no corpus needed: nothing is fetched

    assert ckpt.kind == "phasegpt-ckpt" and ckpt.coupling_mode == "causal" and ckpt.inferred == []
    assert ckpt.vocab == CharDataset(corpus_path).chars and ckpt.best_val_ppl == 4.85
    assert same_logits(ckpt.model, model)


def test_vocabulary_comes_from_the_corpus_given_else_the_bundled_one(tmp_path, corpus_path):
    path = save_published(tiny_model(), tmp_path / "ckpt.pt")
    store = Store(load_manifest(manifest_for(tmp_path, path, corpus_path)), tmp_path / "cache", offline=True)

    given = store.load("tiny", data=corpus_path)
    bundled = load_checkpoint(path)  # no corpus named, nothing fetched: the copy inside the package

    assert given.vocab == bundled.vocab == CharDataset(corpus_path).chars
    assert f"vocabulary from the corpus {corpus_path}" in given.inferred
    assert "vocabulary from the tinyshakespeare corpus bundled with the package" in bundled.inferred


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, corpus_path, run_cli):
    marker = tmp_path / "code-ran"
    checkpoint = training_dict(tiny_model())
    checkpoint["rng_state"] = RunsCode(marker)
    path = tmp_path / "hostile.pt"
    torch.save(checkpoint, path)

    for attempt in (lambda: load_checkpoint(path, data=corpus_path), lambda: describe(path)):
        with pytest.raises(VerificationFailed, match=r"^refused: .*arbitrary pickle code.*os\.makedirs.*not run"):
            attempt()
    code, out, err = run_cli("info", path)
    assert code == 1 and "refused" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("verify", path, "--eval", "--data", corpus_path)
    assert code == 1 and "refused" in err
    assert not marker.exists()


def hostile_twin(cached, tmp_path, marker) -> bytes:
    """A pickle that would run code, padded to the cached file's size: only its hash tells it apart."""
    hostile = tmp_path / "hostile.pt"
    torch.save({"model_state_dict": {}, "payload": RunsCode(marker)}, hostile)
    return hostile.read_bytes().ljust(cached.stat().st_size, b"\0")


def test_a_cached_blob_changed_in_place_is_moved_aside_and_fetched_again(tmp_path, corpus_path):
    marker = tmp_path / "code-ran"
    good = save_ours(tiny_model(), tmp_path / "ckpt.pt", corpus_path)
    store = Store(load_manifest(manifest_for(tmp_path, good, corpus_path)), tmp_path / "cache")
    cached = store.fetch("tiny").path
    cached.chmod(0o644)
    cached.write_bytes(hostile_twin(cached, tmp_path, marker))  # same size, new mtime

    again = store.fetch("tiny")

    assert not again.from_cache and again.path.read_bytes() == good.read_bytes()
    assert len(list((tmp_path / "cache" / "quarantine").iterdir())) == 1
    assert store.load("tiny").kind == "phasegpt-ckpt" and not marker.exists()


def test_a_cached_checkpoints_sha256_is_checked_before_any_unpickling(tmp_path, corpus_path):
    marker = tmp_path / "code-ran"
    good = save_ours(tiny_model(), tmp_path / "ckpt.pt", corpus_path)
    store = Store(load_manifest(manifest_for(tmp_path, good, corpus_path)), tmp_path / "cache")
    cached = store.fetch("tiny").path
    seen = cached.stat()
    cached.chmod(0o644)
    cached.write_bytes(hostile_twin(cached, tmp_path, marker))
    os.utime(cached, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # the same inode and mtime: only hashing tells

    for attempt in (lambda: store.load("tiny"), lambda: store.info("tiny"), lambda: store.analyze("tiny")):
        with pytest.raises(VerificationFailed, match="sha256 .* expected [0-9a-f]{64}; not (loading|reading) it; "
                                                     "`phasegpt-ckpt fetch tiny --force` downloads it again"):
            attempt()
    assert not marker.exists()


def test_bare_state_dict_config_is_read_off_the_shapes(tmp_path, corpus_path):
    model = tiny_model(seed=3, phase_layer_idx=[0])
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)

    ckpt = load_checkpoint(path, data=corpus_path)

    assert ckpt.kind == "state_dict"
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "phase_layer_idx",
                 "num_oscillators"):
        assert getattr(ckpt.config, name) == getattr(model.config, name), name
    assert "n_heads 2" in ckpt.inferred[0] and "num_oscillators 4" in ckpt.inferred[0]
    assert same_logits(ckpt.model, model)


@pytest.mark.parametrize("command", [
    ["generate", "To be", "--model", "{path}", "--max-new-tokens", "3", "--data", "{corpus}", "--device", "cpu"],
    ["analyze", "{path}", "--num-tokens", "64", "--data", "{corpus}", "--device", "cpu"],
    ["verify", "{path}", "--eval", "--data", "{corpus}", "--device", "cpu"],
    ["convert", "{path}", "--to", "safetensors", "-o", "{out}", "--data", "{corpus}"],
    ["info", "{path}"],
])
def test_every_command_loading_a_bare_state_dict_says_what_it_assumed(tmp_path, corpus_path, run_cli, command):
    path = tmp_path / "weights.pt"
    torch.save(tiny_model(seed=3).state_dict(), path)
    places = {"path": path, "corpus": corpus_path, "out": tmp_path / "weights.safetensors"}

    code, out, err = run_cli(*(arg.format(**places) for arg in command))

    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: weights.pt: ")]
    assert any("read off the tensor shapes" in note and "n_heads 2" in note for note in notes), err
    assert any("phase_iterations 10 assumed" in note for note in notes), err
    assert any("coupling mode 'original' assumed" in note for note in notes), err


def test_bare_state_dict_without_phase_layer_asks_for_a_config(tmp_path, corpus_path):
    model = tiny_model(use_phase_attention=False, phase_layer_idx=[], d_ff=48)  # not the default 4·d_model
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)

    with pytest.raises(BadInput, match="does not tell n_heads; pass --config"):
        load_checkpoint(path, data=corpus_path)
    config_file = tmp_path / "model.yaml"
    config_file.write_text(yaml.safe_dump({"model": model.config.to_dict()}))
    assert same_logits(load_checkpoint(path, config=config_file, data=corpus_path).model, model)
    config_file.write_text(f"model:\n  n_heads: {model.config.n_heads}\n  dropout: {model.config.dropout}\n")
    told = load_checkpoint(path, config=config_file, data=corpus_path)  # the rest read off the shapes
    assert same_logits(told.model, model) and told.config.d_ff == 48
    assert told.inferred[1] == "model settings n_heads, dropout given by the caller"


@pytest.mark.parametrize("change, cause", [
    ({"phase_layer_idx": [0]}, "likely cause: phase_layer_idx (the file's phase layers are [1], the config's [0])"),
    ({"num_oscillators": 16}, "likely cause: num_oscillators or n_heads (the file's natural_freq is [2, 4]"),
    ({"vocab_size": 66}, "likely cause: vocab (the file has 65 characters, the config vocab_size 66)"),
])
def test_a_state_dict_mismatch_names_keys_shapes_and_cause(tmp_path, corpus_path, change, cause):
    checkpoint = training_dict(tiny_model())
    checkpoint["config"]["model"].update(change)
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)

    with pytest.raises(BadInput) as refused:
        load_checkpoint(path, data=corpus_path)
    message = str(refused.value)
    assert "\n" not in message and cause in message
    if "phase_layer_idx" in change:
        assert "missing blocks.0.attention.natural_freq" in message
        assert "unexpected blocks.0.attention.causal_mask, blocks.0.attention.qkv_proj.weight" in message
    else:
        assert "in the file but" in message


def test_convert_to_safetensors_round_trips(tmp_path, corpus_path):
    model = tiny_model("causal")
    ckpt = load_checkpoint(save_ours(model, tmp_path / "ckpt.pt", corpus_path))

    out = convert(ckpt, tmp_path / "ckpt.safetensors")
    back = load_checkpoint(out)

    assert back.kind == "safetensors" and back.coupling_mode == "causal" and back.vocab == ckpt.vocab
    assert (back.epoch, back.global_step, back.best_val_loss, back.best_val_ppl) == (18, 3240, 1.5788, 4.85)
    assert back.full_config["training"] == ckpt.full_config["training"]
    assert back.model.lm_head.weight is back.model.token_embedding.weight
    assert same_logits(back.model, model)
    # one name of the tied pair in the file: the count from its shapes still takes the tensor once
    assert describe(out)["parameters"] == sum(p.numel() for p in model.parameters())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_describe_reads_contents_without_loading(tmp_path):
    model = tiny_model()
    path = save_published(model, tmp_path / "ckpt.pt")

    facts = describe(path)

    parameters = sum(p.numel() for p in model.parameters())
    weights = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k != "lm_head.weight")
    assert facts["parameters"] == parameters and facts["weight_bytes"] == weights
    assert facts["optimizer_bytes"] == 2 * 4 * parameters + 4 * len(list(model.parameters()))  # moments + steps
    assert facts["other_bytes"] == facts["file_bytes"] - weights - facts["optimizer_bytes"] > 0
    assert (facts["epoch"], facts["global_step"], facts["phase_layers"]) == (18, 3240, [1])
    assert facts["coupling_mode"] == "original" and facts["dtypes"] == {"float32": len(model.state_dict())}


def test_export_config_writes_the_file_sections_atomically(tmp_path, run_cli):
    model = tiny_model()
    path = save_published(model, tmp_path / "ckpt.pt")
    out = tmp_path / "loaded_config.yaml"

    code, stdout, _ = run_cli("config", path, "-o", out)

    assert code == 0 and stdout == ""
    assert yaml.safe_load(out.read_text()) == training_dict(tiny_model())["config"]
    assert export_config(path) == out.read_text()
    assert GPT2Config.from_dict(yaml.safe_load(out.read_text())["model"]).to_dict() == model.config.to_dict()


def test_info_shows_what_the_checkpoint_holds(tmp_path, run_cli):
    path = save_published(tiny_model(), tmp_path / "ckpt.pt")

    code, out, _ = run_cli("info", path, "--json")

    facts = json.loads(out)["checkpoint"]
    assert code == 0 and facts["epoch"] == 18 and facts["phase_layers"] == [1] and facts["optimizer_bytes"] > 0
