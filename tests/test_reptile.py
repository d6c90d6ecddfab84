"""Reptile: the update direction theta - theta_k against hand-run SGD and Adam, its
second-order Taylor term, the annealed outer step, and the protocol's edge cases."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta import optim
from tinymeta.algorithms import inner_loop, reptile


def _batch(net, rng, T=3, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_sgd_direction_is_inner_lr_times_the_gradients_along_the_path(loss, rng):
    net = tm.MLP([2, 8, 3], activation="tanh", loss=loss)
    theta, batch = net.init(rng), _batch(net, rng)
    config = reptile.Config(inner_lr=0.1, inner_steps=4)
    meta_loss, grads = reptile.meta_step(net, {"theta": theta}, batch, config)
    directions, losses = [], []
    for Xs, ys, Xq, yq in map(batch.task, range(3)):
        thetas, path = inner_loop.adapt(net, theta, Xs, ys, np.full_like(theta, 0.1), 4)
        directions.append(0.1 * np.sum(path, axis=0))
        losses.append(net.loss(thetas[-1], Xq, yq))
    assert gc.rel_error(grads["theta"], np.mean(directions, axis=0)) < 1e-13
    assert meta_loss == pytest.approx(np.mean(losses), rel=1e-13)  # the query loss after adaptation


def test_one_inner_step_is_joint_training(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    _, grads = reptile.meta_step(net, {"theta": theta}, batch, reptile.Config(inner_lr=0.3, inner_steps=1))
    mean_support_grad = np.mean([net.loss_and_grad(theta, batch.X_support[i], batch.y_support[i])[1]
                                 for i in range(3)], axis=0)
    assert gc.rel_error(grads["theta"], 0.3 * mean_support_grad) < 1e-14


def test_minibatches_cycle_through_the_support_set(rng):
    net = tm.MLP([1, 6, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=1, K=5)
    Xs, ys = batch.X_support[0], batch.y_support[0]
    config = reptile.Config(inner_lr=0.2, inner_steps=3, inner_batch_size=2)
    expected = theta
    for rows in ([0, 1], [2, 3], [4, 0]):
        expected = expected - 0.2 * net.loss_and_grad(expected, Xs[rows], ys[rows])[1]
    assert np.array_equal(reptile.adapt(net, theta, Xs, ys, config), expected)


def test_adam_inner_loop_is_optim_adam_from_a_fresh_state(rng):
    net = tm.MLP([2, 6, 2], activation="tanh", loss="xent")
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    Xs, ys = batch.X_support[0], batch.y_support[0]
    config = reptile.Config(inner_lr=0.01, inner_steps=3, inner_optimizer="adam")
    adam = optim.Adam(0.01, beta1=0.0)
    params, state = {"theta": theta}, adam.init({"theta": theta})
    for _ in range(3):
        params, state = adam.update(params, {"theta": net.loss_and_grad(params["theta"], Xs, ys)[1]}, state)
    assert np.array_equal(reptile.adapt(net, theta, Xs, ys, config), params["theta"])


def test_two_step_update_has_the_taylor_second_order_term(rng):
    """(theta - theta_2) / a = g1 + g2(theta_1) = g1 + g2 - a H2 g1 + O(a^2) (Nichol et al., section 5):
    the measured second-order coefficient converges to -H2 g1 at rate O(a)."""
    net = tm.MLP([1, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=1, K=8)
    Xs, ys = batch.X_support[0], batch.y_support[0]
    g1 = net.loss_and_grad(theta, Xs[:4], ys[:4])[1]
    g2 = net.loss_and_grad(theta, Xs[4:], ys[4:])[1]
    second = -net.hvp(theta, Xs[4:], ys[4:], g1)
    errors = []
    for a in (1e-2, 1e-3):
        config = reptile.Config(inner_lr=a, inner_steps=2, inner_batch_size=4)
        update = (theta - reptile.adapt(net, theta, Xs, ys, config)) / a
        errors.append(gc.rel_error((update - g1 - g2) / a, second))
    assert errors[0] < 0.1 and errors[0] / errors[1] == pytest.approx(10, rel=0.2)


def test_the_trainer_step_interpolates_towards_the_adapted_parameters(rng):
    net = tm.MLP([1, 6, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    config = reptile.Config()
    _, grads = reptile.meta_step(net, {"theta": theta}, batch, config)
    eps = reptile.outer_lr_at(config, 0, 100)
    new, _ = optim.SGD(eps).update({"theta": theta}, grads, {})
    adapted = reptile.adapt(net, theta, batch.X_support[0], batch.y_support[0], config)
    assert gc.rel_error(new["theta"], theta + eps * (adapted - theta)) < 1e-14


def test_outer_step_is_annealed_linearly_to_zero():
    config = reptile.Config(outer_lr=0.1)
    assert [reptile.outer_lr_at(config, t, 4) for t in range(4)] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert reptile.outer_lr_at(reptile.Config(anneal=False), 3, 4) == 0.1
    with pytest.raises(ValueError, match="step must be < n_steps = 4, got 4"):
        reptile.outer_lr_at(config, 4, 4)
    with pytest.raises(ValueError, match="n_steps must be >= 1, got 0"):
        reptile.outer_lr_at(config, 0, 0)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(inner_lr=-0.02), ValueError, "inner_lr must be > 0, got -0.02"),
    (dict(inner_steps=0), ValueError, "inner_steps must be >= 1, got 0"),
    (dict(inner_batch_size=0), ValueError, "inner_batch_size must be >= 1, got 0"),
    (dict(inner_optimizer="rmsprop"), ValueError, r"inner_optimizer must be one of \('sgd', 'adam'\), got 'rmsprop'"),
    (dict(outer_optimizer="lbfgs"), ValueError, r"outer_optimizer must be one of \('sgd', 'adam'\), got 'lbfgs'"),
    (dict(adam_beta1=1.0), ValueError, r"beta1 must be in \[0, 1\), got 1.0"),
    (dict(outer_lr=0.0), ValueError, "outer_lr must be > 0, got 0.0"),
    (dict(anneal="yes"), TypeError, "anneal must be a bool, got str"),
])
def test_bad_configurations_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        reptile.Config(**kwargs)


def test_bad_meta_batches_and_divergence_are_named(rng):
    net = tm.MLP([1, 4, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    with pytest.raises(ValueError, match="inner_batch_size must be <= the support size 5, got 6"):
        reptile.meta_step(net, {"theta": theta}, batch, reptile.Config(inner_batch_size=6))
    with pytest.raises(ValueError, match=r"X_support must have shape \(T, K, 1\) with T, K >= 1, got \(0, 5, 1\)"):
        reptile.meta_step(net, {"theta": theta}, tm.TaskBatch(*(a[:0] for a in batch)), reptile.Config())
    linear = tm.MLP([1, 1])
    wild = batch._replace(y_support=batch.y_support * 1e200)
    with pytest.raises(FloatingPointError, match="the Reptile inner loop diverged at step .* of 30"):
        reptile.meta_step(linear, {"theta": linear.init(rng)}, wild, reptile.Config(inner_lr=1e3, inner_steps=30))


def test_predictions_have_one_row_per_step_and_nan_after_divergence(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    config = reptile.Config(inner_lr=0.1)
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    Xs, ys, Xq, _ = batch.task(0)
    out = reptile.predict(net, {"theta": theta}, Xs, ys, Xq, 3, config)
    assert out.shape == (4, 6, 1) and np.isfinite(out).all()
    assert np.array_equal(out[3], net.forward(reptile.adapt(net, theta, Xs, ys, config, steps=3), Xq))
    linear = tm.MLP([1, 1])
    out = reptile.predict(linear, {"theta": linear.init(rng)}, Xs, ys * 1e200, Xq, 60, reptile.Config(inner_lr=1e3))
    assert out.shape == (61, 6, 1) and np.isfinite(out[0]).all() and np.isnan(out[-1]).all()
