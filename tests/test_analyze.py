"""analyze: the order parameter R per phase layer and head, checked against the pairwise definition."""
from __future__ import annotations

import json

import pytest
import torch
from reference_phase import pairwise_phase_forward
from tiny_checkpoints import save_published, tiny_model

from phasegpt_ckpt.analyze import analyze_checkpoint
from phasegpt_ckpt.data import CharDataset


@pytest.mark.parametrize("mode", ["original", "causal"])
def test_R_per_head_is_the_order_parameter_of_the_final_phases(tmp_path, corpus_path, mode):
    model = tiny_model(mode, seed=21)
    path = save_published(model, tmp_path / "ckpt.pt")
    if mode == "causal":  # the published layout records no mode: say it, as a user would with --config
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["coupling_mode"] = "causal"
        torch.save(checkpoint, path)

    stats = analyze_checkpoint(checkpoint_path=path, num_tokens=64, device="cpu", data=corpus_path)

    _, val = CharDataset(corpus_path).split()
    with torch.no_grad():  # the layer's input, then §2 with the explicit [B, H, T, T, N] differences
        h = model.embed(val[None, :64])
        h = model.blocks[0](h)
        _, R = pairwise_phase_forward(model.blocks[1].attention, model.blocks[1].ln1(h))
    (layer,) = stats["layers"]
    assert stats["coupling_mode"] == mode and layer["layer"] == 1 and stats["windows"] == 1
    assert [head["R_mean"] for head in layer["heads"]] == pytest.approx(R[0].tolist(), abs=1e-5)
    assert stats["R_mean"] == pytest.approx(R.mean().item(), abs=1e-5)
    assert stats["R_std"] == pytest.approx(R.std(correction=0).item(), abs=1e-5)
    assert [head["K"] for head in layer["heads"]] == model.blocks[1].attention.coupling_matrix.flatten().tolist()


def test_cli_analyze_windows_and_json(tmp_path, corpus_path, run_cli):
    path = save_published(tiny_model(seed=22), tmp_path / "ckpt.pt")

    code, out, err = run_cli("analyze", path, "--num-tokens", 200, "--data", corpus_path, "--device", "cpu", "--json")

    assert code == 0, err
    stats = json.loads(out)
    assert stats["num_tokens"] == 200 and stats["windows"] == 4  # 64 + 64 + 64 + 8
    head_means = [head["R_mean"] for head in stats["layers"][0]["heads"]]
    assert len(head_means) == 2 and all(0 <= r <= 1 for r in head_means)
    assert stats["R_mean"] == pytest.approx(sum(head_means) / 2, abs=1e-6)  # every head sees every window
    code, out, err = run_cli("analyze", path, "--num-tokens", 0, "--data", corpus_path)
    assert code == 2 and "--num-tokens must be between 1 and 111540" in err
