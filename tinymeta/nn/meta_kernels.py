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

Workspace layout per slot and stored step (``n`` rows, ``zoff`` the
running sum of ``sizes[1:]``): layer ``l``'s block of ``Z``, ``H``, ``D``
(``delta``), ``Zd``, ``Hd``, ``Dd`` (their tangents) is the contiguous
``(n, sizes[l+1])`` array at ``n * zoff[l]`` (``H``'s last block is
unused: the output layer is linear). The input of layer 0 is ``X`` itself,
never copied. Nothing inside a kernel allocates.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import RELU
from .kernels import _view, act_d1, act_d2, act_f, mse_kernel, mse_r_kernel, xent_kernel, xent_r_kernel
from .losses import MSE


# ------------------------------------------------------- matrix products
@njit(cache=True)
def _mm(A, B, C, accumulate):
    """``C = A @ B`` (``+=`` if accumulate); A (m, k), B (k, p), C (m, p).

    One output column (``p == 1``, the sinusoid net's last layer) is a dot
    product per row. Otherwise rows of ``B`` are streamed into four rows of
    ``C`` at once (one load of ``B[r]`` serves four rows; a contiguous inner
    loop, one input column included). Every ``C[i, j]`` sums over ``r`` in
    order, as kernels.matmul does.
    """
    m, k = A.shape
    p = B.shape[1]
    if p == 1:
        for i in range(m):
            s = C[i, 0] if accumulate else 0.0
            for r in range(k):
                s += A[i, r] * B[r, 0]
            C[i, 0] = s
        return
    if not accumulate:
        C[:, :] = 0.0
    i = 0
    while i + 3 < m:
        for r in range(k):
            a0, a1, a2, a3 = A[i, r], A[i + 1, r], A[i + 2, r], A[i + 3, r]
            for j in range(p):
                b = B[r, j]
                C[i, j] += a0 * b
                C[i + 1, j] += a1 * b
                C[i + 2, j] += a2 * b
                C[i + 3, j] += a3 * b
        i += 4
    for i in range(i, m):
        for r in range(k):
            a = A[i, r]
            for j in range(p):
                C[i, j] += a * B[r, j]


@njit(cache=True)
def _mm_tn(A, B, C, accumulate):
    """``C = A.T @ B`` (or ``+=``); A (k, m), B (k, p), C (m, p); four rows of ``C`` at once."""
    k, m = A.shape
    p = B.shape[1]
    if not accumulate:
        C[:, :] = 0.0
    if p == 1:
        for r in range(k):
            b = B[r, 0]
            for i in range(m):
                C[i, 0] += A[r, i] * b
        return
    for r in range(k):
        i = 0
        while i + 3 < m:
            a0, a1, a2, a3 = A[r, i], A[r, i + 1], A[r, i + 2], A[r, i + 3]
            for j in range(p):
                b = B[r, j]
                C[i, j] += a0 * b
                C[i + 1, j] += a1 * b
                C[i + 2, j] += a2 * b
                C[i + 3, j] += a3 * b
            i += 4
        for i in range(i, m):
            a = A[r, i]
            for j in range(p):
                C[i, j] += a * B[r, j]


@njit(cache=True)
def _mm_nt(A, B, C, accumulate, scratch):
    """``C = A @ B.T`` (or ``+=``); A (m, k), B (p, k), C (m, p).

    ``B.T`` is first copied into ``scratch`` (at least ``p * k`` long) so that
    the product streams contiguous rows; one inner column (``k == 1``) is an
    outer product.
    """
    m, k = A.shape
    p = B.shape[0]
    if k == 1:
        for i in range(m):
            a = A[i, 0]
            for j in range(p):
                C[i, j] = (C[i, j] if accumulate else 0.0) + a * B[j, 0]
        return
    BT = _view(scratch, 0, k, p)
    for j in range(p):
        for r in range(k):
            BT[r, j] = B[j, r]
    _mm(A, BT, C, accumulate)


