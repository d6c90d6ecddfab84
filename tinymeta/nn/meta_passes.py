r"""The passes of the compiled meta-batch (``meta_kernels.py``) over stored workspaces.

Forward, backward and Hessian-vector product of the MLP, as in
``kernels.py`` (the Numba backend of one call), with two differences that
the meta-batch needs: the input of layer 0 is ``X`` itself (never copied),
and ``delta`` is kept for every layer, so that a Hessian-vector product at a
stored point costs one R-forward and one R-backward pass only. The matrix
products are computed in register tiles (``_mm``). Every function follows
the reference function named in its docstring, each sum over an inner
dimension in order, and the tests pin the meta-batch built on them to the
reference (``tests/test_meta_kernels.py``).

Layout (``n`` rows, ``zoff`` the running sum of ``sizes[1:]``): layer
``l``'s block of ``Z``, ``H``, ``D`` (``delta``), ``Zd``, ``Hd``, ``Dd``
(their tangents) is the contiguous ``(n, sizes[l+1])`` array at
``n * zoff[l]`` (``H``'s last block is unused: the output layer is linear).
The backward passes multiply by the transposed weights ``W_l^T`` of the
layers after the first, held in a buffer of their own (``_weights_t``), so
that an iterate's are made once and read by its backward pass and its
Hessian-vector product, and ``theta``'s once for a whole meta-batch.
Nothing here allocates.
"""
from __future__ import annotations

from .activations import RELU
from .jit import is_float32, kernel
from .kernels import (_activate, _add_bias, _add_colsum, _back_through_activation, _back_through_d1,
                      _tangent_through_activation, _view, mse_kernel, mse_r_kernel, xent_kernel,
                      xent_r_kernel)
from .losses import MSE


