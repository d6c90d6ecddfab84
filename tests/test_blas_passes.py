"""The BLAS passes of large calls (``nn/blas_passes.py``): the reference's numbers, and
workspaces that are reused but never shared by two passes alive at once.
Also run with NUMBA_DISABLE_JIT=1."""
import gc

import numpy as np
import pytest

import tinymeta as tm
from tinymeta.gradcheck import random_problem, rel_error
from tinymeta.nn import blas_passes, numba_backend

pytestmark = pytest.mark.kernels

TOL = {"float64": 1e-12, "float32": 1e-5}


@pytest.fixture
def blas_for_every_call(monkeypatch):
    """Every call of the Numba backend takes the large-call path; the pool starts empty."""
    monkeypatch.setattr(numba_backend, "BLAS_MIN_WORK", 0)
    monkeypatch.setattr(blas_passes, "_pool", {})


def _outputs(net, theta, X, y, dout):
    value, grad, dX = net.loss_and_grad(theta, X, y, input_grad=True)
    out, pullback = net.forward_and_vjp(theta, X)
    return {"forward": net.forward(theta, X), "loss": np.array([net.loss(theta, X, y)]),
            "loss_and_grad.value": np.array([value]), "loss_and_grad.grad": grad, "loss_and_grad.dX": dX,
            "forward_and_vjp.out": out, "pullback": pullback(dout),
            "pullback.dX": pullback(dout, input_grad=True)[1], "vjp": net.vjp(theta, X, dout)}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("sizes", [(7, 9, 6, 3), (5, 4), (3, 8, 2)])
def test_blas_passes_give_the_reference_numbers(sizes, activation, loss, dtype, rng, blas_for_every_call):
    """ReLU: the reference's bits (the same BLAS calls, the same order of operations); other
    activations to rounding (the kernels evaluate them with ``math``)."""
    net = tm.MLP(sizes, activation=activation, loss=loss, dtype=dtype, backend="numba")
    theta, X, y = random_problem(net, rng, n=13)
    dout = rng.standard_normal((13, sizes[-1])).astype(dtype)
    got = _outputs(net, theta, X, y, dout)
    want = _outputs(net.replace(backend="numpy"), theta, X, y, dout)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        if activation == "relu":
            assert np.array_equal(got[key], want[key]), key
        else:
            assert rel_error(got[key], want[key]) <= TOL[dtype], key


def test_pullbacks_alive_at_once_keep_their_own_pass(rng, blas_for_every_call):
    net = tm.MLP((6, 9, 7, 3), activation="tanh", loss="mse")
    theta = net.init(rng)
    X1, X2 = rng.standard_normal((11, 6)), rng.standard_normal((11, 6))
    dout = rng.standard_normal((11, 3))
    want1, want2 = net.replace(backend="numpy").vjp(theta, X1, dout), net.replace(backend="numpy").vjp(theta, X2, dout)
    out1, pullback1 = net.forward_and_vjp(theta, X1)
    out2, pullback2 = net.forward_and_vjp(theta, X2)  # same shape: must not take pullback1's workspace
    net.loss_and_grad(theta, X2, rng.standard_normal((11, 3)))  # nor may any other call of that shape
    assert rel_error(pullback1(dout), want1) <= TOL["float64"]
    assert rel_error(pullback2(dout), want2) <= TOL["float64"]
    assert not np.shares_memory(out1, out2)


def test_workspaces_are_reused_and_given_back(rng, blas_for_every_call):
    net = tm.MLP((6, 9, 7, 3), activation="relu", loss="mse")
    theta, X, _ = random_problem(net, rng, n=11)
    key = ((6, 9, 7, 3), "float64", 11)
    first = net.forward(theta, X)
    (ws,) = blas_passes._pool[key]
    assert np.array_equal(net.forward(theta, X), first) and blas_passes._pool[key] == [ws]  # taken, given back
    _, pullback = net.forward_and_vjp(theta, X)
    assert blas_passes._pool[key] == []  # the pullback holds it
    del pullback
    gc.collect()
    assert blas_passes._pool[key] == [ws]


def test_the_pool_keeps_a_few_shapes(rng, blas_for_every_call):
    net = tm.MLP((6, 9, 3), activation="relu", loss="mse")
    theta = net.init(rng)
    for n in range(2, 4 + blas_passes.POOL_SHAPES):
        net.forward(theta, rng.standard_normal((n, 6)))
    assert list(blas_passes._pool) == [((6, 9, 3), "float64", n)
                                       for n in range(4, 4 + blas_passes.POOL_SHAPES)]  # the latest shapes
    pullbacks = [net.forward_and_vjp(theta, rng.standard_normal((5, 6)))[1] for _ in range(4)]
    del pullbacks
    gc.collect()
    assert len(blas_passes._pool[((6, 9, 3), "float64", 5)]) == blas_passes.POOL_PER_SHAPE
