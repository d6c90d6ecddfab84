"""Siamese networks: gradients of the weighted-L1 verification loss (embedding, w, b, theta)
against finite differences away from the |.| kink; pair sampling; nearest-match prediction; learning."""
import numpy as np
import pytest
from fewshot_data import accuracy, episodes, random_episode, train

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import siamese


def _net(backend="numba"):
    return tm.MLP([5, 8, 4], activation="tanh", backend=backend)


def _params(net, rng):
    params = siamese.init_params(net, rng, siamese.Config())
    params["theta"] = params["theta"] + 0.1 * rng.standard_normal(net.n_params)
    return params


def _kink_margin(net, params, X1, X2):
    """Smallest |f(x1)_j - f(x2)_j| over the pairs: the finite-difference steps must not cross 0."""
    return float(np.min(np.abs(net.forward(params["theta"], X1) - net.forward(params["theta"], X2))))


def _numerical_grads(f, params):
    out = {}
    for k in params:
        def f_k(x, k=k):
            return f({**params, k: x})
        out[k] = gc.numerical_gradient(f_k, params[k])
    return out


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("shots", [1, 2])
def test_episode_gradients_match_finite_differences(shots, backend, rng):
    net = _net(backend)
    params, episode = _params(net, rng), random_episode(rng, 5, n_way=3, shots=shots)
    Xs, _, Xq, _ = episode
    pairs = (np.repeat(Xq, len(Xs), axis=0), np.tile(Xs, (len(Xq), 1)))
    assert _kink_margin(net, params, *pairs) > 1e-4
    loss, grads = siamese.loss_and_grad(net, params, *episode)
    numeric = _numerical_grads(lambda p: siamese.loss_and_grad(net, p, *episode)[0], params)
    assert set(grads) == {"theta", "w", "b"} and np.isfinite(loss)
    for k in grads:
        assert grads[k].shape == params[k].shape and gc.rel_error(grads[k], numeric[k]) < 1e-6, k


def test_pair_gradients_match_finite_differences(rng):
    net = _net()
    params = _params(net, rng)
    X1, X2, same = rng.standard_normal((9, 5)), rng.standard_normal((9, 5)), rng.integers(0, 2, 9).astype(bool)
    assert _kink_margin(net, params, X1, X2) > 1e-4
    _, grads = siamese.pair_loss_and_grad(net, params, X1, X2, same)
    numeric = _numerical_grads(lambda p: siamese.pair_loss_and_grad(net, p, X1, X2, same)[0], params)
    for k in grads:
        assert gc.rel_error(grads[k], numeric[k]) < 1e-6, k


def test_embedding_gradients_match_finite_differences(rng):
    n, D = 8, 3
    E1, E2 = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    assert np.min(np.abs(E1 - E2)) > 1e-4
    same, weights = rng.integers(0, 2, n), rng.uniform(0.5, 1.5, n) / n
    w, b = rng.standard_normal(D), np.array([0.3])
    args = [E1, E2, same, weights, w, b]
    _, *analytic = siamese.verification_loss_and_grad(*args)
    for slot, grad in zip((0, 1, 4, 5), analytic):  # E1, E2, w, b
        def f(x, slot=slot):
            a = list(args)
            a[slot] = x.reshape(args[slot].shape)
            return siamese.verification_loss_and_grad(*a)[0]
        assert gc.rel_error(grad.ravel(), gc.numerical_gradient(f, args[slot].ravel())) < 1e-6, slot


def test_loss_is_the_weighted_binary_cross_entropy(rng):
    E1, E2 = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    same, weights = np.array([1, 0, 1, 1, 0, 0]), np.full(6, 1 / 6)
    w, b = rng.standard_normal(4), np.array([-0.2])
    p = 1 / (1 + np.exp(-(np.abs(E1 - E2) @ w + b[0])))
    bce = -np.mean(same * np.log(p) + (1 - same) * np.log(1 - p))
    assert siamese.verification_loss_and_grad(E1, E2, same, weights, w, b)[0] == pytest.approx(bce, rel=1e-13)
    # Far from the data (huge |z|) the softplus form stays finite where log(p) would not.
    big = siamese.verification_loss_and_grad(E1, E2, np.zeros(6), weights, 1e4 * np.abs(w) + 1, b)
    assert np.isfinite(big[0]) and big[0] > 100


def test_balanced_weights_give_each_group_half():
    same = np.array([True, False, False, False, True, False])
    w = siamese.balanced_weights(same)
    assert w.sum() == pytest.approx(1) and w[same].sum() == pytest.approx(0.5)
    assert np.allclose(w[same], 0.25) and np.allclose(w[~same], 0.125)
    assert np.allclose(siamese.balanced_weights(np.ones(4, bool)), 0.25)


def test_episode_loss_is_the_pair_loss_of_all_query_support_pairs(rng):
    Es, Eq = rng.standard_normal((6, 3)), rng.standard_normal((4, 3))
    ys, yq = np.tile(np.arange(3), 2), np.array([0, 2, 1, 1])
    w, b = rng.standard_normal(3), np.array([0.5])
    loss, dEs, dEq, dw, db = siamese.embedding_loss_and_grad(Es, ys, Eq, yq, w, b)
    E1, E2 = np.repeat(Eq, 6, axis=0), np.tile(Es, (4, 1))
    same = np.repeat(yq, 6) == np.tile(ys, 4)
    assert same.sum() == 8  # each query matches its class's 2 support examples
    ref = siamese.verification_loss_and_grad(E1, E2, same, siamese.balanced_weights(same), w, b)
    assert loss == pytest.approx(ref[0], rel=1e-14) and np.allclose(dw, ref[3]) and np.allclose(db, ref[4])


