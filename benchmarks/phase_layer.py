"""Phase layer cost: the mean-field `model.PhaseAttention` against the published pairwise form.

Run from the repository root:  python benchmarks/phase_layer.py

One forward+backward of one phase layer at the Phase A size (d_model 768, 12 heads, 32 oscillators,
10 iterations, batch 2, coupling_mode "original"), on CPU:
1. mean-field vs the pairwise reference (tests/reference_phase.py, the [B, H, T, T, N] tensor the
   published code builds) at T = 128 and 256, speed and memory ratios side by side;
2. the mean-field layer alone at T = 128 ... 1024, both modes, to show memory growing linearly in T;
3. the same layer under ``torch.compile`` against eager at T = 256.

Peak memory is the high-water mark of bytes held by PyTorch tensors during the call, read from the
profiler's allocation events (`profile_memory=True`: every CPU allocation and free with its size, in
order). PyTorch has no CPU counterpart of `torch.cuda.max_memory_allocated`, tracemalloc does not see
its allocator, and the process RSS (ru_maxrss) mixes in the interpreter, libtorch and whatever glibc
keeps cached, which swamps the mean-field layer's few MB. Times are the best of several runs after a
warm-up (as timeit advises: slower runs measure other work on the machine), taken without the profiler,
on one thread: on a shared machine OpenMP's waits between threads turn contention into several-fold noise.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the checkout's model, and the reference beside its tests

from model import PhaseAttention  # noqa: E402
from reference_phase import pairwise_phase_forward  # noqa: E402

D_MODEL, HEADS, OSCILLATORS, ITERATIONS, BATCH = 768, 12, 32, 10, 2
MB = 2**20


def make_layer(mode: str) -> PhaseAttention:
    torch.manual_seed(0)
    return PhaseAttention(D_MODEL, HEADS, OSCILLATORS, 1.0, 0.1, ITERATIONS, 0.0, coupling_mode=mode)


def mean_field(layer, x):
    return layer(x)


def pairwise(layer, x):
    return pairwise_phase_forward(layer, x)[0]


def forward_backward(forward, layer, x):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    forward(layer, x).square().mean().backward()


def best_seconds(forward, layer, x, repeats: int) -> float:
    forward_backward(forward, layer, x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward(forward, layer, x)
        times.append(time.perf_counter() - start)
    return min(times)


def peak_bytes(forward, layer, x) -> int:
    """Most bytes of tensors allocated during one forward+backward and alive at the same time."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward(forward, layer, x)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))


@contextlib.contextmanager
def quiet_stderr():
    """Hide the profiler's start/stop log lines, which libkineto writes straight to file descriptor 2."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure(forward, layer, T: int, repeats: int) -> tuple[float, float]:
    """(best seconds, peak MB) of one forward+backward of ``layer`` on a batch of length T."""
    x = torch.randn(BATCH, T, D_MODEL, requires_grad=True)
    return best_seconds(forward, layer, x, repeats), peak_bytes(forward, layer, x) / MB


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    print(f"phase layer forward+backward, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"B={BATCH} H={HEADS} N={OSCILLATORS} d_model={D_MODEL} iterations={ITERATIONS}\n")
    print("mean-field vs pairwise (coupling_mode original)")
    print(f"{'T':>5} {'mean-field ms':>14} {'pairwise ms':>12} {'speed x':>8} "
          f"{'mean-field MB':>14} {'pairwise MB':>12} {'memory x':>9}")
    layer = make_layer("original")
    measures = []  # the RESULT line benchmarks/run_all.py reads
    for T in (128, 256):
        fast_s, fast_mb = measure(mean_field, layer, T, repeats=20)
        slow_s, slow_mb = measure(pairwise, layer, T, repeats=3)
        measures += [{"name": f"mean-field vs pairwise speed, T={T}", "value": slow_s / fast_s,
                      "target": ">= 150" if T == 256 else None},
                     {"name": f"mean-field vs pairwise memory, T={T}", "value": slow_mb / fast_mb, "target": None}]
        print(f"{T:>5} {fast_s * 1e3:>14.2f} {slow_s * 1e3:>12.1f} {slow_s / fast_s:>8.0f} "
              f"{fast_mb:>14.1f} {slow_mb:>12.1f} {slow_mb / fast_mb:>9.0f}")

    print("\nmean-field alone: memory grows linearly in T")
    print(f"{'T':>5} {'mode':>9} {'ms':>9} {'peak MB':>9} {'KB per token':>13}")
    for mode in ("original", "causal"):
        layer = make_layer(mode)
        for T in (128, 256, 512, 1024):
            seconds, mb = measure(mean_field, layer, T, repeats=10)
            print(f"{T:>5} {mode:>9} {seconds * 1e3:>9.2f} {mb:>9.1f} {mb * 1024 / (BATCH * T):>13.1f}")

    print("\ntorch.compile (inductor, around the hand-written backward) against eager, T=256, coupling_mode original")
    layer = make_layer("original")
    compiled = torch.compile(layer)
    start = time.perf_counter()
    forward_backward(mean_field, compiled, torch.randn(BATCH, 256, D_MODEL, requires_grad=True))
    compile_s = time.perf_counter() - start
    eager_s, eager_mb = measure(mean_field, layer, 256, repeats=20)
    fused_s, fused_mb = measure(mean_field, compiled, 256, repeats=20)
    print(f"eager {eager_s * 1e3:.2f} ms {eager_mb:.1f} MB | compiled {fused_s * 1e3:.2f} ms {fused_mb:.1f} MB | "
          f"speed x{eager_s / fused_s:.2f}, memory x{eager_mb / fused_mb:.2f}, "
          f"first call (compiling) {compile_s:.0f} s")
    measures.append({"name": "torch.compile vs eager speed, T=256", "value": eager_s / fused_s, "target": None})
    print("RESULT " + json.dumps({"measures": measures}))


if __name__ == "__main__":
    main()
