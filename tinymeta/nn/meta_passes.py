r"""The passes of the compiled meta-batch (``meta_kernels.py``) over stored workspaces.

Forward, backward and Hessian-vector product of the MLP, as in
``kernels.py`` (the Numba backend of one call), with two differences that
the meta-batch needs: the input of layer 0 is ``X`` itself (never copied),
and ``delta`` is kept for every layer, so that a Hessian-vector product at a
stored point costs one R-forward and one R-backward pass only. Every
function follows the reference function named in its docstring, with the
same summation order, and the tests pin the meta-batch built on them to the
reference (``tests/test_meta_kernels.py``).

Layout (``n`` rows, ``zoff`` the running sum of ``sizes[1:]``): layer
``l``'s block of ``Z``, ``H``, ``D`` (``delta``), ``Zd``, ``Hd``, ``Dd``
(their tangents) is the contiguous ``(n, sizes[l+1])`` array at
``n * zoff[l]`` (``H``'s last block is unused: the output layer is linear).
Nothing here allocates.
"""
from __future__ import annotations

from numba import njit

from .activations import RELU
from .kernels import (_activate, _add_bias, _add_colsum, _back_through_activation, _back_through_d1, _matmul_rows,
                      _tangent_through_activation, _view, mse_kernel, mse_r_kernel, xent_kernel,
                      xent_r_kernel)
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
    _matmul_rows(A, B, C, i)


@njit(cache=True)
def _mm_tn(A, B, C, accumulate):
    """``C = A.T @ B`` (or ``+=``); A (k, m), B (k, p), C (m, p): ``_mm`` on the transposed view of ``A``."""
    _mm(A.T, B, C, accumulate)


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
        _add_bias(Zl, b)
        if l < L - 1:
            _activate(_view(H, n * zoff[l], n, d_out), Zl, act)


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
        _add_colsum(delta, grad[poff[l] + d_in * d_out:poff[l + 1]])
        if l > 0:
            back = _view(D, n * zoff[l - 1], n, d_in)
            _mm_nt(delta, _view(theta, poff[l], d_in, d_out), back, False, scratch)
            _back_through_d1(back, _view(Z, n * zoff[l - 1], n, d_in), act)


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
        _add_bias(Zdl, v[poff[l] + d_in * d_out:poff[l + 1]])
        if l < L - 1:
            _tangent_through_activation(_view(Hd, n * zoff[l], n, d_out), _view(Z, n * zoff[l], n, d_out), Zdl, act)
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
        _add_colsum(delta_dot, hv[poff[l] + d_in * d_out:poff[l + 1]])
        if l > 0:
            W = _view(theta, poff[l], d_in, d_out)
            back_dot = _view(Dd, n * zoff[l - 1], n, d_in)
            _mm_nt(delta_dot, W, back_dot, False, scratch)
            _mm_nt(delta, _view(v, poff[l], d_in, d_out), back_dot, True, scratch)
            Zp = _view(Z, n * zoff[l - 1], n, d_in)
            if act == RELU:  # act'' = 0
                _back_through_d1(back_dot, Zp, act)
            else:  # back (dL/dH, in tmp) is needed for the act'' term only
                back = _view(tmp, 0, n, d_in)
                _mm_nt(delta, W, back, False, scratch)
                _back_through_activation(back, back_dot, Zp, _view(Zd, n * zoff[l - 1], n, d_in), act)