# ------------------------------------------------------- matrix products
@kernel
def _mm(A, B, C, accumulate):
    """``C = A @ B`` (``+=`` if accumulate); A (m, k), B (k, p), C (m, p).

    Register tiles: the sums of 4 rows x 8 columns of ``C`` (4 x 16 in
    float32) are held in scalars while ``r`` runs over the inner dimension,
    so that one row of ``B`` and 4 values of ``A`` serve 32 (64)
    multiply-adds and ``C`` is written once. LLVM's SLP vectorizer
    (``jit.py``) turns each row of a tile into vector registers: 8 of them
    (4 rows x 2 registers of 8 values) keep the two multiply-add units busy
    despite their 4-cycle latency; a float32 tile of 8 columns has only 4.
    Rows left over go 2 x 8 and 1 x 8 (1 x 16); columns left over (fewer
    than 8: the sinusoid net's one output, a 5-way head) one dot product
    each, four rows at a time. Every ``C[i, j]`` sums over ``r`` in order
    (and is then added to ``C`` if accumulating), whichever path computes
    it: the tiling changes the speed, never the bits.
    """
    m, k = A.shape
    p = B.shape[1]
    z = C.dtype.type(0)
    wide = is_float32(C)  # 16-column tiles; a constant, so float64 compiles without them
    m4, m2, p8 = m - m % 4, m - m % 2, p - p % 8
    for j in range(0, p8, 8):  # B[:, j:j+8] (j:j+16) stays in cache while the rows of A pass
        if wide and j % 16 == 8:
            continue  # computed by the 16-column tile at j - 8
        if wide and j + 16 <= p:
            for i in range(0, m4, 4):
                c00 = c01 = c02 = c03 = c04 = c05 = c06 = c07 = c08 = c09 = c0a = c0b = c0c = c0d = c0e = c0f = z
                c10 = c11 = c12 = c13 = c14 = c15 = c16 = c17 = c18 = c19 = c1a = c1b = c1c = c1d = c1e = c1f = z
                c20 = c21 = c22 = c23 = c24 = c25 = c26 = c27 = c28 = c29 = c2a = c2b = c2c = c2d = c2e = c2f = z
                c30 = c31 = c32 = c33 = c34 = c35 = c36 = c37 = c38 = c39 = c3a = c3b = c3c = c3d = c3e = c3f = z
                for r in range(k):
                    b0, b1, b2, b3, b4, b5, b6, b7 = B[r, j], B[r, j + 1], B[r, j + 2], B[r, j + 3], \
                        B[r, j + 4], B[r, j + 5], B[r, j + 6], B[r, j + 7]
                    b8, b9, ba, bb, bc, bd, be, bf = B[r, j + 8], B[r, j + 9], B[r, j + 10], B[r, j + 11], \
                        B[r, j + 12], B[r, j + 13], B[r, j + 14], B[r, j + 15]
                    a0, a1, a2, a3 = A[i, r], A[i + 1, r], A[i + 2, r], A[i + 3, r]
                    c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3  # noqa: E702
                    c04 += a0 * b4; c05 += a0 * b5; c06 += a0 * b6; c07 += a0 * b7  # noqa: E702
                    c08 += a0 * b8; c09 += a0 * b9; c0a += a0 * ba; c0b += a0 * bb  # noqa: E702
                    c0c += a0 * bc; c0d += a0 * bd; c0e += a0 * be; c0f += a0 * bf  # noqa: E702
                    c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3  # noqa: E702
                    c14 += a1 * b4; c15 += a1 * b5; c16 += a1 * b6; c17 += a1 * b7  # noqa: E702
                    c18 += a1 * b8; c19 += a1 * b9; c1a += a1 * ba; c1b += a1 * bb  # noqa: E702
                    c1c += a1 * bc; c1d += a1 * bd; c1e += a1 * be; c1f += a1 * bf  # noqa: E702
                    c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3  # noqa: E702
                    c24 += a2 * b4; c25 += a2 * b5; c26 += a2 * b6; c27 += a2 * b7  # noqa: E702
                    c28 += a2 * b8; c29 += a2 * b9; c2a += a2 * ba; c2b += a2 * bb  # noqa: E702
                    c2c += a2 * bc; c2d += a2 * bd; c2e += a2 * be; c2f += a2 * bf  # noqa: E702
                    c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3  # noqa: E702
                    c34 += a3 * b4; c35 += a3 * b5; c36 += a3 * b6; c37 += a3 * b7  # noqa: E702
                    c38 += a3 * b8; c39 += a3 * b9; c3a += a3 * ba; c3b += a3 * bb  # noqa: E702
                    c3c += a3 * bc; c3d += a3 * bd; c3e += a3 * be; c3f += a3 * bf  # noqa: E702
                _store8(C, i, j, accumulate, c00, c01, c02, c03, c04, c05, c06, c07)
                _store8(C, i, j + 8, accumulate, c08, c09, c0a, c0b, c0c, c0d, c0e, c0f)
                _store8(C, i + 1, j, accumulate, c10, c11, c12, c13, c14, c15, c16, c17)
                _store8(C, i + 1, j + 8, accumulate, c18, c19, c1a, c1b, c1c, c1d, c1e, c1f)
                _store8(C, i + 2, j, accumulate, c20, c21, c22, c23, c24, c25, c26, c27)
                _store8(C, i + 2, j + 8, accumulate, c28, c29, c2a, c2b, c2c, c2d, c2e, c2f)
                _store8(C, i + 3, j, accumulate, c30, c31, c32, c33, c34, c35, c36, c37)
                _store8(C, i + 3, j + 8, accumulate, c38, c39, c3a, c3b, c3c, c3d, c3e, c3f)
            for i in range(m4, m):
                c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = ca = cb = cc = cd = ce = cf = z
                for r in range(k):
                    a = A[i, r]
                    c0 += a * B[r, j]; c1 += a * B[r, j + 1]; c2 += a * B[r, j + 2]; c3 += a * B[r, j + 3]  # noqa: E702
                    c4 += a * B[r, j + 4]; c5 += a * B[r, j + 5]; c6 += a * B[r, j + 6]; c7 += a * B[r, j + 7]  # noqa: E702
                    c8 += a * B[r, j + 8]; c9 += a * B[r, j + 9]; ca += a * B[r, j + 10]; cb += a * B[r, j + 11]  # noqa: E702
                    cc += a * B[r, j + 12]; cd += a * B[r, j + 13]; ce += a * B[r, j + 14]; cf += a * B[r, j + 15]  # noqa: E702
                _store8(C, i, j, accumulate, c0, c1, c2, c3, c4, c5, c6, c7)
                _store8(C, i, j + 8, accumulate, c8, c9, ca, cb, cc, cd, ce, cf)
            continue
        for i in range(0, m4, 4):
            c00 = c01 = c02 = c03 = c04 = c05 = c06 = c07 = z
            c10 = c11 = c12 = c13 = c14 = c15 = c16 = c17 = z
            c20 = c21 = c22 = c23 = c24 = c25 = c26 = c27 = z
            c30 = c31 = c32 = c33 = c34 = c35 = c36 = c37 = z
            for r in range(k):
                b0, b1, b2, b3, b4, b5, b6, b7 = B[r, j], B[r, j + 1], B[r, j + 2], B[r, j + 3], \
                    B[r, j + 4], B[r, j + 5], B[r, j + 6], B[r, j + 7]
                a0, a1, a2, a3 = A[i, r], A[i + 1, r], A[i + 2, r], A[i + 3, r]
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3  # noqa: E702
                c04 += a0 * b4; c05 += a0 * b5; c06 += a0 * b6; c07 += a0 * b7  # noqa: E702
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3  # noqa: E702
                c14 += a1 * b4; c15 += a1 * b5; c16 += a1 * b6; c17 += a1 * b7  # noqa: E702
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3  # noqa: E702
                c24 += a2 * b4; c25 += a2 * b5; c26 += a2 * b6; c27 += a2 * b7  # noqa: E702
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3  # noqa: E702
                c34 += a3 * b4; c35 += a3 * b5; c36 += a3 * b6; c37 += a3 * b7  # noqa: E702
            _store8(C, i, j, accumulate, c00, c01, c02, c03, c04, c05, c06, c07)
            _store8(C, i + 1, j, accumulate, c10, c11, c12, c13, c14, c15, c16, c17)
            _store8(C, i + 2, j, accumulate, c20, c21, c22, c23, c24, c25, c26, c27)
            _store8(C, i + 3, j, accumulate, c30, c31, c32, c33, c34, c35, c36, c37)
        for i in range(m4, m2, 2):
            c00 = c01 = c02 = c03 = c04 = c05 = c06 = c07 = z
            c10 = c11 = c12 = c13 = c14 = c15 = c16 = c17 = z
            for r in range(k):
                b0, b1, b2, b3, b4, b5, b6, b7 = B[r, j], B[r, j + 1], B[r, j + 2], B[r, j + 3], \
                    B[r, j + 4], B[r, j + 5], B[r, j + 6], B[r, j + 7]
                a0, a1 = A[i, r], A[i + 1, r]
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3  # noqa: E702
                c04 += a0 * b4; c05 += a0 * b5; c06 += a0 * b6; c07 += a0 * b7  # noqa: E702
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3  # noqa: E702
                c14 += a1 * b4; c15 += a1 * b5; c16 += a1 * b6; c17 += a1 * b7  # noqa: E702
            _store8(C, i, j, accumulate, c00, c01, c02, c03, c04, c05, c06, c07)
            _store8(C, i + 1, j, accumulate, c10, c11, c12, c13, c14, c15, c16, c17)
        for i in range(m2, m):
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = z
            for r in range(k):
                a = A[i, r]
                c0 += a * B[r, j]; c1 += a * B[r, j + 1]; c2 += a * B[r, j + 2]; c3 += a * B[r, j + 3]  # noqa: E702
                c4 += a * B[r, j + 4]; c5 += a * B[r, j + 5]; c6 += a * B[r, j + 6]; c7 += a * B[r, j + 7]  # noqa: E702
            _store8(C, i, j, accumulate, c0, c1, c2, c3, c4, c5, c6, c7)
    for j in range(p8, p):  # four rows at a time: four independent sums
        for i in range(0, m4, 4):
            s0 = s1 = s2 = s3 = z
            for r in range(k):
                b = B[r, j]
                s0 += A[i, r] * b; s1 += A[i + 1, r] * b; s2 += A[i + 2, r] * b; s3 += A[i + 3, r] * b  # noqa: E702
            if accumulate:
                s0, s1, s2, s3 = C[i, j] + s0, C[i + 1, j] + s1, C[i + 2, j] + s2, C[i + 3, j] + s3
            C[i, j], C[i + 1, j], C[i + 2, j], C[i + 3, j] = s0, s1, s2, s3
        for i in range(m4, m):
            s = z
            for r in range(k):
                s += A[i, r] * B[r, j]
            C[i, j] = C[i, j] + s if accumulate else s


