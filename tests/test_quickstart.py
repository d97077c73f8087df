"""The README's main job on a fresh install: build the wheel, install it into a new venv, run the README's commands.

The commands are read from the README itself, so the test and the README cannot drift apart; offline,
the corpus imported from ../shared as the README says. The new venv sees this interpreter's
site-packages through a .pth file: torch and the other dependencies are not downloaded again, and only
the wheel (``--no-deps``) is installed into it (`.ci/run` installs the dependencies for real).
"""
from __future__ import annotations

import os
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

PROMPT = "To be or not to be"
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "runs", "checkpoints", "tests", "benchmarks")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new venv with the freshly built wheel installed; returns its ``bin`` directory."""
    root = tmp_path_factory.mktemp("quickstart")
    source, wheels, venv = root / "source", root / "wheels", root / "venv"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)  # setuptools builds in the tree: keep the checkout clean
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(wheels)])
    (wheel,) = wheels.glob("phasegpt_ckpt-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(purelib, "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    # --ignore-installed: the .pth shows this interpreter's phasegpt-ckpt too, which pip would take as installed
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--ignore-installed",
         "-q", str(wheel)])
    return venv / "bin"


def run(command: list[str], **options) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **options)
    assert done.returncode == 0, f"{command[:4]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def readme_main_job() -> list[list[str]]:
    """The README's install-and-run command, split at ``&&``: the first step installs, the rest run the job."""
    command = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("pip install . "))
    steps = [shlex.split(step) for step in command.split("&&")]
    assert steps[0] == ["pip", "install", "."] and all(step[0] == "phasegpt-ckpt" for step in steps[1:]), steps
    return steps[1:]


def test_the_readme_main_job_runs_from_the_installed_wheel_offline(installed, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
           "PATH": f"{installed}{os.pathsep}{os.environ['PATH']}", "PHASEGPT_CACHE": str(tmp_path / "cache"),
           "PHASEGPT_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    located = run([str(installed / "python"), "-c", "import phasegpt_ckpt; print(phasegpt_ckpt.__file__)"],
                  cwd=tmp_path, env=env)  # outside the checkout: `import phasegpt_ckpt` finds the wheel only
    assert Path(located.stdout.strip()).is_relative_to(installed.parent)

    outputs = {step[1]: run(step, cwd=REPO, env=env).stdout for step in readme_main_job()}  # from the clone, as typed

    assert set(outputs) == {"import", "verify", "generate"}
    claims = [line for line in outputs["verify"].splitlines() if line.startswith("│ validation_ppl")
              or line.startswith("│ order_parameter_R")]
    assert len(claims) == 2 and all(line.rstrip(" │").endswith("pass") for line in claims), outputs["verify"]
    assert outputs["generate"].startswith(PROMPT) and len(outputs["generate"]) == len(PROMPT) + 100

    default = subprocess.run(["phasegpt-ckpt", "generate", PROMPT], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert default.returncode == 3 and "best_model" in default.stderr and "--model phasegpt-tiny" in default.stderr
