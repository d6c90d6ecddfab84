"""Numba kernels of the batch-normalised MLP (``MLP(batchnorm=True)``).

The four passes of ``kernels.py`` with every hidden layer normalised over
the rows (``reference.py``, section "Batch normalisation"; the operator
``J`` and its R-backward rule are in ``batchnorm.py``). They share the
workspace layout of ``kernels.py`` and add three buffers:

* ``Xh`` laid out like ``Z``: block ``l`` holds ``X_hat[l]`` (hidden layers only);
* ``S``  (sum(sizes[1:]),): ``sigma[l]`` at offset ``sizes[1] + ... + sizes[l]``;
* ``Ad`` laid out like ``Z``: ``A_dot[l] = R{H[l] @ W[l]}`` (hidden layers only).

In the backward passes a normalised layer turns ``delta`` (``dL/dZ``) into
``dL/dA`` in place, after its bias gradient is taken. Each kernel writes
into preallocated outputs, is pinned to the reference by
``tests/test_backends.py`` and runs as plain Python under
``NUMBA_DISABLE_JIT=1``.
"""
from __future__ import annotations

import math

from .jit import kernel
from .kernels import (_add_bias, _add_colsum, _back_r_matmuls, _delta_below, _layer_offsets, _n_rows, _r_delta_below,
                      _tangent_through_activation, _view, act_f, matmul, matmul_nt, matmul_tn)


# ------------------------------------------------- the normalisation itself
@kernel
def bn_normalize(A, eps, X_hat, sigma):
    """``X_hat = (A - mean) / sigma`` per column (batchnorm.normalize); ``X_hat`` may be ``A``."""
    n, d = A.shape
    for j in range(d):
        mu = 0.0
        for i in range(n):
            mu += A[i, j]
        mu /= n
        var = 0.0
        for i in range(n):
            c = A[i, j] - mu
            var += c * c
        s = math.sqrt(var / n + eps)
        sigma[j] = s
        for i in range(n):
            X_hat[i, j] = (A[i, j] - mu) / s


@kernel
def bn_apply(X_hat, sigma, G, out):
    """``out = J G`` (batchnorm.normalize_apply); ``out`` may be ``G``."""
    n, d = G.shape
    for j in range(d):
        m_g = 0.0
        m_xg = 0.0
        for i in range(n):
            m_g += G[i, j]
            m_xg += X_hat[i, j] * G[i, j]
        m_g /= n
        m_xg /= n
        for i in range(n):
            out[i, j] = (G[i, j] - m_g - X_hat[i, j] * m_xg) / sigma[j]


@kernel
def bn_r_backward(X_hat, sigma, A_dot, G, G_dot, dA, dA_dot):
    """``dA = J G`` and ``dA_dot = R{J G}`` along ``A_dot`` (batchnorm.normalize_r_backward).

    ``dA``, ``dA_dot`` may be ``G``, ``G_dot`` (all column means are taken first).
    """
    n, d = G.shape
    for j in range(d):
        s = sigma[j]
        m_a = s_dot = m_g = m_xg = m_gd = m_xgd = 0.0
        for i in range(n):
            x = X_hat[i, j]
            m_a += A_dot[i, j]
            s_dot += x * A_dot[i, j]
            m_g += G[i, j]
            m_xg += x * G[i, j]
            m_gd += G_dot[i, j]
            m_xgd += x * G_dot[i, j]
        m_a /= n
        s_dot /= n
        m_g /= n
        m_xg /= n
        m_gd /= n
        m_xgd /= n
        m_xdot_g = 0.0  # mean over rows of X_hat_dot * G
        for i in range(n):
            m_xdot_g += (A_dot[i, j] - m_a - X_hat[i, j] * s_dot) / s * G[i, j]
        m_xdot_g /= n
        for i in range(n):
            x = X_hat[i, j]
            g_a = (G[i, j] - m_g - x * m_xg) / s
            j_gd = (G_dot[i, j] - m_gd - x * m_xgd) / s
            x_dot = (A_dot[i, j] - m_a - x * s_dot) / s
            dA[i, j] = g_a
            dA_dot[i, j] = j_gd - s_dot / s * g_a - (x_dot * m_xg + x * m_xdot_g) / s


# ---------------------------------------------------------------- passes
@kernel
def forward_bn_kernel(theta, X, sizes, act, eps, H, Z, Xh, S):
    """Forward pass into ``H``, ``Z``, ``Xh``, ``S`` (reference.forward_pass, batchnorm=True)."""
    n = X.shape[0]
    _view(H, 0, n, sizes[0])[:, :] = X
    p = h = z = s = 0
    last = sizes.shape[0] - 2
    for l in range(last + 1):
        d_in, d_out = sizes[l], sizes[l + 1]
        W = _view(theta, p, d_in, d_out)
        b = theta[p + d_in * d_out:p + d_in * d_out + d_out]
        Al = _view(Xh, z, n, d_out) if l < last else _view(Z, z, n, d_out)  # H[l] @ W, before the bias
        matmul(_view(H, h, n, d_in), W, Al, False)
        Zl = _view(Z, z, n, d_out)
        if l < last:
            bn_normalize(Al, eps, Al, S[s:s + d_out])  # in place: Al becomes X_hat[l]
            Hn = _view(H, h + n * d_in, n, d_out)
            for i in range(n):
                for j in range(d_out):
                    Zl[i, j] = Al[i, j] + b[j]
                    Hn[i, j] = act_f(act, Zl[i, j])
        else:
            _add_bias(Zl, b)
        p += d_in * d_out + d_out
        h += n * d_in
        z += n * d_out
        s += d_out


