r"""Few-shot evaluation: the query error of each task after ``0..S`` adaptation steps.

For every task ``i`` of a fixed set, the algorithm's ``predict`` adapts on
the support set and predicts the query set after ``s = 0, 1, ..., S``
steps; the score is the query MSE (regression) or accuracy
(classification). Over the tasks that did not diverge at step ``s``:

.. math::
    \bar e_s = \frac1n \sum_i e_{i,s},\qquad
    \text{ci95}_s = 1.96\, \frac{\operatorname{std}_i(e_{i,s})}{\sqrt n}

A task *diverged* at step ``s`` when its prediction is not finite or its
MSE exceeds ``DIVERGED_MSE``; such tasks are counted and reported, not
averaged (REPRODUCTION-NOTES: one task must not turn the mean into inf).

``batch`` is a ``TaskBatch`` or an iterable of them (the image families
stream their fixed episodes a few at a time); classification episodes are
scored by query accuracy, and ``predicted_labels`` gives the predictions
themselves (for the confusion matrix and the episode plots).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tasks.batch import TaskBatch

DIVERGED_MSE = 1e4  # far above any sinusoid's error (|y| <= 5): a task beyond it has diverged
Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def task_scores(net, module, params, config, batch, steps):
    """Score of every task after ``0..steps`` steps, shape ``(T, steps + 1)``.

    ``"mse"`` nets: the mean over query points of the squared error summed
    over outputs (the engine's loss); ``"xent"`` nets: query accuracy.
    NaN where the prediction is not finite. ``batch`` may be an iterable of ``TaskBatch``es.
    """
    if not isinstance(batch, TaskBatch):
        parts = [task_scores(net, module, params, config, b, steps) for b in batch]
        return np.concatenate(parts) if parts else np.empty((0, steps + 1))
    scores = np.empty((batch.n_tasks, steps + 1))
    for i in range(batch.n_tasks):
        X_support, y_support, X_query, y_query = batch.task(i)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is expected, then counted
            out = module.predict(net, params, X_support, y_support, X_query, steps, config)
            finite = np.isfinite(out).all(axis=(1, 2))
            if net.loss_name == "xent":
                score = (np.argmax(out, axis=2) == y_query[None, :]).mean(axis=1)
            else:
                score = ((out - y_query[None]) ** 2).sum(axis=2).mean(axis=1)
        scores[i] = np.where(finite, score, np.nan)
    return scores


@dataclass(frozen=True)
class Summary:
    """Mean, 95% interval and diverged count at each step; arrays of shape ``(steps + 1,)``.

    ``median``: the median over *all* tasks, diverged ones counted as the
    worst score, so a few tasks that blow up without crossing the
    divergence threshold cannot hide behind the mean (None in files
    written before it existed).
    """

    metric: str
    mean: np.ndarray
    ci95: np.ndarray
    diverged: np.ndarray
    n_tasks: int
    median: np.ndarray | None = None

    def to_json(self) -> dict:
        """A JSON-ready dict (NaN, where every task diverged, becomes None)."""
        def clean(a):
            return [None if not np.isfinite(x) else float(x) for x in a]
        d = {"metric": self.metric, "mean": clean(self.mean), "ci95": clean(self.ci95),
             "diverged": [int(d) for d in self.diverged], "n_tasks": self.n_tasks}
        if self.median is not None:
            d["median"] = clean(self.median)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Summary":
        def arr(a):
            return np.array([np.nan if x is None else x for x in a], dtype=float)
        return cls(d["metric"], arr(d["mean"]), arr(d["ci95"]), np.array(d["diverged"], dtype=int), d["n_tasks"],
                   arr(d["median"]) if "median" in d else None)


def summarize(scores, metric="mse"):
    """``Summary`` of a ``(T, S + 1)`` score array, leaving out (and counting) diverged tasks."""
    scores = np.asarray(scores, dtype=float)
    bad = ~np.isfinite(scores)
    if metric == "mse":
        bad |= np.nan_to_num(scores, nan=0.0) > DIVERGED_MSE
    mean, ci95 = np.full(scores.shape[1], np.nan), np.full(scores.shape[1], np.nan)
    for s in range(scores.shape[1]):
        good = scores[~bad[:, s], s]
        if good.size:
            mean[s] = good.mean()
            ci95[s] = Z95 * good.std(ddof=1) / np.sqrt(good.size) if good.size > 1 else np.nan
    worst = np.inf if metric == "mse" else -np.inf
    median = np.median(np.where(bad, worst, scores), axis=0)
    return Summary(metric, mean, ci95, bad.sum(axis=0), scores.shape[0], median)


def evaluate(net, module, params, config, batch, steps):
    """``Summary`` of the algorithm's scores on ``batch`` after ``0..steps`` adaptation steps."""
    return summarize(task_scores(net, module, params, config, batch, steps),
                     "accuracy" if net.loss_name == "xent" else "mse")


def predicted_labels(net, module, params, config, batch, steps):
    """Predicted query labels of every episode after ``steps`` steps, shape ``(T, n_q)`` int64.

    ``-1`` where the prediction is not finite. ``batch``: a ``TaskBatch`` or an iterable of them.
    """
    if not isinstance(batch, TaskBatch):
        parts = [predicted_labels(net, module, params, config, b, steps) for b in batch]
        return np.concatenate(parts)
    labels = np.empty(batch.y_query.shape, dtype=np.int64)
    for i in range(batch.n_tasks):
        X_support, y_support, X_query, _ = batch.task(i)
        with np.errstate(over="ignore", invalid="ignore"):
            out = module.predict(net, params, X_support, y_support, X_query, steps, config)
        last = out[min(steps, len(out) - 1)]  # the metric learners return one step whatever ``steps``
        labels[i] = np.where(np.isfinite(last).all(axis=1), np.argmax(last, axis=1), -1)
    return labels


def confusion_matrix(y_true, y_pred, n_classes):
    """Counts ``C[t, p]`` of queries of label ``t`` predicted ``p`` (non-finite predictions, -1, left out)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    keep = y_pred >= 0
    C = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(C, (y_true[keep], y_pred[keep]), 1)
    return C
