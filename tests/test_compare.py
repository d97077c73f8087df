"""compare: two checkpoints (or two groups of seeds) on the same validation windows, and a paired bootstrap."""
from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_checkpoints import save_ours, tiny_model

from phasegpt_ckpt import manifests
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.compare import bootstrap_interval
from phasegpt_ckpt.models.data import BUNDLED_CORPUS
from phasegpt_ckpt.store.store import Store

TINY = Path(manifests.__file__).parent / "phasegpt-tiny.pt"  # the bundled checkpoint: block size 128, causal
SHORT = 300_000  # characters of the short corpus: 30,000 of validation, 234 windows of 128


def windows_of(characters: int, length: int) -> int:
    """Non-overlapping windows of ``length`` (+1 target) in the validation split (last 10 %) of a text."""
    validation = characters - int(characters * 0.9)
    return (validation - length - 1) // length + 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """The short corpus and variants of phasegpt-tiny, each written as a file of its own."""
    root = tmp_path_factory.mktemp("compare")
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as handle:
        text = handle.read()
    (root / "short.txt").write_text(text[:SHORT])
    (root / "too-short.txt").write_text(text[:1000])  # a validation split of 100 characters: no window of 129

    def variant(name: str, change) -> Path:
        checkpoint = torch.load(TINY, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, root / name)
        return root / name

    def perturb(checkpoint):  # one tensor, not a tied one (the LM head is the token embedding)
        weight = checkpoint["model_state_dict"]["blocks.0.ffn.0.weight"]
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=weight.dtype)
        checkpoint["model_state_dict"]["blocks.0.ffn.0.weight"] = weight + 0.02 * noise

    def reorder_vocabulary(checkpoint):
        checkpoint["vocab"] = checkpoint["vocab"][::-1]

    def original_with_short_windows(checkpoint):
        checkpoint["coupling_mode"] = checkpoint["config"]["model"]["coupling_mode"] = "original"
        checkpoint["config"]["data"]["block_size"] = 64

    return SimpleNamespace(short=root / "short.txt", too_short=root / "too-short.txt", root=root,
                           perturbed=variant("perturbed.pt", perturb),
                           reordered=variant("reordered-vocab.pt", reorder_vocabulary),
                           original64=variant("original-64.pt", original_with_short_windows))


def test_a_checkpoint_against_itself_changes_nothing():
    store = Store(offline=True)
    result = store.compare("phasegpt-tiny", "phasegpt-tiny", batch_size=128)  # the full validation split

    claim = store.manifest.artifact("phasegpt-tiny").claims["validation_ppl"]
    assert result.relative_change == 0.0 and result.ci95 == (0.0, 0.0) and not result.significant
    assert result.ci95[0] <= 0 <= result.ci95[1]
    assert result.ppl_a == result.ppl_b == pytest.approx(claim.value, abs=claim.tolerance)  # evaluate's PPL
    assert (result.windows, result.window_length) == (windows_of(1115394, 128), 128) == (871, 128)
    assert (result.seeds_a, result.seeds_b, result.interval_includes_seed_variation) == (1, 1, False)
    assert "identically" in result.explanation()


def test_perturbed_weights_are_a_significant_rise_and_json_keeps_numbers_as_numbers(run_cli, files):
    code, out, err = run_cli("--offline", "compare", "phasegpt-tiny", files.perturbed, "--data", files.short,
                             "--device", "cpu", "--batch-size", 128, "--json")
    document = json.loads(out)

    assert code == 0
    for key in ("ppl_a", "ppl_b", "relative_change"):
        assert type(document[key]) is float
    assert type(document["ci95"]) is list and len(document["ci95"]) == 2
    assert all(type(bound) is float for bound in document["ci95"])
    assert type(document["significant"]) is bool and document["significant"] is True
    for key in ("windows", "window_length", "resamples", "seed", "seeds_a", "seeds_b", "tokens"):
        assert type(document[key]) is int
    low, high = document["ci95"]
    assert 0 < low <= document["relative_change"] <= high
    assert document["relative_change"] == pytest.approx(document["ppl_b"] / document["ppl_a"] - 1, rel=1e-9)
    assert (document["windows"], document["window_length"]) == (windows_of(SHORT, 128), 128)
    assert (document["resamples"], document["seed"], document["seeds_a"], document["seeds_b"]) == (10_000, 0, 1, 1)
    assert document["interval_includes_seed_variation"] is False
    assert document["a"] == ["phasegpt-tiny"] and document["b"] == [str(files.perturbed)]


def test_human_output_gives_both_ppls_the_change_with_its_interval_and_what_it_means(run_cli, files):
    code, out, err = run_cli("--offline", "compare", files.perturbed, "phasegpt-tiny", "--data", files.short,
                             "--device", "cpu", "--batch-size", 128, "--resamples", 2000)

    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("A  ") and lines[1].startswith("B  ") and "PPL " in lines[0]
    assert lines[2].startswith("change in PPL, B vs A: -") and "95 % interval -" in lines[2]
    assert f"{windows_of(SHORT, 128)} validation windows of 128 characters" in lines[3] and "2000" in lines[3]
    assert "lower (better)" in lines[-1] and "excludes 0" in lines[-1] and "one training seed per side" in lines[-1]


