r"""Numba kernels for a whole meta-batch in one compiled call.

The fast path of ``tinymeta.algorithms.inner_loop.reference_meta_loss_and_grad``
(and of ``inner_loop.predictions``): for every task, ``K`` preconditioned
inner steps on the support set, the query loss and gradient, then the
reverse recursion (DESIGN.md section 3)

.. math::
    \bar P \mathrel{-}= g_k \odot u,\qquad
    u \leftarrow u - \nabla^2 L_S(\theta_k)\,(P \odot u),\qquad k = K-1, \dots, 0

with an exact R-operator Hessian-vector product (DESIGN.md section 2).
The ``K`` support passes are stored (pre-activations ``Z``, activations
``H``, backpropagated ``delta``) and reused by the Hessian-vector products:
an HVP at ``theta_k`` costs one R-forward and one R-backward pass, no
forward and no backward pass.

Tasks run in parallel over *task slots* (``numba.prange``): slot ``s``
handles tasks ``s, s + S, s + 2S, ...`` in order with its own workspaces and
accumulators, and the slots are summed in order afterwards. The number of
slots is fixed by the caller, not by the thread count, so that results do
not depend on the number of threads.

The passes and the workspace layout are in ``meta_passes.py``; every
workspace and accumulator has a leading slot axis, and the stored support
passes one more axis for the step. Nothing inside a kernel allocates.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .jit import kernel
from .kernels import _view
from .losses import MSE
from .meta_passes import _backward, _forward, _hvp, _loss_into, _weights_t


# ------------------------------------------------------------ meta-batch
@kernel
def _task(theta, precond, X, Yf, Yi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps, first_order,
          thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv, tmp, scratch, thetaT, thetasT,
          d_theta, d_precond):
    """One task (inner_loop.task_meta_loss_and_grad); adds its gradients into
    ``d_theta``, ``d_precond`` (unless ``d_precond`` is empty: MAML does not
    need it) and returns its query loss. ``thetas[k]`` holds the iterate
    ``theta_k`` for ``k >= 1``; ``theta_0`` is ``theta`` itself. ``thetasT[k]``
    receives ``theta_k``'s transposed weights from its backward pass, for its
    Hessian-vector product; ``theta_0``'s are ``thetaT``, made once per
    meta-batch (meta_passes._backward)."""
    n, nq, P = X.shape[0], Xq.shape[0], theta.shape[0]
    for k in range(steps):
        th = _iterate(theta, thetas, k)
        _forward(th, X, sizes, poff, zoff, act, Zs[k], Hs[k])
        _loss_into(loss, Zs[k], n, zoff, sizes, Yf, Yi, Ds[k], Ps[k])
        _backward(th, X, sizes, poff, zoff, act, Zs[k], Hs[k], Ds[k], grads[k], _iterate(thetaT, thetasT, k),
                  k > 0)
        for j in range(P):
            thetas[k + 1, j] = th[j] - precond[j] * grads[k, j]
    th = _iterate(theta, thetas, steps)
    _forward(th, Xq, sizes, poff, zoff, act, Zq, Hq)
    value = _loss_into(loss, Zq, nq, zoff, sizes, Yqf, Yqi, Dq, Pq)
    _backward(th, Xq, sizes, poff, zoff, act, Zq, Hq, Dq, u, _iterate(thetaT, thetasT, steps), steps > 0)
    for k in range(steps - 1, -1, -1):
        if d_precond.shape[0] > 0:
            for j in range(P):
                d_precond[j] -= grads[k, j] * u[j]
        if not first_order:
            for j in range(P):
                w[j] = precond[j] * u[j]
            _hvp(_iterate(theta, thetas, k), w, X, sizes, poff, zoff, act, loss, Zs[k], Hs[k], Ds[k], Ps[k],
                 Zd, Hd, Dd, hv, tmp, _iterate(thetaT, thetasT, k), scratch)
            for j in range(P):
                u[j] -= hv[j]
    for j in range(P):
        d_theta[j] += u[j]
    return value


@kernel
def _iterate(theta, thetas, k):
    """``theta_k``: ``theta`` for ``k == 0`` (not copied: an Omniglot net's ``theta`` is a
    megabyte), else ``thetas[k]``."""
    if k == 0:
        return theta
    return thetas[k]


@kernel
def _slot(s, theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps, first_order,
          thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv, tmp, scratch, thetaT, thetasT,
          loss_acc, d_theta_acc, d_precond_acc):
    """Slot ``s``: the tasks ``s, s + S, s + 2S, ...`` in order, summed into row ``s`` of the
    accumulators, with row ``s`` of every workspace."""
    T, S = Xs.shape[0], thetas.shape[0]
    loss_acc[s] = 0.0
    d_theta_acc[s, :] = 0.0
    d_precond_acc[s, :] = 0.0
    for t in range(s, T, S):
        loss_acc[s] += _task(theta, precond, Xs[t], Ysf[t], Ysi[t], Xq[t], Yqf[t], Yqi[t], sizes, poff,
                             zoff, act, loss, steps, first_order, thetas[s], grads[s], Zs[s], Hs[s],
                             Ds[s], Ps[s], Zq[s], Hq[s], Dq[s], Pq[s], Zd[s], Hd[s], Dd[s], u[s], w[s],
                             hv[s], tmp[s], scratch[s], thetaT, thetasT[s], d_theta_acc[s], d_precond_acc[s])


@kernel
def _sum_slots(loss_acc, d_theta_acc, d_precond_acc, d_theta, d_precond):
    """The slots' sums added in slot order: the loss (returned), ``d_theta``, ``d_precond`` (if not empty)."""
    total = 0.0
    d_theta[:] = 0.0
    d_precond[:] = 0.0
    for s in range(loss_acc.shape[0]):
        total += loss_acc[s]
        for j in range(d_theta.shape[0]):
            d_theta[j] += d_theta_acc[s, j]
        for j in range(d_precond.shape[0]):
            d_precond[j] += d_precond_acc[s, j]
    return total


