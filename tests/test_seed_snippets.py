"""The Python snippets of the seed's checkpoints README, run as its reader would run them.

Each snippet is read out of ``../shared/seed/checkpoints-README.md`` at test time (its ```python
fences, named by the heading above them), so this file and the documentation cannot drift apart. A
snippet runs in its own ``python`` subprocess, in a temporary directory laid out as the seed's
repository: ``checkpoints/best_model.pt`` (a copy of the bundled phasegpt-tiny.pt),
``data/shakespeare/input.txt`` (the corpus) and ``configs/``. No snippet reads
``checkpoints/best_model_info.json``, so none is put there.

The seed's text is changed only by:

* its imports, mapped by the explicit table ``IMPORTS`` (an unmapped ``src.``/``PhaseB.`` import fails);
* on a machine without CUDA, ``'cuda'`` -> ``'cpu'`` where a snippet names the device (``CPU_ONLY``);
* in Resume Training (``resume_filled``): its ``...`` placeholders filled, its 44 epochs cut to one of a
  few steps, and its optimizer line, whose failure as the seed wrote it has its own test, let fail.

A snippet that uses a name an earlier snippet defined gets a prelude of the seed's own lines that
define it; a snippet whose outcome is in memory gets a postlude that prints or saves it. Shell
fences are out of scope; the Checkpoint Contents block is a data literal, read with ``ast.literal_eval``.
"""
from __future__ import annotations

import ast
import collections
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from tiny_checkpoints import save_published, tiny_model

from model import GPT2Config
from phasegpt_ckpt import manifests
from phasegpt_ckpt.training.run_config import RunConfig, load_config

SEED_README = REPO.parent / "shared" / "seed" / "checkpoints-README.md"
MANIFESTS = Path(manifests.__file__).resolve().parent
BUNDLED = MANIFESTS / "phasegpt-tiny.pt"
TIMEOUT_S = 180  # a snippet takes 1-10 s here; the limit only stops a hung one

ON_CPU = not torch.cuda.is_available()

# -- the seed's snippets, by the heading above them ------------------------------------------------

LOAD_FULL = "Load Full Checkpoint (with optimizer state)"
WEIGHTS_ONLY = "Load Model Weights Only"
EXTRACT_CONFIG = "Extract Configuration"
CONTENTS = "Checkpoint Contents"
GENERATE = "Generate Text"
ANALYZE = "Analyze Synchronization"
RESUME = "Resume Training"
VERIFY = "Verify Model Performance"
OOM = "Issue: Out of Memory When Loading"
VERSION = "Issue: Version Mismatch Error"

IMPORTS = {  # the seed's module layout -> this project's
    "from src.model import GPT2Model": "from model import GPT2Model",
    "from src.data import CharDataset": "from phasegpt_ckpt.models.data import CharDataset",
    "from src.data import get_dataloaders": "from phasegpt_ckpt.models.data import get_dataloaders",
    "from src.train import Trainer": "from phasegpt_ckpt.training.train import Trainer",
    "from src.evaluate import evaluate": "from phasegpt_ckpt.models.evaluate import evaluate",
    "from PhaseB.scripts.interpret_model import analyze_checkpoint":
        "from phasegpt_ckpt.models.analyze import analyze_checkpoint",
}

# Forced by a CPU-only machine, and applied only on one: PyTorch there has no CUDA device to use.
CPU_ONLY = {
    ANALYZE: ["device='cuda'"],
    VERIFY: ["device='cuda'"],
    OOM: ["model.to('cuda')"],
}

# The lines of "Generate Text" that build the checkpoint's model without loading its weights: the
# `model` that "Load Model Weights Only" and the out-of-memory fix load weights into.
MODEL_PRELUDE = [
    "import torch",
    "from src.model import GPT2Model",
    "checkpoint = torch.load('checkpoints/best_model.pt')",
    "model = GPT2Model(**checkpoint['config']['model'])",
]

# Where the resumed run writes: not the seed's (and the Trainer's default) `checkpoints/`, whose
# best_model.pt is the very file the snippet resumes from.
RESUMED_DIR = "checkpoints/resumed"
RESUMED_STEPS_PER_EPOCH = 4  # the checkpoint's config says 100; a few steps show the loop works


def python_snippets() -> dict[str, str]:
    """Every ```python fence of the seed README, keyed by the nearest heading above it."""
    snippets: dict[str, str] = {}
    heading, fence, body = None, None, []
    for line in SEED_README.read_text(encoding="utf-8").splitlines(keepends=True):
        if fence is None:
            if line.startswith("```"):
                fence, body = line[3:].strip(), []
            elif line.startswith("#"):  # outside a fence a '#' line is a heading (inside, a comment)
                heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fence == "python":
                assert heading not in snippets, f"two python snippets under {heading!r}"
                snippets[heading] = "".join(body)
            fence = None
        else:
            body.append(line)
    return snippets


