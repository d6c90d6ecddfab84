"""Meta-SGD: exact gradients wrt theta and the step vector alpha, checked by finite
differences of the whole meta-objective, a one-step closed form, and degenerate cases."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta import optim
from tinymeta.algorithms import maml, metasgd


def _batch(net, rng, T=3, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


def _alpha(net, rng, scale):
    return scale * rng.uniform(0.5, 1.5, net.n_params)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_theta_and_alpha_gradients_match_finite_differences(inner_steps, loss, backend, rng):
    net = tm.MLP([2, 7, 6, 3], activation="tanh", loss=loss, backend=backend)
    theta, batch = net.init(rng), _batch(net, rng)
    alpha = _alpha(net, rng, 0.3 if loss == "xent" else 0.05)
    _, d_theta, d_alpha = metasgd.meta_loss_and_grad(net, theta, alpha, batch, inner_steps)
    num_theta = gc.numerical_gradient(lambda t: metasgd.meta_loss_and_grad(net, t, alpha, batch, inner_steps)[0],
                                      theta)
    num_alpha = gc.numerical_gradient(lambda a: metasgd.meta_loss_and_grad(net, theta, a, batch, inner_steps)[0],
                                      alpha)
    assert gc.rel_error(d_theta, num_theta) < 1e-6
    assert gc.rel_error(d_alpha, num_alpha) < 1e-6


def test_one_step_alpha_gradient_is_minus_support_gradient_times_query_gradient(rng):
    """dL_Q(theta - alpha * g_S) / d alpha = -g_S(theta) * g_Q(theta') for one step."""
    net = tm.MLP([1, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=2)
    alpha = _alpha(net, rng, 0.1)
    _, _, d_alpha = metasgd.meta_loss_and_grad(net, theta, alpha, batch, 1)
    expected = []
    for i in range(2):
        Xs, ys, Xq, yq = batch.task(i)
        g_s = net.loss_and_grad(theta, Xs, ys)[1]
        g_q = net.loss_and_grad(theta - alpha * g_s, Xq, yq)[1]
        expected.append(-g_s * g_q)
    assert gc.rel_error(d_alpha, np.mean(expected, axis=0)) < 1e-14


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_constant_alpha_equals_maml(inner_steps, rng):
    """alpha = inner_lr * 1 is MAML; the sum of d alpha is then dL/d inner_lr."""
    net = tm.MLP([2, 8, 2], activation="tanh")
    theta, batch, lr = net.init(rng), _batch(net, rng), 0.07
    loss, d_theta, d_alpha = metasgd.meta_loss_and_grad(net, theta, np.full(net.n_params, lr), batch, inner_steps)
    loss_maml, d_maml = maml.meta_loss_and_grad(net, theta, batch, lr, inner_steps)
    assert loss == loss_maml and np.array_equal(d_theta, d_maml)
    d_lr = gc.numerical_directional_derivative(
        lambda a: maml.meta_loss_and_grad(net, theta, batch, float(a[0]), inner_steps)[0], [lr], np.ones(1))
    assert d_alpha.sum() == pytest.approx(d_lr, rel=1e-7)


def test_zero_inner_steps_give_the_plain_gradient_and_no_alpha_gradient(rng):
    net = tm.MLP([2, 6, 3], activation="tanh", loss="xent")
    theta, batch = net.init(rng), _batch(net, rng)
    loss, d_theta, d_alpha = metasgd.meta_loss_and_grad(net, theta, _alpha(net, rng, 0.1), batch, 0)
    plain = [net.loss_and_grad(theta, batch.X_query[i], batch.y_query[i]) for i in range(3)]
    assert loss == pytest.approx(np.mean([p[0] for p in plain]), rel=1e-14)
    assert gc.rel_error(d_theta, np.mean([p[1] for p in plain], axis=0)) < 1e-14
    assert not d_alpha.any()


def test_init_params_draws_alpha_in_the_paper_range_and_maml_theta(rng):
    net = tm.MLP([1, 40, 40, 1])
    config = metasgd.Config()
    state = rng.bit_generator.state
    params = metasgd.init_params(net, rng, config)
    rng.bit_generator.state = state
    theta_maml = maml.init_params(net, rng, maml.Config())["theta"]
    assert set(params) == {"theta", "alpha"} and params["alpha"].shape == params["theta"].shape
    assert params["alpha"].min() >= 0.005 and params["alpha"].max() <= 0.1
    assert params["alpha"].std() > 0.02  # spread over the range, not a constant
    assert np.array_equal(params["theta"], theta_maml)
    again = metasgd.init_params(net, np.random.default_rng(1), config)
    same = metasgd.init_params(net, np.random.default_rng(1), config)
    assert all(np.array_equal(again[k], same[k]) for k in again)


def test_meta_step_descends_on_theta_and_alpha(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    config = metasgd.Config()
    params, batch = metasgd.init_params(net, rng, config), _batch(net, rng)
    loss, grads = metasgd.meta_step(net, params, batch, config)
    assert set(grads) == set(params)
    new, _ = optim.SGD(1e-3).update(params, grads, {})
    assert metasgd.meta_step(net, new, batch, config)[0] < loss


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(inner_steps=-1), ValueError, "inner_steps must be >= 0, got -1"),
    (dict(inner_steps=2.0), TypeError, "inner_steps must be an integer"),
    (dict(alpha_init_low=-0.1), ValueError, "alpha_init_low must be >= 0, got -0.1"),
    (dict(alpha_init_low=0.2), ValueError, r"alpha_init_high must be >= alpha_init_low = 0.2, got 0.1"),
    (dict(alpha_init_high=float("nan")), ValueError, "alpha_init_high must be finite"),
])
def test_bad_configurations_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        metasgd.Config(**kwargs)


