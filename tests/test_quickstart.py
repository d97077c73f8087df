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
    """As on a fresh laptop: the wheel, an empty home, a working directory with no ../shared beside it,
    and no network (every proxy points at a closed port; the Hub client is told it is offline)."""
    home = tmp_path / "home" / "work"
    home.mkdir(parents=True)
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PHASEGPT_OFFLINE")},
           "PATH": f"{installed}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "PHASEGPT_CACHE": str(tmp_path / "cache"), "PHASEGPT_USER_MANIFEST": str(tmp_path / "config.yaml"),
           "HF_HUB_OFFLINE": "1", **{proxy: "http://127.0.0.1:9" for proxy in ("HTTP_PROXY", "HTTPS_PROXY",
                                                                                "http_proxy", "https_proxy")}}
    located = run([str(installed / "python"), "-c", "import phasegpt_ckpt; print(phasegpt_ckpt.__file__)"],
                  cwd=home, env=env)  # outside the checkout: `import phasegpt_ckpt` finds the wheel only
    assert Path(located.stdout.strip()).is_relative_to(installed.parent)
    steps = readme_main_job()
    assert not any("shared" in word for step in steps for word in step), steps  # a user has no ../shared

    outputs = {step[1]: run(step, cwd=home, env=env) for step in steps}

    assert set(outputs) == {"verify", "generate"}
    verify = outputs["verify"].stdout
    claims = [line for line in verify.splitlines() if line.startswith("│ validation_ppl")
              or line.startswith("│ order_parameter_R")]
    assert len(claims) == 2 and all(line.rstrip(" │").endswith("pass") for line in claims), verify
    assert outputs["generate"].stdout.startswith(PROMPT) and len(outputs["generate"].stdout) == len(PROMPT) + 100
    said = outputs["generate"].stderr  # no model named, the default not to be had: the bundled one, said so
    assert "using phasegpt-tiny" in said and "best_model" in said and "seed " in said

    card = {command: subprocess.run(["phasegpt-ckpt", *command.split()], capture_output=True, text=True, cwd=home,
                                    env=env) for command in ("verify --eval", "fetch best_model")}
    assert card["verify --eval"].returncode == 0 and "phasegpt-tiny: " in card["verify --eval"].stdout
    assert "validation_ppl" in card["verify --eval"].stdout  # measured, not "nothing cached"
    fetched = card["fetch best_model"]
    assert fetched.returncode == 3 and [line for line in fetched.stderr.splitlines() if line.startswith("error:")]


def test_publish_from_an_installed_package_never_writes_into_it(installed, tmp_path):
    import hashlib

    package = Path(run([str(installed / "python"), "-c", "import phasegpt_ckpt; print(phasegpt_ckpt.__file__)"],
                       cwd=tmp_path).stdout.strip()).parent
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in package.rglob("*") if p.is_file()}
    user_manifest = tmp_path / "config" / "manifest.yaml"
    env = {**os.environ, "PATH": f"{installed}{os.pathsep}{os.environ['PATH']}", "PHASEGPT_OFFLINE": "1",
           "PHASEGPT_CACHE": str(tmp_path / "cache"), "PHASEGPT_USER_MANIFEST": str(user_manifest)}
    env.pop("PHASEGPT_MANIFEST", None)
    mine = tmp_path / "mine.pt"
    mine.write_bytes((package / "manifests" / "phasegpt-tiny.pt").read_bytes())

    refused = subprocess.run(["phasegpt-ckpt", "publish", str(mine), "--name", "mine"], capture_output=True,
                             text=True, cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "no mirror" in refused.stderr and not user_manifest.exists()
    assert not (tmp_path / "mine_info.json").exists()  # refused before anything was written
    published = subprocess.run(["phasegpt-ckpt", "publish", str(mine), "--name", "mine", "--to", str(tmp_path / "lab")],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
    listed = subprocess.run(["phasegpt-ckpt", "list", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env)
    verified = subprocess.run(["phasegpt-ckpt", "verify", "mine"], capture_output=True, text=True, cwd=tmp_path, env=env)

    assert published.returncode == 0, published.stderr
    rows = {row["name"]: row for row in __import__("json").loads(listed.stdout)}
    assert rows["mine"]["manifest"] == str(user_manifest) and rows["phasegpt-tiny"]["manifest"].startswith(str(package))
    assert verified.returncode == 0 and "verified" in verified.stdout
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in package.rglob("*") if p.is_file()}
    assert after == before  # not one byte of the installed package changed