@kernel
def _store8(C, i, j, accumulate, c0, c1, c2, c3, c4, c5, c6, c7):
    """``C[i, j:j+8] = (c0, ..., c7)``, or ``+=`` if accumulate."""
    if accumulate:
        c0, c1, c2, c3 = C[i, j] + c0, C[i, j + 1] + c1, C[i, j + 2] + c2, C[i, j + 3] + c3
        c4, c5, c6, c7 = C[i, j + 4] + c4, C[i, j + 5] + c5, C[i, j + 6] + c6, C[i, j + 7] + c7
    C[i, j], C[i, j + 1], C[i, j + 2], C[i, j + 3] = c0, c1, c2, c3
    C[i, j + 4], C[i, j + 5], C[i, j + 6], C[i, j + 7] = c4, c5, c6, c7


@kernel
def _mm_tn(A, B, C, accumulate):
    """``C = A.T @ B`` (or ``+=``); A (k, m), B (k, p), C (m, p): ``_mm`` on the transposed view of ``A``."""
    _mm(A.T, B, C, accumulate)


@kernel
def _transpose(A, AT):
    """``AT = A.T``; A (m, k), AT (k, m): eight rows of ``A`` at a time, so that each row of ``AT`` is written 8 values at once."""
    m, k = A.shape
    m8 = m - m % 8
    for i in range(0, m8, 8):
        for r in range(k):
            AT[r, i], AT[r, i + 1], AT[r, i + 2], AT[r, i + 3] = A[i, r], A[i + 1, r], A[i + 2, r], A[i + 3, r]
            AT[r, i + 4], AT[r, i + 5], AT[r, i + 6], AT[r, i + 7] = A[i + 4, r], A[i + 5, r], A[i + 6, r], A[i + 7, r]
    for i in range(m8, m):
        for r in range(k):
            AT[r, i] = A[i, r]