def map_imports(code: str) -> str:
    lines = []
    for line in code.splitlines(keepends=True):
        statement = line.strip()
        if re.match(r"(from|import)\s+(src|PhaseB)\b", statement):
            assert statement in IMPORTS, f"seed import {statement!r} is not in IMPORTS"
            line = line.replace(statement, IMPORTS[statement])
        lines.append(line)
    return "".join(lines)


def substitute(code: str, replacements: list[tuple[str, str]]) -> str:
    """Each ``old`` must occur exactly once: a seed that changed fails here, not silently."""
    for old, new in replacements:
        assert code.count(old) == 1, f"{old!r} occurs {code.count(old)} times in the snippet, not once"
        code = code.replace(old, new)
    return code


def snippet(name: str) -> str:
    """The seed's snippet with its imports mapped and, on a CPU-only machine, its device set to cpu."""
    code = map_imports(python_snippets()[name])
    if ON_CPU:
        code = substitute(code, [(old, old.replace("'cuda'", "'cpu'")) for old in CPU_ONLY.get(name, [])])
    return code


def seed_lines(name: str, lines: list[str]) -> str:
    """``lines`` of the seed's snippet ``name`` (each checked to be there verbatim), imports mapped."""
    source = python_snippets()[name].splitlines()
    missing = [line for line in lines if line not in source]
    assert not missing, f"no longer in the seed's {name!r} snippet: {missing}"
    return map_imports("\n".join(lines) + "\n")