def test_sample_pairs_is_balanced_labelled_and_reproducible(rng):
    X, y = rng.standard_normal((12, 5)), np.repeat(np.arange(4), 3)
    X1, X2, same = siamese.sample_pairs(np.random.default_rng(7), X, y, 11)
    again = siamese.sample_pairs(np.random.default_rng(7), X, y, 11)
    assert all(np.array_equal(a, b) for a, b in zip((X1, X2, same), again))
    assert X1.shape == X2.shape == (11, 5) and same.sum() == 6
    row = {tuple(x): i for i, x in enumerate(X)}
    i1, i2 = np.array([row[tuple(x)] for x in X1]), np.array([row[tuple(x)] for x in X2])
    assert np.array_equal(y[i1] == y[i2], same) and np.all(i1 != i2)
    with pytest.raises(ValueError, match="at least 2 classes and a class with 2 examples"):
        siamese.sample_pairs(rng, X[:4], np.arange(4), 5)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        siamese.sample_pairs(7, X, y, 5)
    with pytest.raises(TypeError, match="y must hold integer class labels, got dtype float64"):
        siamese.sample_pairs(rng, X, y.astype(float), 5)
    with pytest.raises(ValueError, match=r"and y shape \(n,\), got X \(12, 5\) and y \(11,\)"):
        siamese.sample_pairs(rng, X, y[:11], 5)


def test_predict_scores_each_class_by_its_best_match(rng):
    net = _net()
    params, (Xs, ys, Xq, _) = _params(net, rng), random_episode(rng, 5, n_way=3, shots=2, queries=4)
    scores = siamese.predict(net, params, Xs, ys, Xq, 0, siamese.Config())
    p = siamese.match_probabilities(net.forward(params["theta"], Xs), net.forward(params["theta"], Xq),
                                    params["w"], params["b"])
    assert scores.shape == (1, 4, 3) and p.shape == (4, 6)
    for k in range(3):
        assert np.array_equal(scores[0, :, k], p[:, ys == k].max(axis=1))
    # With negative weights, a query identical to a support example matches it with the top score.
    params = {**params, "w": -np.abs(params["w"]) - 0.1}
    scores = siamese.predict(net, params, Xs, ys, Xs[[3, 1]], 0, siamese.Config())
    assert np.array_equal(scores[0].argmax(axis=1), ys[[3, 1]])


def test_init_params_follow_the_config(rng):
    net = tm.MLP([5, 8, 64])
    params = siamese.init_params(net, rng, siamese.Config())
    assert params["w"].shape == (64,) and params["b"].shape == (1,)
    assert abs(params["w"].std() - 0.2) < 0.06 and abs(params["b"][0] - 0.5) < 0.05
    again = siamese.init_params(net, np.random.default_rng(20261122), siamese.Config())
    assert all(np.array_equal(params[k], again[k]) for k in params)


def test_float32_agrees_with_float64(rng):
    net = tm.MLP([5, 8, 4], activation="tanh")
    config = siamese.Config()
    params = siamese.init_params(net, rng, config)
    batch = episodes(rng, 2, n_way=3, shots=2, d=5, k=2)
    loss, grads = siamese.meta_step(net, params, batch, config)
    batch32 = batch._replace(X_support=batch.X_support.astype(np.float32), X_query=batch.X_query.astype(np.float32))
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, grads32 = siamese.meta_step(net.replace(dtype="float32"), params32, batch32, config)
    assert loss32 == pytest.approx(loss, rel=1e-5)
    for k in grads:
        assert grads32[k].dtype == np.float32 and gc.rel_error(grads32[k], grads[k]) < 1e-5, k


def test_bad_inputs_are_named(rng):
    net = _net()
    params, (Xs, ys, Xq, yq) = _params(net, rng), random_episode(rng, 5)
    with pytest.raises(ValueError, match=r"params\['w'\] must have shape \(4,\), got \(3,\)"):
        siamese.loss_and_grad(net, {**params, "w": params["w"][:3]}, Xs, ys, Xq, yq)
    with pytest.raises(ValueError, match="class 2 has no support example"):
        siamese.loss_and_grad(net, params, Xs, np.where(ys == 2, 3, ys), Xq, yq)
    with pytest.raises(ValueError, match="y_query must hold labels in 0..2"):
        siamese.loss_and_grad(net, params, Xs, ys, Xq, yq + 3)
    with pytest.raises(ValueError, match="same must be 4 booleans"):
        siamese.pair_loss_and_grad(net, params, Xq[:4], Xq[1:5], np.array([0, 1, 2, 0]))


def test_training_on_separable_episodes_reaches_high_accuracy(rng):
    net, config = tm.MLP([10, 32, 16]), siamese.Config()
    before, after = train(siamese, net, config, rng, steps=300, lr=0.01)
    test = episodes(np.random.default_rng(1), 50)
    acc_before, acc_after = accuracy(siamese, net, before, config, test), accuracy(siamese, net, after, config, test)
    assert acc_before < 0.4 and acc_after > 0.93, (acc_before, acc_after)