@kernel
def _mm_nt(A, B, C, accumulate, scratch):
    """``C = A @ B.T`` (or ``+=``); A (m, k), B (p, k), C (m, p).

    ``A`` or ``B`` is first transposed into ``scratch`` (``m * k`` or
    ``p * k`` entries) so that ``_mm`` streams contiguous rows:
    ``C.T = B @ (A.T)``, written through the transposed view of ``C``, when
    ``A`` is the smaller and ``m`` is a multiple of 8 (or ``p`` is not);
    else ``C = A @ (B.T)``. ``_mm``'s columns left over from its 8-wide
    tiles are slow (a sinusoid meta-batch ran 1.5x faster for transposing
    the 40 x 40 weights rather than the 10 x 40 ``delta``). One inner column
    (``k == 1``) is an outer product.
    """
    m, k = A.shape
    p = B.shape[0]
    if k == 1:
        for i in range(m):
            a = A[i, 0]
            for j in range(p):
                C[i, j] = (C[i, j] if accumulate else C.dtype.type(0)) + a * B[j, 0]
        return
    if m < p and (m % 8 == 0 or p % 8 != 0):
        AT = _view(scratch, 0, k, m)
        _transpose(A, AT)
        _mm(B, AT, C.T, accumulate)
    else:
        BT = _view(scratch, 0, k, p)
        _transpose(B, BT)
        _mm(A, BT, C, accumulate)


