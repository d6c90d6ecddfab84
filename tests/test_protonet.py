"""Prototypical Networks: the gradient through the prototypes against finite differences,
the closed forms (1-shot prototypes, the linear-classifier view), bad episodes, learning."""
import numpy as np
import pytest
from fewshot_data import accuracy, episodes, random_episode, train

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import protonet


def _net(backend="numba", dtype="float64"):
    return tm.MLP([5, 8, 4], activation="tanh", backend=backend, dtype=dtype)


def _theta(net, rng):
    return net.init(rng) + 0.1 * rng.standard_normal(net.n_params)  # biases not all zero


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("shots", [1, 3])
def test_gradient_matches_finite_differences(shots, backend, rng):
    net = _net(backend)
    theta, episode = _theta(net, rng), random_episode(rng, 5, n_way=3, shots=shots)
    loss, grad = protonet.loss_and_grad(net, theta, *episode)
    numeric = gc.numerical_gradient(lambda t: protonet.loss_and_grad(net, t, *episode)[0], theta)
    assert np.isfinite(loss) and gc.rel_error(grad, numeric) < 1e-6


def test_embedding_gradient_matches_finite_differences(rng):
    """dL/dE_support flows through the prototypes; dL/dE_query through the distances."""
    Es, Eq = rng.standard_normal((8, 3)), rng.standard_normal((6, 3))
    ys, yq = np.array([0, 1, 2, 3, 0, 1, 2, 0]), rng.integers(0, 4, 6)  # unequal shots
    _, dEs, dEq = protonet.embedding_loss_and_grad(Es, ys, Eq, yq, 4)
    f_s = lambda e: protonet.embedding_loss_and_grad(e.reshape(8, 3), ys, Eq, yq, 4)[0]  # noqa: E731
    f_q = lambda e: protonet.embedding_loss_and_grad(Es, ys, e.reshape(6, 3), yq, 4)[0]  # noqa: E731
    assert gc.rel_error(dEs.ravel(), gc.numerical_gradient(f_s, Es.ravel())) < 1e-6
    assert gc.rel_error(dEq.ravel(), gc.numerical_gradient(f_q, Eq.ravel())) < 1e-6


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-13), ("float32", 1e-5)])
def test_batched_embedding_loss_is_the_per_episode_one(dtype, tol, rng):
    """Every episode of the stacked version: its own labels (unequal shots, shuffled), its own prototypes."""
    T, n_s, n_q, D, N = 5, 7, 6, 3, 3
    ys = np.stack([rng.permutation(np.r_[np.arange(N), rng.integers(0, N, n_s - N)]) for _ in range(T)])
    yq = rng.integers(0, N, (T, n_q))
    Es, Eq = rng.standard_normal((T, n_s, D)).astype(dtype), rng.standard_normal((T, n_q, D)).astype(dtype)
    losses, dEs, dEq = protonet.batch_embedding_loss_and_grad(Es, ys, Eq, yq, N)
    assert losses.shape == (T,) and dEs.shape == Es.shape and dEq.shape == Eq.shape and dEs.dtype == dtype
    for t in range(T):
        loss, want_s, want_q = protonet.embedding_loss_and_grad(Es[t], ys[t], Eq[t], yq[t], N)
        assert losses[t] == pytest.approx(loss, rel=tol)
        assert gc.rel_error(dEs[t], want_s) < tol and gc.rel_error(dEq[t], want_q) < tol


def test_gradient_through_the_prototypes_is_not_negligible(rng):
    """Treating the prototypes as constants would drop the whole support gradient."""
    Es, Eq = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    ys, yq = np.tile(np.arange(3), 2), rng.integers(0, 3, 5)
    _, dEs, dEq = protonet.embedding_loss_and_grad(Es, ys, Eq, yq, 3)
    assert np.linalg.norm(dEs) > 0.1 * np.linalg.norm(dEq)
    # Shifting every embedding by the same vector leaves every distance unchanged:
    # the support and query gradients cancel in total.
    assert np.allclose(dEs.sum(axis=0) + dEq.sum(axis=0), 0, atol=1e-14)


def test_one_shot_prototypes_are_the_support_embeddings(rng):
    Es = rng.standard_normal((4, 3))
    ys = np.array([2, 0, 3, 1])
    C, _ = protonet.prototypes(Es, ys, 4)
    assert np.array_equal(C, Es[np.argsort(ys)])