@kernel
def backward_bn_kernel(theta, sizes, act, H, Z, Xh, S, dout, grad, D, dX):
    """Backpropagate ``dout`` into ``grad`` (reference.backward_pass, batchnorm=True).

    ``dX`` is (n, d_in) to receive ``dL/dX``, or shape (0, 0) to skip it.
    """
    n = dout.shape[0]
    half = D.shape[0] // 2
    last = sizes.shape[0] - 2
    cur = 0
    _view(D, 0, n, sizes[-1])[:, :] = dout
    for l in range(last, -1, -1):
        d_in, d_out = sizes[l], sizes[l + 1]
        p, h, z, s = _layer_offsets(sizes, n, l)
        W = _view(theta, p, d_in, d_out)
        delta = _view(D, cur * half, n, d_out)
        _add_colsum(delta, grad[p + d_in * d_out:p + d_in * d_out + d_out])
        if l < last:  # dL/dA = J dL/dZ
            bn_apply(_view(Xh, z, n, d_out), S[s:s + d_out], delta, delta)
        matmul_tn(_view(H, h, n, d_in), delta, _view(grad, p, d_in, d_out), False)
        if l > 0:
            _delta_below(D, (1 - cur) * half, Z, z - n * d_in, delta, W, act)
            cur = 1 - cur
        elif dX.shape[0] > 0:
            matmul_nt(delta, W, dX, False)


@kernel
def r_forward_bn_kernel(theta, v, sizes, act, H, Z, Xh, S, Hd, Zd, Ad, x_dot):
    """Tangent pass in direction ``v`` into ``Hd``, ``Zd``, ``Ad`` (reference.r_forward_pass, batchnorm=True).

    ``x_dot``: whether block 0 of ``Hd`` holds an input tangent (else it is
    taken as zero and never read).
    """
    n = _n_rows(H, sizes)
    p = h = z = s = 0
    last = sizes.shape[0] - 2
    for l in range(last + 1):
        d_in, d_out = sizes[l], sizes[l + 1]
        Tl = _view(Ad, z, n, d_out) if l < last else _view(Zd, z, n, d_out)  # the tangent before the bias
        W = _view(theta, p, d_in, d_out)
        V = _view(v, p, d_in, d_out)
        matmul(_view(H, h, n, d_in), V, Tl, False)
        if l > 0 or x_dot:  # H_dot[0] = X_dot, or 0
            matmul(_view(Hd, h, n, d_in), W, Tl, True)
        Zdl = _view(Zd, z, n, d_out)
        if l < last:
            bn_apply(_view(Xh, z, n, d_out), S[s:s + d_out], Tl, Zdl)
        _add_bias(Zdl, v[p + d_in * d_out:p + d_in * d_out + d_out])
        if l < last:
            _tangent_through_activation(_view(Hd, h + n * d_in, n, d_out), _view(Z, z, n, d_out), Zdl, act)
        p += d_in * d_out + d_out
        h += n * d_in
        z += n * d_out
        s += d_out


@kernel
def r_backward_bn_kernel(theta, v, sizes, act, H, Z, Xh, S, Hd, Zd, Ad, dout, dout_dot, grad, hv, D, Dd,
                         x_dot, dX, dX_dot):
    """R-backward pass into ``grad`` and ``hv = H v`` (reference.r_backward_pass, batchnorm=True).

    ``x_dot`` as in ``r_forward_bn_kernel``. ``dX``, ``dX_dot`` (n, d_in)
    receive the input cotangent and its tangent, or have shape (0, 0) to skip them.
    """
    n = dout.shape[0]
    half = D.shape[0] // 2
    last = sizes.shape[0] - 2
    cur = 0
    _view(D, 0, n, sizes[-1])[:, :] = dout
    _view(Dd, 0, n, sizes[-1])[:, :] = dout_dot
    for l in range(last, -1, -1):
        d_in, d_out = sizes[l], sizes[l + 1]
        p, h, z, s = _layer_offsets(sizes, n, l)
        delta = _view(D, cur * half, n, d_out)
        delta_dot = _view(Dd, cur * half, n, d_out)
        _add_colsum(delta, grad[p + d_in * d_out:p + d_in * d_out + d_out])
        _add_colsum(delta_dot, hv[p + d_in * d_out:p + d_in * d_out + d_out])
        if l < last:  # dL/dA and its tangent, in place
            bn_r_backward(_view(Xh, z, n, d_out), S[s:s + d_out], _view(Ad, z, n, d_out),
                          delta, delta_dot, delta, delta_dot)
        Hl = _view(H, h, n, d_in)
        hW = _view(hv, p, d_in, d_out)
        matmul_tn(Hl, delta, _view(grad, p, d_in, d_out), False)
        matmul_tn(Hl, delta_dot, hW, False)
        if l > 0 or x_dot:  # H_dot[0] = X_dot, or 0
            matmul_tn(_view(Hd, h, n, d_in), delta, hW, True)
        W = _view(theta, p, d_in, d_out)
        V = _view(v, p, d_in, d_out)
        if l > 0:
            _r_delta_below(D, Dd, (1 - cur) * half, Z, Zd, z - n * d_in, delta, delta_dot, W, V, act)
            cur = 1 - cur
        elif dX.shape[0] > 0:
            _back_r_matmuls(dX, dX_dot, delta, delta_dot, W, V)
