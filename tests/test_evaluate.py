"""verify --eval: PPL on the real validation split, claims and exit codes, the causality audit."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoints import manifest_for, save_ours, save_published, tiny_model

from phasegpt_ckpt.models.checkpoint import load_checkpoint
from phasegpt_ckpt.models.data import CharDataset, get_dataloaders
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.evaluate import audit_causality, evaluate, evaluate_checkpoint, measure

T = 64  # the tiny models' max_seq_len: the validation block size


def validation_windows(corpus_path, block: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping (input, target) window of the last 10 % of the corpus, built from the spec."""
    ids = CharDataset(corpus_path).data
    val = ids[int(len(ids) * 0.9):]
    starts = range(0, len(val) - block, block)
    return torch.stack([val[s:s + block] for s in starts]), torch.stack([val[s + 1:s + block + 1] for s in starts])


def test_ppl_is_exp_of_the_token_weighted_mean_nll_on_the_real_validation_split(corpus_path):
    model = tiny_model("original", seed=1)
    _, val_loader = get_dataloaders(corpus_path, block_size=T, batch_size=256)

    ppl = evaluate(model, val_loader, device="cpu")
    measured = measure(model, val_loader)

    x, y = validation_windows(corpus_path)
    nll, Rs = 0.0, []
    with torch.no_grad():  # other batches than the loader's: the model's own mean loss weighted by tokens
        for xs, ys in zip(x.split(100), y.split(100)):
            _, loss, (R,) = model(xs, ys, return_R=True)
            nll, Rs = nll + loss.item() * ys.numel(), Rs + [R]
    assert ppl == measured.ppl == pytest.approx(math.exp(nll / y.numel()), rel=1e-6)
    assert measured.tokens == y.numel() and measured.windows == len(x) == (111540 - T - 1) // T + 1
    assert measured.R[0].mean == pytest.approx(torch.cat(Rs).mean().item(), abs=1e-6)
    assert measured.R[0].std == pytest.approx(torch.cat(Rs).std(correction=0).item(), abs=1e-6)


def test_R_spread_of_two_phase_layers_pools_every_window_and_head(corpus_path):
    model = tiny_model("causal", seed=8, phase_layer_idx=[0, 1])
    _, val_loader = get_dataloaders(corpus_path, block_size=T, batch_size=512)

    measured = measure(model, val_loader)

    x, _ = validation_windows(corpus_path)
    with torch.no_grad():
        values = torch.cat([R.flatten() for xs in x.split(500) for R in model(xs, return_R=True)[2]])
    assert len(measured.R) == 2 and measured.R[0].mean != pytest.approx(measured.R[1].mean, abs=1e-3)
    assert measured.R_std == pytest.approx(values.std(correction=0).item(), abs=1e-6)  # what the metadata records
    assert measured.summary() == {"val_loss": measured.loss, "val_ppl": measured.ppl, "R": measured.R_mean,
                                  "R_std": measured.R_std, "val_tokens": measured.tokens}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_path):
    """A checkpoint of ours and its true validation PPL and R, measured independently of verify."""
    path = save_ours(tiny_model("original", seed=2), tmp_path_factory.mktemp("run") / "tiny.pt", corpus_path)
    ckpt = load_checkpoint(path)
    _, val_loader = get_dataloaders(corpus_path, block_size=T, batch_size=256, vocab=ckpt.vocab)
    return path, measure(ckpt.model, val_loader)


def test_claims_that_hold_pass_and_the_table_shows_them(tmp_path, corpus_path, tiny_run, run_cli):
    path, truth = tiny_run
    claims = {"validation_ppl": {"value": round(truth.ppl, 2), "tolerance": 0.05},
              "order_parameter_R": {"value": round(truth.R_mean, 3), "tolerance": 0.01}}
    manifest = manifest_for(tmp_path, path, corpus_path, claims)

    code, out, err = run_cli("--manifest", manifest, "verify", "tiny", "--eval", "--device", "cpu", "--json")

    assert code == 0, err
    evaluation = json.loads(out)[0]["evaluation"]
    assert evaluation["validation_ppl"] == pytest.approx(truth.ppl, rel=1e-6)  # other batches, other rounding
    assert {c["claim"]: c["verdict"] for c in evaluation["claims"]} == {
        "validation_ppl": "pass", "order_parameter_R": "pass"}


def test_a_failed_claim_fails_verify_with_exit_1(tmp_path, corpus_path, tiny_run, run_cli):
    path, truth = tiny_run
    claims = {"validation_ppl": {"value": round(truth.ppl * 0.9, 2), "tolerance": 0.05}}
    manifest = manifest_for(tmp_path, path, corpus_path, claims)

    code, out, err = run_cli("--manifest", manifest, "verify", "tiny", "--eval", "--device", "cpu")

    assert code == 1
    row = next(line for line in out.splitlines() if "validation_ppl" in line and "FAIL" in line)  # the claims table
    assert f"{truth.ppl:.4f}" in row and f"{round(truth.ppl * 0.9, 2):g}" in row and "± 0.05" in row
    assert err.strip().splitlines()[-1].startswith("error: tiny failed verification: validation_ppl (manifest) is "
                                                    f"{truth.ppl:.4f}, expected {round(truth.ppl * 0.9, 2):g} ± 0.05")


