"""Matching Networks: the attention loss's gradient against finite differences (through the
softmax and the cosine's normalisation, also near zero norm), closed forms, bad episodes, learning."""
import numpy as np
import pytest
from fewshot_data import accuracy, episodes, random_episode, train

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import matching


def _net(backend="numba"):
    return tm.MLP([5, 8, 4], activation="tanh", backend=backend)


def _theta(net, rng):
    return net.init(rng) + 0.1 * rng.standard_normal(net.n_params)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("shots", [1, 3])
def test_gradient_matches_finite_differences(shots, backend, rng):
    net = _net(backend)
    theta, episode = _theta(net, rng), random_episode(rng, 5, n_way=3, shots=shots)
    loss, grad = matching.loss_and_grad(net, theta, *episode)
    numeric = gc.numerical_gradient(lambda t: matching.loss_and_grad(net, t, *episode)[0], theta)
    assert np.isfinite(loss) and gc.rel_error(grad, numeric) < 1e-6


@pytest.mark.parametrize("eps,scale", [(1e-8, 1.0), (1e-2, 1e-2)])
def test_embedding_gradient_matches_finite_differences(eps, scale, rng):
    """Also with embeddings as small as epsilon, where the normalisation is far from u/|u|."""
    Es, Eq = scale * rng.standard_normal((6, 3)), scale * rng.standard_normal((5, 3))
    ys, yq = np.array([0, 1, 2, 0, 1, 1]), rng.integers(0, 3, 5)
    _, dEs, dEq = matching.embedding_loss_and_grad(Es, ys, Eq, yq, 3, eps)
    f_s = lambda e: matching.embedding_loss_and_grad(e.reshape(6, 3), ys, Eq, yq, 3, eps)[0]  # noqa: E731
    f_q = lambda e: matching.embedding_loss_and_grad(Es, ys, e.reshape(5, 3), yq, 3, eps)[0]  # noqa: E731
    step = 1e-5 * scale
    assert gc.rel_error(dEs.ravel(), gc.numerical_gradient(f_s, Es.ravel(), step)) < 1e-6
    assert gc.rel_error(dEq.ravel(), gc.numerical_gradient(f_q, Eq.ravel(), step)) < 1e-6


def test_zero_embedding_gives_uniform_attention_and_a_finite_gradient(rng):
    """At u = 0 the normalised vector is 0: cosines 0, uniform attention; the gradient is d/eps."""
    Es, Eq = rng.standard_normal((4, 3)), np.zeros((1, 3))
    ys, yq = np.array([0, 1, 0, 1]), np.array([1])
    loss, dEs, dEq = matching.embedding_loss_and_grad(Es, ys, Eq, yq, 2, eps=1e-8)
    assert loss == pytest.approx(np.log(2), rel=1e-15)
    assert np.all(np.isfinite(dEq)) and np.all(np.isfinite(dEs)) and np.all(dEs == 0)
    S_hat = matching.normalize(Es)[0]
    expected = (np.full(4, 0.25) - np.array([0, 0.5, 0, 0.5])) @ S_hat / 1e-8  # dK @ S_hat / eps
    assert np.allclose(dEq[0], expected, rtol=1e-12)


def test_epsilon_changes_the_cosine_by_order_eps_squared(rng):
    """u / sqrt(|u|^2 + eps^2) = (u / |u|) (1 + eps^2 / |u|^2)^(-1/2) = (u / |u|) (1 - eps^2 / 2|u|^2 + ...)."""
    U = rng.standard_normal((5, 3))
    norms = np.linalg.norm(U, axis=1)
    exact = U / norms[:, None]
    assert np.allclose(matching.normalize(U)[0], exact, rtol=1e-15, atol=1e-16)
    U_hat, r = matching.normalize(U, eps=1e-3)
    shrink = 1 - np.linalg.norm(U_hat, axis=1)
    assert np.allclose(shrink, 1e-6 / (2 * norms ** 2), rtol=1e-5) and np.allclose(r, np.hypot(norms, 1e-3))


def test_orthonormal_supports_give_the_closed_form_attention():
    """Support embeddings e_1..e_N orthonormal, query parallel to e_k: cosines are [k = j],
    the true label's probability is e / (e + N - 1)."""
    N = 3
    Es = np.eye(4)[:N]
    Eq = 2.5 * Es
    loss, _, _ = matching.embedding_loss_and_grad(Es, np.arange(N), Eq, np.arange(N), N)
    assert loss == pytest.approx(np.log1p((N - 1) / np.e), rel=1e-12)


