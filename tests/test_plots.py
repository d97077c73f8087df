"""--plot of analyze and compare (and train's plot function): real PNGs, and a one-line error without matplotlib."""
from __future__ import annotations

import gzip
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import torch

from phasegpt_ckpt import manifests
from phasegpt_ckpt.models.data import BUNDLED_CORPUS
from phasegpt_ckpt.training.progress import plot_metrics

TINY = Path(manifests.__file__).parent / "phasegpt-tiny.pt"  # the bundled checkpoint: causal, one phase layer (2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking that the file is a PNG of some substance."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 300
    return width, height


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory) -> Path:
    """The first 100,000 characters of the bundled corpus: 78 validation windows of 128."""
    path = tmp_path_factory.mktemp("plots") / "short.txt"
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as handle:
        path.write_text(handle.read()[:100_000])
    return path


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory) -> Path:
    """phasegpt-tiny with noise on one feed-forward weight: a little worse on every window."""
    checkpoint = torch.load(TINY, weights_only=True)
    weight = checkpoint["model_state_dict"]["blocks.0.ffn.0.weight"]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=weight.dtype)
    checkpoint["model_state_dict"]["blocks.0.ffn.0.weight"] = weight + 0.02 * noise
    path = tmp_path_factory.mktemp("plots") / "perturbed.pt"
    torch.save(checkpoint, path)
    return path


def test_analyze_plot_and_R_across_the_euler_iterations(run_cli, tmp_path):
    png = tmp_path / "analyze.png"
    code, out, err = run_cli("--offline", "analyze", "phasegpt-tiny", "--windows", 3, "--num-tokens", 32,
                             "--device", "cpu", "--json", "--plot", png)

    assert code == 0, err
    png_size(png)
    assert f"wrote {png}" in err
    (layer,) = json.loads(out)["layers"]
    steps = layer["R_by_iteration"]
    assert [step["iteration"] for step in steps] == list(range(11))  # θ0, then 10 Euler iterations
    assert steps[-1]["R_mean"] == pytest.approx(layer["R_mean"], abs=1e-6)  # the last is the layer's final R
    assert [h["R_mean"] for h in steps[-1]["heads"]] == pytest.approx([h["R_mean"] for h in layer["heads"]], abs=1e-6)
    assert all(0 <= step["R_mean"] <= 1 and step["R_std"] >= 0 for step in steps)
    assert steps[-1]["R_mean"] > steps[0]["R_mean"]  # the bundled model's layer synchronises as it iterates


def test_compare_plot_of_the_per_window_differences(run_cli, tmp_path, short_corpus, perturbed):
    png = tmp_path / "compare.png"
    code, out, err = run_cli("--offline", "compare", "phasegpt-tiny", perturbed, "--data", short_corpus,
                             "--device", "cpu", "--batch-size", 128, "--resamples", 500, "--json", "--plot", png)

    assert code == 0, err
    png_size(png)
    document = json.loads(out)
    differences = document["nll_differences"]
    assert len(differences) == document["windows"]
    assert sum(differences) / len(differences) == pytest.approx(document["loss_b"] - document["loss_a"], abs=1e-9)
    assert math.expm1(sum(differences) / len(differences)) == pytest.approx(document["relative_change"], rel=1e-6)


def test_compare_plot_of_a_checkpoint_against_itself(run_cli, tmp_path, short_corpus):
    png = tmp_path / "same.png"
    code, _, err = run_cli("--offline", "compare", "phasegpt-tiny", "phasegpt-tiny", "--data", short_corpus,
                             "--device", "cpu", "--batch-size", 128, "--resamples", 100, "--plot", png)

    assert code == 0, err
    png_size(png)  # every difference is 0: one bar, still a readable figure


@pytest.mark.parametrize("command", [
    ["analyze", "phasegpt-tiny", "--windows", 2, "--num-tokens", 16],
    ["compare", "phasegpt-tiny", "phasegpt-tiny", "--resamples", 10],
])
def test_plot_without_matplotlib_is_a_one_line_error(run_cli, monkeypatch, tmp_path, command):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    png = tmp_path / "never.png"
    code, out, err = run_cli("--offline", *command, "--device", "cpu", "--plot", png)

    assert code == 2
    assert err.strip().count("\n") == 0 and "pip install 'phasegpt-ckpt[plot]'" in err
    assert out == "" and not png.exists() and list(tmp_path.iterdir()) == []


def test_train_plot_still_draws(tmp_path):
    rows = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "val_ppl": math.exp(2.1 / e), "R": 0.5 + e / 10}
            for e in (1, 2, 3)]
    png_size(plot_metrics(rows, tmp_path / "training.png"))
