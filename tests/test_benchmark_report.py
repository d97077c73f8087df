"""benchmarks/run_all.py: it reads each script's RESULT line and writes the verdicts a reader sees.

The real benchmarks take minutes and are run by hand; here two stand-in scripts (one that meets
and misses its targets, one that crashes) go through the same ``run`` and ``render``.
"""
from __future__ import annotations

import doctest
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules["run_all"]


def test_verdicts_and_figures(run_all):
    assert doctest.testmod(run_all).failed == 0


def test_a_run_is_read_from_its_result_line_and_rendered_beside_its_targets(run_all, tmp_path):
    measures = [{"name": "speed vs baseline", "value": 187.4, "target": ">= 150"},
                {"name": "time vs baseline", "value": 0.75, "target": "<= 0.7"},
                {"name": "tokens/s", "value": 12401.0, "target": None}]
    good = tmp_path / "good.py"
    result = json.dumps("RESULT " + json.dumps({"measures": measures}))
    good.write_text(f"print('a table a person reads')\nprint({result})\n")
    broken = tmp_path / "broken.py"
    broken.write_text("print('starting')\nraise SystemExit(4)\n")

    runs = [run_all.run(good), run_all.run(broken)]

    assert [(m.name, m.verdict) for m in runs[0].measures] == [
        ("speed vs baseline", "meets"), ("time vs baseline", "misses"), ("tokens/s", "reported")]
    assert runs[0].output == "a table a person reads\n" and not runs[0].failed
    assert runs[1].failed and runs[1].returncode == 4
    page = run_all.render({"CPU": "test CPU", "torch": "2.x"}, runs)
    assert "**1 targets met, 1 missed; failed to run: broken.**" in page
    assert "| good | speed vs baseline | 187 | >= 150 | meets |" in page
    assert "| good | time vs baseline | 0.75 | <= 0.7 | **misses** |" in page
    assert "| good | tokens/s | 12,400 | - | - |" in page
    assert "| broken | (exit 4, no RESULT line) | - | - | **failed** |" in page
    assert "| CPU | test CPU |" in page and "a table a person reads" in page


def test_every_benchmark_script_starts_and_ends_with_a_result_line(run_all):
    """Each script imports what it needs (``--help`` runs its imports) and prints the line run_all reads
    (checked in the source: running them takes minutes)."""
    for script in run_all.scripts([]):
        assert 'print("RESULT " + json.dumps({"measures": ' in script.read_text(), script.name
        started = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True)
        assert started.returncode == 0 and started.stdout.startswith("usage:"), (script.name, started.stderr[-500:])
