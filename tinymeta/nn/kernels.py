"""Numba kernels of the MLP engine: the fast path of ``reference.py``.

Each kernel is private, writes into preallocated outputs and implements
the reference function named in its docstring, loop by loop; the tests pin
every kernel to its reference (``tests/test_backends.py``). They also run as
plain Python under ``NUMBA_DISABLE_JIT=1``.

Workspaces are flat 1-D arrays; a layer's block is a contiguous
``(n, width)`` view made by ``_view``:

* ``H``  (n * sum(sizes[:-1]),) layer inputs, block ``l`` holds ``H[l]`` (``H[0] = X``);
* ``Z``  (n * sum(sizes[1:]),)  pre-activations, block ``l`` holds ``Z[l]``;
* ``Hd``, ``Zd`` the same layouts for the tangents ``R{H}``, ``R{Z}``;
* ``D``, ``Dd`` (2 * n * max(sizes),) two ping-pong halves for ``delta`` and ``R{delta}``.
"""
from __future__ import annotations

import math

import numpy as np
from .activations import RELU, SIGMOID, SOFTPLUS, TANH
from .jit import kernel
from .jit import view as _view  # buf[offset:offset + rows*cols].reshape((rows, cols))


# ------------------------------------------------------------ activations
@kernel
def act_f(code, z):
    """Scalar activation value (activations.py: relu, tanh, sigmoid, softplus)."""
    if code == RELU:
        return z if z > 0.0 else 0.0
    if code == TANH:
        return math.tanh(z)
    if code == SIGMOID:
        return 0.5 * (1.0 + math.tanh(0.5 * z))
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))  # SOFTPLUS


@kernel
def act_d1(code, z):
    """Scalar first derivative (activations.py: *_d1)."""
    if code == RELU:
        return 1.0 if z > 0.0 else 0.0
    if code == TANH:
        t = math.tanh(z)
        return 1.0 - t * t
    s = 0.5 * (1.0 + math.tanh(0.5 * z))
    if code == SIGMOID:
        return s * (1.0 - s)
    return s  # SOFTPLUS


@kernel
def act_d2(code, z):
    """Scalar second derivative (activations.py: *_d2)."""
    if code == RELU:
        return 0.0
    if code == TANH:
        t = math.tanh(z)
        return -2.0 * t * (1.0 - t * t)
    s = 0.5 * (1.0 + math.tanh(0.5 * z))
    if code == SIGMOID:
        return s * (1.0 - s) * (1.0 - 2.0 * s)
    return s * (1.0 - s)  # SOFTPLUS


# ------------------------------------------------------- matrix products
@kernel
def _matmul_rows(A, B, C, start):
    """``C[i] += A[i] @ B`` for the rows ``i >= start``, summing over ``r`` in order;
    A (m, k), B (k, p), C (m, p). Also the tail of meta_passes._mm."""
    for i in range(start, A.shape[0]):
        for r in range(A.shape[1]):
            a = A[i, r]
            for j in range(B.shape[1]):
                C[i, j] += a * B[r, j]


@kernel
def matmul(A, B, C, accumulate):
    """``C = A @ B`` (``C += A @ B`` if accumulate); A (m, k), B (k, p), C (m, p)."""
    if not accumulate:
        C[:, :] = 0.0
    _matmul_rows(A, B, C, 0)


@kernel
def matmul_tn(A, B, C, accumulate):
    """``C = A.T @ B`` (or ``+=``); A (k, m), B (k, p), C (m, p)."""
    k, m = A.shape
    p = B.shape[1]
    if not accumulate:
        C[:, :] = 0.0
    for r in range(k):
        for i in range(m):
            a = A[r, i]
            for j in range(p):
                C[i, j] += a * B[r, j]


@kernel
def matmul_nt(A, B, C, accumulate):
    """``C = A @ B.T`` (or ``+=``); A (m, k), B (p, k), C (m, p)."""
    m, k = A.shape
    p = B.shape[0]
    for i in range(m):
        for j in range(p):
            s = C[i, j] if accumulate else 0.0
            for r in range(k):
                s += A[i, r] * B[j, r]
            C[i, j] = s


