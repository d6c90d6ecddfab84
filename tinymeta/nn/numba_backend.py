"""The Numba backend: ``reference.py``'s public functions, same signatures,
running on the compiled kernels of ``kernels.py`` (``bn_kernels.py`` for a
net with ``batchnorm=True``).

Workspaces are allocated once per call and handed to the kernels; no
kernel allocates. Inputs are assumed validated (``MLP`` does that).

Larger calls go to NumPy's BLAS instead (DESIGN.md section 7: on large
layers, BLAS is the roofline): from ``BLAS_MIN_WORK`` row-weight products
on (two rows of the Omniglot net; a ProtoNet meta-batch of 32 episodes of
100 Omniglot images is ~8e8), the forward and backward passes go to their
twins in ``blas_passes.py`` (BLAS products into workspaces reused from call
to call); from ``REFERENCE_MIN_WORK`` on, ``jvp``, ``hvp`` and
batch-normalised nets go to ``reference.py``. They agree with the kernels to
rounding (``tests/test_backends.py``); which one runs depends only on the
shapes, so the same inputs give the same bits (on the same number of
OpenBLAS threads: BLAS may round differently on another; README, Speed).
"""
from __future__ import annotations

import numpy as np

from . import blas_passes
from . import bn_kernels as BK
from . import kernels as K
from . import reference
from .activations import get_activation
from .batchnorm import BN_EPS
from .losses import MSE, get_loss


def _no_dx(theta):
    """A (0, 0) array: tells a kernel not to compute an input cotangent."""
    return np.empty((0, 0), dtype=theta.dtype)


class _Workspace:
    """Flat buffers for one batch of ``n`` samples (layout: kernels.py docstring)."""

    def __init__(self, net, n, tangents=False):
        sizes = net.sizes
        dt = net.dtype
        self.n = n
        self.H = np.empty(n * sum(sizes[:-1]), dt)
        self.Z = np.empty(n * sum(sizes[1:]), dt)
        self.D = np.empty(2 * n * max(sizes), dt)
        self.dout = np.empty((n, sizes[-1]), dt)
        self.P = np.empty((n, sizes[-1]), dt)  # softmax probabilities (xent)
        if net.batchnorm:  # layout: bn_kernels.py docstring
            self.Xh = np.empty_like(self.Z)
            self.S = np.empty(sum(sizes[1:]), dt)
        if tangents:
            self.Hd = np.empty_like(self.H)
            self.Zd = np.empty_like(self.Z)
            self.Dd = np.empty_like(self.D)
            self.dout_dot = np.empty_like(self.dout)
            if net.batchnorm:
                self.Ad = np.empty_like(self.Z)

    def out(self, net):
        return self.Z[self.Z.shape[0] - self.n * net.sizes[-1]:].reshape(self.n, net.sizes[-1])

    def out_dot(self, net):
        return self.Zd[self.Zd.shape[0] - self.n * net.sizes[-1]:].reshape(self.n, net.sizes[-1])


def _sizes(net):
    return np.asarray(net.sizes, dtype=np.int64)


def _act(net):
    return get_activation(net.activation).code


def _forward(net, theta, X, tangents=False):
    ws = _Workspace(net, X.shape[0], tangents)
    if net.batchnorm:
        BK.forward_bn_kernel(theta, X, _sizes(net), _act(net), BN_EPS, ws.H, ws.Z, ws.Xh, ws.S)
    else:
        K.forward_kernel(theta, X, _sizes(net), _act(net), ws.H, ws.Z)
    return ws


def _backward(net, theta, ws, dout, grad, dX):
    if net.batchnorm:
        BK.backward_bn_kernel(theta, _sizes(net), _act(net), ws.H, ws.Z, ws.Xh, ws.S, dout, grad, ws.D, dX)
    else:
        K.backward_kernel(theta, _sizes(net), _act(net), ws.H, ws.Z, dout, grad, ws.D, dX)


def _loss_into(net, ws, y):
    """Loss value; writes ``ws.dout`` (and ``ws.P`` for cross-entropy)."""
    if get_loss(net.loss_name).code == MSE:
        return K.mse_kernel(ws.out(net), y, ws.dout)
    return K.xent_kernel(ws.out(net), y, ws.dout, ws.P)


# ----------------------------------------------------- the public contract
BLAS_MIN_WORK = 100_000  # rows x weights from which forward and backward passes go to blas_passes.py
BLAS_MIN_ROWS = 2  # on one row BLAS's weight gradient is an outer product, slower than the kernels
REFERENCE_MIN_WORK = 20_000_000  # rows x weights from which jvp, hvp and batch norm go to reference.py