@njit(cache=True)
def _colsum(delta, out):
    """``out = sum over rows of delta``; delta (n, d), out (d,)."""
    out[:] = 0.0
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            out[j] += delta[i, j]


# ---------------------------------------------------------------- passes
@njit(cache=True)
def _input(X, H, n, zoff, sizes, l):
    """Input of layer ``l``: ``X`` for ``l == 0``, else ``H``'s block ``l - 1``."""
    if l == 0:
        return X
    return _view(H, n * zoff[l - 1], n, sizes[l])


@njit(cache=True)
def _forward(theta, X, sizes, poff, zoff, act, Z, H):
    """Forward pass into ``Z``, ``H`` (reference.forward_pass)."""
    n = X.shape[0]
    L = sizes.shape[0] - 1
    for l in range(L):
        d_in, d_out = sizes[l], sizes[l + 1]
        W = _view(theta, poff[l], d_in, d_out)
        b = theta[poff[l] + d_in * d_out:poff[l + 1]]
        Zl = _view(Z, n * zoff[l], n, d_out)
        _mm(_input(X, H, n, zoff, sizes, l), W, Zl, False)
        for i in range(n):
            for j in range(d_out):
                Zl[i, j] += b[j]
        if l < L - 1:
            Hl = _view(H, n * zoff[l], n, d_out)
            for i in range(n):
                for j in range(d_out):
                    Hl[i, j] = act_f(act, Zl[i, j])


@njit(cache=True)
def _loss_into(loss, Z, n, zoff, sizes, Yf, Yi, D, Pr):
    """Loss of the output block of ``Z``; writes ``dL/dout`` into ``D``'s output block
    (and the softmax into ``Pr`` for cross-entropy). kernels.mse_kernel / xent_kernel."""
    L = sizes.shape[0] - 1
    C = sizes[L]
    out = _view(Z, n * zoff[L - 1], n, C)
    dout = _view(D, n * zoff[L - 1], n, C)
    if loss == MSE:
        return mse_kernel(out, Yf, dout)
    return xent_kernel(out, Yi, dout, _view(Pr, 0, n, C))


@njit(cache=True)
def _backward(theta, X, sizes, poff, zoff, act, Z, H, D, grad, scratch):
    """Backpropagate ``D``'s output block into every block of ``D`` and into ``grad``
    (reference.backward_pass); ``D`` keeps every layer's ``delta``."""
    n = X.shape[0]
    for l in range(sizes.shape[0] - 2, -1, -1):
        d_in, d_out = sizes[l], sizes[l + 1]
        delta = _view(D, n * zoff[l], n, d_out)
        _mm_tn(_input(X, H, n, zoff, sizes, l), delta, _view(grad, poff[l], d_in, d_out), False)
        _colsum(delta, grad[poff[l] + d_in * d_out:poff[l + 1]])
        if l > 0:
            back = _view(D, n * zoff[l - 1], n, d_in)
            _mm_nt(delta, _view(theta, poff[l], d_in, d_out), back, False, scratch)
            Zp = _view(Z, n * zoff[l - 1], n, d_in)
            for i in range(n):
                for j in range(d_in):
                    back[i, j] *= act_d1(act, Zp[i, j])


