"""Figures of a run, drawn from arrays and saved as PNG (matplotlib's Agg canvas, no pyplot state).

* ``training_curve``: the running meta-loss and the validation error against iterations;
* ``adaptation``: held-out tasks, the true function, the K support points and the
  predictions before and after 1, 5, 10 steps (Finn et al. 2017, Figure 2);
* ``error_vs_steps``: the test error against adaptation steps, with 95% intervals, one
  line per run or algorithm (and the published numbers as markers).
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator

from .checkpoint import atomic_write

STEP_COLORS = {0: "#7f7f7f", 1: "#1f77b4", 5: "#2ca02c", 10: "#9467bd"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f")


def _save(fig: Figure, path) -> None:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write(path, buffer.getvalue())


def _plain_log_axis(ax):
    """Log-scale y with plain decimal tick labels (0.5, 1, 2 ... rather than 5x10^-1)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter(""))


def training_curve(path, records, title="meta-training", val_step=None):
    """Meta-loss (mean over each log interval) and validation error at steps 0 and ``val_step``.

    ``records``: the run's log (``tinymeta.train.read_log``).
    """
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if train:
        ax.plot([r["iteration"] for r in train], [r["meta_loss"] for r in train], color="#1f77b4", lw=1.2,
                label="meta-loss (training batches, query loss after adaptation)")
    if val:
        step = len(val[0]["mean"]) - 1 if val_step is None else val_step
        it = [r["iteration"] for r in val]
        for s, style in ((0, dict(color="#7f7f7f", marker="o", ms=3)), (step, dict(color="#d62728", marker="s", ms=3))):
            mean = np.array([np.nan if r["mean"][s] is None else r["mean"][s] for r in val])
            ci = np.array([np.nan if r["ci95"][s] is None else r["ci95"][s] for r in val])
            ax.plot(it, mean, lw=1, label=f"validation {val[0]['metric'].upper()}, {s} step{'s' * (s != 1)}",
                    **style)
            ax.fill_between(it, mean - ci, mean + ci, color=style["color"], alpha=0.15, lw=0)
    _plain_log_axis(ax)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def adaptation(path, panels, steps=(0, 1, 5, 10)):
    """One panel per held-out task: true function, support points, predictions after ``steps``.

    ``panels``: dicts with ``title``, ``x`` (G,), ``y_true`` (G,), ``X_support`` (K,),
    ``y_support`` (K,) and ``predictions`` (S + 1, G) along ``x``.
    """
    fig = Figure(figsize=(4.6 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    lim = 1.25 * max(max(np.max(np.abs(p["y_true"])), np.max(np.abs(p["y_support"]))) for p in panels)
    for ax, p in zip(axes, panels):
        ax.plot(p["x"], p["y_true"], color="#d62728", lw=2.2, label="ground truth")
        for s in steps:
            if s < len(p["predictions"]):
                ax.plot(p["x"], p["predictions"][s], lw=1.4, color=STEP_COLORS.get(s, None),
                        ls="--" if s == 0 else "-",
                        label="before adaptation" if s == 0 else f"after {s} step{'s' * (s != 1)}")
        ax.scatter(p["X_support"], p["y_support"], marker="^", s=60, color="black", zorder=5,
                   label=f"{len(p['X_support'])} support points")
        ax.set_ylim(-lim, lim)  # the same scale for every panel; predictions beyond it are cut
        ax.set_xlabel("x")
        ax.set_title(p["title"], fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("y")
    axes[0].legend(fontsize=8, loc="lower left")
    _save(fig, path)


def error_vs_steps(path, curves, title, metric="mse", published=()):
    """Test error against adaptation steps, mean and 95% interval per curve.

    ``curves``: dicts with ``label``, ``mean`` (S + 1,), ``ci95`` (S + 1,) and optionally
    ``seeds``, a list of per-seed mean arrays drawn as thin lines.
    ``published``: dicts with ``label``, ``steps``, ``values`` and optionally ``curve``,
    the index of the curve whose colour the markers take; drawn as large markers.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(curves))]
    for color, c in zip(colors, curves):
        mean, ci = np.asarray(c["mean"], dtype=float), np.asarray(c["ci95"], dtype=float)
        s = np.arange(len(mean))
        ax.plot(s, mean, color=color, lw=2, marker="o", ms=3, label=c["label"])
        ax.fill_between(s, mean - ci, mean + ci, color=color, alpha=0.18, lw=0)
        for seed_mean in c.get("seeds", ()):
            ax.plot(s, seed_mean, color=color, lw=0.6, alpha=0.5)
    for marker, p in zip("*DPX^v", published):
        color = colors[p["curve"]] if p.get("curve") is not None else "black"
        ax.scatter(p["steps"], p["values"], marker=marker, s=110, color=color, edgecolor="black", zorder=5,
                   label=p["label"])
    ax.set_xlabel("adaptation steps at test time")
    ax.set_ylabel(f"test {metric.upper()}" + (" (log scale)" if metric == "mse" else ""))
    if metric == "mse":
        _plain_log_axis(ax)
    ax.set_xticks(np.arange(0, max((len(c["mean"]) for c in curves), default=1)))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