def test_a_file_outside_the_manifest_is_held_to_the_metadata_json_beside_it(tmp_path, tiny_run, run_cli,
                                                                            corpus_path):
    path, truth = tiny_run
    beside = path.with_name("tiny_info.json")
    beside.write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                  "validation_ppl": round(truth.ppl, 4), "order_parameter_R": 0.5}))
    try:
        code, out, err = run_cli("verify", path, "--eval", "--data", corpus_path, "--device", "cpu", "--json")
        claims = {c["claim"]: (c["source"], c["value"]) for c in json.loads(out)[0]["evaluation"]["claims"]}
        assert code == 0 and claims == {"validation_ppl": ("metadata", round(truth.ppl, 4)),
                                        "order_parameter_R": ("metadata", 0.5)}, err
        beside.write_text(json.dumps({"sha256": "0" * 64, "validation_ppl": 1.0}))  # about other bytes
        code, out, err = run_cli("verify", path, "--eval", "--data", corpus_path, "--device", "cpu", "--json")
        assert code == 0 and json.loads(out)[0]["evaluation"]["claims"] == [] and "describes other bytes" in err
    finally:
        beside.unlink()  # tiny_run is shared by the module's tests


def test_block_size_comes_from_the_checkpoints_config(tmp_path, corpus_path):
    model = tiny_model("causal", seed=9)
    checkpoint = torch.load(save_ours(model, tmp_path / "tiny.pt", corpus_path), weights_only=True)
    checkpoint["config"]["data"]["block_size"] = 32  # trained and validated on windows shorter than max_seq_len
    torch.save(checkpoint, tmp_path / "tiny.pt")

    measured = evaluate_checkpoint(tmp_path / "tiny.pt", data=corpus_path, device="cpu").measurement

    x, y = validation_windows(corpus_path, block=32)
    with torch.no_grad():
        nll = sum(F.cross_entropy(model(xs)[0].flatten(0, 1), ys.flatten(), reduction="sum").item()
                  for xs, ys in zip(x.split(500), y.split(500)))
    assert (measured.windows, measured.tokens) == (len(x), y.numel())
    assert measured.ppl == pytest.approx(math.exp(nll / y.numel()), rel=1e-6)
    checkpoint["config"]["data"]["block_size"] = 65  # longer than the model's positions
    torch.save(checkpoint, tmp_path / "tiny.pt")
    with pytest.raises(BadInput, match="data.block_size 65 is not a window length from 1 to the model's max_seq_len 64"):
        evaluate_checkpoint(tmp_path / "tiny.pt", data=corpus_path, device="cpu")


@pytest.mark.parametrize("training", [True, False])
def test_the_causality_audit_leaves_the_models_mode_as_it_found_it(corpus_path, training):
    model = tiny_model("original", seed=4).train(training)
    _, val_loader = get_dataloaders(corpus_path, block_size=T, batch_size=4)

    audit_causality(model, val_loader, windows=1)

    assert model.training is training


def test_causal_model_does_not_see_the_future(corpus_path):
    model = tiny_model("causal", seed=4)
    _, val_loader = get_dataloaders(corpus_path, block_size=T, batch_size=4)

    audit = audit_causality(model, val_loader, windows=2)

    assert audit.max_logit_change == 0.0 and not audit.depends_on_future and audit.generation_consistent_ppl is None
    assert "do not change" in audit.explanation()


def test_original_model_sees_the_future_and_generation_ppl_is_measured_from_prefixes(corpus_path):
    model = tiny_model("original", seed=4)
    _, val_loader = get_dataloaders(corpus_path, block_size=T, batch_size=4)

    audit = audit_causality(model, val_loader, windows=2)

    x, y = validation_windows(corpus_path)
    x, y = x[:2], y[:2]
    with torch.no_grad():  # the definition: position t scored by a forward over tokens 0..t alone
        nll = sum(F.cross_entropy(model(x[:, :t + 1])[0][:, -1], y[:, t], reduction="sum").item() for t in range(T))
        full = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert audit.depends_on_future and audit.max_logit_change > 1e-3
    assert audit.generation_consistent_ppl == pytest.approx(math.exp(nll / y.numel()), rel=1e-5)
    assert audit.full_sequence_ppl == pytest.approx(math.exp(full), rel=1e-6)
    assert audit.generation_consistent_ppl != pytest.approx(audit.full_sequence_ppl, rel=1e-4)
    assert "as a generator must" in audit.explanation()


def test_verify_causality_reports_both_ppls_in_json(tmp_path, corpus_path, run_cli):
    path = save_published(tiny_model("original", seed=5), tmp_path / "best_model.pt")

    code, out, err = run_cli("verify", path, "--eval", "--causality", "--causality-windows", "2",
                             "--data", corpus_path, "--device", "cpu", "--json")

    assert code == 0, err
    causality = json.loads(out)[0]["evaluation"]["causality"]
    assert causality["depends_on_future"] and causality["windows"] == 2
    assert causality["generation_consistent_ppl"] != causality["full_sequence_ppl"]


@pytest.mark.cuda
def test_cuda_bf16_agrees_with_cpu_float32(tmp_path, corpus_path):
    """Tolerance: 1 % on PPL and 0.01 on R — bf16 keeps ~3 significant digits in the matmuls, while
    the phase trigonometry stays float32."""
    path = save_ours(tiny_model("causal", seed=6), tmp_path / "tiny.pt", corpus_path)
    cpu = evaluate_checkpoint(path, data=corpus_path, device="cpu", causality=True).measurement
    cuda_report = evaluate_checkpoint(path, data=corpus_path, device="cuda", causality=True)
    cuda = cuda_report.measurement
    assert cuda.ppl == pytest.approx(cpu.ppl, rel=1e-2)
    assert cuda.R_mean == pytest.approx(cpu.R_mean, abs=1e-2)
    assert not cuda_report.causality.depends_on_future