@njit(cache=True)
def _hvp(theta, v, X, sizes, poff, zoff, act, loss, Z, H, D, Pr, Zd, Hd, Dd, hv, tmp, scratch):
    """``hv = H(theta) v`` of the loss on ``X`` from a stored forward/backward pass
    (``Z``, ``H``, ``D``, ``Pr``): one R-forward and one R-backward pass
    (reference.r_forward_pass, reference.r_backward_pass; DESIGN.md section 2).
    ``tmp`` holds ``n * max(sizes)`` entries."""
    n = X.shape[0]
    L = sizes.shape[0] - 1
    for l in range(L):  # R-forward
        d_in, d_out = sizes[l], sizes[l + 1]
        Zdl = _view(Zd, n * zoff[l], n, d_out)
        _mm(_input(X, H, n, zoff, sizes, l), _view(v, poff[l], d_in, d_out), Zdl, False)
        if l > 0:
            _mm(_view(Hd, n * zoff[l - 1], n, d_in), _view(theta, poff[l], d_in, d_out), Zdl, True)
        c = v[poff[l] + d_in * d_out:poff[l + 1]]
        for i in range(n):
            for j in range(d_out):
                Zdl[i, j] += c[j]
        if l < L - 1:
            Zl = _view(Z, n * zoff[l], n, d_out)
            Hdl = _view(Hd, n * zoff[l], n, d_out)
            for i in range(n):
                for j in range(d_out):
                    Hdl[i, j] = act_d1(act, Zl[i, j]) * Zdl[i, j]
    C = sizes[L]
    out_dot = _view(Zd, n * zoff[L - 1], n, C)
    if loss == MSE:
        mse_r_kernel(out_dot, _view(Dd, n * zoff[L - 1], n, C))
    else:
        xent_r_kernel(_view(Pr, 0, n, C), out_dot, _view(Dd, n * zoff[L - 1], n, C))
    for l in range(L - 1, -1, -1):  # R-backward
        d_in, d_out = sizes[l], sizes[l + 1]
        delta = _view(D, n * zoff[l], n, d_out)
        delta_dot = _view(Dd, n * zoff[l], n, d_out)
        hW = _view(hv, poff[l], d_in, d_out)
        _mm_tn(_input(X, H, n, zoff, sizes, l), delta_dot, hW, False)
        if l > 0:
            _mm_tn(_view(Hd, n * zoff[l - 1], n, d_in), delta, hW, True)
        _colsum(delta_dot, hv[poff[l] + d_in * d_out:poff[l + 1]])
        if l > 0:
            W = _view(theta, poff[l], d_in, d_out)
            back_dot = _view(Dd, n * zoff[l - 1], n, d_in)
            _mm_nt(delta_dot, W, back_dot, False, scratch)
            _mm_nt(delta, _view(v, poff[l], d_in, d_out), back_dot, True, scratch)
            Zp = _view(Z, n * zoff[l - 1], n, d_in)
            if act == RELU:  # act'' = 0
                for i in range(n):
                    for j in range(d_in):
                        back_dot[i, j] *= act_d1(act, Zp[i, j])
            else:
                back = _view(tmp, 0, n, d_in)
                _mm_nt(delta, W, back, False, scratch)
                Zdp = _view(Zd, n * zoff[l - 1], n, d_in)
                for i in range(n):
                    for j in range(d_in):
                        back_dot[i, j] = (back_dot[i, j] * act_d1(act, Zp[i, j])
                                          + back[i, j] * act_d2(act, Zp[i, j]) * Zdp[i, j])


# ------------------------------------------------------------ meta-batch
@njit(cache=True)
def _task(theta, precond, X, Yf, Yi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps, first_order,
          thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv, tmp, scratch,
          d_theta, d_precond):
    """One task (inner_loop.task_meta_loss_and_grad); adds its gradients into
    ``d_theta``, ``d_precond`` and returns its query loss."""
    n, nq, P = X.shape[0], Xq.shape[0], theta.shape[0]
    thetas[0, :] = theta
    for k in range(steps):
        _forward(thetas[k], X, sizes, poff, zoff, act, Zs[k], Hs[k])
        _loss_into(loss, Zs[k], n, zoff, sizes, Yf, Yi, Ds[k], Ps[k])
        _backward(thetas[k], X, sizes, poff, zoff, act, Zs[k], Hs[k], Ds[k], grads[k], scratch)
        for j in range(P):
            thetas[k + 1, j] = thetas[k, j] - precond[j] * grads[k, j]
    _forward(thetas[steps], Xq, sizes, poff, zoff, act, Zq, Hq)
    value = _loss_into(loss, Zq, nq, zoff, sizes, Yqf, Yqi, Dq, Pq)
    _backward(thetas[steps], Xq, sizes, poff, zoff, act, Zq, Hq, Dq, u, scratch)
    for k in range(steps - 1, -1, -1):
        for j in range(P):
            d_precond[j] -= grads[k, j] * u[j]
        if not first_order:
            for j in range(P):
                w[j] = precond[j] * u[j]
            _hvp(thetas[k], w, X, sizes, poff, zoff, act, loss, Zs[k], Hs[k], Ds[k], Ps[k],
                 Zd, Hd, Dd, hv, tmp, scratch)
            for j in range(P):
                u[j] -= hv[j]
    for j in range(P):
        d_theta[j] += u[j]
    return value


