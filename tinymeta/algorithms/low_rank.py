r"""One-step MAML and FOMAML over a whole meta-batch: shared products stacked, per-task terms low-rank.

DESIGN.md section 7. With one inner step of a step size that is one number
``a_l`` per weight matrix (MAML's ``alpha``; ANIL's ``alpha`` or 0), every
adapted weight matrix differs from the shared one by a matrix of rank at
most ``n`` (the support rows of the task):

.. math::
    W_l' = W_l - a_l\, A_l^\top D_l,\qquad b_l' = b_l - p_l \odot \mathbf 1^\top D_l

where ``A_l`` (n, d_in) is the input of layer ``l`` on the support set and
``D_l`` (n, d_out) its ``dL_S/dZ``, both at ``theta``, and ``p_l`` the
step of the bias (any vector). So a product with an adapted matrix splits
into a product with the shared ``W_l`` -- the same matrix for every task,
so the rows of all tasks go through it in *one* BLAS call -- and two small
products per task:

.. math::
    A^q W_l' = A^q W_l - a_l\,(A^q A_l^\top)\,D_l, \qquad
    D^q W_l'^\top = D^q W_l^\top - a_l\,(D^q D_l^\top)\,A_l .

The query gradient ``u`` has the same structure (``u_W = A^{q\top} D^q``),
and so has the direction ``v = P \odot u`` of MAML's Hessian-vector
product at ``theta`` (one R-forward and one R-backward pass over the
support set, DESIGN.md section 2); its products with ``v``'s weights are
again two small ones per task (``A_l V_l = a_l (A_l A^{q\top}) D^q``,
``D_l V_l^\top = a_l (D_l D^{q\top}) A^q``). The meta-gradient needs ``u``
and ``H v`` only summed over the tasks, and their weight blocks are sums
of ``A^\top D`` products: one BLAS call each over the stacked rows of all
tasks. No task's adapted parameters are ever formed.

This computes what ``inner_loop.reference_meta_loss_and_grad`` computes
with ``steps=1`` (the tests pin the two, 1e-12 relative in float64) and is
chosen by ``inner_loop.meta_loss_and_grad`` for large meta-batches
(``applies``); everything else goes through ``meta_batch.py``.
Products go to NumPy's BLAS (``np.matmul(..., out=...)``) into workspaces
kept per meta-batch shape; the bias, activation and loss steps are the
kernels of ``tinymeta.nn.kernels``. The same inputs give the same bits on
the same number of OpenBLAS threads; on another number the last bits can
differ (unlike the per-task kernels' results; README, Speed).
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from ..nn import kernels as K
from ..nn.activations import RELU, get_activation
from ..nn.losses import MSE, get_loss
from . import meta_batch

MIN_TASKS = 2  # one task has nothing to stack: the compiled per-task path was faster (Omniglot net, 5 + 25 rows)
MIN_WORK = 2_000_000  # T x (n + nq) x parameters: below, the per-task path was as fast or faster
MIN_SAVING = 1.25  # the weight products per row / the low-rank terms per row (``_saving``)


def applies(net, batch, precond, steps, precond_grad) -> bool:
    """Whether ``meta_loss_and_grad`` takes this call of ``inner_loop.meta_loss_and_grad``.

    It needs one inner step, no gradient wrt ``precond``, a model that
    ``meta_batch.supports`` (a plain MLP on the Numba backend without batch
    normalisation), one step size per weight matrix, and a meta-batch where
    it was measured to be faster than the per-task compiled path (README,
    Speed): at least ``MIN_TASKS`` tasks and ``MIN_WORK`` row-parameter
    products, and weight matrices large against the support rows
    (``_saving`` at least ``MIN_SAVING``). The Omniglot net's meta-batches
    qualify; the sinusoid net's do not (its 40 x 40 matrix is hardly larger
    than the rank-10 terms that would replace it: ``_saving`` 1.04).
    """
    if steps != 1 or precond_grad:
        return False
    if not meta_batch.supports(net, batch.X_support, batch.y_support, batch.X_query, batch.y_query):
        return False
    (T, n), nq = batch.X_support.shape[:2], batch.X_query.shape[1]
    if T < MIN_TASKS or T * (n + nq) * net.n_params < MIN_WORK or _saving(net, n) < MIN_SAVING:
        return False
    precond = np.asarray(precond)
    return precond.shape == (net.n_params,) and _weight_steps(net, precond) is not None


def _saving(net, n):
    """Multiply-adds per query row with every adapted weight matrix formed, ``sum d_in d_out``,
    over those of the rank-``n`` terms that replace them, ``sum n (d_in + d_out)``."""
    shapes = list(zip(net.sizes[:-1], net.sizes[1:]))
    return sum(a * b for a, b in shapes) / sum(n * (a + b) for a, b in shapes)


def _weight_steps(net, precond):
    """``[a_0, ..., a_{L-1}]``: the one step size of each weight matrix in ``precond``, or None if
    some matrix has more than one."""
    steps = []
    for l, (d_in, d_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        w = precond[net.layer_offsets[l]:net.layer_offsets[l] + d_in * d_out]
        if w.min() != w.max():
            return None
        steps.append(w[0])
    return steps


def meta_loss_and_grad(net, theta, batch, precond, first_order=False):
    """``inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, 1, first_order)``
    without its gradient wrt ``precond``.

    Parameters
    ----------
    net : MLP with ``applies`` true ; theta, precond : (P,)
    batch : TaskBatch, ``T`` tasks of ``n`` support and ``nq`` query rows
    first_order : bool, FOMAML (the Hessian term dropped)

    Returns
    -------
    (float, (P,)): mean query loss after one step, its gradient wrt ``theta``.
    """
    theta = meta_batch._vector(net, theta, "theta")
    precond = meta_batch._vector(net, precond, "precond")
    a = _weight_steps(net, precond)
    if a is None:
        raise ValueError("precond must hold one step size per weight matrix for the low-rank path")
    Xs = meta_batch._inputs(net, batch.X_support, "X_support")
    Xq = meta_batch._inputs(net, batch.X_query, "X_query", Xs.shape[0])
    (T, n, _), nq = Xs.shape, Xq.shape[1]
    Ys = meta_batch._targets(net, batch.y_support, T, n, "y_support")
    Yq = meta_batch._targets(net, batch.y_query, T, nq, "y_query")
    ws = _workspace(net, T, n, nq, threading.get_ident())
    layers = [(W, b, p) for (W, b), (_, p) in zip(net.unflatten(theta), net.unflatten(precond))]
    act, loss = get_activation(net.activation).code, get_loss(net.loss_name).code

    S, Q = ws.support, ws.query
    _forward(layers, Xs, S, act)
    _task_losses(loss, S, Ys)
    _backward(layers, S, act)
    for l, (_, b, p) in enumerate(layers):  # b_l' = b_l - p_l * (column sums of D_l), per task
        np.sum(S.D3(l), axis=1, out=ws.b_adapted[l])
        np.multiply(ws.b_adapted[l], -p, out=ws.b_adapted[l])
        ws.b_adapted[l] += b
    _adapted_forward(layers, a, Xq, S, Q, ws, act)
    total = _task_losses(loss, Q, Yq)
    u = ws.u  # sum over tasks of the query gradients at the adapted parameters
    _adapted_backward(layers, a, S, Q, ws, act, u)
    if first_order:
        return total / T, u / T
    hv = ws.hv  # sum over tasks of the support Hessian at theta times v = precond * u_task
    _hvp(layers, a, loss, S, Q, ws, act, hv)
    return total / T, (u - hv) / T


# ----------------------------------------------------------------- passes
def _forward(layers, X, S, act):
    """Support forward pass at ``theta``, all tasks' rows at once (reference.forward_pass)."""
    A = X.reshape(-1, X.shape[2])
    for l, (W, b, _) in enumerate(layers):
        np.matmul(A, W, out=S.Z[l])
        K._add_bias(S.Z[l], b)
        if l < len(layers) - 1:
            K._activate(S.H[l], S.Z[l], act)
            A = S.H[l]
    S.A = [X.reshape(-1, X.shape[2])] + S.H