def test_block_sizes_and_coupling_modes_differ_windows_of_the_shorter(files, caplog):
    with caplog.at_level(logging.WARNING, logger="phasegpt_ckpt"):
        result = Store(offline=True).compare("phasegpt-tiny", str(files.original64), data=files.short,
                                             batch_size=128, resamples=1000)

    assert (result.window_length, result.windows) == (64, windows_of(SHORT, 64))
    assert (result.block_sizes_a, result.block_sizes_b) == ([128], [64]) and result.shortened == ["phasegpt-tiny"]
    assert (result.coupling_modes_a, result.coupling_modes_b) == (["causal"], ["original"])
    assert "shortest block size" in result.window_note() and "phasegpt-tiny" in caplog.text
    assert result.ci95[0] <= result.relative_change <= result.ci95[1]


def test_seeds_on_each_side_put_seed_variation_in_the_interval(run_cli, files, corpus_path):
    paths = [save_ours(tiny_model("causal", seed=s), files.root / f"seed{s}.pt", corpus_path) for s in range(4)]
    a, b = ",".join(map(str, paths[:2])), ",".join(map(str, paths[2:]))

    code, out, err = run_cli("--offline", "compare", a, b, "--data", files.short, "--device", "cpu",
                             "--batch-size", 256, "--resamples", 2000, "--json")
    document = json.loads(out)

    assert code == 0 and document["a"] == list(map(str, paths[:2])) and document["b"] == list(map(str, paths[2:]))
    assert (document["seeds_a"], document["seeds_b"], document["interval_includes_seed_variation"]) == (2, 2, True)
    per_seed = document["ppl_a_per_seed"]  # a side's PPL: exp of the mean over seeds of each seed's mean NLL
    assert document["ppl_a"] == pytest.approx(math.exp(sum(map(math.log, per_seed)) / 2), rel=1e-9)
    assert document["window_length"] == 64 and "seed-to-seed variation" in document["explanation"]


def test_the_interval_covers_a_known_change_about_95_times_in_100():
    """Synthetic per-window NLL, skewed window difficulty shared by A and B, B higher by a known amount."""
    rng = np.random.default_rng(123)
    delta, windows, covered = 0.03, 200, 0
    for dataset in range(200):
        difficulty = rng.gamma(4, 0.4, windows)
        a = difficulty + rng.normal(0, 0.05, windows)
        b = difficulty + delta + rng.normal(0, 0.05, windows) + 0.1 * (difficulty - difficulty.mean()) * rng.normal(0, 1, windows)
        low, high = bootstrap_interval(a, b, resamples=2000, seed=dataset)
        covered += low <= math.expm1(delta) <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_with_several_seeds_the_interval_covers_seed_to_seed_variation():
    """Each seed shifts every window a little; the true change is over seeds. One seed per side misses it."""
    rng = np.random.default_rng(7)
    delta, windows, seeds, covered, covered_by_one_seed = 0.01, 200, 5, 0, 0
    for dataset in range(200):
        difficulty = rng.gamma(4, 0.4, windows)
        a = difficulty + rng.normal(0, 0.02, (seeds, 1)) + rng.normal(0, 0.05, (seeds, windows))
        b = difficulty + delta + rng.normal(0, 0.02, (seeds, 1)) + rng.normal(0, 0.05, (seeds, windows))
        low, high = bootstrap_interval(a, b, resamples=2000, seed=dataset)
        covered += low <= math.expm1(delta) <= high
        low, high = bootstrap_interval(a[0], b[0], resamples=2000, seed=dataset)
        covered_by_one_seed += low <= math.expm1(delta) <= high
    assert 0.88 <= covered / 200 <= 0.99 and covered_by_one_seed / 200 < 0.5


def test_the_bootstrap_is_seeded_and_refuses_mismatched_windows():
    rng = np.random.default_rng(0)
    a = rng.normal(1.5, 0.3, 300)
    b = a + rng.normal(0.01, 0.05, 300)
    assert bootstrap_interval(a, b, seed=4) == bootstrap_interval(a, b, seed=4) != bootstrap_interval(a, b, seed=5)
    assert bootstrap_interval(a, a) == (0.0, 0.0)
    with pytest.raises(BadInput, match="same windows"):
        bootstrap_interval(a, b[:-1])


def test_different_vocabularies_are_refused_in_one_line(run_cli, files):
    code, out, err = run_cli("--offline", "compare", "phasegpt-tiny", files.reordered, "--device", "cpu")
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "different vocabularies" in err and "Traceback" not in err


def test_a_corpus_shorter_than_one_window_is_refused_in_one_line(run_cli, files):
    code, out, err = run_cli("--offline", "compare", "phasegpt-tiny", files.perturbed, "--data", files.too_short,
                             "--device", "cpu")
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "shorter than one window of 129" in err


def test_a_side_naming_one_checkpoint_twice_is_refused(run_cli, files):
    code, out, err = run_cli("--offline", "compare", f"{files.perturbed},{files.perturbed}", "phasegpt-tiny",
                             "--device", "cpu")
    assert code == 2 and "twice" in err and len(err.strip().splitlines()) == 1