@njit(cache=True, parallel=True)
def meta_batch_kernel(theta, precond, Xs, Ysf, Ysi, Xq, Yqf, Yqi, sizes, poff, zoff, act, loss, steps,
                      first_order, thetas, grads, Zs, Hs, Ds, Ps, Zq, Hq, Dq, Pq, Zd, Hd, Dd, u, w, hv,
                      tmp, scratch, loss_acc, d_theta_acc, d_precond_acc):
    """Sums over the tasks of each slot of the query loss and its gradients wrt
    ``theta`` and ``precond`` (inner_loop.reference_meta_loss_and_grad, before
    the mean). Slot ``s`` owns row ``s`` of every workspace and accumulator."""
    T, S = Xs.shape[0], thetas.shape[0]
    for s in prange(S):
        loss_acc[s] = 0.0
        d_theta_acc[s, :] = 0.0
        d_precond_acc[s, :] = 0.0
        for t in range(s, T, S):
            loss_acc[s] += _task(theta, precond, Xs[t], Ysf[t], Ysi[t], Xq[t], Yqf[t], Yqi[t], sizes, poff,
                                 zoff, act, loss, steps, first_order, thetas[s], grads[s], Zs[s], Hs[s],
                                 Ds[s], Ps[s], Zq[s], Hq[s], Dq[s], Pq[s], Zd[s], Hd[s], Dd[s], u[s], w[s],
                                 hv[s], tmp[s], scratch[s], d_theta_acc[s], d_precond_acc[s])


# ----------------------------------------------------------- predictions
@njit(cache=True)
def _finite_vector(a):
    """Whether every entry of the 1-D ``a`` is finite."""
    for j in range(a.shape[0]):
        if not np.isfinite(a[j]):
            return False
    return True


@njit(cache=True)
def _finite_matrix(a):
    """Whether every entry of the 2-D ``a`` is finite."""
    for i in range(a.shape[0]):
        if not _finite_vector(a[i]):
            return False
    return True


@njit(cache=True, parallel=True)
def predictions_kernel(theta, precond, Xs, Ysf, Ysi, Xq, sizes, poff, zoff, act, loss, th, grad,
                       Z, H, D, Pr, Zq, Hq, scratch, out):
    """Query outputs of every task after ``0..steps`` steps into ``out``
    (T, steps + 1, Q, d_out), NaN from the step a task diverges
    (inner_loop.reference_predictions). Slot ``s`` owns row ``s`` of the workspaces."""
    T, S = Xs.shape[0], th.shape[0]
    steps = out.shape[1] - 1
    L = sizes.shape[0] - 1
    n, nq, C = Xs.shape[1], Xq.shape[1], sizes[L]
    for s in prange(S):
        for t in range(s, T, S):
            th[s, :] = theta
            last = -1
            for k in range(steps + 1):
                if k > 0:
                    _forward(th[s], Xs[t], sizes, poff, zoff, act, Z[s], H[s])
                    _loss_into(loss, Z[s], n, zoff, sizes, Ysf[t], Ysi[t], D[s], Pr[s])
                    _backward(th[s], Xs[t], sizes, poff, zoff, act, Z[s], H[s], D[s], grad[s], scratch[s])
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