@kernel
def _add_colsum(delta, out):
    """``out = sum over rows of delta``; delta (n, d), out (d,)."""
    out[:] = 0.0
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            out[j] += delta[i, j]


# ------------------------------------------------------- per-layer steps
# Shared by the passes here, in bn_kernels.py and in meta_passes.py: each is
# one loop of reference.py, with the reference's order of operations.
@kernel
def _add_bias(Zl, b):
    """``Zl += b`` on every row; Zl (n, d), b (d,)."""
    for i in range(Zl.shape[0]):
        for j in range(Zl.shape[1]):
            Zl[i, j] += b[j]


@kernel
def _activate(Hn, Zl, act):
    """``Hn = act(Zl)``; Hn, Zl (n, d)."""
    for i in range(Zl.shape[0]):
        for j in range(Zl.shape[1]):
            Hn[i, j] = act_f(act, Zl[i, j])


@kernel
def _tangent_through_activation(Hdn, Zl, Zdl, act):
    """``Hdn = act'(Zl) * Zdl``, the tangent ``R{act(Z)}``; Hdn, Zl, Zdl (n, d)."""
    for i in range(Zl.shape[0]):
        for j in range(Zl.shape[1]):
            Hdn[i, j] = act_d1(act, Zl[i, j]) * Zdl[i, j]


@kernel
def _back_through_d1(back, Zp, act):
    """``back *= act'(Zp)``: ``dL/dH`` of a layer's input into ``dL/dZ`` of the layer below; (n, d)."""
    for i in range(Zp.shape[0]):
        for j in range(Zp.shape[1]):
            back[i, j] *= act_d1(act, Zp[i, j])


@kernel
def _back_through_activation(back, back_dot, Zp, Zdp, act):
    """``back_dot = back_dot * act'(Zp) + back * act''(Zp) * Zdp``, then ``back *= act'(Zp)``.

    ``back``, ``back_dot`` hold ``dL/dH`` and its tangent on entry and
    ``dL/dZ``, ``R{dL/dZ}`` of the layer below on return; all (n, d).
    """
    for i in range(Zp.shape[0]):
        for j in range(Zp.shape[1]):
            a1 = act_d1(act, Zp[i, j])
            back_dot[i, j] = back_dot[i, j] * a1 + back[i, j] * act_d2(act, Zp[i, j]) * Zdp[i, j]
            back[i, j] *= a1


@kernel
def _back_r_matmuls(back, back_dot, delta, delta_dot, W, V):
    """``back = delta @ W.T`` and ``back_dot = delta_dot @ W.T + delta @ V.T`` (in that order)."""
    matmul_nt(delta, W, back, False)
    matmul_nt(delta_dot, W, back_dot, False)
    matmul_nt(delta, V, back_dot, True)


@kernel
def _delta_below(D, d_off, Z, z_off, delta, W, act):
    """``dL/dZ`` of the layer below, ``(delta @ W.T) * act'(Z[l-1])``, into ``D`` from ``d_off`` on.

    delta (n, d_out) is layer ``l``'s ``dL/dZ``, W (d_in, d_out) its weights;
    ``Z[l-1]`` starts at ``z_off`` in ``Z``.
    """
    n, d_in = delta.shape[0], W.shape[0]
    back = _view(D, d_off, n, d_in)
    matmul_nt(delta, W, back, False)
    _back_through_d1(back, _view(Z, z_off, n, d_in), act)


@kernel
def _r_delta_below(D, Dd, d_off, Z, Zd, z_off, delta, delta_dot, W, V, act):
    """``_delta_below`` and its tangent along ``v`` (weights' tangent V), into ``D``, ``Dd`` from ``d_off`` on.

    ``Z[l-1]``, ``Z_dot[l-1]`` start at ``z_off`` in ``Z``, ``Zd``.
    """
    n, d_in = delta.shape[0], W.shape[0]
    back = _view(D, d_off, n, d_in)
    back_dot = _view(Dd, d_off, n, d_in)
    _back_r_matmuls(back, back_dot, delta, delta_dot, W, V)
    _back_through_activation(back, back_dot, _view(Z, z_off, n, d_in), _view(Zd, z_off, n, d_in), act)


