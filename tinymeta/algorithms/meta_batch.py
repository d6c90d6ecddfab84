r"""The compiled meta-batch path: the whole inner loop of every task in one Numba call.

``inner_loop.meta_loss_and_grad`` and ``inner_loop.predictions`` hand a
meta-batch here when ``supports`` says the kernels can take it; the
kernels (``tinymeta.nn.meta_kernels``) compute exactly what the reference
functions of ``inner_loop.py`` compute, task by task, and the tests pin the
two together (``tests/test_meta_kernels.py``, 1e-12 relative in float64).

Results do not depend on the thread count: tasks are spread over
``TASK_SLOTS`` slots (``min(T, TASK_SLOTS)``), each summing its tasks in
order, and the slots are summed in order here.
"""
from __future__ import annotations

import numpy as np

from ..nn.activations import get_activation
from ..nn.losses import MSE, get_loss
from ..nn.meta_kernels import meta_batch_kernel, predictions_kernel
from ..nn.mlp import MLP

TASK_SLOTS = 8  # parallel task slots; fixed so that sums do not depend on the number of threads


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


def _targets(net, y, T, n):
    """``(float targets, int labels)`` for the kernels: the unused one is empty."""
    if get_loss(net.loss_name).code == MSE:
        return (np.ascontiguousarray(y, dtype=net.dtype).reshape(T, n, net.sizes[-1]),
                np.empty((T, 0), dtype=np.int64))
    return np.empty((T, 0, 0), dtype=net.dtype), np.ascontiguousarray(y, dtype=np.int64).reshape(T, n)


def _vector(net, a):
    return np.ascontiguousarray(a, dtype=net.dtype)


def _inputs(net, X):
    return np.ascontiguousarray(X, dtype=net.dtype)


def meta_loss_and_grad(net, theta, batch, precond, steps, first_order=False):
    """The compiled ``inner_loop.reference_meta_loss_and_grad`` (same arguments and results).

    Returns
    -------
    (float, (P,), (P,)): mean query loss, its gradient wrt ``theta`` and wrt ``precond``.
    """
    theta, precond = _vector(net, theta), _vector(net, precond)
    Xs, Xq = _inputs(net, batch.X_support), _inputs(net, batch.X_query)
    (T, n, _), nq = Xs.shape, Xq.shape[1]
    Ysf, Ysi = _targets(net, batch.y_support, T, n)
    Yqf, Yqi = _targets(net, batch.y_query, T, nq)
    sizes, poff, zoff = _layout(net)
    S, P, K, C = min(T, TASK_SLOTS), theta.shape[0], int(steps), int(sizes[-1])
    Kst = max(K, 1)
    zsum, width, block = int(zoff[-1]), int(sizes.max()), int((sizes[:-1] * sizes[1:]).max())
    dt = theta.dtype

    def empty(*shape):
        return np.empty((S, *shape), dtype=dt)

    loss_acc, d_theta_acc, d_precond_acc = np.empty(S, dtype=dt), empty(P), empty(P)
    meta_batch_kernel(
        theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, get_activation(net.activation).code,
        get_loss(net.loss_name).code, K, bool(first_order),
        empty(K + 1, P), empty(Kst, P), empty(Kst, n * zsum), empty(Kst, n * zsum), empty(Kst, n * zsum),
        empty(Kst, n * C), empty(nq * zsum), empty(nq * zsum), empty(nq * zsum), empty(nq * C),
        empty(n * zsum), empty(n * zsum), empty(n * zsum), empty(P), empty(P), empty(P),
        empty(n * width), empty(block), loss_acc, d_theta_acc, d_precond_acc)
    loss, d_theta, d_precond = 0.0, np.zeros_like(theta), np.zeros_like(theta)
    for s in range(S):
        loss += float(loss_acc[s])
        d_theta += d_theta_acc[s]
        d_precond += d_precond_acc[s]
    return loss / T, d_theta / T, d_precond / T


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
    theta, precond = _vector(net, theta), _vector(net, precond)
    Xs, Xq = _inputs(net, X_support), _inputs(net, X_query)
    (T, n, _), nq = Xs.shape, Xq.shape[1]
    Ysf, Ysi = _targets(net, y_support, T, n)
    sizes, poff, zoff = _layout(net)
    S, P, C = min(T, TASK_SLOTS), theta.shape[0], int(sizes[-1])
    zsum, width, block = int(zoff[-1]), int(sizes.max()), int((sizes[:-1] * sizes[1:]).max())
    dt = theta.dtype

    def empty(*shape):
        return np.empty((S, *shape), dtype=dt)

    out = np.empty((T, int(steps) + 1, nq, C), dtype=dt)
    predictions_kernel(theta, precond, Xs, Ysf, Ysi, Xq, sizes, poff, zoff, get_activation(net.activation).code,
                       get_loss(net.loss_name).code, empty(P), empty(P), empty(n * zsum), empty(n * zsum),
                       empty(n * zsum), empty(n * C), empty(nq * zsum), empty(nq * zsum),
                       empty(block), out)
    return out
