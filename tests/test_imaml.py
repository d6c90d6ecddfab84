"""iMAML: the implicit meta-gradient against the linear solve with the explicit Hessian,
against finite differences of the whole meta-objective, in closed form on linear regression,
and in the MAML limit; the inner solve's tolerance and its reported failures."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import imaml, maml, solvers

TIGHT = dict(inner_tol=1e-12, cg_tol=1e-12, cg_max_iter=500)


def _batch(net, rng, T=3, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)), Xq, rng.standard_normal((T, Q, d_out)))


def _meta_objective(net, batch, config):
    """mean_i L_Q(phi_i*(theta)) with the inner problems solved to ``config.inner_tol``."""
    def f(theta):
        losses = []
        for Xs, ys, Xq, yq in map(batch.task, range(batch.n_tasks)):
            phi, _, g_norm = imaml.solve_inner(net, theta, Xs, ys, config)
            assert g_norm <= config.inner_tol
            losses.append(net.loss(phi, Xq, yq))
        return np.mean(losses)
    return f


@pytest.mark.parametrize("loss,lam", [("mse", 2.0), ("mse", 10.0), ("xent", 1.0)])
def test_meta_gradient_matches_finite_differences_of_the_meta_objective(loss, lam, rng):
    net = tm.MLP([2, 5, 2], activation="tanh", loss=loss)
    theta, batch = net.init(rng), _batch(net, rng, T=2)
    config = imaml.Config(lam=lam, **TIGHT)
    _, grad = imaml.meta_loss_and_grad(net, theta, batch, lam, **TIGHT)
    numeric = gc.numerical_gradient(_meta_objective(net, batch, config), theta)
    assert gc.rel_error(grad, numeric) < 1e-6


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_implicit_gradient_equals_the_linear_solve_with_the_explicit_hessian(loss, rng):
    net = tm.MLP([2, 4, 3], activation="tanh", loss=loss)  # 27 parameters
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    Xs, ys, Xq, yq = batch.task(0)
    config = imaml.Config(lam=1.5, **TIGHT)
    loss_value, grad, report = imaml.task_meta_loss_and_grad(net, theta, Xs, ys, Xq, yq, config)
    phi, _, _ = imaml.solve_inner(net, theta, Xs, ys, config)
    H = gc.explicit_hessian(lambda v: net.hvp(phi, Xs, ys, v), net.n_params)
    g_q = net.loss_and_grad(phi, Xq, yq)[1]
    expected = np.linalg.solve(np.eye(net.n_params) + H / 1.5, g_q)
    assert report.inner_converged and report.cg.converged and not report.cg.negative_curvature
    assert gc.rel_error(grad, expected) < 1e-10 and loss_value == net.loss(phi, Xq, yq)
    # the inner solution is stationary for G: grad L_S(phi) + lam (phi - theta) = 0
    assert np.linalg.norm(net.loss_and_grad(phi, Xs, ys)[1] + 1.5 * (phi - theta)) <= 1e-12


def test_linear_regression_closed_form(rng):
    """L_S(phi) = |A_S phi - y_S|^2 / n: phi* = (H + lam I)^-1 (lam theta + 2 A_S^T y_S / n),
    H = 2 A_S^T A_S / n, and the meta-gradient is (I + H/lam)^-1 grad L_Q(phi*)."""
    net, lam, K, Q = tm.MLP([3, 1]), 0.7, 6, 8
    theta, batch = rng.standard_normal(net.n_params), _batch(net, rng, T=1, K=K, Q=Q)
    A_s = np.hstack([batch.X_support[0], np.ones((K, 1))])
    A_q = np.hstack([batch.X_query[0], np.ones((Q, 1))])
    y_s, y_q = batch.y_support[0][:, 0], batch.y_query[0][:, 0]
    H, I = 2 * A_s.T @ A_s / K, np.eye(net.n_params)
    phi = np.linalg.solve(H + lam * I, lam * theta + 2 * A_s.T @ y_s / K)
    expected = np.linalg.solve(I + H / lam, 2 * A_q.T @ (A_q @ phi - y_q) / Q)
    loss, grad = imaml.meta_loss_and_grad(net, theta, batch, lam, **TIGHT)
    assert loss == pytest.approx(np.mean((A_q @ phi - y_q) ** 2), rel=1e-12)
    assert gc.rel_error(grad, expected) < 1e-11


def test_large_lambda_approaches_one_step_maml_with_step_one_over_lambda(rng):
    """phi* = theta - grad L_S / lam + O(1/lam^2), so the gap to MAML(alpha = 1/lam) is O(1/lam^2)."""
    net = tm.MLP([2, 6, 2], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    gaps = []
    for lam in (100.0, 1000.0):
        grad = imaml.meta_loss_and_grad(net, theta, batch, lam, inner_tol=1e-10, cg_tol=1e-12)[1]
        gaps.append(gc.rel_error(grad, maml.meta_loss_and_grad(net, theta, batch, 1 / lam, 1)[1]))
    assert gaps[0] < 1e-2 and gaps[0] / gaps[1] == pytest.approx(100, rel=0.2)


def test_conjugate_gradient_solves_and_reports(rng):
    M = rng.standard_normal((20, 20))
    A, b = M @ M.T + 0.5 * np.eye(20), rng.standard_normal(20)
    x, result = solvers.conjugate_gradient(lambda v: A @ v, b, 1e-12, 200)
    assert result.converged and result.residual <= 1e-12 and gc.rel_error(x, np.linalg.solve(A, b)) < 1e-10
    _, capped = solvers.conjugate_gradient(lambda v: A @ v, b, 1e-12, 3)
    assert capped == (3, capped.residual, False, False) and capped.residual > 1e-3
    _, indefinite = solvers.conjugate_gradient(lambda v: -v, b, 1e-12, 10)
    assert indefinite.negative_curvature and not indefinite.converged


def test_missed_tolerances_raise_with_the_numbers(rng):
    net = tm.MLP([2, 6, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    with pytest.raises(imaml.ConvergenceError, match=r"task 0: the inner solve reached \|grad G\| = .* after 1 "
                                                      r"Newton-CG steps, above inner_tol = 1e-12 \(inner_max_steps = 1\)"):
        imaml.meta_loss_and_grad(net, theta, batch, 2.0, inner_tol=1e-12, inner_max_steps=1)
    with pytest.raises(imaml.ConvergenceError, match=r"conjugate gradient reached relative residual .* after 2 "
                                                      r"iterations, above cg_tol = 1e-12 \(cg_max_iter = 2\)"):
        imaml.meta_loss_and_grad(net, theta, batch, 2.0, cg_tol=1e-12, cg_max_iter=2, inner_max_steps=500)
    config = imaml.Config(inner_tol=1e-12, inner_max_steps=1)
    _, grad, reports = imaml.meta_loss_grad_and_report(net, theta, batch, config)  # reports, does not raise
    assert len(reports) == 3 and not any(r.inner_converged for r in reports) and np.isfinite(grad).all()
    with pytest.raises(imaml.ConvergenceError, match="inner_tol = 1e-12"):
        imaml.meta_step(net, {"theta": theta}, batch, config)


def test_the_default_configuration_solves_sinusoid_tasks_on_a_tanh_net(rng):
    net = tm.MLP([1, 40, 40, 1], activation="tanh")
    amplitude, phase = rng.uniform(0.1, 5, (4, 1, 1)), rng.uniform(0, np.pi, (4, 1, 1))
    Xs, Xq = rng.uniform(-5, 5, (4, 10, 1)), rng.uniform(-5, 5, (4, 10, 1))
    batch = tm.TaskBatch(Xs, amplitude * np.sin(Xs - phase), Xq, amplitude * np.sin(Xq - phase))
    config = imaml.Config()
    params = imaml.init_params(net, rng, config)
    loss, grads = imaml.meta_step(net, params, batch, config)  # raises if any solve missed its tolerance
    assert np.isfinite(loss) and set(grads) == {"theta"} and np.isfinite(grads["theta"]).all()


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lam=0.0), ValueError, "lam must be > 0, got 0.0"),
    (dict(lam=-1.0), ValueError, "lam must be > 0, got -1.0"),
    (dict(inner_tol=0.0), ValueError, "inner_tol must be > 0"),
    (dict(inner_max_steps=-1), ValueError, "inner_max_steps must be >= 0, got -1"),
    (dict(cg_tol=-1e-6), ValueError, "cg_tol must be > 0"),
    (dict(cg_max_iter=0), ValueError, "cg_max_iter must be >= 1, got 0"),
    (dict(cg_max_iter=2.5), TypeError, "cg_max_iter must be an integer"),
])
def test_bad_configurations_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        imaml.Config(**kwargs)


def test_bad_batches_are_named(rng):
    net = tm.MLP([1, 4, 1], activation="tanh")
    theta, batch = net.init(rng), _batch(net, rng)
    with pytest.raises(ValueError, match=r"X_support must have shape \(T, K, 1\) with T, K >= 1, got \(0, 5, 1\)"):
        imaml.meta_loss_and_grad(net, theta, tm.TaskBatch(*(a[:0] for a in batch)))
    with pytest.raises(TypeError, match="batch must be a tinymeta.TaskBatch"):
        imaml.meta_loss_and_grad(net, theta, tuple(batch))


def test_predictions_descend_g_and_mark_non_finite_outputs(rng):
    net = tm.MLP([1, 10, 1], activation="tanh")
    config = imaml.Config(lam=1.0)
    theta, batch = net.init(rng), _batch(net, rng, T=1)
    Xs, ys, Xq, _ = batch.task(0)
    out = imaml.predict(net, {"theta": theta}, Xs, ys, Xq, 4, config)
    assert out.shape == (5, 6, 1) and np.array_equal(out[0], net.forward(theta, Xq)) and np.isfinite(out).all()
    G, hvp = imaml.proximal_objective(net, theta, Xs, ys, config.lam)
    iterates = solvers.newton_cg_iterates(G, hvp, theta, config.cg_max_iter)
    values = [G(phi)[0] for (phi, _), _ in zip(iterates, range(5))]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))  # Newton-CG with line search never ascends
    linear = tm.MLP([1, 1])
    huge = np.full(linear.n_params, 1e300)
    out = imaml.predict(linear, {"theta": huge}, Xs * 1e10, ys, Xq * 1e10, 3, config)
    assert out.shape == (4, 6, 1) and np.isnan(out).all()
