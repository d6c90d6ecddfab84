"""Batch normalisation's VJP, JVP and R-backward against central differences, then
inside the MLP (``batchnorm=True``): every derivative of the engine, the
layer formula, the invariances it implies, and its input checks."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import inner_loop, maml
from tinymeta.nn.batchnorm import BN_EPS, normalize, normalize_apply, normalize_r_backward

BACKENDS = ["numpy", "numba"]


def _case(rng, n=5, d=4):
    return rng.standard_normal((n, d)) * 2 + 1, rng.standard_normal((n, d)), rng.standard_normal((n, d))


def test_normalised_columns_have_zero_mean_and_unit_variance_up_to_eps(rng):
    A = rng.standard_normal((50, 3)) * 10 + 4
    X_hat, sigma = normalize(A, eps=0.0)
    assert np.allclose(X_hat.mean(axis=0), 0, atol=1e-14) and np.allclose(X_hat.std(axis=0), 1)
    assert np.allclose(sigma, A.std(axis=0))


def test_vjp_matches_finite_differences(rng):
    A, G, _ = _case(rng)
    X_hat, sigma = normalize(A)
    f = lambda a: np.sum(normalize(a.reshape(A.shape))[0] * G)  # noqa: E731
    assert gc.rel_error(normalize_apply(X_hat, sigma, G).ravel(), gc.numerical_gradient(f, A.ravel())) < 1e-9


def test_jvp_is_the_same_symmetric_operator(rng):
    A, A_dot, _ = _case(rng)
    X_hat, sigma = normalize(A)
    numeric = gc.numerical_jvp(lambda a: normalize(a)[0], A, A_dot)
    assert gc.rel_error(normalize_apply(X_hat, sigma, A_dot), numeric) < 1e-9


def test_r_backward_matches_finite_differences_of_the_vjp(rng):
    A, A_dot, dX_hat = _case(rng)
    dX_hat_dot = rng.standard_normal(A.shape)
    X_hat, sigma = normalize(A)
    got = normalize_r_backward(X_hat, sigma, A_dot, dX_hat, dX_hat_dot)

    def vjp(eps_dir):  # dA at (A + r A_dot) for cotangent dX_hat + r dX_hat_dot, as a function of r
        a = A + eps_dir * A_dot
        return normalize_apply(*normalize(a), dX_hat + eps_dir * dX_hat_dot)

    numeric = (vjp(1e-5) - vjp(-1e-5)) / 2e-5
    assert gc.rel_error(got, numeric) < 1e-8


def test_single_row_normalises_to_zero_without_nan():
    X_hat, sigma = normalize(np.array([[3.0, -1.0]]))
    assert np.all(X_hat == 0) and np.all(np.isfinite(sigma))


# ------------------------------------------------ batch norm inside the MLP
def _bn_net(sizes=(3, 8, 6, 4), activation="tanh", loss="mse", backend="numpy", **kw):
    return tm.MLP(sizes, activation=activation, loss=loss, backend=backend, batchnorm=True, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_batchnorm_net_derivatives_match_finite_differences(activation, loss, backend, rng):
    net = _bn_net(activation=activation, loss=loss, backend=backend)
    theta, X, y = gc.random_problem(net, rng, n=7)  # relu: every hidden Z at least 1e-4 from the kink
    results = gc.check_mlp(net, theta, X, y, rng)
    assert {r.name for r in results} >= {"gradient", "vjp (theta)", "vjp (X)", "jvp", "hvp", "hvp over (theta, X)",
                                         "hvp symmetry u.Hv = v.Hu", "hvp linearity"}
    for r in results:
        assert r.passed, r
        assert r.tol <= gc.FD_TOL


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_batchnorm_hvp_builds_the_finite_difference_hessian(loss, rng):
    net = _bn_net(sizes=(2, 3, 3, 2), loss=loss)
    theta, X, y = gc.random_problem(net, rng, n=5)
    H = gc.explicit_hessian(lambda v: net.hvp(theta, X, y, v), net.n_params)
    grad = lambda t: net.loss_and_grad(t, X, y)[1]  # noqa: E731
    numeric = np.stack([gc.numerical_hvp(grad, theta, e) for e in np.eye(net.n_params)], axis=1)
    assert gc.rel_error(H, numeric) < 1e-6
    assert gc.rel_error(H, H.T) < gc.EXACT_TOL


def test_forward_is_the_normalised_layer_formula(rng):
    net = _bn_net(sizes=(3, 5, 4, 2))
    theta, X = net.init(rng) + 0.1 * rng.standard_normal(net.n_params), rng.standard_normal((6, 3))
    (W0, b0), (W1, b1), (W2, b2) = net.unflatten(theta)

    def bn(A):  # by hand: population variance over the rows, floor BN_EPS
        return (A - A.mean(axis=0)) / np.sqrt(A.var(axis=0) + BN_EPS)

    expected = np.tanh(bn(np.tanh(bn(X @ W0) + b0) @ W1) + b1) @ W2 + b2
    for backend in BACKENDS:
        np.testing.assert_allclose(net.replace(backend=backend).forward(theta, X), expected, rtol=1e-13, atol=1e-13)


def test_batchnorm_keeps_the_parameter_layout(rng):
    plain = tm.MLP([3, 8, 6, 4])
    assert _bn_net().n_params == plain.n_params and _bn_net().layer_offsets == plain.layer_offsets


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_ignores_a_shift_shared_by_all_rows(backend, rng):
    """The first layer's column means absorb ``X + 1 s^T``: the output, and so the loss, do not change,
    and the input gradient sums to zero over the rows."""
    net = _bn_net(backend=backend)
    theta, X, y = gc.random_problem(net, rng)
    shift = rng.standard_normal(3) * 5
    np.testing.assert_allclose(net.forward(theta, X + shift), net.forward(theta, X), rtol=1e-12, atol=1e-12)
    _, _, dX = net.loss_and_grad(theta, X, y, input_grad=True)
    assert np.abs(dX.sum(axis=0)).max() < 1e-13 * np.abs(dX).max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_row_is_refused_two_rows_work(backend, rng):
    net = _bn_net(backend=backend)
    theta = net.init(rng)
    X, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    for call in (lambda: net.forward(theta, X[:1]), lambda: net.loss_and_grad(theta, X[:1], y[:1]),
                 lambda: net.hvp(theta, X[:1], y[:1], theta), lambda: net.vjp(theta, X[:1], y[:1])):
        with pytest.raises(ValueError, match="X must have at least 2 rows with batchnorm=True.*got 1"):
            call()
    assert np.all(np.isfinite(net.hvp(theta, X, y, theta)))
    no_hidden = tm.MLP([3, 4], batchnorm=True, backend=backend)  # nothing to normalise: one row is fine
    assert no_hidden.forward(no_hidden.init(rng), X[:1]).shape == (1, 4)


def test_batchnorm_is_part_of_the_spec():
    net = _bn_net(backend="numba")
    assert tm.MLP(**net.config()) == net and net.config()["batchnorm"] is True
    assert net.replace(batchnorm=False) == tm.MLP([3, 8, 6, 4], activation="tanh", backend="numba")
    assert net != net.replace(batchnorm=False) and "batchnorm=True" in repr(net)
    assert tm.MLP([3, 4]).batchnorm is False
    with pytest.raises(TypeError, match="batchnorm must be True or False, got 'yes'"):
        tm.MLP([3, 4], batchnorm="yes")


# ------------------------------------ the meta-learners on a normalised net
def _task_batch(net, rng, T=2, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_maml_meta_gradient_through_batchnorm_matches_finite_differences(inner_steps, loss, backend, rng):
    """Second-order MAML differentiates through the support batch's statistics at every inner step
    (the HVPs of inner_loop.py) and the query batch's at the end."""
    net = _bn_net(sizes=(2, 7, 6, 3), loss=loss, backend=backend)
    theta = net.init(rng) + 0.1 * rng.standard_normal(net.n_params)
    batch = _task_batch(net, rng)
    inner_lr = 0.3 if loss == "xent" else 0.05
    loss_value, grad = maml.meta_loss_and_grad(net, theta, batch, inner_lr, inner_steps)
    meta_loss = lambda t: maml.meta_loss_and_grad(net, t, batch, inner_lr, inner_steps)[0]  # noqa: E731
    numeric = gc.numerical_gradient(meta_loss, theta)
    assert gc.rel_error(grad, numeric) < gc.FD_TOL
    first_order = maml.meta_loss_and_grad(net, theta, batch, inner_lr, inner_steps, first_order=True)[1]
    assert gc.rel_error(grad, first_order) > 1e-4  # the Hessian terms matter: the check above tests them


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_preconditioner_gradient_through_batchnorm_matches_finite_differences(inner_steps, rng):
    net = _bn_net(sizes=(2, 5, 4, 1), backend="numba")
    theta = net.init(rng) + 0.1 * rng.standard_normal(net.n_params)
    batch = _task_batch(net, rng)
    precond = rng.uniform(0.01, 0.1, net.n_params)
    _, _, d_precond = inner_loop.meta_loss_and_grad(net, theta, batch, precond, inner_steps)
    numeric = gc.numerical_gradient(lambda p: inner_loop.meta_loss_and_grad(net, theta, batch, p, inner_steps)[0],
                                    precond)
    assert gc.rel_error(d_precond, numeric) < gc.FD_TOL


