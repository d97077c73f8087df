"""``phasegpt-ckpt compare A B``: is the PPL difference between two checkpoints (or two groups of seeds) real?

Registered on the main app in ``cli/app.py``. The work is :meth:`~phasegpt_ckpt.Store.compare`
(:mod:`phasegpt_ckpt.models.compare`); this module parses and renders. Only typer and the renderer
load with it, so ``--help`` and the other commands stay fast.

A side is one ``NAME|PATH``, or several separated by commas, one checkpoint per training seed:
``phasegpt-ckpt compare base-s1.pt,base-s2.pt,base-s3.pt phase-s1.pt,phase-s2.pt,phase-s3.pt``.
A path that itself holds a comma is taken whole when it exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from phasegpt_ckpt.cli import render as console

SIDE_HELP = ("artifact name or checkpoint path; several, comma-separated (one per training seed), make the "
             "interval carry seed-to-seed variation too.")


def compare(
    a: str = typer.Argument(..., help="The reference: " + SIDE_HELP),
    b: str = typer.Argument(..., help="The one compared with it: " + SIDE_HELP),
    data: Optional[Path] = typer.Option(None, "--data", help="Corpus text file (default: the verified "
                                        "tinyshakespeare artifact, bundled with the package)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps; "
                               "CUDA runs in bf16 autocast."),
    resamples: int = typer.Option(10_000, "--resamples", min=1, help="Bootstrap resamples for the interval."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the bootstrap's draws (same seed, same interval)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Validation windows per forward pass."),
    model_config: Optional[Path] = typer.Option(None, "--config", help="Model config YAML, for a bare state dict "
                                                "whose shapes do not tell it (applied to every checkpoint)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw a PNG here: the histogram of per-window NLL "
                                        "differences (B - A) with their mean and the 95 % interval (needs "
                                        "matplotlib: pip install 'phasegpt-ckpt[plot]')."),
) -> None:
    """Is B's validation PPL really different from A's? Both measured on the same windows; a paired bootstrap
    over the windows gives a 95 % interval for the relative change ppl_B / ppl_A - 1.

    The windows are the non-overlapping validation windows (of the shorter block size, when the two differ).
    The interval speaks of this validation split: with one checkpoint per side it says nothing of
    seed-to-seed noise; give each side several seeds, comma-separated, for that."""
    from phasegpt_ckpt.cli.app import _store

    if plot is not None:
        from phasegpt_ckpt.training.progress import require_matplotlib

        require_matplotlib()  # before the work, not after it
    store = _store()
    refs_a, refs_b = _side(a, store), _side(b, store)
    result = store.compare(refs_a, refs_b, data=data, device=device, config=model_config, resamples=resamples,
                           seed=seed, batch_size=batch_size)
    if plot is not None:
        from phasegpt_ckpt.models.plots import plot_comparison

        plot_comparison(result, plot)
        console.note(f"wrote {plot}")
    if json_output:
        return console.print_json(result.to_dict())
    _print_comparison(result)


def _side(text: str, store) -> list[str]:
    """``X`` or ``X,Y,Z`` as refs; a name of the manifest or an existing path is taken whole, commas and all."""
    from phasegpt_ckpt.errors import BadInput

    if text in store.manifest.artifacts or Path(text).exists():
        return [text]
    refs = [part.strip() for part in text.split(",")]
    if not all(refs):
        raise BadInput(f"{text!r} has an empty entry; name each checkpoint once, separated by single commas")
    return refs


def _print_comparison(result) -> None:
    """The two PPLs, the change with its interval, what was measured, and one sentence on what it means."""
    out = console.stdout
    width = max(len(_label(names)) for names in (result.a, result.b))
    for side, names, ppl, per_seed, modes in (("A", result.a, result.ppl_a, result.ppl_a_per_seed, result.coupling_modes_a),
                                              ("B", result.b, result.ppl_b, result.ppl_b_per_seed, result.coupling_modes_b)):
        seeds = f", per seed {', '.join(f'{p:.4f}' for p in per_seed)}" if len(per_seed) > 1 else ""
        coupling = "/".join(sorted(set(modes)))
        out.print(f"{side}  {_label(names):<{width}}  PPL {ppl:.4f}  ({coupling} coupling{seeds})", markup=False)
    low, high = result.ci95
    out.print(f"change in PPL, B vs A: {_percent(result.relative_change)} "
              f"(95 % interval {_percent(low)} to {_percent(high)})", markup=False)
    out.print(f"  {result.window_note()}; {result.resamples} paired bootstrap resamples (seed {result.seed})",
              markup=False)
    modes = set(result.coupling_modes_a + result.coupling_modes_b)
    if "original" in modes:
        out.print("  note: original coupling sees later tokens of a window, so its full-sequence PPL is not one a "
                  "generator reaches (`verify --eval --causality`)", markup=False)
    out.print(result.explanation(), markup=False)


def _label(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} seeds: {', '.join(names)}"


def _percent(value: float) -> str:
    return f"{value * 100:+.2f} %"