@kernel(parallel=True)
def meta_batch_kernel(theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps,
                      first_order, thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv,
                      tmp, scratch, thetaT, thetasT, loss_acc, d_theta_acc, d_precond_acc, d_theta, d_precond):
    """The sum over tasks of the query loss (returned) and of its gradients wrt
    ``theta`` and ``precond`` (into ``d_theta``, ``d_precond``):
    inner_loop.reference_meta_loss_and_grad before the mean. The slots run on
    Numba's threads. ``prange`` makes ``s`` unsigned; ``_slot`` gets it as the signed integer
    that ``meta_batch_serial`` passes, so that both kernels call one compiled ``_slot``. (A second,
    unsigned ``_slot`` was linked with all it calls and optimised again: from an empty cache this
    kernel took 28.7-31.2 s to compile, 26.7 s with one ``_slot``; float64, sinusoid net.)"""
    _weights_t(theta, sizes, poff, thetaT)
    for s in prange(thetas.shape[0]):
        _slot(np.int64(s), theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps, first_order,
              thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv, tmp, scratch, thetaT, thetasT,
              loss_acc, d_theta_acc, d_precond_acc)
    return _sum_slots(loss_acc, d_theta_acc, d_precond_acc, d_theta, d_precond)


@kernel
def meta_batch_serial(theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps,
                      first_order, thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv,
                      tmp, scratch, thetaT, thetasT, loss_acc, d_theta_acc, d_precond_acc, d_theta, d_precond):
    """``meta_batch_kernel`` on the calling thread alone (small meta-batches, where a
    fork/join costs more than it gives; meta_batch.py): the same slots, the same sums."""
    _weights_t(theta, sizes, poff, thetaT)
    for s in range(thetas.shape[0]):
        _slot(s, theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps, first_order,
              thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv, tmp, scratch, thetaT, thetasT,
              loss_acc, d_theta_acc, d_precond_acc)
    return _sum_slots(loss_acc, d_theta_acc, d_precond_acc, d_theta, d_precond)


