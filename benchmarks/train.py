"""Training throughput of the Phase A winner architecture (85M parameters, T=512), both coupling modes.

    python benchmarks/train.py [--device auto] [--batch N] [--steps N] [--compile] [--peak-tflops X]

Each step is the trainer's own optimizer step (``Trainer.step``) on real tiny Shakespeare windows:
forward, backward, gradient clipping, fused AdamW and the schedule; on CUDA with bf16 autocast and
TF32. On CUDA the model FLOPs utilisation is printed too:

    MFU = (6·N + 12·L_std·d_model·T) · tokens/s / peak bf16 FLOP/s

(N parameters without the position embedding, as nanoGPT counts; 12·L·d·T the attention scores and
sums of the L_std standard layers; the phase layer's trigonometry, ~0.1 MFLOP a token, is left out).
On a CPU the batch defaults to 1: figures there are an order of magnitude, not a training setup.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from _corpus import corpus as corpus_path  # noqa: E402
from phasegpt_ckpt.training.distributed import Placement, placement  # noqa: E402
from phasegpt_ckpt.training.run_config import load_config  # noqa: E402
from phasegpt_ckpt.training.train import build_trainer  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("4090", 165e12)]


def measure(mode: str, where: Placement, batch: int, steps: int, warmup: int, compile: bool, corpus: Path) -> dict:
    """tokens/s of ``steps`` timed optimizer steps after ``warmup`` untimed ones."""
    run = load_config("phase_a_winner")
    run.model = {**run.model, "coupling_mode": mode}
    run.training.batch_size, run.training.gradient_accumulation_steps = batch, 1
    run.training.steps_per_epoch = warmup + steps
    with tempfile.TemporaryDirectory() as save_dir:
        trainer = build_trainer(run, corpus, where, Path(save_dir), compile=compile)
        trainer.sampler.set_epoch(1)
        batches = iter(trainer.train_loader)
        for _ in range(warmup):
            trainer.step(batches)
        _sync(where.device)
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step(batches)
        _sync(where.device)
        seconds = time.perf_counter() - started
    model = trainer.raw_model
    config = model.config
    params = sum(p.numel() for p in model.parameters()) - model.position_embedding.weight.numel()
    standard_layers = config.n_layers - len(config.phase_layers)
    T = run.block_size
    return {"mode": mode, "tokens_per_s": steps * batch * T / seconds, "step_ms": 1000 * seconds / steps,
            "flops_per_token": 6 * params + 12 * standard_layers * config.d_model * T, "params": params}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, given_tflops: float | None) -> float | None:
    if given_tflops:
        return given_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_BF16 if fragment in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, help="windows per step (default: 32 on CUDA, 1 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the device, for MFU")
    parser.add_argument("--data", type=Path, help="corpus (default: $PHASEGPT_TEST_CORPUS, else ../shared's copy)")
    args = parser.parse_args()
    with placement(args.device) as where:  # the trainer's device choice, TF32 included
        report(where, args)


def report(where: Placement, args: argparse.Namespace) -> None:
    device = where.device
    cuda = device.type == "cuda"
    batch = args.batch or (32 if cuda else 1)
    steps = args.steps or (10 if cuda else 2)
    warmup = (3 if args.compile else 2) if cuda else 1
    corpus = corpus_path(args.data)
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"Phase A winner (12 layers, d_model 768, phase layer 7, 32 oscillators), T=512, batch {batch}"
          f"{' (CPU: batch kept tiny, figures are indicative only)' if not cuda else ''}, "
          f"{steps} timed steps after {warmup} warm-up; {name}; torch {torch.__version__}"
          f"{'; bf16 autocast, TF32, fused AdamW' if cuda else ''}{'; torch.compile' if args.compile else ''}")
    rows = [measure(mode, where, batch, steps, warmup, args.compile, corpus) for mode in ("original", "causal")]
    print(f"{'coupling mode':<14} {'tokens/s':>12} {'ms/step':>10} {'MFU':>7}")
    for row in rows:
        mfu = f"{row['flops_per_token'] * row['tokens_per_s'] / peak:.1%}" if peak else "n/a"
        print(f"{row['mode']:<14} {row['tokens_per_s']:>12,.0f} {row['step_ms']:>10.1f} {mfu:>7}")
    print(f"causal / original throughput: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.3f}; "
          f"{rows[0]['params'] / 1e6:.1f}M parameters counted, {rows[0]['flops_per_token'] / 1e6:.0f} MFLOP per token"
          + ("" if peak else "; MFU needs a CUDA device of known peak (or --peak-tflops)"))
    measures = [{"name": f"tokens/s, {row['mode']} ({name})", "value": row["tokens_per_s"], "target": None}
                for row in rows]
    measures.append({"name": "causal / original throughput", "value": rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"],
                     "target": None})
    if peak:
        measures += [{"name": f"MFU, {row['mode']}", "value": row["flops_per_token"] * row["tokens_per_s"] / peak,
                      "target": None} for row in rows]
    print("RESULT " + json.dumps({"measures": measures}))


if __name__ == "__main__":
    main()