def _task_losses(loss, R, Y):
    """Each task's loss of the output block of ``R.Z`` (mean over its own rows), its ``dL/dout``
    into ``R.D``'s output block; returns the sum over tasks (kernels.mse_kernel / xent_kernel)."""
    L = len(R.Z)
    out, dout = R.Z3(L - 1), R.D3(L - 1)
    Yf, Yi = Y
    total = 0.0
    for t in range(out.shape[0]):
        if loss == MSE:
            total += K.mse_kernel(out[t], Yf[t], dout[t])
        else:
            total += K.xent_kernel(out[t], Yi[t], dout[t], R.P[t])
    return total


def _backward(layers, S, act):
    """``D_l = dL_S/dZ_l`` at ``theta`` for every layer, all tasks at once (reference.backward_pass);
    ``S.back[l]`` keeps ``dL_S/dH_l`` (before the activation's derivative) for the HVP."""
    for l in range(len(layers) - 1, 0, -1):
        np.matmul(S.D[l], layers[l][0].T, out=S.back[l - 1])
        np.copyto(S.D[l - 1], S.back[l - 1])
        K._back_through_d1(S.D[l - 1], S.Z[l - 1], act)


def _low_rank(out3, left3, right3, factor3, a, ws):
    """``out3[t] -= a (left3[t] @ right3[t]^T) @ factor3[t]`` for every task ``t``: two small
    products per task (``ws.mid`` holds the first, ``ws.corr`` the second)."""
    if a == 0:
        return
    T, rows, k = left3.shape[0], left3.shape[1], right3.shape[1]
    mid = ws.mid[:T * rows * k].reshape(T, rows, k)
    np.matmul(left3, right3.transpose(0, 2, 1), out=mid)
    mid *= a
    corr = ws.corr[:out3.size].reshape(out3.shape)
    out3 -= np.matmul(mid, factor3, out=corr)


