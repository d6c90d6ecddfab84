"""CAVIA: the context adapter's gradient and HVP over w = [theta; phi], and the exact
meta-gradient for the shared theta, checked by finite differences; degenerate cases."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import cavia, inner_loop


def _batch(d_x, net, rng, T=3, K=5, Q=6):
    d_out = net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_x)), rng.standard_normal((T, Q, d_x))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


def _with_context(X, phi):
    return np.hstack([X, np.tile(phi, (X.shape[0], 1))])


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_context_model_gradient_and_hvp_match_finite_differences(loss, rng):
    net = tm.MLP([2 + 3, 6, 3], activation="tanh", loss=loss)
    model = cavia.ContextModel(net, 3)
    batch = _batch(2, net, rng, T=1)
    X, y = batch.X_support[0], batch.y_support[0]
    w = np.concatenate([net.init(rng), rng.standard_normal(3)])
    _, g = model.loss_and_grad(w, X, y)
    assert gc.rel_error(g, gc.numerical_gradient(lambda z: model.loss_and_grad(z, X, y)[0], w)) < 1e-6
    v = rng.standard_normal(w.size)
    numeric = gc.numerical_hvp(lambda z: model.loss_and_grad(z, X, y)[1], w, v)
    assert gc.rel_error(model.hvp(w, X, y, v), numeric) < 1e-6
    assert np.array_equal(model.forward(w, X), net.forward(w[:net.n_params], _with_context(X, w[net.n_params:])))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_meta_gradient_matches_finite_differences(inner_steps, loss, backend, rng):
    net = tm.MLP([1 + 2, 8, 6, 2], activation="tanh", loss=loss, backend=backend)
    theta, batch = net.init(rng), _batch(1, net, rng)
    _, grad = cavia.meta_loss_and_grad(net, theta, batch, 2, 0.5, inner_steps)
    numeric = gc.numerical_gradient(lambda t: cavia.meta_loss_and_grad(net, t, batch, 2, 0.5, inner_steps)[0], theta)
    assert gc.rel_error(grad, numeric) < 1e-6


def test_one_step_matches_adapting_the_context_by_hand(rng):
    """phi_1 = -alpha * sum of the context columns of dL_S/dX at phi = 0; loss = L_Q(theta, phi_1)."""
    net = tm.MLP([1 + 4, 10, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(1, net, rng, T=2)
    losses = []
    for i in range(2):
        Xs, ys, Xq, yq = batch.task(i)
        _, _, dX = net.loss_and_grad(theta, _with_context(Xs, np.zeros(4)), ys, input_grad=True)
        phi = -0.7 * dX[:, 1:].sum(axis=0)
        losses.append(net.loss(theta, _with_context(Xq, phi), yq))
    loss, _ = cavia.meta_loss_and_grad(net, theta, batch, 4, 0.7, 1)
    assert loss == pytest.approx(np.mean(losses), rel=1e-13)


def test_zero_inner_steps_give_the_plain_gradient_with_zero_context(rng):
    net = tm.MLP([2 + 3, 8, 3], activation="tanh", loss="xent")
    theta, batch = net.init(rng), _batch(2, net, rng)
    loss, grad = cavia.meta_loss_and_grad(net, theta, batch, 3, 1.0, 0)
    plain = [net.loss_and_grad(theta, _with_context(batch.X_query[i], np.zeros(3)), batch.y_query[i])
             for i in range(3)]
    assert loss == pytest.approx(np.mean([p[0] for p in plain]), rel=1e-14)
    assert gc.rel_error(grad, np.mean([p[1] for p in plain], axis=0)) < 1e-14


def test_first_order_is_the_query_gradient_at_the_adapted_context(rng):
    net = tm.MLP([1 + 2, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(1, net, rng, T=2)
    _, grad = cavia.meta_loss_and_grad(net, theta, batch, 2, 0.5, 2, first_order=True)
    model = cavia.ContextModel(net, 2)
    precond = np.r_[np.zeros(net.n_params), 0.5, 0.5]
    expected = []
    for i in range(2):
        Xs, ys, Xq, yq = batch.task(i)
        ws, _ = inner_loop.adapt(model, np.r_[theta, 0.0, 0.0], Xs, ys, precond, 2)
        assert np.array_equal(ws[-1][:net.n_params], theta)  # only the context moves
        expected.append(model.loss_and_grad(ws[-1], Xq, yq)[1][:net.n_params])
    assert gc.rel_error(grad, np.mean(expected, axis=0)) < 1e-14


def test_context_is_reset_to_zero_for_every_task(rng):
    net = tm.MLP([1 + 2, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(1, net, rng, T=4)
    whole = cavia.meta_loss_and_grad(net, theta, batch, 2, 0.5, 2)
    parts = [cavia.meta_loss_and_grad(net, theta, tm.TaskBatch(*(a[i:i + 1] for a in batch)), 2, 0.5, 2)
             for i in range(4)]
    assert whole[0] == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-14)
    assert gc.rel_error(whole[1], np.mean([p[1] for p in parts], axis=0)) < 1e-14


def test_widen_input_and_the_protocol(rng):
    net = cavia.widen_input(tm.MLP([1, 40, 40, 1]), 5)
    config = cavia.Config()
    assert net.sizes == (6, 40, 40, 1)
    params = cavia.init_params(net, rng, config)
    loss, grads = cavia.meta_step(net, params, _batch(1, net, rng, K=10, Q=10), config)
    assert set(grads) == {"theta"} and grads["theta"].shape == (net.n_params,) and np.isfinite(loss)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(inner_lr=-1.0), ValueError, "inner_lr must be > 0, got -1.0"),
    (dict(inner_steps=-1), ValueError, "inner_steps must be >= 0, got -1"),
    (dict(n_context=0), ValueError, "n_context must be >= 1, got 0"),
    (dict(n_context=3), ValueError, r"net.sizes\[0\] must exceed n_context = 3 .* got 3"),
    (dict(n_context=1), ValueError, r"X_support must have shape \(3, 5, 2\), got \(3, 5, 1\)"),
])
def test_bad_arguments_are_named(kwargs, error, message, rng):
    net = tm.MLP([1 + 2, 4, 1])
    args = dict(n_context=2, inner_lr=1.0, inner_steps=1) | kwargs
    with pytest.raises(error, match=message):
        cavia.meta_loss_and_grad(net, net.init(rng), _batch(1, net, rng), **args)


def test_predictions_start_from_zero_context_and_mark_divergence(rng):
    net = tm.MLP([1 + 2, 10, 1], activation="tanh")
    config = cavia.Config(n_context=2, inner_lr=0.5)
    theta, batch = net.init(rng), _batch(1, net, rng, T=1)
    Xs, ys, Xq, _ = batch.task(0)
    out = cavia.predict(net, {"theta": theta}, Xs, ys, Xq, 3, config)
    assert out.shape == (4, 6, 1) and np.array_equal(out[0], net.forward(theta, _with_context(Xq, np.zeros(2))))
    assert np.isfinite(out).all() and not np.array_equal(out[0], out[3])
    linear = tm.MLP([1 + 2, 1])  # tanh saturates; a linear model's context steps blow up
    out = cavia.predict(linear, {"theta": linear.init(rng)}, Xs, ys * 1e200, Xq, 20,
                        cavia.Config(n_context=2, inner_lr=1e10))
    assert out.shape == (21, 6, 1) and np.isfinite(out[0]).all() and np.isnan(out[-1]).all()
    with pytest.raises(ValueError, match=r"X_query must have shape \(n, 1\), got \(6, 3\)"):
        cavia.predict(net, {"theta": theta}, Xs, ys, np.hstack([Xq, Xq, Xq]), 1, config)
