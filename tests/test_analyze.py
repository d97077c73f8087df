"""analyze: the order parameter R per phase layer and head over windows, checked against the pairwise definition."""
from __future__ import annotations

import json

import pytest
import torch
from reference_phase import pairwise_phase_forward
from tiny_checkpoints import save_published, tiny_model

from phasegpt_ckpt.models.analyze import analyze_checkpoint
from phasegpt_ckpt.models.data import CharDataset
from phasegpt_ckpt.errors import BadInput


def reference_R(model, window: torch.Tensor) -> torch.Tensor:
    """R per head [H] of the tiny models' phase layer (block 1) on one window, by §2's pairwise tensor."""
    with torch.no_grad():
        h = model.blocks[0](model.embed(window[None]))
        _, R = pairwise_phase_forward(model.blocks[1].attention, model.blocks[1].ln1(h))
    return R[0]


@pytest.mark.parametrize("mode", ["original", "causal"])
def test_R_statistics_run_over_windows_of_the_validation_split(tmp_path, corpus_path, mode):
    model = tiny_model(mode, seed=21)
    path = save_published(model, tmp_path / "ckpt.pt")
    if mode == "causal":  # the published layout records no mode: say it, as a user would with --config
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["coupling_mode"] = "causal"
        torch.save(checkpoint, path)

    stats = analyze_checkpoint(checkpoint_path=path, num_tokens=48, windows=5, device="cpu", data=corpus_path)

    _, val = CharDataset(corpus_path).split()
    R = torch.stack([reference_R(model, val[48 * w:48 * (w + 1)]) for w in range(5)])  # [windows, H], one by one
    (layer,) = stats["layers"]
    assert (stats["coupling_mode"], stats["windows"], stats["num_tokens"], layer["layer"]) == (mode, 5, 48, 1)
    for h, head in enumerate(layer["heads"]):
        assert head["R_mean"] == pytest.approx(R[:, h].mean().item(), abs=1e-5)
        assert head["R_std"] == pytest.approx(R[:, h].std(correction=0).item(), abs=1e-5)
        assert head["R_std"] > 1e-4  # the text changes from window to window, and so does R
    assert layer["R_std"] == pytest.approx(R.mean(dim=1).std(correction=0).item(), abs=1e-5) and layer["R_std"] > 1e-4
    assert stats["R_mean"] == pytest.approx(R.mean().item(), abs=1e-5)
    assert [head["K"] for head in layer["heads"]] == model.blocks[1].attention.coupling_matrix.flatten().tolist()


def test_cli_analyze_cuts_windows_to_max_seq_len_and_says_so(tmp_path, corpus_path, run_cli):
    path = save_published(tiny_model(seed=22), tmp_path / "ckpt.pt")

    code, out, err = run_cli("analyze", path, "--num-tokens", 200, "--data", corpus_path, "--device", "cpu", "--json")

    assert code == 0, err
    stats = json.loads(out)
    assert (stats["num_tokens"], stats["windows"]) == (64, 16)  # the tiny models' max_seq_len; the default count
    assert "windows of 64 tokens, the model's max_seq_len, not 200" in err
    head_means = [head["R_mean"] for head in stats["layers"][0]["heads"]]
    assert len(head_means) == 2 and all(0 <= r <= 1 for r in head_means)
    assert stats["R_mean"] == pytest.approx(sum(head_means) / 2, abs=1e-6)  # every head sees every window
    code, out, err = run_cli("analyze", path, "--num-tokens", 0, "--data", corpus_path)
    assert code == 2 and "--num-tokens" in err and "greater than or equal to 1" in err


def test_more_windows_than_the_validation_split_holds_is_bad_input(tmp_path, corpus_path):
    path = save_published(tiny_model(seed=23), tmp_path / "ckpt.pt")
    with pytest.raises(BadInput, match=r"--windows must be between 1 and 1742 \(111540 validation characters"):
        analyze_checkpoint(path, num_tokens=64, windows=1743, device="cpu", data=corpus_path)