def _adapted_forward(layers, a, Xq, S, Q, ws, act):
    """Query forward pass at every task's adapted parameters:
    ``Z^q_l = A^q W_l - a_l (A^q A_l^T) D_l + b_l'``."""
    T, nq, _ = Xq.shape
    Aq = Xq.reshape(T * nq, -1)
    Q.A = [Aq]
    for l, (W, _, _) in enumerate(layers):
        np.matmul(Aq, W, out=Q.Z[l])
        Z3 = Q.Z3(l)
        _low_rank(Z3, Aq.reshape(T, nq, -1), S.A3(l), S.D3(l), a[l], ws)
        Z3 += ws.b_adapted[l][:, None, :]
        if l < len(layers) - 1:
            K._activate(Q.H[l], Q.Z[l], act)
            Aq = Q.H[l]
            Q.A.append(Aq)


def _adapted_backward(layers, a, S, Q, ws, act, u):
    """Query backward pass at the adapted parameters; ``u`` receives the sum over tasks of the
    query gradients (``u_W = sum_t A^q_t^T D^q_t``, one product over the stacked rows):
    ``D^q_{l-1} = (D^q_l W_l^T - a_l (D^q_l D_l^T) A_l) * act'(Z^q_{l-1})``."""
    T = ws.T
    for l in range(len(layers) - 1, -1, -1):
        uW, ub = _blocks(u, ws, l)
        np.matmul(Q.A[l].T, Q.D[l], out=uW)
        np.sum(Q.D[l], axis=0, out=ub)
        if l > 0:
            back = Q.D[l - 1]
            np.matmul(Q.D[l], layers[l][0].T, out=back)
            _low_rank(back.reshape(T, Q.n, -1), Q.D3(l), S.D3(l), S.A3(l), a[l], ws)
            K._back_through_d1(back, Q.Z[l - 1], act)


