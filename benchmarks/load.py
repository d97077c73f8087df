"""Loading a ~1 GB training checkpoint for evaluation: ``load_checkpoint`` against plain ``torch.load``.

Run from the repository root:  python benchmarks/load.py

The file is the Phase A winner (12 layers, 768 wide, phase layer 7, 85M parameters) in the published
training layout — model_state_dict, AdamW optimizer_state_dict (exp_avg and exp_avg_sq per parameter,
after one real step), config sections — written to a temporary directory. Each way of loading runs in
its own fresh process (python start and imports included), three times, interleaved; the table shows
the median wall time and the median peak RSS (ru_maxrss of that child, from wait4; the measuring
parent imports no torch, since a forked child's RSS starts as its parent's).

- plain: the seed's "Load Full Checkpoint": ``torch.load(path, map_location="cpu")`` (weights-only by
  default since torch 2.6), ``GPT2Model(**config["model"])``, ``load_state_dict``, ``eval()``;
- ours: ``load_checkpoint(path, data=corpus)``: memory-mapped, the model built without running its
  initialisers and given the mapped tensors, the optimizer state never read;
- "+ forward": the same, then one forward over 64 tokens, which reads every weight (a mapped page
  counts in RSS once touched), so the figure after loading is the honest one for evaluation;
- imports: python, torch and phasegpt_ckpt.models.checkpoint only, the floor every row stands on.

Children run with one OpenMP thread (OMP_NUM_THREADS=1): on a shared machine, waits between threads
turn contention into noise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _corpus import REPO, corpus

WINNER = dict(vocab_size=65, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=512, dropout=0.1,
              use_phase_attention=True, phase_layer_idx=[7], num_oscillators=32, coupling_strength=1.0)
RUNS = 3
MB = 10**6

CHILD = {  # what each child process does after `import torch`, with PATH and CORPUS bound
    "imports": "import phasegpt_ckpt.models.checkpoint",
    "plain": "from model import GPT2Model\n"
             "checkpoint = torch.load(PATH, map_location='cpu')\n"
             "model = GPT2Model(**checkpoint['config']['model'])\n"
             "model.load_state_dict(checkpoint['model_state_dict'])\n"
             "model.eval()",
    "ours": "from phasegpt_ckpt.models.checkpoint import load_checkpoint\n"  # the library logs, prints nothing
            "model = load_checkpoint(PATH, data=CORPUS).model",
}
FORWARD = "\nwith torch.no_grad(): model(torch.zeros(1, 64, dtype=torch.long))"


def write_checkpoint(path: Path) -> None:
    """The winner's weights and a real AdamW state after one step, in the published layout.

    Runs in a child process (``--write PATH``): ru_maxrss counts the memory a child inherits when
    forked, so the measuring parent must stay small.
    """
    import torch

    sys.path.insert(0, str(REPO))
    from model import GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(**WINNER)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    torch.save({"epoch": 18, "global_step": 3240, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": None,
                "best_val_loss": 1.5788, "config": {"model": {"type": "gpt2", **WINNER},
                                                    "training": {"batch_size": 32, "learning_rate": 3e-4}}}, path)


def run_child(code: str, path: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a fresh python running ``code``."""
    script = f"import torch\nPATH, CORPUS = {str(path)!r}, {str(corpus())!r}\n{code}\n"
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed: {code!r}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best_model.pt"
        subprocess.run([sys.executable, __file__, "--write", str(path)], check=True)
        size = path.stat().st_size
        variants = {"imports": CHILD["imports"], "plain": CHILD["plain"], "ours": CHILD["ours"],
                    "plain + forward": CHILD["plain"] + FORWARD, "ours + forward": CHILD["ours"] + FORWARD}
        results = {name: [] for name in variants}
        for _ in range(RUNS):
            for name, code in variants.items():
                results[name].append(run_child(code, path))
    time_of = {name: statistics.median(t for t, _ in runs) for name, runs in results.items()}
    rss_of = {name: statistics.median(r for _, r in runs) for name, runs in results.items()}
    print(f"checkpoint {size / MB:.0f} MB (winner weights + AdamW state); medians of {RUNS} fresh processes")
    print(f"{'load':<16} {'time s':>7} {'peak RSS MB':>12} {'RSS / file':>11}")
    for name in variants:
        print(f"{name:<16} {time_of[name]:>7.2f} {rss_of[name] / MB:>12.0f} {rss_of[name] / size:>11.2f}")
    print(f"ours vs plain: time {time_of['ours'] / time_of['plain']:.2f}× (target <= 0.7), "
          f"peak RSS {rss_of['ours'] / size:.2f}× the file (target <= 0.6; plain {rss_of['plain'] / size:.2f}×); "
          f"after a forward: time {time_of['ours + forward'] / time_of['plain + forward']:.2f}×, "
          f"RSS {rss_of['ours + forward'] / size:.2f}× the file")
    print("RESULT " + json.dumps({"measures": [
        {"name": "load time, ours / plain torch.load", "value": time_of["ours"] / time_of["plain"], "target": "<= 0.7"},
        {"name": "peak RSS / file size, ours", "value": rss_of["ours"] / size, "target": "<= 0.6"},
        {"name": "peak RSS / file size, plain torch.load", "value": rss_of["plain"] / size, "target": None},
        {"name": "peak RSS / file size, ours + forward", "value": rss_of["ours + forward"] / size, "target": None}]}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write_checkpoint(Path(sys.argv[2]))
    else:
        main()