# ---------------------------------------------------------------- passes
@kernel
def _n_rows(H, sizes):
    """Number of samples held by an ``H`` workspace."""
    return H.shape[0] // sizes[:-1].sum()


@kernel
def _layer_offsets(sizes, n, l):
    """Where layer ``l``'s blocks start: ``(p, h, z, s)`` in ``theta``, ``H``, ``Z`` (``n`` rows) and ``S``."""
    p = h = z = s = 0
    for k in range(l):
        p += sizes[k] * sizes[k + 1] + sizes[k + 1]
        h += n * sizes[k]
        z += n * sizes[k + 1]
        s += sizes[k + 1]
    return p, h, z, s


@kernel
def forward_kernel(theta, X, sizes, act, H, Z):
    """Forward pass into the workspaces ``H``, ``Z`` (reference.forward_pass)."""
    n = X.shape[0]
    _view(H, 0, n, sizes[0])[:, :] = X
    p = h = z = 0
    last = sizes.shape[0] - 2
    for l in range(last + 1):
        d_in, d_out = sizes[l], sizes[l + 1]
        W = _view(theta, p, d_in, d_out)
        b = theta[p + d_in * d_out:p + d_in * d_out + d_out]
        Zl = _view(Z, z, n, d_out)
        matmul(_view(H, h, n, d_in), W, Zl, False)
        _add_bias(Zl, b)
        if l < last:
            _activate(_view(H, h + n * d_in, n, d_out), Zl, act)
        p += d_in * d_out + d_out
        h += n * d_in
        z += n * d_out


@kernel
def backward_kernel(theta, sizes, act, H, Z, dout, grad, D, dX):
    """Backpropagate ``dout`` into ``grad`` (reference.backward_pass).

    ``dX`` is (n, d_in) to receive ``dL/dX``, or shape (0, 0) to skip it.
    """
    n = dout.shape[0]
    half = D.shape[0] // 2
    cur = 0
    _view(D, 0, n, sizes[-1])[:, :] = dout
    for l in range(sizes.shape[0] - 2, -1, -1):
        d_in, d_out = sizes[l], sizes[l + 1]
        p, h, z, _ = _layer_offsets(sizes, n, l)
        W = _view(theta, p, d_in, d_out)
        delta = _view(D, cur * half, n, d_out)
        matmul_tn(_view(H, h, n, d_in), delta, _view(grad, p, d_in, d_out), False)
        _add_colsum(delta, grad[p + d_in * d_out:p + d_in * d_out + d_out])
        if l > 0:
            _delta_below(D, (1 - cur) * half, Z, z - n * d_in, delta, W, act)
        elif dX.shape[0] > 0:
            matmul_nt(delta, W, dX, False)
        cur = 1 - cur


@kernel
def r_forward_kernel(theta, v, sizes, act, H, Z, Hd, Zd, x_dot):
    """Tangent pass in direction ``v`` into ``Hd``, ``Zd`` (reference.r_forward_pass).

    ``x_dot``: whether block 0 of ``Hd`` holds an input tangent (else it is
    taken as zero and never read).
    """
    n = _n_rows(H, sizes)
    p = h = z = 0
    last = sizes.shape[0] - 2
    for l in range(last + 1):
        d_in, d_out = sizes[l], sizes[l + 1]
        W = _view(theta, p, d_in, d_out)
        V = _view(v, p, d_in, d_out)
        c = v[p + d_in * d_out:p + d_in * d_out + d_out]
        Zdl = _view(Zd, z, n, d_out)
        matmul(_view(H, h, n, d_in), V, Zdl, False)
        if l > 0 or x_dot:  # H_dot[0] = X_dot, or 0
            matmul(_view(Hd, h, n, d_in), W, Zdl, True)
        _add_bias(Zdl, c)
        if l < last:
            _tangent_through_activation(_view(Hd, h + n * d_in, n, d_out), _view(Z, z, n, d_out), Zdl, act)
        p += d_in * d_out + d_out
        h += n * d_in
        z += n * d_out