def test_bad_arguments_are_named(rng):
    net = tm.MLP([1, 4, 1])
    theta, batch = net.init(rng), _batch(net, rng)
    alpha = np.full(net.n_params, 0.01)
    with pytest.raises(ValueError, match=rf"alpha must have shape \({net.n_params},\), got \(3,\)"):
        metasgd.meta_loss_and_grad(net, theta, alpha[:3], batch)
    with pytest.raises(ValueError, match="alpha must be finite"):
        metasgd.meta_loss_and_grad(net, theta, np.where(np.arange(net.n_params) == 2, np.inf, alpha), batch)
    with pytest.raises(ValueError, match="inner_steps must be >= 0, got -2"):
        metasgd.meta_loss_and_grad(net, theta, alpha, batch, -2)
    with pytest.raises(ValueError, match=r"X_support must have shape \(T, K, 1\) with T, K >= 1, got \(0, 5, 1\)"):
        metasgd.meta_loss_and_grad(net, theta, alpha, tm.TaskBatch(*(a[:0] for a in batch)))


def test_predictions_have_one_row_per_step_and_nan_after_divergence(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    config = metasgd.Config()
    params, batch = metasgd.init_params(net, rng, config), _batch(net, rng, T=1)
    out = metasgd.predict(net, params, batch.X_support[0], batch.y_support[0], batch.X_query[0], 3, config)
    assert out.shape == (4, 6, 1) and np.isfinite(out).all()
    first = net.forward(params["theta"] - params["alpha"] * net.loss_and_grad(
        params["theta"], batch.X_support[0], batch.y_support[0])[1], batch.X_query[0])
    assert np.array_equal(out[1], first)
    wild = dict(params, alpha=np.full(net.n_params, 10.0))
    out = metasgd.predict(net, wild, batch.X_support[0], batch.y_support[0] * 1e150, batch.X_query[0], 5, config)
    assert out.shape == (6, 6, 1) and np.isfinite(out[0]).all() and np.isnan(out[-1]).all()
