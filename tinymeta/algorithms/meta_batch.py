r"""The compiled meta-batch path: the whole inner loop of every task in one Numba call.

``inner_loop.meta_loss_and_grad`` and ``inner_loop.predictions`` hand a
meta-batch here when ``supports`` says the kernels can take it; the
kernels (``tinymeta.nn.meta_kernels``) compute exactly what the reference
functions of ``inner_loop.py`` compute, task by task, and the tests pin the
two together (``tests/test_meta_kernels.py``, 1e-12 relative in float64).

Results do not depend on the thread count: tasks are spread over
``TASK_SLOTS`` slots (``min(T, TASK_SLOTS)``), each summing its tasks in
order, and the slots are summed in order here.

Threads: a call runs its slots on Numba's threads (``numba.get_num_threads()``)
only when there are two or more. Calls of at least ``PARALLEL_MIN_WORK``
row-parameter products always do (an Omniglot meta-batch: ~1e9); calls below
``TUNE_MIN_WORK`` never do (a fork/join costs more than they hold). In
between -- a sinusoid MAML meta-batch of 25 tasks is ~9e5 -- it depends on
the machine and its load, so ``ThreadChoice`` times both and keeps the
faster (``meta_loss_and_grad`` and ``batched_adapt``, per shape). On the
shared 2-core development machine such a meta-batch ran
1.4-1.9x faster on 2 threads called back to back, and 20 000 training
iterations took 11.5-14 s on 2 threads against 16-17 s on 1 -- but one run
took 31 s on 2 threads (and a 70 000-iteration run 81 s against 57 s),
presumably while the virtual machine's second core was busy elsewhere: an
iteration waits for the slower thread, and a worker that slept between two
calls must be woken (issue 5 notes). The meta-batch kernel is compiled twice for that
(``meta_batch_kernel`` over the threads, ``meta_batch_serial`` without);
the other kernels get the limit with ``numba.set_num_threads`` for the
duration of the call, which Numba keeps per calling thread; nothing
process-wide changes.

Workspaces: ``meta_loss_and_grad`` and ``batched_adapt`` keep the buffers
of the last few meta-batch shapes (``_meta_plan``, ``_adapt_plan``) instead
of allocating them on every call; the kernels overwrite them before reading.
"""
from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import numba
import numpy as np

from ..nn.activations import get_activation
from ..nn.losses import MSE, get_loss
from ..nn.meta_kernels import (adapt_kernel, meta_batch_kernel, meta_batch_serial, predictions_kernel,
                               steps_sum_kernel)
from ..nn.mlp import MLP

TASK_SLOTS = 8  # parallel task slots; fixed so that sums do not depend on the number of threads
PARALLEL_MIN_WORK = 10_000_000  # rows x parameters per call from which threads always pay (Omniglot: ~1e9)
TUNE_MIN_WORK = 200_000  # from here to PARALLEL_MIN_WORK, ThreadChoice measures (sinusoid MAML: ~9e5)


def _parallel(work):
    """Whether a call of ``work`` row-parameter products runs on Numba's threads (module docstring)."""
    return work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1


def _tuned(work):
    """Whether a call of ``work`` row-parameter products lets ``ThreadChoice`` decide (module docstring)."""
    return TUNE_MIN_WORK <= work < PARALLEL_MIN_WORK and numba.get_num_threads() > 1


class ThreadChoice:
    """One thread or all of them for the calls of one meta-batch shape, whichever is faster here and now.

    The first ``2 * PROBE`` calls alternate: one thread, all threads, ...
    Each call is timed from its start to the start of the next one, so
    that the time includes what the caller does in between (a training
    loop samples tasks and updates parameters while an idle worker thread
    goes to sleep). The next ``KEEP`` calls use the one with the smaller
    median; then both are timed again, as the machine's load changes.
    Either way the results are the same bits (the task slots are fixed).
    """

    PROBE, KEEP = 8, 500  # a wrong choice (a busy moment while probing) lasts at most 500 calls

    def __init__(self):
        self.calls = 0
        self.times = ([], [])  # seconds per call: one thread, all threads
        self.threaded = False  # the choice for the calls after the probes
        self._last = None  # (phase, threaded, start) of the previous call

    def choose(self, now: float) -> bool:
        """Whether the call starting at ``now`` (``time.perf_counter()``) runs on all threads."""
        probes = 2 * self.PROBE
        if self._last is not None:
            phase, threaded, start = self._last
            if phase < probes:
                self.times[threaded].append(now - start)
            if phase == probes - 1:
                self.threaded = statistics.median(self.times[True]) < statistics.median(self.times[False])
                self.times = ([], [])
        phase = self.calls % (probes + self.KEEP)
        threaded = phase % 2 == 1 if phase < probes else self.threaded
        self.calls += 1
        self._last = (phase, threaded, now)
        return threaded