def test_prototypes_are_class_means(rng):
    Es, ys = rng.standard_normal((7, 3)), np.array([0, 1, 1, 2, 2, 2, 0])
    C, _ = protonet.prototypes(Es, ys, 3)
    assert np.allclose(C, [Es[ys == k].mean(axis=0) for k in range(3)], rtol=0, atol=1e-15)


def test_squared_distances_are_the_definition(rng):
    Eq, C = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    direct = ((Eq[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    assert np.allclose(protonet.squared_distances(Eq, C), direct, rtol=1e-13, atol=1e-13)


def test_linear_classifier_gives_the_same_logits_up_to_a_per_query_constant(rng):
    """-|q - c_k|^2 = q.(2 c_k) - |c_k|^2 - |q|^2: the offset is -|q|^2, the same for every class."""
    net = _net()
    theta, (Xs, ys, Xq, _) = _theta(net, rng), random_episode(rng, 5, n_way=4, shots=2)
    Es, Eq = net.forward(theta, Xs), net.forward(theta, Xq)
    W, b = protonet.linear_classifier(protonet.prototypes(Es, ys, 4)[0])
    linear = Eq @ W + b
    logits = protonet.logits(net, theta, Xs, ys, Xq)
    offset = linear - logits
    assert np.allclose(offset, np.sum(Eq ** 2, axis=1)[:, None], rtol=1e-12, atol=1e-12)
    soft = np.exp(linear - linear.max(1, keepdims=True))
    assert np.allclose(soft / soft.sum(1, keepdims=True), protonet.probabilities(net, theta, Xs, ys, Xq),
                       rtol=1e-12, atol=1e-14)


def test_meta_step_is_the_mean_of_its_episodes(rng):
    net = _net()
    theta, batch = _theta(net, rng), episodes(rng, 3, n_way=3, shots=2, d=5, k=2)
    loss, grads = protonet.meta_step(net, {"theta": theta}, batch, protonet.Config())
    parts = [protonet.loss_and_grad(net, theta, *batch.task(i)) for i in range(3)]
    assert set(grads) == {"theta"} and loss == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-14)
    assert gc.rel_error(grads["theta"], np.mean([p[1] for p in parts], axis=0)) < 1e-14


def test_float32_agrees_with_float64(rng):
    net = _net()
    theta, episode = _theta(net, rng), random_episode(rng, 5)
    l64, g64 = protonet.loss_and_grad(net, theta, *episode)
    Xs, ys, Xq, yq = episode
    l32, g32 = protonet.loss_and_grad(net.replace(dtype="float32"), theta.astype(np.float32),
                                      Xs.astype(np.float32), ys, Xq.astype(np.float32), yq)
    assert g32.dtype == np.float32 and l32 == pytest.approx(l64, rel=1e-5) and gc.rel_error(g32, g64) < 1e-5


def test_predict_returns_one_row_of_class_scores(rng):
    net = _net()
    theta, (Xs, ys, Xq, _) = _theta(net, rng), random_episode(rng, 5, n_way=4, queries=6)
    scores = protonet.predict(net, {"theta": theta}, Xs, ys, Xq, 3, protonet.Config())
    assert scores.shape == (1, 6, 4)
    assert np.array_equal(scores[0], protonet.logits(net, theta, Xs, ys, Xq))
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        protonet.predict(net, {"theta": theta}, Xs, ys, Xq, -1, protonet.Config())


def test_bad_episodes_are_named(rng):
    net = _net()
    theta, (Xs, ys, Xq, yq) = _theta(net, rng), random_episode(rng, 5, n_way=3, shots=2)
    with pytest.raises(ValueError, match=r"y_query must hold labels in 0..2, got values from 0 to 3"):
        protonet.loss_and_grad(net, theta, Xs, ys, Xq, np.r_[yq[:-1], 3])
    with pytest.raises(ValueError, match=r"y_support must hold labels in 0..5, got values from -1"):
        protonet.loss_and_grad(net, theta, Xs, np.r_[ys[:-1], -1], Xq, yq)
    with pytest.raises(ValueError, match="class 1 has no support example"):
        protonet.loss_and_grad(net, theta, Xs, np.array([0, 2, 0, 2, 0, 2]), Xq, yq % 3)
    with pytest.raises(TypeError, match="y_support must hold integer class labels, got dtype float64"):
        protonet.loss_and_grad(net, theta, Xs, ys.astype(float), Xq, yq)
    with pytest.raises(ValueError, match=r"y_support must have shape \(6,\)"):
        protonet.loss_and_grad(net, theta, Xs, ys[:4], Xq, yq)
    with pytest.raises(ValueError, match=r"X_query must have shape \(n, 5\), got \(7, 4\)"):
        protonet.loss_and_grad(net, theta, Xs, ys, Xq[:, :4], yq)


def _outcome(f):
    """``f()``'s episodes, or the type and message of what it raised."""
    try:
        return f()
    except (TypeError, ValueError) as err:
        return type(err), str(err)


def test_episodes_checked_at_once_are_the_episodes_checked_one_by_one(rng):
    """``embedding.check_episodes`` (the stacked checks) gives what ``check_episode`` gives for every
    episode, arrays, dtypes and N, and for a bad batch raises the first bad episode's error."""
    from tinymeta.algorithms import embedding

    net = _net(dtype="float32")
    batch = episodes(rng, 4, n_way=3, shots=2, d=5, k=2)
    T = batch.n_tasks

    def changed(name, t, value):
        a = np.array(getattr(batch, name))
        a[t] = value
        return batch._replace(**{name: a})
    ys, yq = batch.y_support, batch.y_query
    cases = {
        "valid": batch,
        "int32 labels, float64 inputs, strided": batch._replace(
            y_support=ys.astype(np.int32), y_query=yq.astype(np.uint8),
            X_support=np.asfortranarray(batch.X_support.astype(np.float64))),
        "episodes of other N": batch._replace(y_support=np.r_[ys[:1], ys[1:] % 2], y_query=yq % 2),
        "a NaN input": changed("X_query", 2, np.nan),
        "an infinite input": changed("X_support", 1, np.inf),
        "a query label out of range": changed("y_query", 3, 3),
        "a negative support label": changed("y_support", 1, -1),
        "a class without support example": changed("y_support", 2, [0, 2, 0, 2, 0, 2]),
        "float labels": batch._replace(y_support=ys.astype(float)),
        "integer inputs": batch._replace(X_query=np.ones(batch.X_query.shape, dtype=int)),
        "inputs of another width": batch._replace(X_query=batch.X_query[..., :4]),
        "no support rows": batch._replace(X_support=batch.X_support[:, :0], y_support=ys[:, :0]),
        "labels in a list": batch._replace(y_query=list(yq)),
    }
    for name, b in cases.items():
        embedding.check_batch(b)
        got = _outcome(lambda: embedding.check_episodes(net, b))
        want = _outcome(lambda: [embedding.check_episode(net, *b.task(t)) for t in range(T)])
        if isinstance(want, tuple):
            assert got == want, name
            continue
        assert len(got) == len(want) == T, name
        for g, w in zip(got, want):
            assert g[4] == w[4], name
            for ga, wa in zip(g[:4], w[:4]):
                assert ga.dtype == wa.dtype and ga.flags.c_contiguous and np.array_equal(ga, wa), name


def test_batches_of_different_ways_are_refused(rng):
    """N-way mismatch: a meta-batch averages episodes of one N."""
    net = _net()
    batch = episodes(rng, 2, n_way=4, shots=2, d=5, k=2)
    ys = batch.y_support.copy()
    ys[1] = np.repeat([0, 1], 4)  # episode 1 is 2-way 4-shot
    bad = batch._replace(y_support=ys, y_query=batch.y_query % 2)
    with pytest.raises(ValueError, match="episode 0 is 4-way, episode 1 is 2-way"):
        protonet.meta_step(net, {"theta": _theta(net, rng)}, bad, protonet.Config())
    with pytest.raises(TypeError, match="batch must be a tinymeta.TaskBatch"):
        protonet.meta_step(net, {"theta": _theta(net, rng)}, tuple(batch), protonet.Config())


def test_config_defaults_and_checks():
    assert protonet.Config() == protonet.Config(train_ways=60, train_queries=5)
    with pytest.raises(ValueError, match="train_ways must be >= 2, got 1"):
        protonet.Config(train_ways=1)


def test_training_on_separable_episodes_reaches_high_accuracy(rng):
    """New classes at test time: only a learned embedding that ignores the nuisance inputs helps."""
    net, config = tm.MLP([10, 32, 16]), protonet.Config()
    before, after = train(protonet, net, config, rng, steps=300, lr=0.01)
    test = episodes(np.random.default_rng(1), 50)
    acc_before, acc_after = accuracy(protonet, net, before, config, test), accuracy(protonet, net, after, config, test)
    assert acc_before < 0.4 and acc_after > 0.93, (acc_before, acc_after)