# ---------------------------------------------------------------- passes
@kernel
def _input(X, H, n, zoff, sizes, l):
    """Input of layer ``l``: ``X`` for ``l == 0``, else ``H``'s block ``l - 1``."""
    if l == 0:
        return X
    return _view(H, n * zoff[l - 1], n, sizes[l])


@kernel
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


@kernel
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


@kernel
def _weights_t(theta, sizes, poff, WT):
    """``WT`` gets ``W_l^T`` (d_out, d_in) of every layer after the first (``_wt``): the matrices
    that the backward passes multiply by, ``delta_l W_l^T``. Layer 0's is never needed."""
    for l in range(1, sizes.shape[0] - 1):
        d_in, d_out = sizes[l], sizes[l + 1]
        _transpose(_view(theta, poff[l], d_in, d_out), _wt(WT, sizes, poff, l))


@kernel
def _wt(WT, sizes, poff, l):
    """Layer ``l``'s ``W_l^T`` in ``WT``: the (d_out, d_in) block at ``poff[l] - poff[1]``."""
    return _view(WT, poff[l] - poff[1], sizes[l + 1], sizes[l])


@kernel
def _backward(theta, X, sizes, poff, zoff, act, Z, H, D, grad, WT, fresh):
    """Backpropagate ``D``'s output block into every block of ``D`` and into ``grad``
    (reference.backward_pass); ``D`` keeps every layer's ``delta``.

    ``WT`` holds ``theta``'s transposed weights (``_weights_t``), or receives
    them first if ``fresh``: a meta-batch transposes ``theta_0``'s once for
    all its tasks, and the Hessian-vector product at an iterate reuses the
    ones its support pass made (a 40 x 40 transpose costs nearly as much as
    the product that reads it).
    """
    n = X.shape[0]
    if fresh:
        _weights_t(theta, sizes, poff, WT)
    for l in range(sizes.shape[0] - 2, -1, -1):
        d_in, d_out = sizes[l], sizes[l + 1]
        delta = _view(D, n * zoff[l], n, d_out)
        _mm_tn(_input(X, H, n, zoff, sizes, l), delta, _view(grad, poff[l], d_in, d_out), False)
        _add_colsum(delta, grad[poff[l] + d_in * d_out:poff[l + 1]])
        if l > 0:
            back = _view(D, n * zoff[l - 1], n, d_in)
            _mm(delta, _wt(WT, sizes, poff, l), back, False)
            _back_through_d1(back, _view(Z, n * zoff[l - 1], n, d_in), act)


@kernel
def _hvp(theta, v, X, sizes, poff, zoff, act, loss, Z, H, D, Pr, Zd, Hd, Dd, hv, tmp, WT, scratch):
    """``hv = H(theta) v`` of the loss on ``X`` from a stored forward/backward pass
    (``Z``, ``H``, ``D``, ``Pr``): one R-forward and one R-backward pass
    (reference.r_forward_pass, reference.r_backward_pass; DESIGN.md section 2).
    ``WT`` holds ``theta``'s transposed weights (``_weights_t``); ``tmp`` holds
    ``n * max(sizes)`` entries, ``scratch`` a transposed block of ``v``."""
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
            WTl = _wt(WT, sizes, poff, l)
            back_dot = _view(Dd, n * zoff[l - 1], n, d_in)
            _mm(delta_dot, WTl, back_dot, False)
            _mm_nt(delta, _view(v, poff[l], d_in, d_out), back_dot, True, scratch)
            Zp = _view(Z, n * zoff[l - 1], n, d_in)
            if act == RELU:  # act'' = 0
                _back_through_d1(back_dot, Zp, act)
            else:  # back (dL/dH, in tmp) is needed for the act'' term only
                back = _view(tmp, 0, n, d_in)
                _mm(delta, WTl, back, False)
                _back_through_activation(back, back_dot, Zp, _view(Zd, n * zoff[l - 1], n, d_in), act)
