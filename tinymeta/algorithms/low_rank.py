r"""MAML and FOMAML over a whole meta-batch, and its evaluation: shared products stacked, per-task
terms low-rank.

DESIGN.md section 7. When the step size is one number ``a_l`` per weight
matrix (MAML's ``alpha``; ANIL's ``alpha`` or 0), an inner step changes a
weight matrix by a matrix of rank at most ``n`` (the support rows of the
task), and after ``k`` steps

.. math::
    W_{l,k} = W_l - a_l \sum_{j<k} A_{l,j}^\top D_{l,j},\qquad
    b_{l,k} = b_l - p_l \odot \sum_{j<k} \mathbf 1^\top D_{l,j}

where ``A_{l,j}`` (n, d_in) is the input of layer ``l`` on the support set
and ``D_{l,j}`` (n, d_out) its ``dL_S/dZ``, both at ``theta_j``, and ``p_l``
the step of the bias (any vector). So a product with an adapted matrix
splits into a product with the shared ``W_l`` -- the same matrix for every
task, so the rows of all tasks go through it in *one* BLAS call -- and two
thin products per term and task:

.. math::
    X W_{l,k} = X W_l - a_l \sum_{j<k} (X A_{l,j}^\top)\,D_{l,j}, \qquad
    Y W_{l,k}^\top = Y W_l^\top - a_l \sum_{j<k} (Y D_{l,j}^\top)\,A_{l,j} .

The query gradient ``u`` has the same form (``u_W = A^{q\top} D^q``), and
so has every term the backward recursion of MAML adds to it
(``u \leftarrow u - \nabla^2 L_S(\theta_k) (P \odot u)``: the R-backward
pass's weight gradient ``A_{l,k}^\top \dot D_l + \dot H_{l-1}^\top D_{l,k}``,
DESIGN.md sections 2-3). A matrix here is therefore kept as a list of
*terms* ``(c, L, R)``, one ``c L^\top R`` each (``L``, ``R`` stacked over the
tasks, views of the stored passes). The meta-gradient needs ``u`` only
summed over the tasks: each of its weight terms is one BLAS call over the
stacked rows of all tasks. No task's adapted parameters are ever formed.
The steps' terms of ``W_{l,k}`` are one term, their rows stacked
(``_Stack``); the first layer's input is the support set ``X_S`` at every
step, so its ``W_{0,k} - W_0 = X_S^\top (-a_0 \sum_j D_{0,j})`` stays of rank
``n`` and ``X_S W_0`` is made once (``_FirstLayer``); the terms the backward
recursion adds to its ``u`` are summed the same way.

This computes what ``inner_loop.reference_meta_loss_and_grad`` computes
(the tests pin the two, 1e-12 relative in float64) and is chosen by
``inner_loop.meta_loss_and_grad`` for large meta-batches (``applies``);
everything else goes through ``meta_batch.py``. ``predictions`` does the
same for evaluation (``inner_loop.predictions``, ``predicts``): every
task's query outputs after ``0..K`` steps, the terms of each layer stacked
into one (and the first layer's, whose input is the support set at every
step, summed into one of rank ``n``). Products go to NumPy's BLAS
(``np.matmul(..., out=...)``) into workspaces kept per meta-batch shape; the
bias, activation and loss steps are the kernels of ``tinymeta.nn.kernels``.
The same inputs give the same bits on the same number of OpenBLAS threads;
on another number the last bits can differ (unlike the per-task kernels'
results; README, Speed).
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
MIN_WORK = 2_000_000  # T x (K n + nq) x parameters: below, the per-task path was as fast or faster
MIN_SAVING = 0.8  # the weight products per row / those of rank-(K n + nq) terms (``_saving``)
SURE_LIMIT = 2.0 ** -16  # predictions: values below this fraction of the largest float (``predictions``)


def applies(net, batch, precond, steps, precond_grad) -> bool:
    """Whether ``meta_loss_and_grad`` takes this call of ``inner_loop.meta_loss_and_grad``.

    It needs at least one inner step, no gradient wrt ``precond``, a model
    that ``meta_batch.supports`` (a plain MLP on the Numba backend without
    batch normalisation), one step size per weight matrix, and a meta-batch
    where it was measured to be faster than the per-task compiled path
    (README, Speed): at least ``MIN_TASKS`` tasks and ``MIN_WORK``
    row-parameter products, and weight matrices large against the terms
    that replace them (``_saving`` at least ``MIN_SAVING`` for the rank
    ``steps * n + nq``: the adapted weights' terms after ``steps`` steps
    plus the query gradient's, which every Hessian-vector product
    multiplies). The Omniglot net's 5-way meta-batches and its 20-way
    1-shot ones with 5 steps qualify; the sinusoid net's do not (1-40-40-1,
    10 + 10 rows: ``_saving`` 0.52, and the per-task kernel was 1.3-1.8x
    faster).
    """
    if precond_grad or not meta_batch.supports(net, batch.X_support, batch.y_support, batch.X_query,
                                               batch.y_query):
        return False
    (T, n), nq = batch.X_support.shape[:2], batch.X_query.shape[1]
    return _worth(net, precond, steps, T, steps * n + nq, steps * n + nq)


def _worth(net, precond, steps, T, rows, rank):
    """The measured part of ``applies`` and ``predicts``: at least one step, ``MIN_TASKS`` tasks,
    ``T rows P >= MIN_WORK``, ``_saving(net, rank) >= MIN_SAVING``, one step size per weight matrix."""
    if steps < 1 or T < MIN_TASKS or T * rows * net.n_params < MIN_WORK or _saving(net, rank) < MIN_SAVING:
        return False
    precond = np.asarray(precond)
    return precond.shape == (net.n_params,) and _weight_steps(net, precond) is not None


def _saving(net, rank):
    """Multiply-adds per row with every adapted weight matrix formed, ``sum d_in d_out``,
    over those of the rank-``rank`` terms that replace them, ``sum rank (d_in + d_out)``."""
    shapes = list(zip(net.sizes[:-1], net.sizes[1:]))
    return sum(a * b for a, b in shapes) / sum(rank * (a + b) for a, b in shapes)


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


def meta_loss_and_grad(net, theta, batch, precond, steps=1, first_order=False):
    """``inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, steps, first_order)``
    without its gradient wrt ``precond``.

    Parameters
    ----------
    net : MLP with ``applies`` true ; theta, precond : (P,)
    batch : TaskBatch, ``T`` tasks of ``n`` support and ``nq`` query rows
    steps : int >= 1 ; first_order : bool, FOMAML (the Hessian terms dropped)

    Returns
    -------
    (float, (P,)): mean query loss after ``steps`` steps, its gradient wrt ``theta``.
    """
    c = _Call(net, theta, precond, steps, batch.X_support, batch.y_support, batch.X_query)
    Ws, a, p_bias, ws, act, loss, steps = c.Ws, c.a, c.p_bias, c.ws, c.act, c.loss, c.steps
    Xs, Xq, Ys = c.Xs, c.Xq, c.Ys
    (T, n, _), nq, L = Xs.shape, Xq.shape[1], len(Ws)
    Yq = meta_batch._targets(net, batch.y_query, T, nq, "y_query")
    # W_{l,k} = W_l + (the first k n rows of ws.w[l]): every step's A_j, -a D_j stacked (l >= 1); the
    # first layer's A_j is X_support at every step: W_{0,k} = W_0 + X_support^T ws.d0 (``_FirstLayer``)
    first = _FirstLayer(Xs, Xq, Ws[0], ws)
    for k in range(steps):  # the inner steps, every task at once
        S, terms = ws.support[k], _weight_terms(ws, a, k * n)
        _forward(Ws, terms, ws.bias[k], Xs, S, ws, act, first.support(a[0]))
        _task_losses(loss, S, Ys)
        _backward(Ws, terms, S, ws, act, keep_back=not first_order and act != RELU)
        _add_step(ws, a, p_bias, S, k)
    Q, terms = ws.query, _weight_terms(ws, a, steps * n)
    _forward(Ws, terms, ws.bias[steps], Xq, Q, ws, act, first.query(a[0]))
    total = _task_losses(loss, Q, Yq)
    _backward(Ws, terms, Q, ws, act)
    u_bias = ws.u_bias
    for l in range(L):
        np.sum(Q.D3(l), axis=1, out=u_bias[l])
    u_terms = [[(1.0, Q.A[l], Q.D3(l))] for l in range(L)]  # u_t, the query gradient, per task
    if not first_order:
        ws.u0[...] = 0  # the first layer's -A^T D_dot of every step has A = X_S: one term, X_S^T u0
        u_terms[0].append((1.0, Xs, ws.u0))
        for k in range(steps - 1, -1, -1):  # u <- u - H_S(theta_k) (P * u)
            _hvp_step(Ws, _weight_terms(ws, a, k * n), a, p_bias, u_terms, u_bias, ws.support[k], ws.tangent[k],
                      ws, act, loss)
    grad = ws.grad
    for l in range(L):
        gW, gb = _blocks(grad, ws, l)
        _sum_terms(gW, u_terms[l], ws.weights[l])
        np.sum(u_bias[l], axis=0, out=gb)
    return total / T, grad / T


class _Call:
    """What ``meta_loss_and_grad`` and ``predictions`` start from: the checked inputs (``theta``,
    ``precond``, ``steps``, ``Xs``, ``Xq``, ``Ys`` the kernels' support targets), the weight steps
    ``a``, the weights ``Ws`` and bias steps ``p_bias`` per layer, the activation and loss codes,
    and the workspace ``ws`` of the shape with ``theta_0``'s biases in ``ws.bias[0]`` and no terms."""

    def __init__(self, net, theta, precond, steps, X_support, y_support, X_query):
        self.theta = meta_batch._vector(net, theta, "theta")
        precond = meta_batch._vector(net, precond, "precond")
        self.a = _weight_steps(net, precond)
        if self.a is None:
            raise ValueError("precond must hold one step size per weight matrix for the low-rank path")
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 for the low-rank path, got {steps}")
        self.Xs = meta_batch._inputs(net, X_support, "X_support")
        self.Xq = meta_batch._inputs(net, X_query, "X_query", self.Xs.shape[0])
        (T, n, _), nq = self.Xs.shape, self.Xq.shape[1]
        self.Ys = meta_batch._targets(net, y_support, T, n, "y_support")
        self.ws = _workspace(net, T, n, nq, self.steps, threading.get_ident())
        self.Ws, bs = zip(*net.unflatten(self.theta))
        self.p_bias = [p for _, p in net.unflatten(precond)]
        self.act, self.loss = get_activation(net.activation).code, get_loss(net.loss_name).code
        for l, b in enumerate(bs):
            self.ws.bias[0][l][...] = b
        self.ws.d0[...] = 0  # no step taken yet: no terms
        for stack in self.ws.w[1:]:
            stack.clear()


def _weight_terms(ws, a, rows):
    """The terms of ``W_{l,k} - W_l`` for ``rows = k n``: ``[]`` for the first layer (``_FirstLayer``
    takes it) and for a layer whose step is 0, else the first ``rows`` rows of ``ws.w[l]``."""
    return [[]] + [ws.w[l].terms(rows) if a[l] != 0 else [] for l in range(1, len(a))]


def _add_step(ws, a, p_bias, S, k):
    """After the support pass ``S`` at ``theta_k``: its terms (``ws.d0 -= a_0 D_0``, ``ws.w[l]`` gets
    ``A_l``, ``-a_l D_l``) and the biases of ``theta_{k+1}``, ``b_{k+1} = b_k - p * (column sums of D)``."""
    for l in range(len(a)):
        D3 = S.D3(l)
        if l == 0:
            ws.d0 -= a[0] * D3
        elif a[l] != 0:
            ws.w[l].append(S.A[l], D3, -a[l])
        np.sum(D3, axis=1, out=ws.bias[k + 1][l])
        ws.bias[k + 1][l] *= -p_bias[l]
        ws.bias[k + 1][l] += ws.bias[k][l]


class _FirstLayer:
    """The first layer's products: its input is the support set ``X_S`` at every step, so
    ``W_{0,k} = W_0 + X_S^T d0`` (``ws.d0 = -a_0 sum_{j<k} D_{0,j}``, rank n) and
    ``X W_{0,k} = X W_0 + (X X_S^T) d0``, with ``X W_0`` and ``X X_S^T`` made once per call (for
    the support and the query rows)."""

    def __init__(self, Xs, Xq, W0, ws):
        self.ws = ws
        for X, XW, XXs in ((Xs, ws.xw_s, ws.xxs_s), (Xq, ws.xw_q, ws.xxs_q)):
            np.matmul(X.reshape(-1, X.shape[2]), W0, out=XW.reshape(-1, XW.shape[2]))
            np.matmul(X, Xs.transpose(0, 2, 1), out=XXs)

    def support(self, a0):
        """``X_S W_{0,k}`` for the current ``ws.d0``."""
        return self._product(self.ws.xw_s, self.ws.xxs_s, self.ws.first_s, a0)

    def query(self, a0):
        """``X_Q W_{0,k}`` for the current ``ws.d0``."""
        return self._product(self.ws.xw_q, self.ws.xxs_q, self.ws.first_q, a0)

    def _product(self, XW, XXs, out, a0):
        if a0 == 0:  # the first layer does not move (ANIL)
            return XW
        np.matmul(XXs, self.ws.d0, out=out)
        out += XW
        return out


class _Stack:
    """The term ``L^T R`` of ``W_{l,k} - W_l`` for every task, one step's rows appended at a time:
    ``L`` (T, rows, d_in), ``R`` (T, rows, d_out), the first ``self.rows`` rows in use."""

    def __init__(self, T, capacity, d_in, d_out, dt):
        self.L = np.empty((T, capacity, d_in), dt)
        self.R = np.empty((T, capacity, d_out), dt)
        self.rows = 0

    def clear(self):
        self.rows = 0

    def append(self, Lpart, Rpart, c):
        """Add the rows of ``Lpart`` and ``c Rpart`` (each (T, r, ...))."""
        r = self.rows + Lpart.shape[1]
        self.L[:, self.rows:r] = Lpart
        np.multiply(Rpart, c, out=self.R[:, self.rows:r])
        self.rows = r

    def terms(self, rows):
        """``[(1, L, R)]`` over the first ``rows`` rows, ``[]`` for none."""
        return [(1.0, self.L[:, :rows], self.R[:, :rows])] if rows else []


# -------------------------------------------------------------- predictions
def predicts(net, X_support, y_support, X_query, precond, steps) -> bool:
    """Whether ``predictions`` takes this call of ``inner_loop.predictions`` (stacked tasks).

    As ``applies``: at least one step, a model that ``meta_batch.supports``,
    one step size per weight matrix, ``MIN_TASKS`` tasks, ``MIN_WORK``
    row-parameter products, and ``_saving`` at least ``MIN_SAVING`` for the
    rank ``steps * n`` of the last step's terms. The Omniglot net's 5-way
    1-shot evaluation (10 steps) qualifies; the sinusoid net's does not.
    """
    if not meta_batch.supports(net, X_support, y_support, X_query):
        return False
    (T, n), nq = X_support.shape[:2], X_query.shape[1]
    return _worth(net, precond, steps, T, steps * n + nq, steps * n)


def predictions(net, theta, X_support, y_support, X_query, precond, steps):
    """``inner_loop.predictions`` for stacked tasks (``meta_batch.predictions``), the adapted
    weights kept as terms: ``(T, steps + 1, Q, d_out)``, NaN from the step a task diverges.

    Step ``k``'s query outputs are one forward pass at ``theta_k`` (``_forward``); the support
    pass at ``theta_k`` adds step ``k``'s terms (``_add_step``), as in ``meta_loss_and_grad``.

    The iterates are never formed, and near overflow a product taken term by term can overflow
    where the formed matrix's does not (or the reverse). So a task is *sure* only while every
    value of its passes, its biases and ``max|W| + sum_j |a| n max|A_j| max|D_j|`` (a bound on
    every entry and partial sum of its weights and gradients, in any order) stay below
    ``SURE_LIMIT`` times the largest float; the other tasks -- diverging ones -- are computed
    again by ``meta_batch.predictions``, which forms the iterates and marks divergence as
    ``inner_loop.reference_predictions`` does. A sure task never diverges.
    """
    c = _Call(net, theta, precond, steps, X_support, y_support, X_query)
    Ws, a, p_bias, ws, act, loss, steps = c.Ws, c.a, c.p_bias, c.ws, c.act, c.loss, c.steps
    Xs, Xq, Ys = c.Xs, c.Xq, c.Ys
    theta, (T, n, _), nq, L = c.theta, Xs.shape, Xq.shape[1], len(Ws)
    out = np.empty((T, steps + 1, nq, net.sizes[-1]), dtype=theta.dtype)
    limit = float(np.finfo(theta.dtype).max) * SURE_LIMIT
    bound = np.tile([float(np.abs(W).max(initial=0.0)) for W in Ws], (T, 1))  # (T, L)
    sure = np.ones(T, dtype=bool)
    first = _FirstLayer(Xs, Xq, Ws[0], ws)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging task's values: it is not sure
        for k in range(steps + 1):
            terms = _weight_terms(ws, a, k * n)
            _forward(Ws, terms, ws.bias[k], Xq, ws.query, ws, act, first.query(a[0]))
            out[:, k] = ws.query.Z3(L - 1)
            sure &= _below(out[:, k], limit)
            if k == steps:
                break
            S = ws.support[k]
            _forward(Ws, terms, ws.bias[k], Xs, S, ws, act, first.support(a[0]))
            _task_losses(loss, S, Ys)
            _backward(Ws, terms, S, ws, act)
            _add_step(ws, a, p_bias, S, k)
            for l in range(L):
                A3, D3 = S.A[l], S.D3(l)
                gradient = n * np.abs(A3).max(axis=(1, 2)).astype(np.float64) * np.abs(D3).max(axis=(1, 2))
                bound[:, l] += abs(float(a[l])) * gradient
                sure &= (gradient < limit) & (bound[:, l] < limit) & _below(ws.bias[k + 1][l], limit)
    if not sure.all():
        again = ~sure
        out[again] = meta_batch.predictions(net, theta, Xs[again], np.asarray(y_support)[again], Xq[again],
                                            precond, steps)
    return out


def _below(x, limit):
    """Per task (leading axis), whether every entry of ``x`` is finite and below ``limit`` in magnitude."""
    return (np.abs(x) < limit).reshape(x.shape[0], -1).all(axis=1)


# ----------------------------------------------------------------- products
def _times(out3, rows3, W, terms, ws, transpose=False):
    """``out3[t] = rows3[t] @ M_t`` (``M_t^T`` if transpose) for ``M_t = W + sum c L_t^T R_t`` over
    ``terms``: one product with ``W`` for the rows of every task, then ``_add_terms``."""
    np.matmul(rows3.reshape(-1, rows3.shape[2]), W.T if transpose else W, out=out3.reshape(-1, out3.shape[2]))
    _add_terms(out3, rows3, terms, ws, transpose)


def _add_terms(out3, rows3, terms, ws, transpose=False):
    """``out3[t] += sum c (rows3[t] @ L_t^T) @ R_t`` over ``terms`` (``(rows3[t] @ R_t^T) @ L_t`` if
    transpose): two thin products per term and task (``ws.mid``, ``ws.corr`` hold them)."""
    T, rows = rows3.shape[:2]
    for c, Lt, Rt in terms:
        if c == 0:
            continue
        inner, outer = (Rt, Lt) if transpose else (Lt, Rt)
        mid = ws.mid[:T * rows * inner.shape[1]].reshape(T, rows, inner.shape[1])
        np.matmul(rows3, inner.transpose(0, 2, 1), out=mid)
        mid *= c
        out3 += np.matmul(mid, outer, out=ws.corr[:out3.size].reshape(out3.shape))


def _sum_terms(out, terms, scratch):
    """``out = sum over terms and tasks of c L_t^T R_t``: one product per term over the stacked rows."""
    for i, (c, Lt, Rt) in enumerate(terms):
        target = out if i == 0 else scratch
        np.matmul(Lt.reshape(-1, Lt.shape[2]).T, Rt.reshape(-1, Rt.shape[2]), out=target)
        if c != 1:
            target *= c
        if i > 0:
            out += scratch


# ----------------------------------------------------------------- passes
def _forward(Ws, terms, bias, X, R, ws, act, first=None):
    """Forward pass of every task at its adapted parameters (``terms``, per-task ``bias``) into the
    pass ``R`` (reference.forward_pass). ``first``: the first layer's ``X W_{0,k}``, made by the caller
    (``_FirstLayer``), or None for ``terms[0]``."""
    R.A = [X] + [R.H3(l) for l in range(len(Ws) - 1)]
    for l, W in enumerate(Ws):
        Z3 = R.Z3(l)
        if l == 0 and first is not None:
            np.copyto(Z3, first)
        else:
            _times(Z3, R.A[l], W, terms[l], ws)
        Z3 += bias[l][:, None, :]
        if l < len(Ws) - 1:
            K._activate(R.H[l], R.Z[l], act)


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


def _backward(Ws, terms, R, ws, act, keep_back=False):
    """``D_l = dL/dZ_l`` of every layer from the output block (reference.backward_pass):
    ``dL/dH_{l-1} = D_l W_l^T`` at the adapted ``W_l`` (copied into ``R.back`` if ``keep_back``:
    the HVP of a non-ReLU net reads it), then through the activation."""
    for l in range(len(Ws) - 1, 0, -1):
        _times(R.D3(l - 1), R.D3(l), Ws[l], terms[l], ws, transpose=True)
        if keep_back:
            np.copyto(R.back[l - 1], R.D[l - 1])
        K._back_through_d1(R.D[l - 1], R.Z[l - 1], act)


def _hvp_step(Ws, terms, a, p_bias, u_terms, u_bias, S, R, ws, act, loss):
    """``u <- u - H_S(theta_k) v`` for every task, ``v = P * u``: the R-forward and R-backward passes
    (meta_passes._hvp) over the stored support pass ``S`` at ``theta_k`` (``terms``: its weights for
    the layers after the first, which no product here needs), into the tangent pass ``R``. ``v``'s
    weight terms are ``u``'s times ``a_l`` (views, as every term of ``u``: stacking them would copy
    more than it saves); the pass adds ``-A^T D_dot`` and ``-H_dot^T D`` to ``u``'s terms and
    ``-1^T D_dot`` to ``u``'s bias (the first layer's ``-X_S^T D_dot`` to its term ``X_S^T ws.u0``)."""
    L = len(Ws)
    v_terms = [[(a[l] * c, Lt, Rt) for c, Lt, Rt in u_terms[l]] for l in range(L)]
    for l in range(L):  # R-forward: Z_dot_l = A_l V_l + H_dot_{l-1} W_{l,k} + v_b
        Zd3 = R.Z3(l)
        if l > 0:
            _times(Zd3, R.H3(l - 1), Ws[l], terms[l], ws)
        else:
            Zd3[...] = 0
        _add_terms(Zd3, S.A[l], v_terms[l], ws)
        Zd3 += (u_bias[l] * p_bias[l])[:, None, :]
        if l < L - 1:
            K._tangent_through_activation(R.H[l], S.Z[l], R.Z[l], act)
    out_dot, dout_dot = R.Z3(L - 1), R.D3(L - 1)
    for t in range(out_dot.shape[0]):
        if loss == MSE:
            K.mse_r_kernel(out_dot[t], dout_dot[t])
        else:
            K.xent_r_kernel(S.P[t], out_dot[t], dout_dot[t])
    for l in range(L - 1, -1, -1):  # R-backward
        if l == 0:  # S.A[0] is X_S
            ws.u0 -= R.D3(0)
        else:
            u_terms[l].append((-1.0, S.A[l], R.D3(l)))
        u_bias[l] -= R.D3(l).sum(axis=1)
        if l > 0:
            u_terms[l].append((-1.0, R.H3(l - 1), S.D3(l)))
            back_dot = R.D3(l - 1)  # D_dot_l W_{l,k}^T + D_l V_l^T, then through the activation
            _times(back_dot, R.D3(l), Ws[l], terms[l], ws, transpose=True)
            _add_terms(back_dot, S.D3(l), v_terms[l], ws, transpose=True)
            if act == RELU:  # act'' = 0
                K._back_through_d1(R.D[l - 1], S.Z[l - 1], act)
            else:  # S.back: dL/dH of the support pass; not read again in this call
                K._back_through_activation(S.back[l - 1], R.D[l - 1], S.Z[l - 1], R.Z[l - 1], act)


def _blocks(flat, ws, l):
    """Views ``(W, b)`` of layer ``l`` in a flat parameter-shaped vector."""
    (d_in, d_out), start = ws.shapes[l], ws.offsets[l]
    bias = start + d_in * d_out
    return flat[start:bias].reshape(d_in, d_out), flat[bias:bias + d_out]


# -------------------------------------------------------------- workspaces
class _Pass:
    """One pass over ``T`` tasks of ``n`` rows: per layer ``Z``, ``H`` (hidden layers), ``D``
    (``dL/dZ``), ``back`` (``dL/dH`` of hidden layers), all (T * n, width), with (T, n, width)
    views ``Z3`` ...; ``P`` the softmax (T, n, C); ``A`` the layers' inputs, set by ``_forward``."""

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

    def H3(self, l):
        return self.H[l].reshape(self.T, self.n, -1)

    def D3(self, l):
        return self.D[l].reshape(self.T, self.n, -1)



class _Workspace:
    """Everything one call writes, for one meta-batch shape: a support pass and a tangent pass per
    step (the terms refer to them until the call ends), the query pass, the per-task biases of
    every iterate, scratch for the thin products."""

    def __init__(self, net, T, n, nq, steps):
        dt, widths = np.dtype(net.dtype), list(net.sizes[1:])
        self.shapes = list(zip(net.sizes[:-1], net.sizes[1:]))
        self.offsets = list(net.layer_offsets)
        self.support = [_Pass(widths, T, n, dt) for _ in range(steps)]
        self.tangent = [_Pass(widths, T, n, dt) for _ in range(steps)]
        self.query = _Pass(widths, T, nq, dt)
        self.bias = [[np.empty((T, w), dt) for w in widths] for _ in range(steps + 1)]
        self.u_bias = [np.empty((T, w), dt) for w in widths]
        rows = max(n, nq)  # of a pass
        self.mid = np.empty(T * rows * max(rows, steps * n), dt)  # rows x rank of the largest term
        d_in, d_out = net.sizes[:-1], net.sizes[1:]
        self.w = [None] + [_Stack(T, steps * n, d_in[l], d_out[l], dt) for l in range(1, len(widths))]
        self.d0, self.u0 = np.empty((T, n, widths[0]), dt), np.empty((T, n, widths[0]), dt)
        self.xw_s, self.first_s = np.empty((T, n, widths[0]), dt), np.empty((T, n, widths[0]), dt)
        self.xw_q, self.first_q = np.empty((T, nq, widths[0]), dt), np.empty((T, nq, widths[0]), dt)
        self.xxs_s, self.xxs_q = np.empty((T, n, n), dt), np.empty((T, nq, n), dt)
        self.corr = np.empty(T * rows * max(widths), dt)
        self.weights = [np.empty(shape, dt) for shape in self.shapes]
        self.grad = np.empty(net.n_params, dt)


@lru_cache(maxsize=4)
def _workspace(net, T, n, nq, steps, thread):
    """The ``_Workspace`` of a meta-batch shape, made once: a training loop calls with one shape
    thousands of times. ``thread`` (the caller's thread id) keeps two threads from sharing one."""
    return _Workspace(net, T, n, nq, steps)