# ----------------------------------------------------------- predictions
@kernel
def _copy(dst, src):
    """``dst[:] = src`` for 1-D arrays, as a loop: Numba's slice assignment from an array
    first checks whether the two overlap, and took 0.66-0.79 us for the sinusoid net's 1761
    parameters against 0.12-0.32 us for this loop (one core, float32 / float64)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@kernel
def _finite_vector(a):
    """Whether every entry of the 1-D ``a`` is finite.

    ``x * 0`` is 0 for a finite ``x`` and NaN for an infinite or NaN one, and
    a NaN stays NaN through any sum: so the entries times 0 are summed in 8
    independent sums (which the SLP vectorizer turns into one vector
    register; a loop that stops at the first non-finite entry runs one
    entry at a time, ~1.4 us for the sinusoid net's 1761 parameters, as
    long as a Reptile step's forward pass) and the total is checked once.
    """
    n = a.shape[0]
    n8 = n - n % 8
    z = a.dtype.type(0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
    for j in range(0, n8, 8):
        s0 += a[j] * z; s1 += a[j + 1] * z; s2 += a[j + 2] * z; s3 += a[j + 3] * z  # noqa: E702
        s4 += a[j + 4] * z; s5 += a[j + 5] * z; s6 += a[j + 6] * z; s7 += a[j + 7] * z  # noqa: E702
    for j in range(n8, n):
        s0 += a[j] * z
    return np.isfinite(s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7)


@kernel
def _finite_matrix(a):
    """Whether every entry of the 2-D ``a`` is finite."""
    for i in range(a.shape[0]):
        if not _finite_vector(a[i]):
            return False
    return True


@kernel(parallel=True)
def predictions_kernel(theta, precond, Xs, Ysf, Ysi, Xq, sizes, poff, zoff, act, loss, th, grad,
                       Z, H, D, Pr, Zq, Hq, thetaT, WT, out):
    """Query outputs of every task after ``0..steps`` steps into ``out``
    (T, steps + 1, Q, d_out), NaN from the step a task diverges
    (inner_loop.reference_predictions). Slot ``s`` owns row ``s`` of the workspaces;
    ``thetaT`` receives ``theta``'s transposed weights for every task's first step,
    ``WT[s]`` those of the later iterates (meta_passes._backward)."""
    T, S = Xs.shape[0], th.shape[0]
    steps = out.shape[1] - 1
    L = sizes.shape[0] - 1
    n, nq, C = Xs.shape[1], Xq.shape[1], sizes[L]
    _weights_t(theta, sizes, poff, thetaT)
    for s in prange(S):
        for t in range(s, T, S):
            _copy(th[s], theta)
            last = -1
            for k in range(steps + 1):
                if k > 0:
                    _forward(th[s], Xs[t], sizes, poff, zoff, act, Z[s], H[s])
                    _loss_into(loss, Z[s], n, zoff, sizes, Ysf[t], Ysi[t], D[s], Pr[s])
                    _backward(th[s], Xs[t], sizes, poff, zoff, act, Z[s], H[s], D[s], grad[s],
                              thetaT if k == 1 else WT[s], k > 1)
                    for j in range(th.shape[1]):
                        th[s, j] = th[s, j] - precond[j] * grad[s, j]
                    if not _finite_vector(th[s]):
                        break
                _forward(th[s], Xq[t], sizes, poff, zoff, act, Zq[s], Hq[s])
                out[t, k] = _view(Zq[s], nq * zoff[L - 1], nq, C)
                last = k
                if not _finite_matrix(out[t, k]):
                    break
            for k in range(last + 1, steps + 1):
                out[t, k] = np.nan


# -------------------------------------------------------------- adaptation
@kernel(parallel=True)
def adapt_kernel(theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps, batch_size,
                 grad, Z, H, D, Pr, Xb, Ybf, Ybi, Zq, Hq, Dq, Pq, thetaT, WT, adapted, diverged_at, query_loss):
    """``steps`` steps ``theta - precond * grad L(rows)`` on every task's support set into
    ``adapted`` (T, P) (reptile.iterates with SGD): step ``j`` uses rows
    ``j*b .. j*b+b-1`` (mod ``n``) for ``b = batch_size``. ``diverged_at[t]`` is the
    first step whose iterate is not finite (adaptation stops there), else -1.
    ``query_loss[t]`` is the loss of the adapted parameters on the query set, if
    ``Xq`` holds the tasks (else it is left alone). Slot ``s`` owns row ``s`` of the
    workspaces; ``Ybf`` (S, b, d_out) for ``"mse"`` and ``Ybi`` (S, b) for ``"xent"``
    receive the rows of a minibatch (the other is empty). ``thetaT`` receives
    ``theta``'s transposed weights for every task's first step, ``WT[s]`` those of
    the later iterates (meta_passes._backward)."""
    T, S = Xs.shape[0], grad.shape[0]
    n, P = Xs.shape[1], theta.shape[0]
    b = batch_size
    _weights_t(theta, sizes, poff, thetaT)
    for s in prange(S):
        Xbs = _view(Xb[s], 0, b, Xs.shape[2])
        for t in range(s, T, S):
            _copy(adapted[t], theta)
            diverged_at[t] = -1
            for k in range(steps):
                if b == n:  # the whole support set, in order
                    Xk, Yfk, Yik = Xs[t], Ysf[t], Ysi[t]
                else:
                    for i in range(b):
                        row = (k * b + i) % n
                        Xbs[i, :] = Xs[t, row]
                        if loss == MSE:
                            Ybf[s, i, :] = Ysf[t, row]
                        else:
                            Ybi[s, i] = Ysi[t, row]
                    Xk, Yfk, Yik = Xbs, Ybf[s], Ybi[s]
                _forward(adapted[t], Xk, sizes, poff, zoff, act, Z[s], H[s])
                _loss_into(loss, Z[s], b, zoff, sizes, Yfk, Yik, D[s], Pr[s])
                _backward(adapted[t], Xk, sizes, poff, zoff, act, Z[s], H[s], D[s], grad[s],
                          thetaT if k == 0 else WT[s], k > 0)
                for j in range(P):
                    adapted[t, j] = adapted[t, j] - precond[j] * grad[s, j]
                if not _finite_vector(adapted[t]):
                    diverged_at[t] = k + 1
                    break
            if Xq.shape[0] > 0 and diverged_at[t] < 0:
                _forward(adapted[t], Xq[t], sizes, poff, zoff, act, Zq[s], Hq[s])
                query_loss[t] = _loss_into(loss, Zq[s], Xq.shape[1], zoff, sizes, Yqf[t], Yqi[t], Dq[s], Pq[s])


@kernel
def steps_sum_kernel(theta, adapted, out):
    """``out = sum over t of (theta - adapted[t])``: from zero, the tasks added in order, as
    reptile.meta_step's loop adds them (the same bits), without its (T, P) temporary."""
    out[:] = 0.0
    for t in range(adapted.shape[0]):
        for j in range(theta.shape[0]):
            out[j] += theta[j] - adapted[t, j]
