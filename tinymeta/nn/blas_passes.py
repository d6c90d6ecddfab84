"""Large calls of the Numba backend: BLAS products into workspaces that are reused.

From ``numba_backend.BLAS_MIN_WORK`` row-weight products on (two rows of
the Omniglot net, 60 of the sinusoid net), a pass over the net is a few
matrix products that NumPy's BLAS does faster than the kernels' loops (3-5x
on one core from 25 rows of the Omniglot net on). The passes here are
``reference.py``'s forward and backward pass with every array written in
place:

* the products go to BLAS into existing arrays (``np.matmul(..., out=...)``,
  the same BLAS call as ``@``);
* the bias, the activation and its derivative go to the per-layer kernels of
  ``kernels.py`` (the reference's order of operations, one loop each);
* the arrays live in a workspace that the next call of the same shape reuses.

Why the last point: an array of a few megabytes is returned to the system
when it is freed, and the next one costs a page fault on first touch of
every 4 KiB page. On a ProtoNet meta-batch of 32 Omniglot episodes (3200
rows) those faults took about a quarter of the step with fresh arrays per
call (README, Speed).

A workspace is taken from a small pool for one call and given back when the
call returns; ``forward_and_vjp`` gives its workspace back only when the
pullback is garbage, since the pullback reads the kept pass. Two pullbacks
alive at once therefore never share a workspace, and a thread never takes
one that another is using.

ReLU nets get ``reference.py``'s bits; other activations agree with it to
rounding (the kernels evaluate them with ``math``, NumPy with its own
vectorised functions). Batch-normalised nets, ``jvp`` and ``hvp`` stay on
``reference.py`` (``numba_backend`` chooses).
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import numpy as np

from . import kernels as K
from .activations import get_activation
from .losses import get_loss

POOL_SHAPES = 4  # shapes (sizes, dtype, rows) whose free workspaces are kept; the least recently used go first
POOL_PER_SHAPE = 2  # free workspaces kept per shape

_pool: dict = {}  # (sizes, dtype, rows) -> free workspaces, least recently used shape first
_lock = threading.Lock()


class _Workspace:
    """The arrays of one pass over ``n`` rows: ``Z[l]`` (n, sizes[l+1]) the pre-activations,
    ``H[l]`` (n, sizes[l+1]) the activations of hidden layer ``l`` (the input of layer ``l+1``),
    ``back`` two buffers for the backward pass's ``dL/dZ`` of the hidden layers, used in turn."""

    def __init__(self, net, n):
        dt = net.dtype
        self.Z = [np.empty((n, p), dt) for p in net.sizes[1:]]
        self.H = [np.empty((n, p), dt) for p in net.sizes[1:-1]]
        width = n * max(net.sizes[1:-1], default=0)
        self.back = (np.empty(width, dt), np.empty(width, dt))


def _key(net, n):
    return tuple(net.sizes), np.dtype(net.dtype).name, n


def _take(net, n):
    """``(key, workspace)``: a free workspace for ``n`` rows of ``net`` from the pool, or a new one,
    and the key that ``_give_back`` files it under."""
    key = _key(net, n)
    with _lock:
        free = _pool.get(key)
        if free:
            return key, free.pop()
    return key, _Workspace(net, n)


def _give_back(key, ws):
    with _lock:
        free = _pool.pop(key, [])  # re-inserted last: the most recently used shape
        if len(free) < POOL_PER_SHAPE:
            free.append(ws)
        _pool[key] = free
        while len(_pool) > POOL_SHAPES:
            del _pool[next(iter(_pool))]


@contextmanager
def _workspace(net, n):
    key, ws = _take(net, n)
    try:
        yield ws
    finally:
        _give_back(key, ws)


# ----------------------------------------------------------------- passes
def _forward(net, theta, X, ws):
    """``reference.forward_pass`` into ``ws``; returns ``ws.Z[-1]``, the output (a view into ``ws``)."""
    act = get_activation(net.activation).code
    H = X
    for l, (W, b) in enumerate(net.unflatten(theta)):
        np.matmul(H, W, out=ws.Z[l])
        K._add_bias(ws.Z[l], b)
        if l < len(ws.H):
            K._activate(ws.H[l], ws.Z[l], act)
            H = ws.H[l]
    return ws.Z[-1]


def _backward(net, theta, X, ws, dout, input_grad):
    """``reference.backward_pass`` from the pass kept in ``ws``: ``dL/dtheta`` (and ``dL/dX``)."""
    act = get_activation(net.activation).code
    layers = net.unflatten(theta)
    grad = np.empty_like(theta)
    grads = net.unflatten(grad)
    n = X.shape[0]
    delta = dout  # dL/dZ of layer l
    for l in reversed(range(len(layers))):
        gW, gb = grads[l]
        K._add_colsum(delta, gb)
        np.matmul((ws.H[l - 1] if l > 0 else X).T, delta, out=gW)
        if l > 0:
            back = ws.back[l % 2][:n * net.sizes[l]].reshape(n, net.sizes[l])  # never the buffer delta is in
            np.matmul(delta, layers[l][0].T, out=back)
            K._back_through_d1(back, ws.Z[l - 1], act)
            delta = back
    if input_grad:
        return grad, delta @ layers[0][0].T
    return grad


# ----------------------------------------------- reference.py's contract
def forward(net, theta, X):
    with _workspace(net, X.shape[0]) as ws:
        return _forward(net, theta, X, ws).copy()


def loss(net, theta, X, y):
    with _workspace(net, X.shape[0]) as ws:
        return get_loss(net.loss_name).value_and_grad(_forward(net, theta, X, ws), y)[0]


def loss_and_grad(net, theta, X, y, input_grad=False):
    with _workspace(net, X.shape[0]) as ws:
        value, dout = get_loss(net.loss_name).value_and_grad(_forward(net, theta, X, ws), y)
        result = _backward(net, theta, X, ws, dout, input_grad)
    return (value, *result) if input_grad else (value, result)


def forward_and_vjp(net, theta, X):
    """``(f(X; theta), pullback)``; the pullback keeps the pass's workspace until it is garbage."""
    key, ws = _take(net, X.shape[0])
    out = _forward(net, theta, X, ws).copy()

    def pullback(dout, input_grad=False):
        return _backward(net, theta, X, ws, dout, input_grad)
    weakref.finalize(pullback, _give_back, key, ws)
    return out, pullback
