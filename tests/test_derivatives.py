"""Every derivative of the engine against central finite differences (float64),
the Hessian-vector product against the explicit Hessian, its symmetry and
linearity, and float32 against float64."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.gradcheck import random_problem

BACKENDS = ["numba", "numpy"]


@pytest.mark.kernels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "softplus"])
@pytest.mark.parametrize("sizes", [(3, 8, 6, 4), (2, 16, 3), (4, 3)])
def test_every_derivative_matches_finite_differences(sizes, activation, loss, backend, rng):
    net = tm.MLP(sizes, activation=activation, loss=loss, backend=backend)
    theta, X, y = random_problem(net, rng)
    for result in gc.check_mlp(net, theta, X, y, rng, full=True):
        assert result.passed, result


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_sinusoid_net_derivatives(activation, backend, rng):
    net = tm.MLP([1, 40, 40, 1], activation=activation, backend=backend)
    theta, X, y = random_problem(net, rng, n=10)
    for result in gc.check_mlp(net, theta, X, y, rng, full=True):
        assert result.passed, result


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["xent", "mse"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_omniglot_sized_net_derivatives_by_directions(activation, loss, backend, rng):
    net = tm.MLP([784, 256, 128, 64, 64, 5], activation=activation, loss=loss, backend=backend)
    theta, X, y = random_problem(net, rng, n=5, jitter=0.0)
    for _ in range(2):
        for result in gc.check_mlp(net, theta, X, y, rng, full=False):
            assert result.passed, result


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_hvp_equals_the_explicit_hessian_on_a_tiny_net(loss, backend, rng):
    net = tm.MLP([2, 3, 2], activation="tanh", loss=loss, backend=backend)
    theta, X, y = random_problem(net, rng, n=5)
    H = gc.explicit_hessian(lambda v: net.hvp(theta, X, y, v), net.n_params)
    grad = lambda t: net.loss_and_grad(t, X, y)[1]  # noqa: E731
    H_fd = np.column_stack([gc.numerical_hvp(grad, theta, e) for e in np.eye(net.n_params)])
    assert gc.rel_error(H, H_fd) < 1e-8
    assert np.abs(H - H.T).max() <= 1e-12 * np.abs(H).max()
    v = rng.standard_normal(net.n_params)
    assert gc.rel_error(H @ v, net.hvp(theta, X, y, v)) < 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_hvp_is_symmetric_and_linear(activation, backend, rng):
    net = tm.MLP([1, 40, 40, 1], activation=activation, backend=backend)
    theta, X, y = random_problem(net, rng, n=10)
    u, v = rng.standard_normal((2, net.n_params))
    hu, hv = net.hvp(theta, X, y, u), net.hvp(theta, X, y, v)
    assert abs(u @ hv - v @ hu) <= 1e-12 * max(abs(u @ hv), abs(v @ hu))
    assert gc.rel_error(net.hvp(theta, X, y, 2.5 * u - 0.5 * v), 2.5 * hu - 0.5 * hv) < 1e-12
    assert np.all(net.hvp(theta, X, y, np.zeros_like(u)) == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_hessian_has_no_activation_curvature_term(backend, rng):
    """With ReLU and a linear last layer, L is quadratic along the last layer's parameters."""
    net = tm.MLP([3, 8, 2], activation="relu", backend=backend)
    theta, X, y = random_problem(net, rng)
    v = np.zeros(net.n_params)
    v[net.layer_offsets[1]:] = rng.standard_normal(net.n_params - net.layer_offsets[1])
    exact = (net.loss(theta + v, X, y) - net.loss(theta, X, y)
             - net.loss_and_grad(theta, X, y)[1] @ v)
    assert 0.5 * v @ net.hvp(theta, X, y, v) == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_float32_matches_float64_to_float32_accuracy(activation, loss, backend, rng):
    net64 = tm.MLP([1, 40, 40, 1] if loss == "mse" else [8, 40, 40, 5],
                   activation=activation, loss=loss, backend=backend)
    net32 = net64.replace(dtype="float32")
    theta, X, y = random_problem(net64, rng, n=10)
    v, dout = rng.standard_normal(net64.n_params), rng.standard_normal((10, net64.sizes[-1]))
    t32, X32, v32 = theta.astype(np.float32), X.astype(np.float32), v.astype(np.float32)
    y32 = y.astype(np.float32) if loss == "mse" else y
    t64, X64, v64 = t32.astype(np.float64), X32.astype(np.float64), v32.astype(np.float64)
    y64 = y32.astype(np.float64) if loss == "mse" else y
    pairs = [
        (net32.forward(t32, X32), net64.forward(t64, X64)),
        (net32.loss_and_grad(t32, X32, y32)[1], net64.loss_and_grad(t64, X64, y64)[1]),
        (net32.vjp(t32, X32, dout)[0], net64.vjp(t64, X64, dout)[0]),
        (net32.jvp(t32, X32, v32), net64.jvp(t64, X64, v64)),
        (net32.hvp(t32, X32, y32, v32), net64.hvp(t64, X64, y64, v64)),
    ]
    for got, want in pairs:
        assert got.dtype == np.float32
        assert gc.rel_error(got, want) < gc.FLOAT32_TOL
    assert net32.loss(t32, X32, y32) == pytest.approx(net64.loss(t64, X64, y64), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_loss_input_gradient_matches_finite_differences(loss, backend, rng):
    net = tm.MLP([3, 8, 4], activation="tanh", loss=loss, backend=backend)
    theta, X, y = random_problem(net, rng)
    _, grad, dX = net.loss_and_grad(theta, X, y, input_grad=True)
    assert np.array_equal(grad, net.loss_and_grad(theta, X, y)[1])
    numeric = gc.numerical_gradient(lambda x: net.loss(theta, x.reshape(X.shape), y), X.ravel())
    assert gc.rel_error(dX.ravel(), numeric) < 1e-8


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_tangent_alone_gives_the_mixed_hessian_blocks(backend, rng):
    """Direction (0, X_dot): the theta block is H_theta,X X_dot, the X block H_X,X X_dot."""
    net = tm.MLP([3, 8, 2], activation="tanh", backend=backend)
    theta, X, y = random_problem(net, rng)
    X_dot = rng.standard_normal(X.shape)
    h_theta, h_X = net.hvp(theta, X, y, np.zeros_like(theta), X_dot=X_dot, input_grad=True)
    g = lambda x: net.loss_and_grad(theta, x.reshape(X.shape), y, input_grad=True)  # noqa: E731
    assert gc.rel_error(h_theta, gc.numerical_hvp(lambda x: g(x)[1], X.ravel(), X_dot.ravel())) < 1e-7
    assert gc.rel_error(h_X.ravel(), gc.numerical_hvp(lambda x: g(x)[2].ravel(), X.ravel(), X_dot.ravel())) < 1e-7
    jvp = net.jvp(theta, X, np.zeros_like(theta), X_dot=X_dot)
    assert gc.rel_error(jvp, gc.numerical_jvp(lambda x: net.forward(theta, x), X, X_dot)) < 1e-8