def test_maml_refuses_a_one_shot_regression_support_set(rng):
    net = _bn_net(sizes=(1, 8, 1))
    batch = _task_batch(net, rng, K=1)
    with pytest.raises(ValueError, match="X must have at least 2 rows with batchnorm=True"):
        maml.meta_loss_and_grad(net, net.init(rng), batch, 0.01, 1)


# ------------------------------------------------------- run configuration
def test_train_config_builds_a_normalised_net_and_round_trips():
    from tinymeta.config import TrainConfig

    c = TrainConfig(batchnorm=True, hidden=(8, 4))
    assert c.net().batchnorm and not TrainConfig().net().batchnorm
    assert TrainConfig.from_dict(c.to_dict()) == c and c.to_dict()["batchnorm"] is True
    saved_before = {k: v for k, v in TrainConfig().to_dict().items() if k != "batchnorm"}
    assert TrainConfig.from_dict(saved_before).batchnorm is False  # runs saved without the field still load
    with pytest.raises(TypeError, match="batchnorm must be True or False, got 'no'"):
        TrainConfig(batchnorm="no")
    with pytest.raises(ValueError, match="batchnorm must be False for cavia"):
        TrainConfig(algo="cavia", batchnorm=True)


def test_cli_flag_sets_batchnorm_only_when_given():
    from tinymeta.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--batchnorm"]).batchnorm is True
    assert parser.parse_args(["train"]).batchnorm is None  # left to TrainConfig (and refused with --resume)


