r"""Sinusoid regression, the protocol of Finn et al. 2017, section 5.1.

A task is a sine wave with its own amplitude and phase; its support and
query points are drawn uniformly on ``[-5, 5]``:

.. math::
    y = A \sin(x - \varphi),\qquad
    A \sim U[0.1, 5],\quad \varphi \sim U[0, \pi],\quad x \sim U[-5, 5]

(the sign convention of the reference code, ``amp * sin(x - phase)``).
Training draws fresh tasks from an explicit ``rng``; evaluation uses a
fixed, seeded set (``fixed_tasks``): 600 test tasks with 100 query points
each (REPRODUCTION-NOTES), and a separate validation set for tuning and
monitoring. The fixed sets do not depend on the number of support points
asked for, and their support sets are nested: the first 5 points of the
10-shot set are the 5-shot set.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import validation as val
from .batch import TaskBatch

AMPLITUDE_RANGE = (0.1, 5.0)  # Finn et al. 2017, section 5.1
PHASE_RANGE = (0.0, np.pi)  # Finn et al. 2017, section 5.1
X_RANGE = (-5.0, 5.0)  # Finn et al. 2017, section 5.1
N_TEST_TASKS = 600  # fixed test tasks (REPRODUCTION-NOTES; Finn et al. report 95% intervals over 600)
N_EVAL_QUERY = 100  # query points per fixed task (REPRODUCTION-NOTES)
SPLIT_SEEDS = {"test": 20170309, "val": 20170310}  # the fixed sets: never change these numbers
SIZES = (1, 40, 40, 1)  # the network of Finn et al. 2017, section 5.1: two hidden layers of 40, ReLU


class SinusoidTasks(NamedTuple):
    """Sinusoid tasks: the ``TaskBatch`` and what draws the true functions.

    Attributes
    ----------
    batch : TaskBatch with X_support (T, K, 1), y_support (T, K, 1), X_query (T, Q, 1), y_query (T, Q, 1)
    amplitude : (T,) the amplitudes ``A``
    phase : (T,) the phases ``phi``
    """

    batch: TaskBatch
    amplitude: np.ndarray
    phase: np.ndarray

    @property
    def n_tasks(self) -> int:
        """Number of tasks ``T``."""
        return self.batch.n_tasks

    def true_function(self, i: int, x):
        """Task ``i``'s sine wave at ``x`` (any shape): ``A_i sin(x - phi_i)``."""
        return true_function(self.amplitude[i], self.phase[i], x)


def true_function(amplitude, phase, x):
    r"""``amplitude * sin(x - phase)``, broadcasting.

    .. math:: y = A \sin(x - \varphi)
    """
    return amplitude * np.sin(np.asarray(x) - phase)


def _check_counts(n_tasks, n_support, n_query):
    val.check_int(n_tasks, "n_tasks", minimum=1)
    val.check_int(n_support, "n_support", minimum=1)
    val.check_int(n_query, "n_query", minimum=1)


def _dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f" or dt.itemsize not in (4, 8):  # float32 or float64 (not `.name`: slow)
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return dt


def _tasks(amplitude, phase, X, n_support, dtype):
    """The tasks whose points ``X`` (T, K + Q, 1) hold the support points, then the query points."""
    y = true_function(amplitude[:, None, None], phase[:, None, None], X)  # one call: sampling runs every iteration
    K = n_support
    batch = TaskBatch(X[:, :K].astype(dtype), y[:, :K].astype(dtype), X[:, K:].astype(dtype), y[:, K:].astype(dtype))
    return SinusoidTasks(batch, amplitude, phase)


def sample(rng, n_tasks, n_support, n_query, dtype="float64"):
    """Draw ``n_tasks`` fresh tasks, each with ``n_support`` support and ``n_query`` query points.

    Parameters
    ----------
    rng : np.random.Generator, the only source of randomness
    n_tasks, n_support, n_query : int >= 1 (``T``, ``K``, ``Q``)
    dtype : "float64" or "float32"

    Returns
    -------
    SinusoidTasks: a TaskBatch (leading axis = task) with amplitudes and phases (T,)
    """
    val.check_rng(rng)
    _check_counts(n_tasks, n_support, n_query)
    dtype = _dtype(dtype)
    amplitude = rng.uniform(*AMPLITUDE_RANGE, size=n_tasks)
    phase = rng.uniform(*PHASE_RANGE, size=n_tasks)
    X = rng.uniform(*X_RANGE, size=(n_tasks, n_support + n_query, 1))
    return _tasks(amplitude, phase, X, n_support, dtype)


def fixed_tasks(split="test", n_support=5, n_tasks=None, n_query=N_EVAL_QUERY, dtype="float64"):
    """The fixed, seeded evaluation tasks of ``split`` ("test" or "val").

    Amplitudes, phases and query points depend only on the split (and on
    ``n_tasks``, ``n_query``), not on ``n_support``; the support sets are
    nested (task ``i``'s first ``k`` support points are the same for every
    ``n_support >= k``), so k-shot results on the same split compare the
    same functions. Task ``i`` is the same for every ``n_tasks > i``.

    Parameters
    ----------
    split : "test" (600 tasks by default) or "val" (100 by default, disjoint seed)
    n_support : int >= 1, the evaluation shots (5 in Finn et al. 2017, Table 2)
    n_tasks : int >= 1 or None ; n_query : int >= 1 (100)

    Returns
    -------
    SinusoidTasks
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    if n_tasks is None:
        n_tasks = N_TEST_TASKS if split == "test" else 100
    _check_counts(n_tasks, n_support, n_query)
    dtype = _dtype(dtype)
    # Independent streams, one child per task (rng.spawn), so that neither n_support nor n_tasks
    # changes what an existing task looks like.
    amplitudes, phases, queries, supports = np.random.default_rng(SPLIT_SEEDS[split]).spawn(4)
    amplitude = amplitudes.uniform(*AMPLITUDE_RANGE, size=n_tasks)
    phase = phases.uniform(*PHASE_RANGE, size=n_tasks)
    X_query = np.stack([q.uniform(*X_RANGE, size=(n_query, 1)) for q in queries.spawn(n_tasks)])
    X_support = np.stack([s.uniform(*X_RANGE, size=(n_support, 1)) for s in supports.spawn(n_tasks)])
    return _tasks(amplitude, phase, np.concatenate([X_support, X_query], axis=1), n_support, dtype)