def _threads_for(work):
    """Numba threads for a call of ``work`` row-parameter products (see the module docstring)."""
    return _threads(_parallel(work))


@contextmanager
def _threads(threaded):
    """All of Numba's threads for the calls inside if ``threaded``, else one."""
    before = numba.get_num_threads()
    use = before if threaded else 1
    if use != before:
        numba.set_num_threads(use)
    try:
        yield
    finally:
        if use != before:
            numba.set_num_threads(before)


def supports(model, *arrays) -> bool:
    """Whether the compiled path takes ``model`` and these per-task stacked arrays.

    It needs a plain ``MLP`` on the ``"numba"`` backend without batch
    normalisation, and arrays whose leading axis is the task (equal shapes
    for every task: one NumPy array each, not a list or an object array).
    """
    if type(model) is not MLP or model.backend != "numba" or getattr(model, "batchnorm", False):
        return False
    return all(isinstance(a, np.ndarray) and a.dtype != object and a.ndim >= 2 for a in arrays)


def _layout(net):
    """``(sizes, poff, zoff)``: widths, parameter offsets per layer, row offsets of the layer blocks."""
    sizes = np.asarray(net.sizes, dtype=np.int64)
    poff = np.asarray(net.layer_offsets, dtype=np.int64)
    zoff = np.concatenate([[0], np.cumsum(sizes[1:])]).astype(np.int64)
    return sizes, poff, zoff


def _transposed_size(poff):
    """Entries of the transposed weights of the layers after the first (``meta_passes._weights_t``)."""
    return int(poff[-1] - poff[1])


