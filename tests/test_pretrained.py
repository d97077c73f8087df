"""GPT2Model.save_pretrained / push_to_hub / from_pretrained (huggingface_hub's PyTorchModelHubMixin).

A folder or Hub repo holds config.json (GPT2Config.to_dict(), coupling_mode included) and
model.safetensors (the tied head stored once); loading reads no pickle. The Hub cases run against
our emulator and against olah (a real Hub mirror, serving a local git repository offline).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from olah_server import olah_serving
from safetensors import safe_open

from model import GPT2Config, GPT2Model
from phasegpt_ckpt import Store


@pytest.fixture(scope="module")
def tiny() -> GPT2Model:
    return Store(offline=True).load("phasegpt-tiny").model.eval()


def ids(config: GPT2Config) -> torch.Tensor:
    return (torch.arange(2 * 24).reshape(2, 24) * 7) % config.vocab_size


def assert_same_model(loaded: GPT2Model, original: GPT2Model) -> None:
    assert loaded.config == original.config and loaded.config.to_dict() == original.config.to_dict()
    assert loaded.lm_head.weight is loaded.token_embedding.weight  # still tied, not two copies
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(ids(original.config))[0], original(ids(original.config))[0])


@pytest.fixture
def hub_endpoint(monkeypatch):
    """What HF_ENDPOINT does when set before huggingface_hub is imported (it reads it at import)."""
    def point_to(origin: str) -> None:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", origin)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            origin + "/{repo_id}/resolve/{revision}/{filename}")
    return point_to


def test_a_saved_folder_loads_back_to_the_same_logits_and_config(tiny, tmp_path):
    assert tiny.config.coupling_mode == "causal"  # the bundled model is not the default mode
    tiny.save_pretrained(tmp_path / "tiny")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "tiny").iterdir()}
    assert not list((tmp_path / "tiny").glob("*.bin"))
    assert json.loads((tmp_path / "tiny" / "config.json").read_text()) == tiny.config.to_dict()
    with safe_open(str(tmp_path / "tiny" / "model.safetensors"), "pt") as f:  # the tie is stored once
        names = set(f.keys())
    assert len({"lm_head.weight", "token_embedding.weight"} & names) == 1
    assert names | {"lm_head.weight", "token_embedding.weight"} == set(tiny.state_dict())
    assert_same_model(GPT2Model.from_pretrained(tmp_path / "tiny"), tiny)
    assert_same_model(GPT2Model.from_pretrained(str(tmp_path / "tiny")), tiny)


def test_both_coupling_modes_and_keyword_built_models_round_trip(tmp_path):
    for mode in ("original", "causal"):
        torch.manual_seed(0)
        model = GPT2Model(vocab_size=65, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, dropout=0.0,
                          use_phase_attention=True, phase_layer_idx=[1], num_oscillators=8,
                          coupling_mode=mode, n_sync_steps=5).eval()  # an ignored published key, too
        model.save_pretrained(tmp_path / mode)
        loaded = GPT2Model.from_pretrained(tmp_path / mode)
        assert loaded.config.coupling_mode == mode
        assert_same_model(loaded, model)


@pytest.mark.parametrize("text, words", [
    ("{not json", "is not a JSON model config"),
    (b"\xff\xfe\x00garbage", "is not a JSON model config"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"vocab_size": 65}', "lacks model config key(s): d_model"),
    ("EXTRA", "unknown model config key(s): colour"),
    ("BAD", "d_model must be a positive integer"),
])
def test_a_corrupted_config_is_a_value_error_naming_the_file(tiny, tmp_path, text, words):
    folder = tmp_path / "tiny"
    tiny.save_pretrained(folder)
    config = folder / "config.json"
    if text == "EXTRA":
        text = json.dumps({**tiny.config.to_dict(), "colour": "blue"})
    elif text == "BAD":
        text = json.dumps({**tiny.config.to_dict(), "d_model": "128"})
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match="config") as caught:
        GPT2Model.from_pretrained(folder)
    assert words in str(caught.value) and str(config) in str(caught.value)


def test_weights_that_do_not_fit_the_config_or_are_missing_are_clear_errors(tiny, tmp_path):
    folder = tmp_path / "tiny"
    tiny.save_pretrained(folder)
    config = folder / "config.json"
    config.write_text(json.dumps({**tiny.config.to_dict(), "d_ff": 256}))  # a shape the weights lack
    with pytest.raises(ValueError, match="does not hold weights for the model in its config.json"):
        GPT2Model.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    config.write_text(json.dumps(tiny.config.to_dict()))
    with pytest.raises(ValueError, match="does not hold weights"):
        GPT2Model.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(tiny.state_dict(), folder / "pytorch_model.bin")  # a pickle is never read
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        GPT2Model.from_pretrained(folder)


@pytest.mark.clients
def test_push_to_the_hub_emulator_then_load_from_the_repo(tiny, hub_emulator, hub_endpoint, tmp_path):
    hub, token = hub_emulator, "hf_pretrainedWriter0123456789"
    hub.add_writer(token, "lab")
    # upload_folder first asks the Hub to check the model card's YAML; the emulator has no such route
    # yet (tests/emulators/hf.py), so this test answers as the Hub does for valid metadata.
    hub.route(r"/api/validate-yaml", lambda request: request.send_json({"errors": [], "warnings": []}),
              methods=("POST",))
    hub_endpoint(hub.origin)
    tiny.push_to_hub("lab/phasegpt-tiny", token=token, private=True)
    loaded = GPT2Model.from_pretrained("lab/phasegpt-tiny", token=token, cache_dir=tmp_path / "cache")
    assert_same_model(loaded, tiny)
    assert any("/lab/phasegpt-tiny/resolve/main/model.safetensors" in r.path for r in hub.log)
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):  # private: no token, no model
        GPT2Model.from_pretrained("lab/phasegpt-tiny", token=False, cache_dir=tmp_path / "anonymous")


# -- olah: a real Hub mirror serving a local git repository (as in test_real_clients.py) ------------


def git_repository(root: Path, repo_id: str, folder: Path, lfs: set[str]) -> None:
    """A git repository of ``folder``'s files, those in ``lfs`` as Git LFS pointers (no git-lfs needed)."""
    repo = root / "models" / repo_id
    repo.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    for path in folder.iterdir():
        data = path.read_bytes()
        if path.name in lfs:
            sha256 = hashlib.sha256(data).hexdigest()
            (repo / path.name).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
                                          f"size {len(data)}\n")
            obj = repo / ".git" / "lfs" / "objects" / sha256[:2] / sha256[2:4] / sha256
            obj.parent.mkdir(parents=True)
            obj.write_bytes(data)
        else:
            (repo / path.name).write_bytes(data)
        subprocess.run([*git, "add", path.name], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "save_pretrained"], check=True)


@pytest.mark.clients
def test_load_from_olah_serving_a_save_pretrained_folder(tiny, hub_endpoint, tmp_path):
    tiny.save_pretrained(tmp_path / "saved")
    git_repository(tmp_path / "mirrors", "org/phasegpt-tiny", tmp_path / "saved", lfs={"model.safetensors"})
    with olah_serving(tmp_path / "mirrors", tmp_path, "/org/phasegpt-tiny/resolve/main/config.json") as origin:
        hub_endpoint(origin)
        loaded = GPT2Model.from_pretrained("org/phasegpt-tiny", token=False, cache_dir=tmp_path / "cache")
        assert_same_model(loaded, tiny)