def _large(net, X):
    """The module that runs ``X`` on ``net`` if not the kernels: ``blas_passes``, ``reference``
    (batch norm), or None. Measured (1 thread, ``tinymeta train``'s nets): the BLAS passes are
    faster than the kernels from ~1e5 rows x weights (40-60 rows of the sinusoid net, 2 rows of
    the Omniglot net) and 3-5x faster from 25 rows of the Omniglot net on."""
    work = X.shape[0] * net.n_params
    if net.batchnorm:
        return reference if work >= REFERENCE_MIN_WORK else None
    return blas_passes if X.shape[0] >= BLAS_MIN_ROWS and work >= BLAS_MIN_WORK else None


def _reference(net, X) -> bool:
    """Whether ``jvp`` or ``hvp`` of ``X`` on ``net`` goes to ``reference.py`` (fresh NumPy arrays)."""
    return X.shape[0] * net.n_params >= REFERENCE_MIN_WORK


def forward(net, theta, X):
    large = _large(net, X)
    if large is not None:
        return large.forward(net, theta, X)
    return _forward(net, theta, X).out(net).copy()


def loss(net, theta, X, y):
    large = _large(net, X)
    if large is not None:
        return large.loss(net, theta, X, y)
    return float(_loss_into(net, _forward(net, theta, X), y))


def loss_and_grad(net, theta, X, y, input_grad=False):
    large = _large(net, X)
    if large is not None:
        return large.loss_and_grad(net, theta, X, y, input_grad)
    ws = _forward(net, theta, X)
    value = _loss_into(net, ws, y)
    grad = np.empty_like(theta)
    dX = np.empty_like(X) if input_grad else _no_dx(theta)
    _backward(net, theta, ws, ws.dout, grad, dX)
    return (float(value), grad, dX) if input_grad else (float(value), grad)


def vjp(net, theta, X, dout, input_grad=False):
    return forward_and_vjp(net, theta, X)[1](dout, input_grad)


def forward_and_vjp(net, theta, X):
    large = _large(net, X)
    if large is not None:
        return large.forward_and_vjp(net, theta, X)
    ws = _forward(net, theta, X)

    def pullback(dout, input_grad=False):  # reads ws.H, ws.Z; ws.D is scratch: may be called again
        grad = np.empty_like(theta)
        dX = np.empty_like(X) if input_grad else _no_dx(theta)
        _backward(net, theta, ws, dout, grad, dX)
        return (grad, dX) if input_grad else grad
    return ws.out(net).copy(), pullback


def _tangent_forward(net, theta, X, v, X_dot):
    ws = _forward(net, theta, X, tangents=True)
    if X_dot is not None:
        ws.Hd[:X_dot.size] = X_dot.ravel()
    if net.batchnorm:
        BK.r_forward_bn_kernel(theta, v, _sizes(net), _act(net), ws.H, ws.Z, ws.Xh, ws.S, ws.Hd, ws.Zd, ws.Ad,
                               X_dot is not None)
    else:
        K.r_forward_kernel(theta, v, _sizes(net), _act(net), ws.H, ws.Z, ws.Hd, ws.Zd, X_dot is not None)
    return ws


def jvp(net, theta, X, v, X_dot=None):
    if _reference(net, X):
        return reference.jvp(net, theta, X, v, X_dot)
    return _tangent_forward(net, theta, X, v, X_dot).out_dot(net).copy()


def hvp(net, theta, X, y, v, X_dot=None, input_grad=False):
    if _reference(net, X):
        return reference.hvp(net, theta, X, y, v, X_dot, input_grad)
    sizes, act = _sizes(net), _act(net)
    ws = _tangent_forward(net, theta, X, v, X_dot)
    _loss_into(net, ws, y)
    if get_loss(net.loss_name).code == MSE:
        K.mse_r_kernel(ws.out_dot(net), ws.dout_dot)
    else:
        K.xent_r_kernel(ws.P, ws.out_dot(net), ws.dout_dot)
    grad, hv = np.empty_like(theta), np.empty_like(theta)
    dX, dX_dot = (np.empty_like(X), np.empty_like(X)) if input_grad else (_no_dx(theta), _no_dx(theta))
    if net.batchnorm:
        BK.r_backward_bn_kernel(theta, v, sizes, act, ws.H, ws.Z, ws.Xh, ws.S, ws.Hd, ws.Zd, ws.Ad, ws.dout,
                                ws.dout_dot, grad, hv, ws.D, ws.Dd, X_dot is not None, dX, dX_dot)
    else:
        K.r_backward_kernel(theta, v, sizes, act, ws.H, ws.Z, ws.Hd, ws.Zd, ws.dout, ws.dout_dot,
                            grad, hv, ws.D, ws.Dd, X_dot is not None, dX, dX_dot)
    return (hv, dX_dot) if input_grad else hv
