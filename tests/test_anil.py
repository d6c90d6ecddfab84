"""ANIL: the head-only inner loop as a mask on the one recursion; the body's exact
meta-gradient checked by finite differences; degenerate cases (all-ones mask = MAML)."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import anil, inner_loop, maml


def _batch(net, rng, T=3, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("inner_steps", [1, 3])
def test_meta_gradient_of_body_and_head_matches_finite_differences(inner_steps, loss, backend, rng):
    net = tm.MLP([2, 7, 6, 3], activation="tanh", loss=loss, backend=backend)
    theta, batch = net.init(rng), _batch(net, rng)
    inner_lr = 0.5 if loss == "xent" else 0.1
    _, grad = anil.meta_loss_and_grad(net, theta, batch, inner_lr, inner_steps)
    numeric = gc.numerical_gradient(lambda t: anil.meta_loss_and_grad(net, t, batch, inner_lr, inner_steps)[0],
                                    theta)
    assert gc.rel_error(grad, numeric) < 1e-6
    body = slice(0, net.layer_offsets[-2])
    assert gc.rel_error(grad[body], numeric[body]) < 1e-6  # the body, whose gradient needs the HVP rows


def test_the_inner_loop_moves_only_the_head(rng):
    net = tm.MLP([2, 6, 5, 2], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    mask = anil.head_mask(net)
    start = net.layer_offsets[-2]
    assert not mask[:start].any() and mask[start:].all() and mask.size - start == 5 * 2 + 2
    thetas, _ = inner_loop.adapt(net, theta, *batch.task(0)[:2], 0.1 * mask, 3)
    assert np.array_equal(thetas[-1][:start], theta[:start]) and not np.array_equal(thetas[-1], theta)


@pytest.mark.parametrize("inner_steps", [0, 1, 2])
def test_all_ones_mask_is_maml(inner_steps, rng):
    net = tm.MLP([2, 8, 3], activation="tanh", loss="xent")
    theta, batch = net.init(rng), _batch(net, rng)
    for first_order in (False, True):
        ones = anil.meta_loss_and_grad(net, theta, batch, 0.2, inner_steps, first_order,
                                       mask=np.ones(net.n_params, dtype=bool))
        full = maml.meta_loss_and_grad(net, theta, batch, 0.2, inner_steps, first_order)
        assert ones[0] == full[0] and np.array_equal(ones[1], full[1])


def test_zero_inner_steps_give_the_plain_gradient(rng):
    net = tm.MLP([2, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    loss, grad = anil.meta_loss_and_grad(net, theta, batch, 0.1, 0)
    plain = [net.loss_and_grad(theta, batch.X_query[i], batch.y_query[i]) for i in range(3)]
    assert loss == pytest.approx(np.mean([p[0] for p in plain]), rel=1e-14)
    assert gc.rel_error(grad, np.mean([p[1] for p in plain], axis=0)) < 1e-14


def test_first_order_is_the_query_gradient_at_the_adapted_head(rng):
    net = tm.MLP([2, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=2)
    _, grad = anil.meta_loss_and_grad(net, theta, batch, 0.1, 2, first_order=True)
    _, exact = anil.meta_loss_and_grad(net, theta, batch, 0.1, 2)
    expected = []
    for i in range(2):
        Xs, ys, Xq, yq = batch.task(i)
        thetas, _ = inner_loop.adapt(net, theta, Xs, ys, 0.1 * anil.head_mask(net), 2)
        expected.append(net.loss_and_grad(thetas[-1], Xq, yq)[1])
    assert gc.rel_error(grad, np.mean(expected, axis=0)) < 1e-14
    assert gc.rel_error(grad, exact) > 1e-4  # the dropped Hessian term is not negligible here


def test_meta_step_and_init_follow_the_protocol(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    config = anil.Config()
    params = anil.init_params(net, rng, config)
    loss, grads = anil.meta_step(net, params, _batch(net, rng), config)
    assert set(grads) == {"theta"} and grads["theta"].shape == (net.n_params,) and np.isfinite(loss)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(inner_lr=-0.1), ValueError, "inner_lr must be > 0, got -0.1"),
    (dict(inner_steps=-1), ValueError, "inner_steps must be >= 0, got -1"),
    (dict(inner_steps=1.5), TypeError, "inner_steps must be an integer"),
    (dict(mask=np.ones(3)), ValueError, r"mask must have shape \(13,\), got \(3,\)"),
    (dict(mask=np.full(13, 0.5)), ValueError, "mask must hold only 0s and 1s, got 0.5"),
])
def test_bad_arguments_are_named(kwargs, error, message, rng):
    net = tm.MLP([1, 4, 1])  # 13 parameters
    with pytest.raises(error, match=message):
        anil.meta_loss_and_grad(net, net.init(rng), _batch(net, rng), **kwargs)


def test_predictions_have_one_row_per_step_and_nan_after_divergence(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    Xs, ys, Xq, _ = batch.task(0)
    out = anil.predict(net, {"theta": theta}, Xs, ys, Xq, 2, anil.Config(inner_lr=0.1))
    thetas, _ = inner_loop.adapt(net, theta, Xs, ys, 0.1 * anil.head_mask(net), 2)
    assert out.shape == (3, 6, 1) and np.array_equal(out[2], net.forward(thetas[2], Xq))
    out = anil.predict(net, {"theta": theta}, Xs, ys * 1e150, Xq, 5, anil.Config(inner_lr=10.0))
    assert out.shape == (6, 6, 1) and np.isfinite(out[0]).all() and np.isnan(out[-1]).all()
