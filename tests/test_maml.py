"""MAML's meta-gradient three ways (STYLE rule 11): finite differences of the
whole meta-objective, a closed form on linear regression, and degenerate cases."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import inner_loop, maml


def _batch(net, rng, T=3, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


def _meta_loss(net, batch, inner_lr, inner_steps):
    return lambda t: maml.meta_loss_and_grad(net, t, batch, inner_lr, inner_steps)[0]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("inner_steps", [1, 2, 5])
def test_meta_gradient_matches_finite_differences(inner_steps, loss, backend, rng):
    net = tm.MLP([2, 12, 10, 3], activation="tanh", loss=loss, backend=backend)
    theta, batch = net.init(rng), _batch(net, rng)
    inner_lr = 0.3 if loss == "xent" else 0.05
    _, grad = maml.meta_loss_and_grad(net, theta, batch, inner_lr, inner_steps)
    numeric = gc.numerical_gradient(_meta_loss(net, batch, inner_lr, inner_steps), theta)
    assert gc.rel_error(grad, numeric) < 1e-6


def test_meta_gradient_on_the_sinusoid_net_with_relu(rng):
    net = tm.MLP([1, 40, 40, 1], activation="relu")
    for _ in range(50):  # a point whose support and query pre-activations, before and after
        theta, batch = net.init(rng), _batch(net, rng, T=2, K=10, Q=10)  # adaptation, avoid the kinks
        adapted = [inner_loop.adapt(net, theta, Xs, ys, np.full_like(theta, 0.01), 1)[0][1]
                   for Xs, ys, _, _ in map(batch.task, range(2))]
        margins = [gc.relu_margin(net, t, X) for t in [theta, *adapted]
                   for X in (*batch.X_support, *batch.X_query)]
        if min(margins) > 1e-3:
            break
    v = rng.standard_normal(net.n_params)
    v /= np.linalg.norm(v)
    _, grad = maml.meta_loss_and_grad(net, theta, batch, 0.01, 1)
    numeric = gc.numerical_directional_derivative(_meta_loss(net, batch, 0.01, 1), theta, v)
    assert min(margins) > 1e-3 and grad @ v == pytest.approx(numeric, rel=1e-6)


def test_linear_regression_closed_form(rng):
    """L_S(theta) = |A_S theta - y_S|^2 / n is quadratic with Hessian H = 2 A_S^T A_S / n, so
    theta_K follows from (I - alpha H) and the meta-gradient is (I - alpha H)^K grad L_Q(theta_K)."""
    d, K_shots, steps, alpha = 3, 6, 4, 0.1
    net = tm.MLP([d, 1])  # a linear model: W (3, 1) then b
    theta = rng.standard_normal(net.n_params)
    batch = _batch(net, rng, T=1, K=K_shots, Q=7)
    A_s = np.hstack([batch.X_support[0], np.ones((K_shots, 1))])
    A_q = np.hstack([batch.X_query[0], np.ones((7, 1))])
    y_s, y_q = batch.y_support[0][:, 0], batch.y_query[0][:, 0]
    H = 2 * A_s.T @ A_s / K_shots
    M = np.eye(net.n_params) - alpha * H
    theta_k = theta.copy()
    for _ in range(steps):
        theta_k = theta_k - alpha * 2 * A_s.T @ (A_s @ theta_k - y_s) / K_shots
    grad_q = 2 * A_q.T @ (A_q @ theta_k - y_q) / 7
    expected = np.linalg.matrix_power(M, steps) @ grad_q
    loss, grad = maml.meta_loss_and_grad(net, theta, batch, alpha, steps)
    assert loss == pytest.approx(np.mean((A_q @ theta_k - y_q) ** 2), rel=1e-13)
    assert gc.rel_error(grad, expected) < 1e-13


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_zero_inner_steps_maml_equals_fomaml_equals_plain_gradient(loss, rng):
    net = tm.MLP([2, 8, 3], activation="tanh", loss=loss)
    theta, batch = net.init(rng), _batch(net, rng)
    second = maml.meta_loss_and_grad(net, theta, batch, 0.1, 0)
    first = maml.meta_loss_and_grad(net, theta, batch, 0.1, 0, first_order=True)
    plain = [net.loss_and_grad(theta, batch.X_query[i], batch.y_query[i]) for i in range(3)]
    assert second[0] == first[0] == pytest.approx(np.mean([p[0] for p in plain]), rel=1e-14)
    assert np.array_equal(second[1], first[1])
    assert gc.rel_error(second[1], np.mean([p[1] for p in plain], axis=0)) < 1e-14


def test_fomaml_is_the_query_gradient_at_the_adapted_parameters(rng):
    net = tm.MLP([2, 8, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=2)
    _, grad = maml.meta_loss_and_grad(net, theta, batch, 0.1, 3, first_order=True)
    expected = []
    for i in range(2):
        Xs, ys, Xq, yq = batch.task(i)
        thetas, _ = inner_loop.adapt(net, theta, Xs, ys, np.full_like(theta, 0.1), 3)
        expected.append(net.loss_and_grad(thetas[-1], Xq, yq)[1])
    assert gc.rel_error(grad, np.mean(expected, axis=0)) < 1e-14


def test_fomaml_gap_shrinks_with_the_inner_step(rng):
    """The second-order terms are O(alpha): FOMAML's error relative to MAML shrinks with alpha."""
    net = tm.MLP([1, 20, 20, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    gaps = []
    for alpha in (0.1, 0.01, 0.001):
        exact = maml.meta_loss_and_grad(net, theta, batch, alpha, 1)[1]
        approx = maml.meta_loss_and_grad(net, theta, batch, alpha, 1, first_order=True)[1]
        gaps.append(gc.rel_error(exact, approx))
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[1] / gaps[2] == pytest.approx(10, rel=0.2)


def test_meta_batch_is_the_mean_of_its_tasks(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=4)
    whole = maml.meta_loss_and_grad(net, theta, batch, 0.05, 2)
    parts = [maml.meta_loss_and_grad(net, theta, tm.TaskBatch(*(a[i:i + 1] for a in batch)), 0.05, 2)
             for i in range(4)]
    assert whole[0] == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-14)
    assert gc.rel_error(whole[1], np.mean([p[1] for p in parts], axis=0)) < 1e-14


def test_backends_agree(rng):
    net = tm.MLP([1, 40, 40, 1])
    theta, batch = net.init(rng), _batch(net, rng, K=10, Q=10)
    fast = maml.meta_loss_and_grad(net, theta, batch, 0.01, 5)
    slow = maml.meta_loss_and_grad(net.replace(backend="numpy"), theta, batch, 0.01, 5)
    assert fast[0] == pytest.approx(slow[0], rel=1e-12) and gc.rel_error(fast[1], slow[1]) < 1e-12


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(inner_lr=-0.1), ValueError, "inner_lr must be > 0, got -0.1"),
    (dict(inner_lr=0.0), ValueError, "inner_lr must be > 0"),
    (dict(inner_steps=-1), ValueError, "inner_steps must be >= 0, got -1"),
    (dict(inner_steps=1.5), TypeError, "inner_steps must be an integer"),
])
def test_bad_hyper_parameters_are_named(kwargs, error, message, rng):
    net = tm.MLP([1, 4, 1])
    with pytest.raises(error, match=message):
        maml.meta_loss_and_grad(net, net.init(rng), _batch(net, rng), **kwargs)


