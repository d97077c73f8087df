"""PNG plots of ``analyze`` and ``compare`` results (matplotlib is an optional extra: ``phasegpt-ckpt[plot]``).

The library computes the numbers (:func:`~phasegpt_ckpt.models.analyze.analyze`,
:func:`~phasegpt_ckpt.models.compare.compare`); these functions only draw them. As
:func:`~phasegpt_ckpt.training.progress.plot_metrics`: no pyplot (no global state, no GUI backend), the
file written atomically, and a one-line ``BadInput`` when matplotlib is missing.
"""
from __future__ import annotations

import math
from pathlib import Path

from phasegpt_ckpt.atomic import atomic_path
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.training.progress import require_matplotlib

DPI = 100


def plot_analysis(stats: dict, path: str | Path) -> Path:
    """A PNG of an :func:`~phasegpt_ckpt.models.analyze.analyze` result: one column per phase layer.

    Top: R per head (mean over the windows, the std as error bars; each head's K under its dot).
    Bottom: R across the Euler iterations (iteration 0 is θ0), the layer's mean with a ±std band and
    each head's mean as a thin line.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    layers = stats.get("layers") or []
    if not layers:
        raise BadInput(f"{stats.get('path', 'this model')} has no phase layer: nothing to plot")
    columns = len(layers)
    figure = Figure(figsize=(max(7.0, 5.5 * columns), 8.0), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False)
    colours = [f"C{h % 10}" for h in range(max(len(layer["heads"]) for layer in layers))]
    for column, layer in enumerate(layers):
        bars, steps = axes[0][column], axes[1][column]
        heads = layer["heads"]
        positions = range(len(heads))
        bars.errorbar(positions, [h["R_mean"] for h in heads], yerr=[h["R_std"] for h in heads], fmt="none",
                      ecolor="black", capsize=6, linewidth=1.2, zorder=1)
        bars.scatter(positions, [h["R_mean"] for h in heads], c=colours[:len(heads)], s=80, edgecolors="black",
                     zorder=2, label="head mean ± std")
        bars.axhline(layer["R_mean"], color="black", linestyle="--", linewidth=1,
                     label=f"layer mean {layer['R_mean']:.4f} ± {layer['R_std']:.4f}")
        bars.set_xticks(list(positions), [f"head {h['head']}\nK={h['K']:+.3f}" for h in heads])
        bars.set_xlim(-0.6, len(heads) - 0.4)
        bars.set(title=f"layer {layer['layer']}: R per head (error bars: std over {stats['windows']} windows)",
                 ylabel="order parameter R")
        bars.legend(loc="best", fontsize="small")

        iterations = layer.get("R_by_iteration") or []
        if iterations:
            x = [step["iteration"] for step in iterations]
            for h, head in enumerate(heads):
                steps.plot(x, [step["heads"][h]["R_mean"] for step in iterations], color=colours[h], linewidth=1,
                           alpha=0.8, label=f"head {head['head']}")
            mean = [step["R_mean"] for step in iterations]
            std = [step["R_std"] for step in iterations]
            steps.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                               color="black", alpha=0.15, label="layer ± std over windows")
            steps.plot(x, mean, color="black", marker="o", linewidth=2, label="layer mean")
            steps.set_xticks(x)
            steps.legend(loc="lower right", fontsize="small")
        steps.set(title=f"layer {layer['layer']}: R across the Euler iterations (0 = initial phases)",
                  xlabel="Euler iteration", ylabel="order parameter R")
    figure.suptitle(f"{Path(str(stats.get('path', ''))).name}: phase synchronisation\n{stats['windows']} validation "
                    f"windows of {stats['num_tokens']} tokens, {stats['coupling_mode']} coupling")
    return _save(figure, path)


def plot_comparison(result, path: str | Path) -> Path:
    """A PNG of a :class:`~phasegpt_ckpt.models.compare.Comparison`: the histogram of per-window NLL
    differences (B − A), with their mean and the bootstrap's 95 % interval (of that mean, in nats:
    ``log1p`` of the interval of the relative PPL change) marked, and 0 for reference."""
    require_matplotlib()
    from matplotlib.figure import Figure

    differences = list(result.nll_differences)
    if not differences:
        raise BadInput("this comparison carries no per-window differences to plot")
    mean = math.log1p(result.relative_change)  # equal windows: the mean of the per-window differences
    low, high = (math.log1p(bound) for bound in result.ci95)
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axis = figure.subplots()
    spread = max(differences) - min(differences)
    bins = min(60, max(10, int(math.sqrt(len(differences)) * 2)))
    span = None if spread else (differences[0] - 1e-3, differences[0] + 1e-3)  # all alike: a narrow bar, not ±0.5
    axis.hist(differences, bins=bins, range=span, color="tab:blue", alpha=0.7, edgecolor="white",
              label=f"{len(differences)} windows")
    axis.axvspan(low, high, color="tab:orange", alpha=0.3,
                 label=f"95 % interval of the mean: {low:+.4f} to {high:+.4f}")
    axis.axvline(mean, color="tab:red", linewidth=2,
                 label=f"mean {mean:+.4f} nats (PPL {result.relative_change * 100:+.2f} %)")
    axis.axvline(0, color="black", linestyle=":", linewidth=1, label="no difference")
    axis.set(xlabel="NLL of B − NLL of A per window (nats per token; > 0: B worse)", ylabel="windows",
             title=f"B: {_side(result.b)}  vs  A: {_side(result.a)}")
    axis.legend(loc="upper right", fontsize="small")
    figure.suptitle(f"per-window NLL differences, {result.windows} validation windows of {result.window_length} "
                    f"characters\n95 % interval from {result.resamples} paired bootstrap resamples")
    return _save(figure, path)


def _side(names: list[str]) -> str:
    label = Path(names[0]).name if len(names) == 1 else f"{len(names)} seeds"
    return label if len(label) <= 40 else label[:37] + "..."


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=DPI)
    return path