@kernel
def r_backward_kernel(theta, v, sizes, act, H, Z, Hd, Zd, dout, dout_dot, grad, hv, D, Dd, x_dot, dX, dX_dot):
    """R-backward pass into ``grad`` and ``hv = H v`` (reference.r_backward_pass).

    ``x_dot`` as in ``r_forward_kernel``. ``dX``, ``dX_dot`` (n, d_in) receive
    the input cotangent and its tangent, or have shape (0, 0) to skip them.
    """
    n = dout.shape[0]
    half = D.shape[0] // 2
    cur = 0
    _view(D, 0, n, sizes[-1])[:, :] = dout
    _view(Dd, 0, n, sizes[-1])[:, :] = dout_dot
    for l in range(sizes.shape[0] - 2, -1, -1):
        d_in, d_out = sizes[l], sizes[l + 1]
        p, h, z, _ = _layer_offsets(sizes, n, l)
        W = _view(theta, p, d_in, d_out)
        V = _view(v, p, d_in, d_out)
        delta = _view(D, cur * half, n, d_out)
        delta_dot = _view(Dd, cur * half, n, d_out)
        Hl = _view(H, h, n, d_in)
        hW = _view(hv, p, d_in, d_out)
        matmul_tn(Hl, delta, _view(grad, p, d_in, d_out), False)
        _add_colsum(delta, grad[p + d_in * d_out:p + d_in * d_out + d_out])
        matmul_tn(Hl, delta_dot, hW, False)
        if l > 0 or x_dot:  # H_dot[0] = X_dot, or 0
            matmul_tn(_view(Hd, h, n, d_in), delta, hW, True)
        _add_colsum(delta_dot, hv[p + d_in * d_out:p + d_in * d_out + d_out])
        if l > 0:
            _r_delta_below(D, Dd, (1 - cur) * half, Z, Zd, z - n * d_in, delta, delta_dot, W, V, act)
            cur = 1 - cur
        elif dX.shape[0] > 0:
            _back_r_matmuls(dX, dX_dot, delta, delta_dot, W, V)


# ---------------------------------------------------------------- losses
@kernel
def mse_kernel(out, Y, dout):
    """Mean squared error; writes ``dout = 2 (out - Y) / n`` (losses.mse_value_and_grad)."""
    n, m = out.shape
    total = 0.0
    for i in range(n):
        for j in range(m):
            r = out[i, j] - Y[i, j]
            total += r * r
            dout[i, j] = 2.0 * r / n
    return total / n


@kernel
def mse_r_kernel(out_dot, dout_dot):
    """``dout_dot = 2 out_dot / n`` (losses.mse_hvp)."""
    n, m = out_dot.shape
    for i in range(n):
        for j in range(m):
            dout_dot[i, j] = 2.0 * out_dot[i, j] / n


@kernel
def xent_kernel(out, labels, dout, P):
    """Mean softmax cross-entropy; writes ``P = softmax(out)`` and
    ``dout = (P - onehot) / n`` (losses.xent_value_and_grad)."""
    n, C = out.shape
    total = 0.0
    for i in range(n):
        top = out[i, 0]
        for c in range(1, C):
            top = max(top, out[i, c])
        s = 0.0
        for c in range(C):
            s += math.exp(out[i, c] - top)
        log_z = math.log(s)
        total += log_z + top - out[i, labels[i]]
        for c in range(C):
            P[i, c] = math.exp(out[i, c] - top - log_z)
            dout[i, c] = P[i, c] / n
        dout[i, labels[i]] -= 1.0 / n
    return total / n


@kernel
def xent_r_kernel(P, out_dot, dout_dot):
    """``dout_dot_i = (p_i * out_dot_i - p_i (p_i . out_dot_i)) / n`` (losses.xent_hvp)."""
    n, C = P.shape
    for i in range(n):
        pv = 0.0
        for c in range(C):
            pv += P[i, c] * out_dot[i, c]
        for c in range(C):
            dout_dot[i, c] = P[i, c] * (out_dot[i, c] - pv) / n
