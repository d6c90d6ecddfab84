"""``TaskBatch``: a meta-batch of tasks, the one record every algorithm consumes."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import validation as val


class TaskBatch(NamedTuple):
    """A meta-batch of ``T`` tasks; the leading axis of every array is the task.

    Attributes
    ----------
    X_support : (T, K, d_in) float
    y_support : (T, K, d_out) float targets (regression), or (T, K) int labels (classification)
    X_query : (T, Q, d_in) float
    y_query : (T, Q, d_out) or (T, Q), like ``y_support``

    A few-shot classification episode (N-way, K-shot) is a task whose
    support set holds ``N*K`` labelled samples.
    """

    X_support: np.ndarray
    y_support: np.ndarray
    X_query: np.ndarray
    y_query: np.ndarray

    @property
    def n_tasks(self) -> int:
        """Number of tasks ``T``."""
        return self.X_support.shape[0]

    def task(self, i: int) -> tuple:
        """``(X_support, y_support, X_query, y_query)`` of task ``i``."""
        return self.X_support[i], self.y_support[i], self.X_query[i], self.y_query[i]

    def checked(self, d_in: int, d_out: int, labels: bool, dtype="float64") -> "TaskBatch":
        """Validate shapes, dtypes and values; return a clean copy (C-contiguous, ``dtype``).

        ``labels=True``: targets are integer class labels in ``0..d_out-1``;
        otherwise float targets of width ``d_out``. Raises ``TypeError`` or
        ``ValueError`` naming the field, the expected and the received value.
        """
        shape = np.shape(self.X_support)
        if len(shape) != 3 or 0 in shape[:2]:
            raise ValueError(f"X_support must have shape (T, K, {d_in}) with T, K >= 1, got {shape}")
        T, K = shape[:2]
        Xs = val.as_float_array(self.X_support, "X_support", dtype, (T, K, d_in))
        Xq = val.as_float_array(self.X_query, "X_query", dtype, (T, None, d_in))
        Q = Xq.shape[1]
        if labels:
            ys = _labels(self.y_support, "y_support", (T, K), d_out)
            yq = _labels(self.y_query, "y_query", (T, Q), d_out)
        else:
            ys = val.as_float_array(self.y_support, "y_support", dtype, (T, K, d_out))
            yq = val.as_float_array(self.y_query, "y_query", dtype, (T, Q, d_out))
        return TaskBatch(Xs, ys, Xq, yq)


def _labels(y, name, shape, n_classes):
    if np.shape(y) != shape:
        raise ValueError(f"{name} must have shape {shape} (integer labels), got {np.shape(y)}")
    return val.as_labels(np.reshape(y, -1), name, shape[0] * shape[1], n_classes).reshape(shape)
