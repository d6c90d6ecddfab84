"""The finite-difference toolkit itself: exact on functions whose derivatives
are known, and able to catch a wrong derivative."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc


def test_rel_error_is_normwise_and_symmetric():
    a, b = np.array([1.0, 0.0]), np.array([1.0, 1e-3])
    assert gc.rel_error(a, b) == gc.rel_error(b, a) == pytest.approx(1e-3, rel=1e-6)
    assert gc.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert gc.rel_error([1.0], [-1.0]) == 2.0


def test_central_differences_are_exact_on_quadratics(rng):
    A = rng.standard_normal((5, 5))
    A = A + A.T
    b = rng.standard_normal(5)
    f = lambda x: 0.5 * x @ A @ x + b @ x  # noqa: E731
    x, v = rng.standard_normal((2, 5))
    assert gc.rel_error(gc.numerical_gradient(f, x), A @ x + b) < 1e-9
    assert gc.rel_error(gc.numerical_hvp(lambda z: A @ z + b, x, v), A @ v) < 1e-9
    assert gc.rel_error(gc.explicit_hessian(lambda v: A @ v, 5), A) == 0.0
    assert gc.numerical_directional_derivative(f, x, v) == pytest.approx((A @ x + b) @ v, rel=1e-9)


def test_numerical_vjp_and_jvp_of_a_linear_map(rng):
    M = rng.standard_normal((3, 4))
    x, dout, v = rng.standard_normal(4), rng.standard_normal(3), rng.standard_normal(4)
    assert gc.rel_error(gc.numerical_vjp(lambda z: M @ z, x, dout), M.T @ dout) < 1e-9
    assert gc.rel_error(gc.numerical_jvp(lambda z: M @ z, x, v), M @ v) < 1e-9


def test_indices_select_coordinates(rng):
    f = lambda x: np.sum(x ** 3)  # noqa: E731
    x = rng.standard_normal(6)
    assert np.allclose(gc.numerical_gradient(f, x, indices=[1, 4]), 3 * x[[1, 4]] ** 2, rtol=1e-8)


def test_a_wrong_gradient_is_caught(rng):
    net = tm.MLP([3, 5, 2], activation="tanh")
    theta, X, y = gc.random_problem(net, rng)
    g = net.loss_and_grad(theta, X, y)[1]
    g[3] *= 1.01
    numeric = gc.numerical_gradient(lambda t: net.loss(t, X, y), theta)
    result = gc.compare("perturbed gradient", g, numeric)
    assert not result.passed and result.rel_error > 1e-6


def test_random_problem_keeps_relu_away_from_kinks(rng):
    net = tm.MLP([3, 30, 30, 2], activation="relu")
    theta, X, y = gc.random_problem(net, rng, n=20, margin=1e-3)
    assert gc.relu_margin(net, theta, X) > 1e-3
    assert y.shape == (20, 2)


def test_check_mlp_refuses_float32(rng):
    net = tm.MLP([2, 3, 1], dtype="float32")
    theta, X, y = gc.random_problem(net, rng)
    with pytest.raises(ValueError, match="need a float64 net"):
        gc.check_mlp(net, theta, X, y, rng)


def test_engine_report_passes_and_covers_every_configuration():
    rows = gc.engine_report(sizes=(2, 5, 3), seed=1)
    assert all(r.passed for r in rows)
    seen = {(r.activation, r.loss, r.backend, r.dtype, r.batchnorm) for r in rows}
    assert len(seen) == 2 * 2 * 2 * 2 * 2
