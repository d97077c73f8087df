"""Training and resuming on the real corpus with a tiny model: the §3 recipe, exact continuation,
atomic checkpoints, the published checkpoint layout, SIGINT, metrics, metadata and DDP over gloo."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from full_disk import FullDisk

from phasegpt_ckpt import manifests
from model import GPT2Config, GPT2Model
from phasegpt_ckpt.models.checkpoint import describe, load_checkpoint, save_checkpoint
from phasegpt_ckpt.models.data import get_dataloaders
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.evaluate import measure
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.proof.metadata import load_metadata
from phasegpt_ckpt.training.progress import plot_metrics
from phasegpt_ckpt.store.publish import publish
from phasegpt_ckpt.training.run_config import RunConfig, load_config, shipped_configs
from phasegpt_ckpt.training.schedule import WarmupCosine, build_optimizer, build_scheduler, schedule_note
from phasegpt_ckpt.training.train import Trainer, resume, train

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 4
TINY = {  # dropout on: exactness must hold with random masks
    "model": {"vocab_size": 65, "n_layers": 2, "d_model": 32, "n_heads": 2, "max_seq_len": 64, "dropout": 0.1,
              "use_phase_attention": True, "phase_layer_idx": [1], "num_oscillators": 8, "coupling_mode": "causal"},
    "training": {"batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 3e-3, "max_epochs": 3,
                 "warmup_steps": 3, "steps_per_epoch": STEPS_PER_EPOCH, "save_interval": 1},
    "data": {"block_size": 64},
    "experiment": {"name": "tiny-test", "seed": 5},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread runs them ~10x faster than two
    contending ones (torchrun gives each of its processes one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model_state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ in {different[:3]}"


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, corpus_path) -> Path:
    """Three uninterrupted epochs: the reference every resumed run must reproduce bit for bit."""
    save_dir = tmp_path_factory.mktemp("run_a")
    train(RunConfig.from_dict(TINY), save_dir=save_dir, data=corpus_path, device="cpu", plot=True)
    return save_dir


# -- §3: optimizer and schedule -----------------------------------------------------------------


def test_optimizer_groups_follow_the_published_rule_literally():
    model = GPT2Model(config=GPT2Config.from_dict(TINY["model"]))
    optimizer = build_optimizer(model, RunConfig.from_dict(TINY).training, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert decay == {n for n in names.values() if not any(w in n for w in ("bias", "norm", "embedding"))}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    # ln1/ln2/ln_f contain no "norm": LayerNorm weights are decayed, as in the published runs
    assert {"blocks.0.ln1.weight", "blocks.1.ln2.weight", "ln_f.weight", "blocks.0.attention.qkv_proj.weight"} <= decay
    assert {"token_embedding.weight", "position_embedding.weight", "ln_f.bias"} <= no_decay
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # §3 and TINY: 0.1
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 for g in optimizer.param_groups)


def test_schedule_is_linear_warmup_then_cosine_floored_at_a_tenth():
    warmup, total, base = 10, 60, 0.5
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = build_scheduler(optimizer, warmup, total)
    for step in range(total + 5):
        expected = step / warmup if step < warmup else max(
            0.1, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup)))))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(base * expected, abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_extending_the_schedule_is_continuous_and_ends_on_the_floor():
    f = WarmupCosine(warmup_steps=10, total_steps=100)
    before = f(40)
    f.extend(40, 240)
    assert f(40) == before
    assert f(140) == pytest.approx(0.1 + (before - 0.1) / 2)  # halfway from where it stood to the floor
    assert f(240) == 0.1
    assert all(f(s) >= f(s + 1) for s in range(40, 240))
    on_floor = WarmupCosine(10, 100)
    on_floor.extend(100, 300)
    assert {on_floor(s) for s in range(100, 301)} == {0.1}


# -- atomic writes ------------------------------------------------------------------------------


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "epoch_1.pt"
    save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, path)

    def dies_halfway(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt"]  # no temp file left behind
    assert torch.load(path, weights_only=True)["epoch"] == 1


# -- a run, and runs resumed from it ------------------------------------------------------------


def test_every_file_loads_weights_only_and_carries_the_seed_layout(run_a):
    names = sorted(p.name for p in run_a.iterdir())
    assert names == ["best_model.pt", "best_model_info.json", "epoch_1.pt", "epoch_2.pt", "epoch_3.pt",
                     "final_model.pt", "metrics.jsonl", "training.png"]
    final = torch.load(run_a / "final_model.pt", weights_only=True)
    seed_keys = {"epoch", "global_step", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
                 "best_val_loss", "best_val_ppl", "config", "rng_state"}
    assert seed_keys <= final.keys()
    assert (final["epoch"], final["global_step"]) == (3, 3 * STEPS_PER_EPOCH)
    assert final["coupling_mode"] == "causal" and len(final["vocab"]) == 65
    assert {"python", "torch", "sampler"} <= final["rng_state"].keys()
    assert final["schedule"]["planned_epochs"] == 3 and final["schedule"]["extensions"] == []
    assert set(final["config"]) >= {"model", "training", "data", "logging", "experiment"}
    model = GPT2Model(**final["config"]["model"])  # the seed's snippet
    loaded = model.load_state_dict(final["model_state_dict"], strict=True)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in final["model_state_dict"].items())
    assert (run_a / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_have_one_row_per_epoch(run_a):
    rows = [json.loads(line) for line in (run_a / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    for row, name in zip(rows, ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]):
        saved = torch.load(run_a / name, weights_only=True)
        assert row == saved["metrics"]
        assert row["lr"] == saved["optimizer_state_dict"]["param_groups"][0]["lr"]
        assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))  # token-weighted, as evaluate
        assert 0 < row["R"] <= 1 and row["tokens_per_s"] > 0 and row["time_s"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_metadata_json_describes_best_model_and_validates(run_a, corpus_path):
    best = run_a / "best_model.pt"
    info = load_metadata(run_a / "best_model_info.json")
    checkpoint = torch.load(best, weights_only=True)
    assert info.sha256 == hashlib.sha256(best.read_bytes()).hexdigest()
    assert info.size_agrees(best.stat().st_size) and info.file_size_bytes == best.stat().st_size
    assert info.validation_ppl == pytest.approx(checkpoint["best_val_ppl"], abs=1e-4)
    assert info.order_parameter_R == pytest.approx(checkpoint["metrics"]["R"], abs=1e-4)
    assert info.training_epochs == checkpoint["epoch"]
    assert info.pytorch_version == torch.__version__ and info.license == "MIT"
    assert info.not_published() == ["cuda_version", "doi"]  # on a CPU machine, before publishing
    # what `verify --eval` will measure: the same numbers, from the file alone
    loaded = load_checkpoint(best, data=corpus_path)
    _, val_loader = get_dataloaders(corpus_path, block_size=64, batch_size=32, vocab=loaded.vocab)
    measured = measure(loaded.model, val_loader)
    assert measured.ppl == pytest.approx(info.validation_ppl, abs=1e-4)
    assert measured.R_mean == pytest.approx(info.order_parameter_R, abs=1e-4)
    assert measured.R_std == pytest.approx(info.order_parameter_R_std, abs=1e-4)
    assert info.validation_tokens == measured.tokens


def test_publish_writes_the_trainers_metadata_json_from_the_checkpoint_alone(run_a, tmp_path):
    shutil.copy(run_a / "best_model.pt", tmp_path / "best_model.pt")  # without the trainer's JSON beside it
    (tmp_path / "manifest.yaml").write_text("version: 1\n")

    published = publish(tmp_path / "best_model.pt", "tiny-test", manifest=tmp_path / "manifest.yaml")

    written = json.loads(published.metadata_path.read_text())
    assert written == json.loads((run_a / "best_model_info.json").read_text())  # one builder, one answer
    assert written["hardware"] and written["date_trained"] and written["pytorch_version"] == torch.__version__


def test_resume_from_epoch_2_reproduces_the_run_bit_for_bit(run_a, corpus_path, tmp_path):
    shutil.copy(run_a / "epoch_2.pt", tmp_path / "epoch_2.pt")
    result = resume(tmp_path / "epoch_2.pt", epochs=3, data=corpus_path, device="cpu")
    assert result.save_dir == tmp_path and result.global_step == 3 * STEPS_PER_EPOCH
    assert_same_weights(run_a / "final_model.pt", tmp_path / "final_model.pt")
    a, b = (torch.load(d / "final_model.pt", weights_only=True)["optimizer_state_dict"] for d in (run_a, tmp_path))
    assert all(torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"]) for i in a["state"])
    assert (run_a / "epoch_2.pt").read_bytes() == (tmp_path / "epoch_2.pt").read_bytes()  # source untouched
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [3]


@pytest.mark.parametrize("stop_at", [STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH])  # inside epoch 2; after its last step
def test_resume_from_interrupted_pt_is_exact_too(run_a, corpus_path, tmp_path, monkeypatch, stop_at):
    monkeypatch.setattr(Trainer, "_stop_requested", lambda self: self.global_step == stop_at)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig.from_dict(TINY), save_dir=tmp_path, data=corpus_path, device="cpu")
    interrupted = torch.load(tmp_path / "interrupted.pt", weights_only=True)
    assert (interrupted["epoch"], interrupted["global_step"]) == (1, stop_at)
    assert interrupted["rng_state"]["sampler"]["epoch"] == 2
    assert interrupted["rng_state"]["sampler"]["position"] == (stop_at - STEPS_PER_EPOCH) * 8 * 2  # × batch × accum
    monkeypatch.undo()
    resume(tmp_path / "interrupted.pt", epochs=3, data=corpus_path, device="cpu")
    assert_same_weights(run_a / "final_model.pt", tmp_path / "final_model.pt")


def test_resume_beyond_the_plan_extends_the_schedule_from_where_it_stands(run_a, corpus_path, tmp_path, run_cli):
    shutil.copy(run_a / "epoch_2.pt", tmp_path / "epoch_2.pt")
    before = torch.load(tmp_path / "epoch_2.pt", weights_only=True)
    joint = before["global_step"]
    result = resume(tmp_path / "epoch_2.pt", epochs=4, data=corpus_path, device="cpu")
    final = torch.load(tmp_path / "final_model.pt", weights_only=True)
    assert final["schedule"]["extensions"] == [{"from_epochs": 3, "to_epochs": 4, "at_step": joint}]
    assert result.schedule == schedule_note(final["schedule"]) == "schedule extended from 3 to 4 epochs at step 8"
    assert final["global_step"] == 4 * STEPS_PER_EPOCH
    # continuous at the joint: the rate the checkpoint would have used next is where the new cosine starts
    factor = final["scheduler_state_dict"]["lr_lambdas"][0]
    base = TINY["training"]["learning_rate"]
    assert factor["start_step"] == joint
    assert base * factor["start_factor"] == pytest.approx(before["optimizer_state_dict"]["param_groups"][0]["lr"])
    assert final["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(base * 0.1)  # floor at the new end
    assert describe(tmp_path / "final_model.pt")["schedule"] == result.schedule  # and `info` says so
    code, out, err = run_cli("info", tmp_path / "final_model.pt", "--json")
    assert code == 0 and json.loads(out)["checkpoint"]["schedule"] == "schedule extended from 3 to 4 epochs at step 8"
    assert describe(run_a / "final_model.pt")["schedule"] is None  # a run that kept to its plan


def test_resume_refuses_an_epoch_count_already_reached(run_a, corpus_path):
    with pytest.raises(BadInput, match="already trained 3 epochs"):
        resume(run_a / "final_model.pt", epochs=3, data=corpus_path, device="cpu")


def test_resuming_a_published_layout_checkpoint_says_what_it_could_not_restore(run_a, corpus_path, tmp_path, caplog):
    ours = torch.load(run_a / "epoch_2.pt", weights_only=True)
    published_config = {**ours["config"], "model": {k: v for k, v in ours["config"]["model"].items()
                                                     if k != "coupling_mode"} | {"type": "gpt2", "n_sync_steps": 5}}
    published_config["training"] = {k: v for k, v in ours["config"]["training"].items() if k != "steps_per_epoch"}
    published_config["training"]["patience"] = 5
    published = {key: ours[key] for key in ("epoch", "global_step", "model_state_dict", "optimizer_state_dict",
                                            "best_val_loss")}
    published["scheduler_state_dict"] = {**ours["scheduler_state_dict"], "lr_lambdas": [None, None]}  # a closure
    published["config"] = published_config
    torch.save(published, tmp_path / "best_model.pt")
    caplog.set_level("INFO", logger="phasegpt_ckpt")
    result = resume(tmp_path / "best_model.pt", epochs=3, data=corpus_path, device="cpu")
    err = caplog.text
    assert "could not restore" in err and "python RNG" in err and "data sampler position" in err
    assert "training.patience" in err  # a published key this trainer does not use
    assert "coupling mode 'original'" in err
    assert result.global_step == 3 * STEPS_PER_EPOCH  # epoch length taken from global_step / epoch
    final = torch.load(tmp_path / "final_model.pt", weights_only=True)
    assert final["coupling_mode"] == "original" and final["config"]["training"]["steps_per_epoch"] == STEPS_PER_EPOCH


def test_the_seeds_resume_snippet_runs(run_a, corpus_path, tmp_path, caplog):
    # checkpoints-README.md "Resume Training", imports mapped (src.train -> phasegpt_ckpt.training.train, ...)
    checkpoint = torch.load(run_a / "epoch_2.pt")
    model = GPT2Model(**checkpoint["config"]["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    model.load_state_dict(checkpoint["model_state_dict"])
    with pytest.raises(ValueError):  # one group here, the published two in the file: the snippet's own bug
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    start_epoch = checkpoint["epoch"] + 1
    train_loader, val_loader = get_dataloaders(corpus_path, block_size=64, batch_size=8)
    trainer = Trainer(model, train_loader, val_loader, checkpoint["config"], optimizer=optimizer,
                      scheduler=scheduler, device="cpu", save_dir=tmp_path)
    result = trainer.train(start_epoch=start_epoch, total_epochs=4)
    assert result.epoch == 4 and (tmp_path / "final_model.pt").is_file()
    assert "not the published warmup-cosine" in caplog.text


# -- the command line: SIGINT -------------------------------------------------------------------


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", *args], env=env, text=True, **kwargs)


def test_sigint_saves_interrupted_pt_and_exits_130(tmp_path, corpus_path):
    config = {**TINY, "training": {**TINY["training"], "steps_per_epoch": 100_000}}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    process = _cli("phasegpt_ckpt", "train", "--config", str(tmp_path / "long.yaml"), "--device", "cpu",
                   "--data", str(corpus_path), "--save-dir", str(tmp_path / "run"), stderr=subprocess.PIPE)
    lines = []
    for line in process.stderr:  # the trainer says "training ..." once its signal handlers are in place
        lines.append(line)
        if line.startswith("training "):
            break
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, "".join(lines) + rest
    interrupted = torch.load(tmp_path / "run" / "interrupted.pt", weights_only=True)
    assert interrupted["epoch"] == 0 and interrupted["global_step"] >= 1
    assert interrupted["rng_state"]["sampler"]["position"] == interrupted["global_step"] * 8 * 2
    assert f"state saved to {tmp_path / 'run' / 'interrupted.pt'}" in rest


@pytest.fixture
def full_disk(tmp_path):
    disk = FullDisk(tmp_path)  # a small tmpfs where this process may mount one, else torch.save fails as on one
    yield disk
    disk.close()


def test_disk_full_during_a_checkpoint_write_is_one_line_exit_2_and_keeps_the_previous(full_disk, tmp_path,
                                                                                      corpus_path, run_cli):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "max_epochs": 1}}))
    save_dir = full_disk.root / "run"
    command = ("train", "--config", tmp_path / "tiny.yaml", "--save-dir", save_dir, "--data", corpus_path,
               "--device", "cpu")
    code, _, err = run_cli(*command)
    assert code == 0, err
    best = save_dir / "best_model.pt"
    before = best.read_bytes()
    full_disk.fill(leave=len(before) // 3)

    code, out, err = run_cli(*command)  # the same run again: its first best_model.pt no longer fits

    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and out == "" and "Traceback" not in err and len(errors) == 1
    assert errors[0].startswith(f"error: disk full while writing {best}") and "untouched" in errors[0]
    assert best.read_bytes() == before and not [p for p in save_dir.iterdir() if p.name.startswith(".")]
    assert load_checkpoint(best).epoch == 1


# -- distributed: two gloo processes compute what one does, and checkpoints cross world sizes -----

# dropout 0: the ranks' own dropout masks would differ from a single process's by design.
DDP = {**TINY, "model": {**TINY["model"], "dropout": 0.0}, "training": {**TINY["training"], "max_epochs": 2}}


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, corpus_path) -> Path:
    """The DDP config trained in one process: what two processes must compute too."""
    save_dir = tmp_path_factory.mktemp("single")
    train(RunConfig.from_dict(DDP), save_dir=save_dir, data=corpus_path, device="cpu")
    return save_dir


def torchrun(*args) -> dict:
    """``torchrun --nproc_per_node=2 -m phasegpt_ckpt ARGS --device cpu --json``: the one document rank 0 prints."""
    process = _cli("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "phasegpt_ckpt", *map(str, args),
                   "--device", "cpu", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(out)


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for key in wb:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_gloo_processes_match_one_and_resume_on_one(tmp_path, corpus_path, single_process_run):
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(DDP))
    result = torchrun("train", "--config", tmp_path / "ddp.yaml", "--data", corpus_path, "--save-dir", tmp_path / "ddp")
    assert result["global_step"] == 2 * STEPS_PER_EPOCH
    assert_close_weights(tmp_path / "ddp" / "final_model.pt", single_process_run / "final_model.pt")
    # a checkpoint written by two processes resumes on one
    resume(tmp_path / "ddp" / "epoch_1.pt", epochs=2, save_dir=tmp_path / "resumed", data=corpus_path, device="cpu")
    assert_close_weights(tmp_path / "resumed" / "final_model.pt", single_process_run / "final_model.pt")


def test_a_one_process_checkpoint_resumes_on_two(tmp_path, corpus_path, single_process_run):
    result = torchrun("resume", "--model", single_process_run / "epoch_1.pt", "--epochs", 2, "--data", corpus_path,
                      "--save-dir", tmp_path / "resumed")
    assert (result["epoch"], result["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    assert_close_weights(tmp_path / "resumed" / "final_model.pt", single_process_run / "final_model.pt")


# -- configs ------------------------------------------------------------------------------------

# PHASEGPT_FORMAT.md §4's Phase A table: phase layers, oscillators, K for each shipped run.
PHASE_A = {
    "phase_a_winner": ([7], 32, 1.0), "layer6_32osc_k1.0": ([6], 32, 1.0), "consecutive_6_7_32osc": ([6, 7], 32, 1.0),
    "distributed_4_7_32osc": ([4, 7], 32, 1.0), "layer6_16osc_k1.0": ([6], 16, 1.0),
    "layer6_32osc_k2.0": ([6], 32, 2.0), "layer6_64osc_k1.0": ([6], 64, 1.0), "baseline": ([], 32, 1.0),
}


def test_shipped_configs_are_the_phase_a_runs_and_tiny():
    assert sorted(shipped_configs()) == sorted([*PHASE_A, "tiny"])
    for name, (layers, oscillators, coupling) in PHASE_A.items():
        run = load_config(name)
        settings = run.model_settings
        assert (settings.phase_layers, settings.coupling_mode) == (layers, "original"), name
        if layers:
            assert (settings.num_oscillators, settings.coupling_strength) == (oscillators, coupling), name
        assert (settings.n_layers, settings.d_model, settings.n_heads, settings.d_ff) == (12, 768, 12, 3072)
        t = run.training
        assert (t.batch_size, t.gradient_accumulation_steps, t.learning_rate, t.weight_decay, t.warmup_steps,
                t.grad_clip, t.steps_per_epoch) == (32, 4, 3e-4, 0.1, 100, 1.0, 3240 // 18)
        assert run.block_size == 512 and run.experiment.seed == 42 and not run.unused_keys()
        with torch.device("meta"):
            parameters = sum(p.numel() for p in GPT2Model(config=settings).parameters())
        assert parameters == pytest.approx(85e6, rel=0.05), name  # "about 85M parameters"


def test_tiny_config_is_small_causal_and_builds():
    run = load_config("tiny")
    settings = run.model_settings
    assert settings.coupling_mode == "causal" and settings.phase_layers and run.training.steps_per_epoch
    assert sum(p.numel() for p in GPT2Model(config=settings).parameters()) < 2_000_000


def test_config_mistakes_are_one_line_bad_input(tmp_path):
    with pytest.raises(BadInput, match="neither a file nor a shipped config .*tiny"):
        load_config("no-such-config")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**TINY, "training": {"batch_size": 0}}))
    with pytest.raises(BadInput, match=r"training\.batch_size"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({**TINY, "model": {"n_layer": 2}}))
    with pytest.raises(BadInput, match="n_layer"):
        load_config(tmp_path / "model.yaml")


def test_plot_without_matplotlib_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BadInput, match=r"pip install 'phasegpt-ckpt\[plot\]'"):
        plot_metrics([], tmp_path / "x.png")


@pytest.mark.cuda
def test_cuda_training_with_bf16_fused_adamw_and_compile_continues_on_cpu(tmp_path, corpus_path):
    config = RunConfig.from_dict({**TINY, "training": {**TINY["training"], "max_epochs": 1}})
    result = train(config, save_dir=tmp_path, data=corpus_path, device="cuda", compile=True)
    assert math.isfinite(result.best_val_loss)
    saved = torch.load(tmp_path / "final_model.pt", weights_only=True, map_location="cpu")
    assert all(group["fused"] for group in saved["optimizer_state_dict"]["param_groups"])
    assert "cuda" in saved["rng_state"] and "NVIDIA" in load_metadata(tmp_path / "best_model_info.json").hardware
    resume(tmp_path / "final_model.pt", epochs=2, data=corpus_path, device="cpu")
    assert torch.load(tmp_path / "final_model.pt", weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH


# -- the bundled checkpoint ---------------------------------------------------------------------


def test_the_bundled_checkpoint_was_trained_by_this_trainer_with_the_shipped_tiny_config():
    bundled = torch.load(REPO / "manifests" / "phasegpt-tiny.pt", weights_only=True)
    assert bundled["config"] == load_config("tiny").to_dict()
    assert bundled["epoch"] == bundled["config"]["training"]["max_epochs"] == bundled["schedule"]["planned_epochs"]
    factor = bundled["scheduler_state_dict"]["lr_lambdas"][0]
    assert factor.keys() == vars(WarmupCosine(1, 2)).keys()  # the schedule state this code saves and restores
    claim = load_manifest(manifests.DEFAULT).artifact("phasegpt-tiny").claims["validation_ppl"]
    assert abs(bundled["best_val_ppl"] - claim.value) <= claim.tolerance  # the trainer's number is the published one
