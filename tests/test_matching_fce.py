"""Matching Networks with full-context embeddings: the LSTM cell's VJP, backpropagation through
the bidirectional and the attention LSTMs, and the whole episode, against finite differences;
the phi = 0 degenerate case equals plain matching; learning."""
import numpy as np
import pytest
from fewshot_data import accuracy, episodes, random_episode, train

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import matching, matching_fce as fce


def _phi(D, rng):
    phi = fce.init_params(tm.MLP([2, D]), rng, fce.Config())["phi"]
    return phi + 0.1 * rng.standard_normal(phi.size)


def test_parameter_layout(rng):
    D = 3
    phi = rng.standard_normal(fce.n_params(D))
    parts = fce.unflatten(phi, D)
    assert list(parts) == list(fce.LSTMS)
    assert [p[0].shape + p[1].shape + p[2].shape for p in parts.values()] == [
        (3, 12, 3, 12, 12), (3, 12, 3, 12, 12), (3, 12, 6, 12, 12)]
    assert sum(a.size for p in parts.values() for a in p) == phi.size
    parts["attention"][2][0] = 7.0  # views: writes reach phi
    assert phi[-12] == 7.0


def test_lstm_cell_vjp_matches_finite_differences(rng):
    n, n_x, n_h, D = 4, 3, 5, 2
    p = (rng.standard_normal((n_x, 4 * D)), rng.standard_normal((n_h, 4 * D)), rng.standard_normal(4 * D))
    x, h, c = rng.standard_normal((n, n_x)), rng.standard_normal((n, n_h)), rng.standard_normal((n, D))
    dh_new, dc_new = rng.standard_normal((n, D)), rng.standard_normal((n, D))

    def scalar(p_, x_, h_, c_):
        h_new, c_new, _ = fce.lstm_step(p_, x_, h_, c_)
        return float(np.sum(h_new * dh_new) + np.sum(c_new * dc_new))

    grad_p = tuple(np.zeros_like(a) for a in p)
    dx, dh, dc = fce.lstm_step_vjp(p, fce.lstm_step(p, x, h, c)[2], dh_new, dc_new, grad_p)
    for name, analytic, x0, f in [
        ("x", dx, x, lambda v: scalar(p, v.reshape(x.shape), h, c)),
        ("h", dh, h, lambda v: scalar(p, x, v.reshape(h.shape), c)),
        ("c", dc, c, lambda v: scalar(p, x, h, v.reshape(c.shape))),
        ("W_x", grad_p[0], p[0], lambda v: scalar((v.reshape(p[0].shape), p[1], p[2]), x, h, c)),
        ("W_h", grad_p[1], p[1], lambda v: scalar((p[0], v.reshape(p[1].shape), p[2]), x, h, c)),
        ("b", grad_p[2], p[2], lambda v: scalar((p[0], p[1], v), x, h, c)),
    ]:
        assert gc.rel_error(analytic.ravel(), gc.numerical_gradient(f, x0.ravel())) < 1e-6, name


@pytest.mark.parametrize("steps", [1, 3])
def test_embedding_gradients_match_finite_differences(steps, rng):
    D, phi = 3, _phi(3, rng)
    S, Q = rng.standard_normal((6, D)), rng.standard_normal((5, D))
    ys, yq = np.tile(np.arange(3), 2), rng.integers(0, 3, 5)
    _, dS, dQ, dphi = fce.embedding_loss_and_grad(phi, S, ys, Q, yq, 3, steps)
    f_s = lambda e: fce.embedding_loss_and_grad(phi, e.reshape(S.shape), ys, Q, yq, 3, steps)[0]  # noqa: E731
    f_q = lambda e: fce.embedding_loss_and_grad(phi, S, ys, e.reshape(Q.shape), yq, 3, steps)[0]  # noqa: E731
    f_p = lambda p: fce.embedding_loss_and_grad(p, S, ys, Q, yq, 3, steps)[0]  # noqa: E731
    assert gc.rel_error(dS.ravel(), gc.numerical_gradient(f_s, S.ravel())) < 1e-6
    assert gc.rel_error(dQ.ravel(), gc.numerical_gradient(f_q, Q.ravel())) < 1e-6
    assert gc.rel_error(dphi, gc.numerical_gradient(f_p, phi)) < 1e-6


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_episode_gradients_match_finite_differences(backend, rng):
    net = tm.MLP([5, 6, 3], activation="tanh", backend=backend)
    params = {"theta": net.init(rng) + 0.1 * rng.standard_normal(net.n_params), "phi": _phi(3, rng)}
    episode, config = random_episode(rng, 5, n_way=3, shots=2, queries=4), fce.Config(processing_steps=2)
    loss, grads = fce.loss_and_grad(net, params, *episode, config)
    assert set(grads) == {"theta", "phi"} and np.isfinite(loss)
    for k in params:
        def f(x, k=k):
            return fce.loss_and_grad(net, {**params, k: x}, *episode, config)[0]
        assert gc.rel_error(grads[k], gc.numerical_gradient(f, params[k])) < 1e-6, k


