"""The Numba backend is pinned to the NumPy reference: same contract, same
numbers (1e-12 relative in float64). Also run with NUMBA_DISABLE_JIT=1."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta.gradcheck import random_problem, rel_error

pytestmark = pytest.mark.kernels

TOL = {"float64": 1e-12, "float32": 1e-5}  # float32: summation order differs, see gradcheck.FLOAT32_TOL


def _all_outputs(net, theta, X, y, v, dout):
    value, grad = net.loss_and_grad(theta, X, y)
    dtheta, dX = net.vjp(theta, X, dout, input_grad=True)
    X_dot = np.linspace(-1, 1, X.size).reshape(X.shape).astype(X.dtype)
    hv_joint, hX = net.hvp(theta, X, y, v, X_dot=X_dot, input_grad=True)
    return {
        "loss_and_grad.dX": net.loss_and_grad(theta, X, y, input_grad=True)[2],
        "jvp.X_dot": net.jvp(theta, X, v, X_dot=X_dot), "hvp.joint": hv_joint, "hvp.hX": hX,
        "forward": net.forward(theta, X), "loss": np.array([net.loss(theta, X, y)]),
        "loss_and_grad.value": np.array([value]), "loss_and_grad.grad": grad,
        "vjp.theta": dtheta, "vjp.X": dX, "vjp": net.vjp(theta, X, dout),
        "jvp": net.jvp(theta, X, v), "hvp": net.hvp(theta, X, y, v),
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("sizes", [(3, 8, 6, 4), (1, 40, 40, 2), (4, 3)])
def test_numba_matches_numpy_reference(sizes, activation, loss, dtype, rng):
    fast = tm.MLP(sizes, activation=activation, loss=loss, dtype=dtype, backend="numba")
    slow = fast.replace(backend="numpy")
    theta, X, y = random_problem(fast, rng, n=9)
    v = rng.standard_normal(fast.n_params).astype(dtype)
    dout = rng.standard_normal((9, sizes[-1])).astype(dtype)
    got, want = _all_outputs(fast, theta, X, y, v, dout), _all_outputs(slow, theta, X, y, v, dout)
    for key in want:
        if not key.startswith("loss"):  # losses are Python floats
            assert got[key].dtype == np.dtype(dtype), key
        assert got[key].shape == want[key].shape, key
        assert rel_error(got[key], want[key]) <= TOL[dtype], key


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_same_input_same_bits(backend, rng):
    net = tm.MLP([1, 40, 40, 1], backend=backend)
    theta, X, y = random_problem(net, rng, n=10)
    v = rng.standard_normal(net.n_params)
    assert np.array_equal(net.hvp(theta, X, y, v), net.hvp(theta, X, y, v))
    assert np.array_equal(net.loss_and_grad(theta, X, y)[1], net.loss_and_grad(theta, X, y)[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
@pytest.mark.parametrize("sizes", [(3, 8, 6, 4), (1, 40, 40, 2), (4, 5, 3), (4, 3)])
def test_numba_matches_numpy_reference_with_batchnorm(sizes, activation, loss, dtype, rng):
    fast = tm.MLP(sizes, activation=activation, loss=loss, dtype=dtype, backend="numba", batchnorm=True)
    slow = fast.replace(backend="numpy")
    theta, X, y = random_problem(fast, rng, n=9)
    v = rng.standard_normal(fast.n_params).astype(dtype)
    dout = rng.standard_normal((9, sizes[-1])).astype(dtype)
    got, want = _all_outputs(fast, theta, X, y, v, dout), _all_outputs(slow, theta, X, y, v, dout)
    assert rel_error(got["forward"], fast.replace(batchnorm=False).forward(theta, X)) > 1e-3 or len(sizes) == 2
    for key in want:
        if not key.startswith("loss"):
            assert got[key].dtype == np.dtype(dtype), key
        assert got[key].shape == want[key].shape, key
        assert rel_error(got[key], want[key]) <= TOL[dtype], key


def test_batchnorm_kernels_match_the_normalisation_functions(rng):
    from tinymeta.nn import bn_kernels as BK
    from tinymeta.nn.batchnorm import BN_EPS, normalize, normalize_apply, normalize_r_backward

    A = 3 * rng.standard_normal((6, 5)) + 1
    A_dot, G, G_dot = rng.standard_normal((3, 6, 5))
    X_hat, sigma = np.empty_like(A), np.empty(5)
    BK.bn_normalize(A, BN_EPS, X_hat, sigma)
    want_X_hat, want_sigma = normalize(A)
    assert rel_error(X_hat, want_X_hat) <= 1e-14 and rel_error(sigma, want_sigma) <= 1e-14
    out = np.empty_like(G)
    BK.bn_apply(X_hat, sigma, G, out)
    assert rel_error(out, normalize_apply(X_hat, sigma, G)) <= 1e-13
    dA, dA_dot = G.copy(), G_dot.copy()  # in place, as the backward kernels call it
    BK.bn_r_backward(X_hat, sigma, A_dot, dA, dA_dot, dA, dA_dot)
    assert rel_error(dA, normalize_apply(X_hat, sigma, G)) <= 1e-13
    assert rel_error(dA_dot, normalize_r_backward(X_hat, sigma, A_dot, G, G_dot)) <= 1e-13


@pytest.mark.parametrize("batchnorm", [False, True])
def test_large_calls_go_to_blas_and_agree_with_the_kernels(batchnorm, rng, monkeypatch):
    """From ``BLAS_MIN_WORK`` row-weight products on, the Numba backend hands forward and backward
    passes to ``blas_passes.py``, and from ``REFERENCE_MIN_WORK`` on jvp, hvp and batch norm to
    ``reference.py``; the shapes alone decide, and the paths give the same numbers."""
    from tinymeta.nn import blas_passes, numba_backend, reference

    net = tm.MLP((6, 9, 7, 3), activation="tanh", loss="xent", backend="numba", batchnorm=batchnorm)
    theta, X, y = random_problem(net, rng, n=11)
    v, dout = rng.standard_normal(net.n_params), rng.standard_normal((11, 3))
    calls = []
    for module, name in ((reference, "forward_pass"), (blas_passes, "_forward")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    for threshold in ("BLAS_MIN_WORK", "REFERENCE_MIN_WORK"):
        monkeypatch.setattr(numba_backend, threshold, 11 * net.n_params + 1)  # one row short of it
    kernels = _all_outputs(net, theta, X, y, v, dout)
    assert calls == []
    for threshold in ("BLAS_MIN_WORK", "REFERENCE_MIN_WORK"):
        monkeypatch.setattr(numba_backend, threshold, 11 * net.n_params)
    blas = _all_outputs(net, theta, X, y, v, dout)
    # each of the ten calls of _all_outputs once: forward, loss, loss_and_grad (2) and vjp (2) on the
    # BLAS passes, jvp (2) and hvp (2) on the reference; everything on the reference with batch norm
    want = {"forward_pass": 10} if batchnorm else {"forward_pass": 4, "_forward": 6}
    assert {name: calls.count(name) for name in set(calls)} == want
    for key in kernels:
        assert np.shape(blas[key]) == np.shape(kernels[key]), key
        assert rel_error(blas[key], kernels[key]) <= TOL["float64"], key


def test_the_real_thresholds():
    """Where the shapes send a call with the thresholds as shipped (no data is touched)."""
    from tinymeta.nn import blas_passes, numba_backend as nb, reference

    sinusoid, omniglot = tm.MLP((1, 40, 40, 1)), tm.MLP((784, 256, 128, 64, 64, 5))
    rows = lambda n: np.empty((n, 0))  # noqa: E731
    assert nb._large(sinusoid, rows(10)) is None and nb._large(sinusoid, rows(100)) is blas_passes
    assert nb._large(omniglot, rows(1)) is None and nb._large(omniglot, rows(2)) is blas_passes
    assert nb._large(omniglot.replace(batchnorm=True), rows(80)) is None
    assert nb._large(omniglot.replace(batchnorm=True), rows(3200)) is reference
    assert not nb._reference(omniglot, rows(80)) and nb._reference(omniglot, rows(3200))


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_forward_and_vjp_is_forward_then_vjp_bit_for_bit(backend, batchnorm, rng, monkeypatch):
    """The pullback reuses the forward pass and gives what ``vjp`` gives, on the kernels and on BLAS."""
    from tinymeta.nn import numba_backend

    net = tm.MLP((6, 9, 7, 3), activation="tanh", loss="xent", backend=backend, batchnorm=batchnorm)
    theta, X, _ = random_problem(net, rng, n=11)
    dout = rng.standard_normal((11, 3))
    for threshold in (11 * net.n_params + 1, 11 * net.n_params):  # kernels, then BLAS (Numba backend)
        monkeypatch.setattr(numba_backend, "BLAS_MIN_WORK", threshold)
        monkeypatch.setattr(numba_backend, "REFERENCE_MIN_WORK", threshold)
        out, pullback = net.forward_and_vjp(theta, X)
        assert np.array_equal(out, net.forward(theta, X))
        assert np.array_equal(pullback(dout), net.vjp(theta, X, dout))
        got, want = pullback(dout, input_grad=True), net.vjp(theta, X, dout, input_grad=True)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
        assert np.array_equal(pullback(2 * dout), net.vjp(theta, X, 2 * dout))  # called again: same pass
        with pytest.raises(ValueError, match=r"dout must have shape \(11, 3\), got \(11, 2\)"):
            pullback(dout[:, :2])
