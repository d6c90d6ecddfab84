"""Figures of a run, drawn from arrays and saved as PNG (matplotlib's Agg canvas, no pyplot state).

* ``training_curve``: the running meta-loss and the validation error against iterations;
* ``adaptation``: held-out tasks, the true function, the K support points and the
  predictions before and after 1, 5, 10 steps (Finn et al. 2017, Figure 2);
* ``error_vs_steps``: the test error against adaptation steps, with 95% intervals, one
  line per run or algorithm (and the published numbers as markers);
* ``episode_grid``: one classification episode, its support images by class and its
  query images with the predicted label, correct ones framed green and wrong ones red;
* ``confusion``: a row-normalised confusion matrix.
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
    accuracy = bool(val) and val[0]["metric"] == "accuracy"
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if train:
        ax.plot([r["iteration"] for r in train], [r["meta_loss"] for r in train], color="#1f77b4", lw=1.2,
                label="meta-loss (training batches, query loss after adaptation)")
    vax = ax.twinx() if accuracy else ax  # accuracy on its own linear axis
    if val:
        last = len(val[0]["mean"]) - 1
        step = last if val_step is None else min(val_step, last)
        it = [r["iteration"] for r in val]
        for s, style in ((0, dict(color="#7f7f7f", marker="o", ms=3)), (step, dict(color="#d62728", marker="s", ms=3))):
            mean = np.array([np.nan if r["mean"][s] is None else r["mean"][s] for r in val])
            ci = np.array([np.nan if r["ci95"][s] is None else r["ci95"][s] for r in val])
            metric = "accuracy" if accuracy else val[0]["metric"].upper()
            vax.plot(it, mean, lw=1, label=f"validation {metric}, {s} step{'s' * (s != 1)}", **style)
            vax.fill_between(it, mean - ci, mean + ci, color=style["color"], alpha=0.15, lw=0)
            if step == 0:  # the metric learners: one curve
                break
    if accuracy:  # cross-entropies stay within a decade: a linear axis reads better
        ax.set_ylabel("meta-loss (cross-entropy)")
    else:
        _plain_log_axis(ax)
        ax.set_ylabel("loss (log scale)")
    ax.set_xlabel("meta-iteration")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if accuracy:
        vax.set_ylabel("validation accuracy")
        vax.set_ylim(0, 1)
        handles = [h for a in (ax, vax) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    else:
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


def episode_grid(path, X_support, y_support, X_query, y_query, predicted, title, side=28, max_query=5):
    """One classification episode: a row per class, its support images, then up to ``max_query`` queries.

    ``X_support (n_s, side*side)``, ``y_support (n_s,)``, ``X_query (n_q, side*side)``, ``y_query (n_q,)``,
    ``predicted (n_q,)`` labels (-1: no finite prediction). Query frames are green when the
    prediction is right and red when wrong; a wrong query shows the label it got.
    """
    y_support, y_query, predicted = (np.asarray(a).ravel() for a in (y_support, y_query, predicted))
    n_way = int(y_support.max()) + 1
    k = int(np.bincount(y_support, minlength=n_way).max())
    q = min(max_query, int(np.bincount(y_query, minlength=n_way).max()))
    fig = Figure(figsize=(0.9 * (k + q) + 0.6, 0.95 * n_way + 0.8))
    axes = fig.subplots(n_way, k + q, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for c in range(n_way):
        for j, i in enumerate(np.flatnonzero(y_support == c)[:k]):
            ax = axes[c, j]
            ax.axis("on")
            ax.imshow(np.reshape(X_support[i], (side, side)), cmap="gray_r", vmin=0, vmax=1)
            for spine in ax.spines.values():
                spine.set_color("#444444")
            if j == 0:
                ax.set_ylabel(f"class {c}", fontsize=8)
        for j, i in enumerate(np.flatnonzero(y_query == c)[:q]):
            ax = axes[c, k + j]
            ax.axis("on")
            ax.imshow(np.reshape(X_query[i], (side, side)), cmap="gray_r", vmin=0, vmax=1)
            right = predicted[i] == c
            for spine in ax.spines.values():
                spine.set_color("#2ca02c" if right else "#d62728")
                spine.set_linewidth(3)
            if not right:
                ax.set_title("no answer" if predicted[i] < 0 else f"said {predicted[i]}", fontsize=7,
                             color="#d62728", pad=2)
    if n_way:
        axes[0, 0].set_title("support", fontsize=8, loc="left", pad=2)
        if q:
            axes[0, k].set_title(axes[0, k].get_title() or "queries", fontsize=7, pad=2)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def confusion(path, counts, title):
    """Row-normalised confusion matrix ``counts[true, predicted]``, with the accuracy in the title."""
    counts = np.asarray(counts, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    freq = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = counts.shape[0]
    fig = Figure(figsize=(1.2 + 0.35 * n + 2, 1.0 + 0.35 * n + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(freq, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true label's queries")
    if n <= 20:
        for t in range(n):
            for p in range(n):
                if n <= 10 or t == p:
                    ax.text(p, t, f"{freq[t, p]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if freq[t, p] > 0.5 else "black")
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("predicted label (within the episode)")
    ax.set_ylabel("true label (within the episode)")
    total = counts.sum()
    ax.set_title(f"{title}\naccuracy {np.trace(counts) / total if total else float('nan'):.3f} "
                 f"over {int(total)} queries", fontsize=9)
    _save(fig, path)