def _targets(net, y, T, n, name):
    """``(float targets, int labels)`` for the kernels, checked: the unused one is empty."""
    y = np.asarray(y)
    C = net.sizes[-1]
    if get_loss(net.loss_name).code == MSE:
        if y.shape != (T, n, C):
            raise ValueError(f"{name} must have shape ({T}, {n}, {C}) for loss 'mse', got {y.shape}")
        return np.ascontiguousarray(y, dtype=net.dtype), np.empty((T, 0), dtype=np.int64)
    if y.dtype.kind not in "iu" or y.shape != (T, n):
        raise ValueError(f"{name} must hold integer labels of shape ({T}, {n}), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"{name} must hold labels in 0..{C - 1}, got values from {y.min()} to {y.max()}")
    return np.empty((T, 0, 0), dtype=net.dtype), np.ascontiguousarray(y, dtype=np.int64)


def _vector(net, a, name):
    a = np.ascontiguousarray(a, dtype=net.dtype)
    if a.shape != (net.n_params,):
        raise ValueError(f"{name} must have shape ({net.n_params},), got {a.shape}")
    return a if a.flags.writeable else a.copy()  # one array type for the kernels (theta_0 is theta itself)


def _inputs(net, X, name, T=None):
    X = np.ascontiguousarray(X, dtype=net.dtype)
    if X.ndim != 3 or X.shape[2] != net.sizes[0] or 0 in X.shape[:2] or X.shape[0] != (T or X.shape[0]):
        raise ValueError(f"{name} must have shape ({T or 'T'}, n, {net.sizes[0]}) with n >= 1, got {X.shape}")
    return X


def meta_loss_and_grad(net, theta, batch, precond, steps, first_order=False, precond_grad=True):
    """The compiled ``inner_loop.reference_meta_loss_and_grad`` (same arguments and results).

    ``precond_grad=False`` skips the gradient wrt ``precond`` (returned as
    None): MAML, ANIL and CAVIA do not use it, and for an Omniglot-sized net
    its accumulation reads and writes megabytes per task.

    Returns
    -------
    (float, (P,), (P,) or None): mean query loss, its gradient wrt ``theta`` and wrt ``precond``.
    """
    theta, precond = _vector(net, theta, "theta"), _vector(net, precond, "precond")
    Xs = _inputs(net, batch.X_support, "X_support")
    Xq = _inputs(net, batch.X_query, "X_query", Xs.shape[0])
    (T, n, _), nq = Xs.shape, Xq.shape[1]
    Ysf, Ysi = _targets(net, batch.y_support, T, n, "y_support")
    Yqf, Yqi = _targets(net, batch.y_query, T, nq, "y_query")
    K = int(steps)
    plan = _meta_plan(net, T, n, nq, K, threading.get_ident())
    d_theta = np.empty_like(theta)
    d_precond = np.empty(theta.shape[0] if precond_grad else 0, dtype=theta.dtype)
    workspaces = plan.workspaces
    if not precond_grad:  # empty d_precond accumulators (the last workspace): the kernel skips that gradient
        workspaces = workspaces[:-1] + (workspaces[-1][:, :0],)
    work = T * (max(K, 1) * n + nq) * theta.shape[0]
    threaded = plan.threaded(work)
    kernel = meta_batch_kernel if threaded else meta_batch_serial
    loss = kernel(theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, *plan.layout, K, bool(first_order), *workspaces,
                  d_theta, d_precond)
    return float(loss) / T, d_theta / T, d_precond / T if precond_grad else None


class _Plan(NamedTuple):
    """What a meta-batch of one shape needs besides its data: ``layout`` (sizes, offsets,
    activation and loss codes), ``workspaces`` (every buffer the kernel writes) and
    ``threads`` (the ThreadChoice of its calls)."""

    layout: tuple
    workspaces: tuple
    threads: ThreadChoice

    def threaded(self, work) -> bool:
        """Whether a call of ``work`` row-parameter products runs on all threads: measured by
        ``threads`` in the tuned range, else fixed by the size (see the module docstring)."""
        return self.threads.choose(time.perf_counter()) if _tuned(work) else _parallel(work)


@lru_cache(maxsize=4)  # an Omniglot 20-way plan holds ~200 MB
def _meta_plan(net, T, n, nq, K, thread) -> _Plan:
    """The ``_Plan`` of a meta-batch of ``T`` tasks of ``n`` support and ``nq`` query rows, ``K``
    steps, made once and reused: a training loop calls with one shape thousands of times.
    ``thread`` (the caller's thread id) keeps two threads from sharing workspaces."""
    sizes, poff, zoff = _layout(net)
    S, P, C = min(T, TASK_SLOTS), net.n_params, int(sizes[-1])
    PT = _transposed_size(poff)
    Kst = max(K, 1)
    zsum, width, block = int(zoff[-1]), int(sizes.max()), int((sizes[:-1] * sizes[1:]).max())
    dt = np.dtype(net.dtype)

    def empty(*shape):
        return np.empty((S, *shape), dtype=dt)

    layout = (sizes, poff, zoff, get_activation(net.activation).code, get_loss(net.loss_name).code)
    workspaces = (empty(K + 1, P), empty(Kst, P), empty(Kst, n * zsum), empty(Kst, n * zsum), empty(Kst, n * zsum),
                  empty(Kst, n * C), empty(nq * zsum), empty(nq * zsum), empty(nq * zsum), empty(nq * C),
                  empty(n * zsum), empty(n * zsum), empty(n * zsum), empty(P), empty(P), empty(P),
                  empty(n * width), empty(block), np.empty(PT, dtype=dt), empty(K + 1, PT), np.empty(S, dtype=dt),
                  empty(P), empty(P))
    return _Plan(layout, workspaces, ThreadChoice())


def predictions(net, theta, X_support, y_support, X_query, precond, steps):
    """The compiled ``inner_loop.reference_predictions`` for stacked tasks.

    Parameters
    ----------
    X_support : (T, K, d_in) ; y_support : (T, K, d_out) or (T, K) labels
    X_query : (T, Q, d_in) ; theta, precond : (P,) ; steps : int >= 0

    Returns
    -------
    (T, steps + 1, Q, d_out) array, NaN from the step a task diverges.
    """
    theta, precond = _vector(net, theta, "theta"), _vector(net, precond, "precond")
    Xs = _inputs(net, X_support, "X_support")
    Xq = _inputs(net, X_query, "X_query", Xs.shape[0])
    (T, n, _), nq = Xs.shape, Xq.shape[1]
    Ysf, Ysi = _targets(net, y_support, T, n, "y_support")
    sizes, poff, zoff = _layout(net)
    S, P, C = min(T, TASK_SLOTS), theta.shape[0], int(sizes[-1])
    zsum, PT = int(zoff[-1]), _transposed_size(poff)
    dt = theta.dtype

    def empty(*shape):
        return np.empty((S, *shape), dtype=dt)

    out = np.empty((T, int(steps) + 1, nq, C), dtype=dt)
    with _threads_for(T * (int(steps) + 1) * (n + nq) * P):
        predictions_kernel(theta, precond, Xs, Ysf, Ysi, Xq, sizes, poff, zoff, get_activation(net.activation).code,
                           get_loss(net.loss_name).code, empty(P), empty(P), empty(n * zsum), empty(n * zsum),
                           empty(n * zsum), empty(n * C), empty(nq * zsum), empty(nq * zsum),
                           np.empty(PT, dtype=dt), empty(PT), out)
    return out


def batched_adapt(net, theta, X_support, y_support, precond, steps, batch_size=None, X_query=None, y_query=None):
    """Every task's parameters after ``steps`` SGD steps ``theta - precond * grad``, in one call.

    Step ``j`` of a task uses its support rows ``j*b .. j*b+b-1`` (mod ``K``)
    for ``b = batch_size`` (all rows if None), as ``reptile.iterates`` does.

    Parameters
    ----------
    X_support : (T, K, d_in) ; y_support : (T, K, d_out) or (T, K) labels
    theta, precond : (P,) ; steps : int >= 0 ; batch_size : int in 1..K or None
    X_query, y_query : optional (T, Q, d_in) and targets: also score the adapted parameters

    Returns
    -------
    adapted : (T, P) array ; diverged_at : (T,) int64, the first step whose
    iterate is not finite (the task's adaptation stopped there), or -1 ;
    query_loss : (T,) float64 (NaN where not computed)
    """
    theta, precond = _vector(net, theta, "theta"), _vector(net, precond, "precond")
    Xs = _inputs(net, X_support, "X_support")
    T, n, d_in = Xs.shape
    b = n if batch_size is None else int(batch_size)
    if not 1 <= b <= n:
        raise ValueError(f"batch_size must be in 1..{n} (the support size) or None, got {batch_size}")
    Ysf, Ysi = _targets(net, y_support, T, n, "y_support")
    if X_query is None:
        Xq, nq = np.empty((0, 0, d_in), dtype=net.dtype), 0
        Yqf, Yqi = np.empty((0, 0, 0), dtype=net.dtype), np.empty((0, 0), dtype=np.int64)
    else:
        Xq = _inputs(net, X_query, "X_query", T)
        nq = Xq.shape[1]
        Yqf, Yqi = _targets(net, y_query, T, nq, "y_query")
    P = theta.shape[0]
    plan = _adapt_plan(net, T, n, nq, b, threading.get_ident())
    work = T * (max(int(steps), 1) * b + nq) * P
    threaded = plan.threaded(work)
    adapted = np.empty((T, P), dtype=theta.dtype)
    diverged_at = np.empty(T, dtype=np.int64)
    query_loss = np.full(T, np.nan)
    with _threads(threaded):
        adapt_kernel(theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, *plan.layout, int(steps), b, *plan.workspaces,
                     adapted, diverged_at, query_loss)
    return adapted, diverged_at, query_loss


def steps_sum(theta, adapted):
    """``sum over t of (theta - adapted[t])`` for ``batched_adapt``'s ``adapted`` (T, P): Reptile's
    direction before the mean, the tasks added in order (``meta_kernels.steps_sum_kernel``)."""
    out = np.empty_like(theta)
    steps_sum_kernel(theta, adapted, out)
    return out


@lru_cache(maxsize=4)
def _adapt_plan(net, T, n, nq, b, thread) -> _Plan:
    """``batched_adapt``'s ``_Plan`` for ``T`` tasks of ``n`` support rows (minibatches of ``b``)
    and ``nq`` query rows, made once and reused, as ``_meta_plan``."""
    sizes, poff, zoff = _layout(net)
    S, P, C, d_in = min(T, TASK_SLOTS), net.n_params, int(sizes[-1]), int(sizes[0])
    zsum, PT = int(zoff[-1]), _transposed_size(poff)
    dt = np.dtype(net.dtype)
    mse = get_loss(net.loss_name).code == MSE

    def empty(*shape):
        return np.empty((S, *shape), dtype=dt)

    layout = (sizes, poff, zoff, get_activation(net.activation).code, get_loss(net.loss_name).code)
    workspaces = (empty(P), empty(n * zsum), empty(n * zsum), empty(n * zsum), empty(n * C), empty(b * d_in),
                  empty(b if mse else 0, C if mse else 0), np.empty((S, 0 if mse else b), dtype=np.int64),
                  empty(nq * zsum), empty(nq * zsum), empty(nq * zsum), empty(nq * C), np.empty(PT, dtype=dt),
                  empty(PT))
    return _Plan(layout, workspaces, ThreadChoice())