def run_snippet(directory: Path, code: str, script: str = "snippet.py") -> subprocess.CompletedProcess:
    """``code`` as a script in ``directory``, with this interpreter and the checkout importable."""
    (directory / script).write_text(code, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, script], cwd=directory, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def ran(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def seed_dir(tmp_path, corpus_path) -> Path:
    """A working directory laid out as the seed's repository."""
    root = tmp_path / "PhaseGPT"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copyfile(BUNDLED, root / "checkpoints" / "best_model.pt")
    (root / "data" / "shakespeare").mkdir(parents=True)
    shutil.copyfile(corpus_path, root / "data" / "shakespeare" / "input.txt")
    (root / "configs").mkdir()
    return root


@pytest.fixture(scope="module")
def bundled() -> dict:
    return torch.load(BUNDLED, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def claims() -> dict:
    """What the shipped manifest claims for the bundled checkpoint: {name: {value, tolerance}}."""
    manifest = yaml.safe_load((MANIFESTS / "phasegpt.yaml").read_text(encoding="utf-8"))
    return manifest["artifacts"]["phasegpt-tiny"]["claims"]


def filled_loaders(config: dict) -> str:
    """``get_dataloaders(...)`` filled in: the seed's corpus path, the checkpoint's window and batch
    sizes (the library's default window, 512, is longer than the bundled model's 128 positions)."""
    return (f"get_dataloaders('data/shakespeare/input.txt', block_size={config['data']['block_size']}, "
            f"batch_size={config['training']['batch_size']})")


def resume_filled(config: dict) -> list[tuple[str, str]]:
    """What the Resume Training snippet needs beyond mapped imports to run here, as (seed text, replacement)."""
    few_steps = ("{**checkpoint['config'], 'training': {**checkpoint['config']['training'], "
                 f"'steps_per_epoch': {RESUMED_STEPS_PER_EPOCH}}}}}")
    return [
        # the seed's own bug (test_resume_training_as_the_seed_wrote_it_...): go on without the optimizer
        # state, as tests/test_train.py::test_the_seeds_resume_snippet_runs does
        ("optimizer.load_state_dict(checkpoint['optimizer_state_dict'])\n",
         ("try:\n    optimizer.load_state_dict(checkpoint['optimizer_state_dict'])\n"
          "except ValueError as err:\n    print(f'optimizer state not restored: {err}')\n")),
        ("get_dataloaders(...)", filled_loaders(config)),
        ("Trainer(...)", (f"Trainer(model, train_loader, val_loader, {few_steps}, optimizer=optimizer, "
                          f"scheduler=scheduler, device='cpu', save_dir='{RESUMED_DIR}')")),
        # epochs start_epoch..50 (44 of them) -> start_epoch alone: one epoch of a few steps
        ("total_epochs=50", "total_epochs=start_epoch"),
    ]


def assert_same_weights(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    different = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not different, f"weights differ in {different[:3]}"


# -- the tests -------------------------------------------------------------------------------------


def test_every_python_snippet_of_the_seed_is_run_here():
    assert set(python_snippets()) == {LOAD_FULL, WEIGHTS_ONLY, EXTRACT_CONFIG, CONTENTS, GENERATE, ANALYZE,
                                      RESUME, VERIFY, OOM, VERSION}


def test_load_full_checkpoint_of_the_published_layout(seed_dir):
    """The snippet names eight config keys and leaves the rest at GPT2Config's defaults, as the published
    models were trained (512 positions, original coupling): a checkpoint of that layout loads exactly."""
    published = torch.load(save_published(tiny_model("original", max_seq_len=512, dropout=0.1),
                                          seed_dir / "checkpoints" / "best_model.pt"), weights_only=True)
    code = snippet(LOAD_FULL) + "import json\nprint(json.dumps(model.config.to_dict()))\n"

    lines = ran(run_snippet(seed_dir, code)).splitlines()

    assert lines[:2] == [f"Loaded model from epoch {published['epoch']}",
                         f"Best validation loss: {published['best_val_loss']:.4f}"]
    built = json.loads(lines[2])
    assert {k: built[k] for k in published["config"]["model"] if k in built} == {
        k: v for k, v in published["config"]["model"].items() if k in built}


def test_load_full_checkpoint_fails_loudly_on_a_model_of_another_shape(seed_dir):
    """The bundled model is not of the published layout (128 positions, causal coupling): the snippet's
    eight keys cannot rebuild it, and it fails on the shape rather than loading a wrong model."""
    done = run_snippet(seed_dir, snippet(LOAD_FULL))
    assert done.returncode != 0 and "size mismatch for position_embedding.weight" in done.stderr


def test_load_model_weights_only(seed_dir, bundled):
    prelude = seed_lines(GENERATE, MODEL_PRELUDE)  # a freshly initialised `model`
    code = prelude + snippet(WEIGHTS_ONLY) + "torch.save(model.state_dict(), 'loaded.pt')\n"

    ran(run_snippet(seed_dir, code))

    assert_same_weights(torch.load(seed_dir / "loaded.pt", weights_only=True), bundled["model_state_dict"])


def test_extract_configuration(seed_dir, bundled):
    prelude = seed_lines(LOAD_FULL, ["import torch"])  # the snippet uses the page's `torch` without importing it

    ran(run_snippet(seed_dir, prelude + snippet(EXTRACT_CONFIG)))

    written = seed_dir / "configs" / "loaded_config.yaml"
    assert yaml.safe_load(written.read_text(encoding="utf-8")) == bundled["config"]
    # "for reproduction": the file is a config `phasegpt-ckpt train --config` accepts, the checkpoint's own
    assert load_config(written).to_dict() == RunConfig.from_dict(bundled["config"]).to_dict()


def test_checkpoint_contents_lists_keys_the_bundled_checkpoint_has(bundled):
    documented = ast.literal_eval(python_snippets()[CONTENTS])  # `{...}` reads as {Ellipsis}: "some mapping"

    assert set(documented) <= set(bundled), set(documented) - set(bundled)
    for key, example in documented.items():
        expected = dict if isinstance(example, (dict, set)) else type(example)
        assert isinstance(bundled[key], expected), (key, type(bundled[key]))
    assert set(documented["config"]) <= set(bundled["config"])
    assert all(isinstance(bundled["config"][section], dict) for section in documented["config"])
    assert math.isclose(math.exp(bundled["best_val_loss"]), bundled["best_val_ppl"], rel_tol=1e-9)


def test_generate_text(seed_dir, corpus_path):
    prompt = "To be or not to be"
    assert f'prompt = "{prompt}"' in python_snippets()[GENERATE]

    out = ran(run_snippet(seed_dir, snippet(GENERATE)))

    assert out.endswith("\n")
    generated = out[:-1]
    assert generated.startswith(prompt) and len(generated) == len(prompt) + 100
    text = corpus_path.read_text(encoding="utf-8")
    assert set(generated) <= set(text)
    # Shakespeare-like, not noise: per-character NLL of the continuation under the corpus's character
    # bigrams (add-one). The model's samples score 2.3-3.0 nats (200 draws), uniform noise 6.3-7.5.
    pairs, firsts, vocab = collections.Counter(itertools.pairwise(text)), collections.Counter(text[:-1]), len(set(text))
    tail = generated[len(prompt) - 1:]
    nll = sum(-math.log((pairs[a, b] + 1) / (firsts[a] + vocab)) for a, b in itertools.pairwise(tail)) / (len(tail) - 1)
    assert nll < 4.0, (nll, generated)


def test_analyze_synchronization(seed_dir, claims):
    out = ran(run_snippet(seed_dir, snippet(ANALYZE)))

    match = re.fullmatch(r"Mean R: (\S+)\nR std: (\S+)\n", out)
    assert match, out
    mean, std = float(match[1]), float(match[2])
    assert 0.0 <= mean <= 1.0 and 0.0 <= std <= 1.0
    claim = claims["order_parameter_R"]
    assert abs(mean - claim["value"]) <= claim["tolerance"] + 5e-5, (mean, claim)  # printed to 4 places


def test_resume_training_as_the_seed_wrote_it_fails_at_its_own_optimizer(seed_dir, bundled):
    """The snippet's AdamW has one parameter group; a checkpoint of the published recipe has two (decay,
    no decay): the seed's own bug, reached before its `...` placeholders would be."""
    before = sha256(seed_dir / "checkpoints" / "best_model.pt")
    assert len(bundled["optimizer_state_dict"]["param_groups"]) == 2

    done = run_snippet(seed_dir, snippet(RESUME))

    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "ValueError: loaded state dict has a different number of parameter groups"
    assert "    optimizer.load_state_dict(checkpoint['optimizer_state_dict'])\n" in done.stderr
    assert sha256(seed_dir / "checkpoints" / "best_model.pt") == before


def test_resume_training_runs_with_its_placeholders_filled(seed_dir, bundled, claims):
    before = sha256(seed_dir / "checkpoints" / "best_model.pt")

    out = ran(run_snippet(seed_dir, substitute(snippet(RESUME), resume_filled(bundled["config"]))))

    assert "optimizer state not restored: loaded state dict has a different number of parameter groups" in out
    final = torch.load(seed_dir / RESUMED_DIR / "final_model.pt", weights_only=True)
    assert final["epoch"] == bundled["epoch"] + 1 and final["global_step"] == RESUMED_STEPS_PER_EPOCH
    assert final["config"]["model"] == GPT2Config.from_dict(bundled["config"]["model"]).to_dict()
    state, start = final["model_state_dict"], bundled["model_state_dict"]
    assert state.keys() == start.keys() and any(not torch.equal(state[k], start[k]) for k in state)  # it trained
    row = final["metrics"]
    assert row["epoch"] == final["epoch"] and row["val_tokens"] > 0
    # a few steps with a fresh AdamW leave the model where it was, not wrecked (7.43 -> about 7.64)
    assert math.isfinite(row["val_ppl"]) and 1.0 < row["val_ppl"] < 1.1 * claims["validation_ppl"]["value"]
    assert 0.0 <= row["R"] <= 1.0
    assert (seed_dir / RESUMED_DIR / "best_model.pt").is_file()
    assert sha256(seed_dir / "checkpoints" / "best_model.pt") == before  # resumed from, never overwritten


def test_verify_model_performance(seed_dir, bundled, claims):
    # `torch`, `GPT2Model` and `val_loader` come from the Resume Training snippet above it: its imports
    # and its loaders line, filled in as in the test above
    imports = [line for line in python_snippets()[RESUME].splitlines() if line.startswith(("import ", "from "))]
    prelude = seed_lines(RESUME, imports) + f"train_loader, val_loader = {filled_loaders(bundled['config'])}\n"

    out = ran(run_snippet(seed_dir, prelude + snippet(VERIFY)))

    match = re.fullmatch(r"Validation PPL: (\S+)\n", out)
    assert match, out
    ppl = float(match[1])
    claim = claims["validation_ppl"]
    assert math.isfinite(ppl) and abs(ppl - claim["value"]) <= claim["tolerance"] + 0.005, (ppl, claim)  # 2 places


def test_out_of_memory_fix_loads_on_cpu_then_moves(seed_dir, bundled):
    prelude = seed_lines(GENERATE, MODEL_PRELUDE)
    postlude = "print(next(model.parameters()).device.type)\ntorch.save(model.state_dict(), 'loaded.pt')\n"

    out = ran(run_snippet(seed_dir, prelude + snippet(OOM) + postlude))

    assert out == ("cpu\n" if ON_CPU else "cuda\n")
    state = torch.load(seed_dir / "loaded.pt", map_location="cpu", weights_only=True)
    assert_same_weights(state, bundled["model_state_dict"])


def test_version_check(tmp_path):
    out = ran(run_snippet(tmp_path, snippet(VERSION)))

    assert out == f"{torch.__version__}\n"
    assert tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", out).groups()) >= (2, 0)

