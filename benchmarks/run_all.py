"""Run every benchmark in benchmarks/ once and write docs/benchmarks.md: where we stand, at a glance.

Run from the repository root:  python benchmarks/run_all.py [NAME ...]

Each script (phase_layer, transfer, generate, load, train: whichever exist; NAME picks some) runs
in its own process exactly as a person would run it; its output is shown live and kept. Its last
line ``RESULT {"measures": [{"name", "value", "target"}]}`` gives the figures; a target such as
">= 150" or "<= 0.7" turns into a verdict, a null target means "reported, no target". The page
starts with the machine (CPU model, cores, RAM, GPU, torch, date), then one table of every
measure beside its target and verdict, then each script's full output.
"""
from __future__ import annotations

import json
import operator
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOC = REPO / "docs" / "benchmarks.md"
ORDER = ("phase_layer", "transfer", "generate", "load", "train")  # the issues' order; others follow by name
COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Measure:
    name: str
    value: float
    target: Optional[str] = None  # ">= 150", "<= 0.7", or None: reported, no target

    @property
    def verdict(self) -> str:
        """``meets``/``misses`` the target, or ``reported`` when there is none.

        >>> Measure("x", 160.0, ">= 150").verdict, Measure("x", 0.75, "<= 0.7").verdict, Measure("x", 3.0).verdict
        ('meets', 'misses', 'reported')
        """
        if self.target is None:
            return "reported"
        op, bound = self.target.split()
        return "meets" if COMPARE[op](self.value, float(bound)) else "misses"


@dataclass
class Run:
    """One benchmark script's run: its measures, its whole output, how long it took, and how it ended."""

    name: str
    seconds: float
    returncode: int
    output: str
    measures: list[Measure] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or not self.measures


def scripts(names: list[str]) -> list[Path]:
    """The benchmark scripts to run, in the issues' order; ``names`` keeps only those."""
    found = {p.stem: p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")}
    unknown = set(names) - set(found)
    if unknown:
        raise SystemExit(f"no benchmark named {', '.join(sorted(unknown))} (there are: {', '.join(sorted(found))})")
    order = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    return [found[n] for n in order if not names or n in names]


def run(script: Path) -> Run:
    """Run ``script`` as a person would, echoing its output as it comes; read its RESULT line."""
    print(f"\n=== {script.name}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    returncode = process.wait()
    results = [line for line in lines if line.startswith("RESULT ")]
    measures = [Measure(**m) for m in json.loads(results[-1].removeprefix("RESULT "))["measures"]] if results else []
    output = "".join(line for line in lines if not line.startswith("RESULT "))
    return Run(script.stem, time.perf_counter() - started, returncode, output, measures)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), None)
    facts = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "CPU": cpu,
             "cores": f"{os.cpu_count()} logical", "RAM": f"{mem_kib / 2**20:.1f} GiB" if mem_kib else "unknown",
             "OS": f"{platform.system()} {platform.release()}", "Python": platform.python_version()}
    torch = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__); "
                            "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"],
                           capture_output=True, text=True)
    version, gpu = (torch.stdout.split("\n") + ["", ""])[:2] if torch.returncode == 0 else ("not importable", "?")
    facts.update(torch=version, GPU=gpu)
    return facts


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def render(facts: dict[str, str], runs: list[Run]) -> str:
    """docs/benchmarks.md: the machine, the table of measures and verdicts, then every script's output."""
    measured = [m for r in runs for m in r.measures]
    verdicts = {v: sum(m.verdict == v for m in measured) for v in ("meets", "misses")}
    failed = [r.name for r in runs if r.failed]
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/run_all.py`: every script in `benchmarks/`, run once, whole.",
             "Ratios are ours against the baseline each script names (higher is better unless the target",
             "says `<=`). A target of `-` means the figure is reported, not judged.", "",
             "| machine | |", "|---|---|", *(f"| {key} | {value} |" for key, value in facts.items()), "",
             f"**{verdicts['meets']} targets met, {verdicts['misses']} missed"
             + (f"; failed to run: {', '.join(failed)}" if failed else "") + ".**", "",
             "| benchmark | measure | measured | target | verdict |", "|---|---|---|---|---|"]
    for r in runs:
        if r.failed:
            lines.append(f"| {r.name} | (exit {r.returncode}, no RESULT line) | - | - | **failed** |")
        for m in r.measures:
            verdict = {"meets": "meets", "misses": "**misses**", "reported": "-"}[m.verdict]
            lines.append(f"| {r.name} | {m.name} | {_figure(m.value)} | {m.target or '-'} | {verdict} |")
    for r in runs:
        lines += ["", f"## {r.name}.py ({r.seconds:.0f} s, exit {r.returncode})", "", "```", r.output.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _figure(value: float) -> str:
    """Three significant figures, thousands grouped: 0.823, 187, 12,400.

    >>> _figure(0.82345), _figure(187.4), _figure(12401.0)
    ('0.823', '187', '12,400')
    """
    if value == 0:
        return "0"
    rounded = float(f"{value:.3g}")
    return f"{rounded:,.0f}" if abs(rounded) >= 100 else f"{rounded:.3g}"


def main() -> None:
    runs = [run(script) for script in scripts(sys.argv[1:])]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(machine(), runs))
    print(f"\nwrote {DOC.relative_to(REPO)}")
    sys.exit(1 if any(r.failed for r in runs) else 0)


if __name__ == "__main__":
    main()