def test_freezing_the_offsets_in_the_inner_loop_as_the_reference_code_does(rng):
    """The MAML reference code adapts the weights but not batch norm's offsets: zero the hidden
    biases in the preconditioner. The meta-gradient stays exact and the offsets stay put."""
    net = _bn_net(sizes=(2, 6, 5, 3), loss="xent", backend="numba")
    theta = net.init(rng) + 0.1 * rng.standard_normal(net.n_params)
    batch = _task_batch(net, rng)
    precond = np.full(net.n_params, 0.3)
    for _, b in net.unflatten(precond)[:-1]:
        b[...] = 0.0
    thetas, _ = inner_loop.adapt(net, theta, batch.X_support[0], batch.y_support[0], precond, 2)
    for (_, b_before), (_, b_after) in zip(net.unflatten(theta)[:-1], net.unflatten(thetas[-1])[:-1]):
        assert np.array_equal(b_before, b_after)
    _, grad, _ = inner_loop.meta_loss_and_grad(net, theta, batch, precond, 2)
    numeric = gc.numerical_gradient(lambda t: inner_loop.meta_loss_and_grad(net, t, batch, precond, 2)[0], theta)
    assert gc.rel_error(grad, numeric) < gc.FD_TOL


def test_maml_option_keeps_the_offsets_out_of_the_inner_loop_exactly(rng):
    """``adapt_bn_offsets=False``: P is alpha on the weights and the output bias, 0 on the hidden
    biases; training, prediction and batched evaluation all use it, and the meta-gradient is exact."""
    net = _bn_net(sizes=(2, 6, 5, 3), loss="xent", backend="numba")
    config = maml.Config(inner_lr=0.3, adapt_bn_offsets=False)
    precond = maml.preconditioner(net, config)
    layers = net.unflatten(precond)
    assert all(np.all(b == 0.0) for _, b in layers[:-1]) and np.all(layers[-1][1] == 0.3)
    assert all(np.all(W == 0.3) for W, _ in layers)
    assert np.all(maml.preconditioner(net.replace(batchnorm=False), config) == 0.3)  # no batch norm: no offsets
    assert np.all(maml.preconditioner(net, maml.Config(inner_lr=0.3)) == 0.3)
    theta = net.init(rng) + 0.1 * rng.standard_normal(net.n_params)
    batch = _task_batch(net, rng)
    loss, grad = maml.meta_loss_and_grad(net, theta, batch, 0.3, 2, adapt_bn_offsets=False)
    ref_loss, ref_grad, _ = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, 2)
    assert loss == ref_loss and np.array_equal(grad, ref_grad)
    numeric = gc.numerical_gradient(
        lambda t: maml.meta_loss_and_grad(net, t, batch, 0.3, 2, adapt_bn_offsets=False)[0], theta)
    assert gc.rel_error(grad, numeric) < gc.FD_TOL
    X_support, y_support, X_query, _ = batch.task(0)
    out = maml.predict(net, {"theta": theta}, X_support, y_support, X_query, 2, config)
    assert np.array_equal(out, inner_loop.reference_predictions(net, theta, X_support, y_support, X_query,
                                                                precond, 2))
    from tinymeta.algorithms import batched_predict

    stacked = batched_predict.predict_batch(net, maml, {"theta": theta}, config, batch, 2)
    assert np.array_equal(np.asarray(stacked)[0], out)
    with pytest.raises(TypeError, match="adapt_bn_offsets"):
        maml.Config(adapt_bn_offsets="no")