def test_zero_lstm_parameters_reduce_to_plain_matching(rng):
    """phi = 0: every gate is 1/2 and the candidate tanh(0) = 0, so the LSTMs output 0 and the skip
    connections leave g(S) = S and f(x, S) = q'."""
    net = tm.MLP([5, 6, 3], activation="tanh")
    theta, episode = net.init(rng), random_episode(rng, 5)
    params = {"theta": theta, "phi": np.zeros(fce.n_params(3))}
    loss, grads = fce.loss_and_grad(net, params, *episode)
    plain_loss, plain_grad = matching.loss_and_grad(net, theta, *episode)
    assert loss == pytest.approx(plain_loss, rel=1e-14) and gc.rel_error(grads["theta"], plain_grad) < 1e-14
    assert np.linalg.norm(grads["phi"]) > 0  # the LSTMs still receive a gradient


def test_support_context_changes_the_embeddings(rng):
    """With phi != 0, a support embedding depends on the rest of the support set (its context)."""
    D, phi = 3, _phi(3, rng)
    S, Q = rng.standard_normal((4, D)), rng.standard_normal((2, D))
    G, F, _ = fce.context_embeddings(phi, S, Q, 2)
    S2 = S.copy()
    S2[3] += 1.0
    G2, F2, _ = fce.context_embeddings(phi, S2, Q, 2)
    assert not np.allclose(G[0], G2[0]) and not np.allclose(F, F2)


def test_predict_and_meta_step(rng):
    net = tm.MLP([5, 6, 3], activation="tanh")
    config = fce.Config()
    params = fce.init_params(net, rng, config)
    Xs, ys, Xq, _ = random_episode(rng, 5, n_way=3, shots=2, queries=4)
    P = fce.predict(net, params, Xs, ys, Xq, 1, config)
    assert P.shape == (1, 4, 3) and np.allclose(P.sum(axis=2), 1, rtol=1e-14)
    batch = episodes(rng, 3, n_way=3, shots=2, d=5, k=2)
    loss, grads = fce.meta_step(net, params, batch, config)
    parts = [fce.loss_and_grad(net, params, *batch.task(i), config) for i in range(3)]
    assert loss == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-14)
    assert gc.rel_error(grads["phi"], np.mean([p[1]["phi"] for p in parts], axis=0)) < 1e-14


def test_float32_agrees_with_float64(rng):
    net = tm.MLP([5, 8, 4], activation="tanh")
    config = fce.Config()
    params = fce.init_params(net, rng, config)
    batch = episodes(rng, 2, n_way=3, shots=2, d=5, k=2)
    loss, grads = fce.meta_step(net, params, batch, config)
    batch32 = batch._replace(X_support=batch.X_support.astype(np.float32), X_query=batch.X_query.astype(np.float32))
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, grads32 = fce.meta_step(net.replace(dtype="float32"), params32, batch32, config)
    assert loss32 == pytest.approx(loss, rel=1e-5)
    for k in grads:
        assert grads32[k].dtype == np.float32 and gc.rel_error(grads32[k], grads[k]) < 1e-5, k


def test_bad_inputs_are_named(rng):
    net = tm.MLP([5, 6, 3])
    params = fce.init_params(net, rng, fce.Config())
    with pytest.raises(ValueError, match=r"params\['phi'\] must have shape \(288,\)"):
        fce.loss_and_grad(net, {**params, "phi": params["phi"][:-1]}, *random_episode(rng, 5))
    with pytest.raises(ValueError, match="processing_steps must be >= 1, got 0"):
        fce.Config(processing_steps=0)
    assert fce.n_params(3) == 2 * ((3 + 3) * 12 + 12) + (3 + 6) * 12 + 12  # 288


@pytest.mark.slow
def test_training_on_separable_episodes_reaches_high_accuracy(rng):
    net, config = tm.MLP([10, 32, 16]), fce.Config()
    before, after = train(fce, net, config, rng, steps=200, lr=0.01, T=2)
    test = episodes(np.random.default_rng(1), 50)
    acc_before, acc_after = accuracy(fce, net, before, config, test), accuracy(fce, net, after, config, test)
    assert acc_before < 0.4 and acc_after > 0.93, (acc_before, acc_after)