def test_predicted_distribution_is_attention_summed_over_each_class(rng):
    net = _net()
    theta, (Xs, ys, Xq, _) = _theta(net, rng), random_episode(rng, 5, n_way=3, shots=2)
    P = matching.probabilities(net, theta, Xs, ys, Xq)
    a = matching.attention(net.forward(theta, Xs), net.forward(theta, Xq))
    assert np.allclose(P, np.stack([a[:, ys == k].sum(1) for k in range(3)], axis=1), rtol=1e-14)
    assert np.allclose(P.sum(axis=1), 1, rtol=1e-14)
    scores = matching.predict(net, {"theta": theta}, Xs, ys, Xq, 5, matching.Config())
    assert scores.shape == (1, 7, 3) and np.array_equal(scores[0], P)


def test_loss_is_the_negative_log_probability_of_the_true_label(rng):
    net = _net()
    theta, (Xs, ys, Xq, yq) = _theta(net, rng), random_episode(rng, 5)
    P = matching.probabilities(net, theta, Xs, ys, Xq)
    loss, _ = matching.loss_and_grad(net, theta, Xs, ys, Xq, yq)
    assert loss == pytest.approx(-np.mean(np.log(P[np.arange(7), yq])), rel=1e-13)


def test_meta_step_is_the_mean_of_its_episodes(rng):
    net = _net()
    theta, batch = _theta(net, rng), episodes(rng, 3, n_way=3, shots=2, d=5, k=2)
    loss, grads = matching.meta_step(net, {"theta": theta}, batch, matching.Config())
    parts = [matching.loss_and_grad(net, theta, *batch.task(i)) for i in range(3)]
    assert loss == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-14)
    assert gc.rel_error(grads["theta"], np.mean([p[1] for p in parts], axis=0)) < 1e-14


def test_float32_agrees_with_float64(rng):
    net = tm.MLP([5, 8, 4], activation="tanh")
    config = matching.Config()
    params = matching.init_params(net, rng, config)
    batch = episodes(rng, 2, n_way=3, shots=2, d=5, k=2)
    loss, grads = matching.meta_step(net, params, batch, config)
    batch32 = batch._replace(X_support=batch.X_support.astype(np.float32), X_query=batch.X_query.astype(np.float32))
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, grads32 = matching.meta_step(net.replace(dtype="float32"), params32, batch32, config)
    assert loss32 == pytest.approx(loss, rel=1e-5)
    for k in grads:
        assert grads32[k].dtype == np.float32 and gc.rel_error(grads32[k], grads[k]) < 1e-5, k


def test_bad_inputs_are_named(rng):
    net = _net()
    theta, (Xs, ys, Xq, yq) = _theta(net, rng), random_episode(rng, 5, n_way=3, shots=2)
    with pytest.raises(ValueError, match=r"y_query must hold labels in 0..2, got values from 0 to 4"):
        matching.loss_and_grad(net, theta, Xs, ys, Xq, np.r_[yq[:-1], 4])
    with pytest.raises(ValueError, match="class 0 has no support example"):
        matching.loss_and_grad(net, theta, Xs, ys + 1, Xq, yq)
    with pytest.raises(ValueError, match="cosine_eps must be > 0, got 0.0"):
        matching.Config(cosine_eps=0.0)
    batch = episodes(rng, 2, n_way=3, shots=2, d=5, k=2)
    ys2 = batch.y_support.copy()
    ys2[0] = [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="episode 0 is 2-way, episode 1 is 3-way"):
        matching.meta_step(net, {"theta": theta}, batch._replace(y_support=ys2, y_query=batch.y_query % 2),
                           matching.Config())


def test_training_on_separable_episodes_reaches_high_accuracy(rng):
    net, config = tm.MLP([10, 32, 16]), matching.Config()
    before, after = train(matching, net, config, rng, steps=300, lr=0.01)
    test = episodes(np.random.default_rng(1), 50)
    acc_before, acc_after = accuracy(matching, net, before, config, test), accuracy(matching, net, after, config, test)
    assert acc_before < 0.4 and acc_after > 0.93, (acc_before, acc_after)