def _hvp(layers, a, loss, S, Q, ws, act, hv):
    """``hv = sum_t H_S,t(theta) v_t`` with ``v_t = precond * u_t``: the R-forward and R-backward
    passes over the support rows (meta_passes._hvp), ``v_t``'s weight products low-rank."""
    T, n, L = ws.T, S.n, len(layers)
    R = ws.tangent
    for l, (W, _, p) in enumerate(layers):  # R-forward: Z_dot_l = A_l V_l + H_dot_{l-1} W_l + v_b
        Zd3 = R.Z3(l)
        np.sum(Q.D3(l), axis=1, out=ws.v_bias[l])  # the bias block of u_t, per task ...
        ws.v_bias[l] *= p  # ... times its step: v_t's bias block
        Zd3[...] = ws.v_bias[l][:, None, :]
        if l > 0:
            R.Z[l] += np.matmul(R.H[l - 1], W, out=ws.rows[l])
        _low_rank(Zd3, S.A3(l), Q.A3(l), Q.D3(l), -a[l], ws)
        if l < L - 1:
            K._tangent_through_activation(R.H[l], S.Z[l], R.Z[l], act)
    out_dot, dout_dot = R.Z3(L - 1), R.D3(L - 1)
    for t in range(T):
        if loss == MSE:
            K.mse_r_kernel(out_dot[t], dout_dot[t])
        else:
            K.xent_r_kernel(S.P[t], out_dot[t], dout_dot[t])
    for l in range(L - 1, -1, -1):  # R-backward
        hW, hb = _blocks(hv, ws, l)
        np.matmul(S.A[l].T, R.D[l], out=hW)
        if l > 0:
            hW += np.matmul(R.H[l - 1].T, S.D[l], out=ws.weights[l])
        np.sum(R.D[l], axis=0, out=hb)
        if l > 0:  # D_dot_{l-1} = D_dot_l W_l^T + D_l V_l^T, through the activation
            back_dot = R.D[l - 1]
            np.matmul(R.D[l], layers[l][0].T, out=back_dot)
            _low_rank(back_dot.reshape(T, n, -1), S.D3(l), Q.D3(l), Q.A3(l), -a[l], ws)
            if act == RELU:  # act'' = 0
                K._back_through_d1(back_dot, S.Z[l - 1], act)
            else:  # S.back is not read again in this call
                K._back_through_activation(S.back[l - 1], back_dot, S.Z[l - 1], R.Z[l - 1], act)


def _blocks(flat, ws, l):
    """Views ``(W, b)`` of layer ``l`` in a flat parameter-shaped vector."""
    (d_in, d_out), start = ws.shapes[l], ws.offsets[l]
    bias = start + d_in * d_out
    return flat[start:bias].reshape(d_in, d_out), flat[bias:bias + d_out]


# -------------------------------------------------------------- workspaces
class _Pass:
    """One pass over ``T`` tasks of ``n`` rows: per layer ``Z``, ``H`` (hidden layers), ``D``
    (``dL/dZ``), ``back`` (``dL/dH`` of hidden layers), all (T * n, width); ``P`` the softmax
    (T, n, C); ``A`` the inputs of the layers, set by the forward pass."""

    def __init__(self, widths, T, n, dt):
        self.T, self.n = T, n
        self.Z = [np.empty((T * n, w), dt) for w in widths]
        self.H = [np.empty((T * n, w), dt) for w in widths[:-1]]
        self.D = [np.empty((T * n, w), dt) for w in widths]
        self.back = [np.empty((T * n, w), dt) for w in widths[:-1]]
        self.P = np.empty((T, n, widths[-1]), dt)
        self.A = []

    def Z3(self, l):
        return self.Z[l].reshape(self.T, self.n, -1)

    def D3(self, l):
        return self.D[l].reshape(self.T, self.n, -1)

    def A3(self, l):
        return self.A[l].reshape(self.T, self.n, -1)


class _Workspace:
    """Everything one call writes, for one meta-batch shape."""

    def __init__(self, net, T, n, nq):
        dt, widths = np.dtype(net.dtype), list(net.sizes[1:])
        self.T = T
        self.shapes = list(zip(net.sizes[:-1], net.sizes[1:]))
        self.offsets = list(net.layer_offsets)
        self.support, self.query, self.tangent = (_Pass(widths, T, n, dt), _Pass(widths, T, nq, dt),
                                                  _Pass(widths, T, n, dt))
        self.b_adapted = [np.empty((T, w), dt) for w in widths]
        self.v_bias = [np.empty((T, w), dt) for w in widths]
        self.mid = np.empty(T * n * nq, dt)
        self.corr = np.empty(T * max(n, nq) * max(widths), dt)
        self.rows = [np.empty((T * n, w), dt) for w in widths]
        self.weights = [np.empty(shape, dt) for shape in self.shapes]
        self.u, self.hv = np.empty(net.n_params, dt), np.empty(net.n_params, dt)


@lru_cache(maxsize=4)
def _workspace(net, T, n, nq, thread):
    """The ``_Workspace`` of a meta-batch shape, made once: a training loop calls with one shape
    thousands of times. ``thread`` (the caller's thread id) keeps two threads from sharing one."""
    return _Workspace(net, T, n, nq)