def test_bad_batches_are_named(rng):
    net = tm.MLP([1, 4, 1])
    theta, batch = net.init(rng), _batch(net, rng)
    with pytest.raises(TypeError, match="batch must be a tinymeta.TaskBatch"):
        maml.meta_loss_and_grad(net, theta, tuple(batch))
    with pytest.raises(ValueError, match=r"X_support must have shape \(T, K, 1\) with T, K >= 1, got \(0, 5, 1\)"):
        maml.meta_loss_and_grad(net, theta, tm.TaskBatch(*(a[:0] for a in batch)))
    with pytest.raises(ValueError, match=r"y_query must have shape \(3, 6, 1\)"):
        maml.meta_loss_and_grad(net, theta, batch._replace(y_query=batch.y_query[:, :4]))
    with pytest.raises(ValueError, match="X_query must be finite"):
        bad = batch.X_query.copy()
        bad[1, 2, 0] = np.nan
        maml.meta_loss_and_grad(net, theta, batch._replace(X_query=bad))
    clf = tm.MLP([1, 4, 3], loss="xent")
    labels = _batch(clf, rng)
    with pytest.raises(ValueError, match=r"y_support must hold labels in 0..2"):
        maml.meta_loss_and_grad(clf, clf.init(rng), labels._replace(y_support=labels.y_support + 3))


def test_predictions_mark_diverged_tasks_with_nan(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    out = maml.predict(net, {"theta": theta}, batch.X_support[0], batch.y_support[0] * 1e150,
                       batch.X_query[0], 5, maml.Config(inner_lr=10.0))
    assert out.shape == (6, 6, 1) and np.all(np.isfinite(out[0])) and np.isnan(out[-1]).all()
