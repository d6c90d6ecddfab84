"""The register-tiled matrix products of nn/meta_passes.py give the in-order sums, bit for bit.

``_mm`` computes ``C[i, j]`` on one of several paths (4 x 16 tiles in
float32, 4 x 8, 2 x 8 and 1 x 8 tiles, leftover columns four rows at a
time); each path must sum ``A[i, r] * B[r, j]`` over ``r`` in order, so
that the tiling changes the speed and never the result. The reference
below adds the products one ``r`` at a time with NumPy's elementwise
arithmetic in the same dtype, which rounds every product and every sum
exactly as the kernel does (no fused multiply-add). The transposed
products also run as plain Python under ``NUMBA_DISABLE_JIT=1``.
"""
from __future__ import annotations

import numpy as np
import pytest

from tinymeta.nn.meta_passes import _mm, _mm_nt, _mm_tn, _transpose

DTYPES = ["float32", "float64"]
ROWS = [1, 2, 3, 4, 5, 6, 10, 13]  # 4-row tiles, the 2-row tile, single rows
COLS = [1, 3, 7, 8, 9, 15, 16, 17, 24, 31, 40]  # leftover columns, 8- and 16-column tiles
INNER = [1, 5, 40]


def _in_order(A, B, C0=None):
    """``A @ B`` (``+ C0``) summed over the inner dimension in order, rounded like the kernel."""
    C = np.zeros((A.shape[0], B.shape[1]), dtype=A.dtype)
    for r in range(A.shape[1]):
        C = C + A[:, r:r + 1] * B[r:r + 1, :]
    return C if C0 is None else C0 + C


def _operands(rng, dtype, m, k, p):
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, p)).astype(dtype)
    C0 = rng.standard_normal((m, p)).astype(dtype)
    return A, B, C0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("p", COLS)
@pytest.mark.parametrize("k", INNER)
def test_mm_is_the_in_order_sum_on_every_path(dtype, m, p, k, rng):
    A, B, C0 = _operands(rng, dtype, m, k, p)
    C = np.full((m, p), np.nan, dtype=dtype)  # every entry must be written
    _mm(A, B, C, False)
    assert np.array_equal(C, _in_order(A, B))
    C = C0.copy()
    _mm(A, B, C, True)
    assert np.array_equal(C, _in_order(A, B, C0))


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, p", [(10, 40, 40), (40, 10, 40), (40, 10, 1), (5, 7, 16), (13, 3, 24)])
def test_transposed_products_are_the_in_order_sums(dtype, m, k, p, rng):
    """``_mm_tn`` (C = A.T @ B) and ``_mm_nt`` (C = A @ B.T, either operand transposed first)."""
    A, B, C0 = _operands(rng, dtype, m, k, p)
    C = C0.copy()
    _mm_tn(np.ascontiguousarray(A.T), B, C, True)
    assert np.array_equal(C, _in_order(A, B, C0))
    scratch = np.empty(max(m, p) * k, dtype=dtype)
    C = np.full((m, p), np.nan, dtype=dtype)
    _mm_nt(A, np.ascontiguousarray(B.T), C, False, scratch)
    assert np.array_equal(C, _in_order(A, B))


@pytest.mark.kernels
@pytest.mark.parametrize("m, k", [(1, 1), (7, 3), (8, 40), (17, 9)])
def test_transpose(m, k, rng):
    A = rng.standard_normal((m, k))
    AT = np.empty((k, m))
    _transpose(A, AT)
    assert np.array_equal(AT, A.T)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 16])  # delta transposed or the weights, by _mm_nt's rule before
def test_backward_reads_the_stored_transposed_weights(dtype, n, rng):
    """``_weights_t`` stores ``W_l^T`` of the layers after the first at ``poff[l] - poff[1]``;
    ``_backward`` makes them when ``fresh`` and otherwise reads them (so stale ones change
    the result), and each propagated ``delta`` is the in-order ``delta W^T`` times ``act'``."""
    from tinymeta.algorithms.meta_batch import _layout, _transposed_size
    from tinymeta.nn.activations import TANH
    from tinymeta.nn.losses import MSE
    from tinymeta.nn.meta_passes import _backward, _forward, _loss_into, _weights_t, _wt
    from tinymeta.nn.mlp import MLP

    net = MLP((3, 16, 24, 2), activation="tanh", loss="mse", dtype=dtype)
    sizes, poff, zoff = _layout(net)
    theta = net.init(rng).astype(dtype)
    X = rng.standard_normal((n, 3)).astype(dtype)
    Y = rng.standard_normal((n, 2)).astype(dtype)
    Z, H, D = (np.zeros(n * int(zoff[-1]), dtype) for _ in range(3))
    _forward(theta, X, sizes, poff, zoff, TANH, Z, H)
    _loss_into(MSE, Z, n, zoff, sizes, Y, np.empty(0, np.int64), D, np.empty(0, dtype))
    WT = np.full(_transposed_size(poff), np.nan, dtype)
    grad = np.empty(net.n_params, dtype)
    _backward(theta, X, sizes, poff, zoff, TANH, Z, H, D, grad, WT, True)
    for l, (W, _) in enumerate(net.unflatten(theta)):
        if l > 0:
            assert np.array_equal(_wt(WT, sizes, poff, l), W.T)
            delta = D[n * zoff[l]:n * zoff[l + 1]].reshape(n, sizes[l + 1])
            back = _in_order(delta, W.T) * (1 - np.tanh(Z[n * zoff[l - 1]:n * zoff[l]].reshape(n, -1)) ** 2)
            np.testing.assert_allclose(D[n * zoff[l - 1]:n * zoff[l]].reshape(n, -1), back, rtol=1e-5, atol=0)
    first = (D.copy(), grad.copy())
    _backward(theta, X, sizes, poff, zoff, TANH, Z, H, D, grad, WT, False)  # reads the stored ones
    assert np.array_equal(D, first[0]) and np.array_equal(grad, first[1])
    _weights_t(2 * theta, sizes, poff, WT)  # stale: another theta's
    _backward(theta, X, sizes, poff, zoff, TANH, Z, H, D, grad, WT, False)
    assert not np.array_equal(grad, first[1])
