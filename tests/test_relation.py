"""Relation Networks: gradients through the relation module g (its parameters phi and its
input cotangent) and back into the embedding f, against finite differences; class
embeddings; bad episodes; learning."""
import numpy as np
import pytest
from fewshot_data import accuracy, episodes, random_episode, train

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import relation

TANH = relation.Config(relation_hidden=(6,), relation_activation="tanh")


def _net(backend="numba"):
    return tm.MLP([5, 8, 4], activation="tanh", backend=backend)


def _params(net, rng, config=TANH):
    params = relation.init_params(net, rng, config)
    return {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("mode,shots", [("sum", 1), ("sum", 3), ("mean", 3)])
def test_gradients_match_finite_differences(mode, shots, backend, rng):
    """Both meta-parameters: the embedding's theta and the relation module's phi."""
    net, config = _net(backend), relation.Config(relation_hidden=(6, 5), relation_activation="tanh",
                                                 class_embedding=mode)
    params, episode = _params(net, rng, config), random_episode(rng, 5, n_way=3, shots=shots)
    loss, grads = relation.loss_and_grad(net, params, *episode, config)
    assert set(grads) == {"theta", "phi"} and np.isfinite(loss)
    for k in params:
        def f(x, k=k):
            return relation.loss_and_grad(net, {**params, k: x}, *episode, config)[0]
        assert gc.rel_error(grads[k], gc.numerical_gradient(f, params[k])) < 1e-6, k


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_gradients_match_finite_differences(mode, rng):
    g = tm.MLP([6, 5, 1], activation="tanh")
    phi = g.init(rng) + 0.1 * rng.standard_normal(g.n_params)
    Es, Eq = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    ys, yq = np.tile(np.arange(3), 2), rng.integers(0, 3, 5)
    _, dEs, dEq, dphi = relation.embedding_loss_and_grad(g, phi, Es, ys, Eq, yq, 3, mode)
    f_s = lambda e: relation.embedding_loss_and_grad(g, phi, e.reshape(6, 3), ys, Eq, yq, 3, mode)[0]  # noqa: E731
    f_q = lambda e: relation.embedding_loss_and_grad(g, phi, Es, ys, e.reshape(5, 3), yq, 3, mode)[0]  # noqa: E731
    f_p = lambda p: relation.embedding_loss_and_grad(g, p, Es, ys, Eq, yq, 3, mode)[0]  # noqa: E731
    assert gc.rel_error(dEs.ravel(), gc.numerical_gradient(f_s, Es.ravel())) < 1e-6
    assert gc.rel_error(dEq.ravel(), gc.numerical_gradient(f_q, Eq.ravel())) < 1e-6
    assert gc.rel_error(dphi, gc.numerical_gradient(f_p, phi)) < 1e-6


def test_loss_is_the_squared_error_to_one_hot_targets(rng):
    net = _net()
    params, (Xs, ys, Xq, yq) = _params(net, rng), random_episode(rng, 5, n_way=3, shots=2)
    r = relation.predict(net, params, Xs, ys, Xq, 0, TANH)[0]
    loss, _ = relation.loss_and_grad(net, params, Xs, ys, Xq, yq, TANH)
    assert loss == pytest.approx(np.sum((r - np.eye(3)[yq]) ** 2) / len(yq), rel=1e-13)
    assert np.all((r > 0) & (r < 1))


def test_pair_rows_put_the_class_first_then_the_query(rng):
    e, Eq = rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    Z = relation.pair_rows(e, Eq)
    assert Z.shape == (12, 4)
    for i in range(4):
        for k in range(3):
            assert np.array_equal(Z[i * 3 + k], np.r_[e[k], Eq[i]])


def test_class_embeddings_sum_and_mean(rng):
    Es, ys = rng.standard_normal((6, 3)), np.array([1, 0, 1, 0, 1, 0])
    total, _ = relation.class_embeddings(Es, ys, 2, "sum")
    mean, _ = relation.class_embeddings(Es, ys, 2, "mean")
    assert np.allclose(total, [Es[ys == 0].sum(0), Es[ys == 1].sum(0)], rtol=1e-15)
    assert np.allclose(mean, total / 3, rtol=1e-15)
    one_shot = relation.class_embeddings(Es[:2], ys[:2], 2, "sum")[0]
    assert np.array_equal(one_shot, Es[:2][::-1])  # 1-shot: the support embeddings themselves


def test_relation_module_shape_follows_the_config():
    net = tm.MLP([784, 256, 128, 64, 64], dtype="float32", backend="numpy")
    g = relation.relation_net(net, relation.Config())
    assert g.sizes == (128, 8, 1) and g.activation == "relu" and g.dtype == "float32" and g.backend == "numpy"


def test_meta_step_is_the_mean_of_its_episodes(rng):
    net = _net()
    params, batch = _params(net, rng), episodes(rng, 3, n_way=3, shots=2, d=5, k=2)
    loss, grads = relation.meta_step(net, params, batch, TANH)
    parts = [relation.loss_and_grad(net, params, *batch.task(i), TANH) for i in range(3)]
    assert loss == pytest.approx(np.mean([p[0] for p in parts]), rel=1e-14)
    for k in params:
        assert gc.rel_error(grads[k], np.mean([p[1][k] for p in parts], axis=0)) < 1e-14


def test_float32_agrees_with_float64(rng):
    net = tm.MLP([5, 8, 4], activation="tanh")
    config = TANH
    params = relation.init_params(net, rng, config)
    batch = episodes(rng, 2, n_way=3, shots=2, d=5, k=2)
    loss, grads = relation.meta_step(net, params, batch, config)
    batch32 = batch._replace(X_support=batch.X_support.astype(np.float32), X_query=batch.X_query.astype(np.float32))
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, grads32 = relation.meta_step(net.replace(dtype="float32"), params32, batch32, config)
    assert loss32 == pytest.approx(loss, rel=1e-5)
    for k in grads:
        assert grads32[k].dtype == np.float32 and gc.rel_error(grads32[k], grads[k]) < 1e-5, k


def test_bad_inputs_are_named(rng):
    net = _net()
    params, (Xs, ys, Xq, yq) = _params(net, rng), random_episode(rng, 5, n_way=3, shots=2)
    with pytest.raises(ValueError, match=r"same number of shots per class .* got counts \[3, 2, 1\]"):
        relation.loss_and_grad(net, params, Xs, np.array([0, 1, 2, 0, 1, 0]), Xq, yq, TANH)
    mean = relation.Config(relation_hidden=(6,), relation_activation="tanh", class_embedding="mean")
    assert np.isfinite(relation.loss_and_grad(net, params, Xs, np.array([0, 1, 2, 0, 1, 0]), Xq, yq, mean)[0])
    with pytest.raises(ValueError, match=r"params\['phi'\] must have shape"):
        relation.loss_and_grad(net, params, Xs, ys, Xq, yq, relation.Config())  # phi built for (6,)
    with pytest.raises(ValueError, match="class_embedding must be one of"):
        relation.Config(class_embedding="max")
    with pytest.raises(ValueError, match="y_query must hold labels in 0..2"):
        relation.loss_and_grad(net, params, Xs, ys, Xq, yq + 1 + yq.max(), TANH)
    with pytest.raises(ValueError, match="class 0 has no support example"):
        relation.loss_and_grad(net, params, Xs, ys + 1, Xq, yq, TANH)


def test_training_on_separable_episodes_reaches_high_accuracy(rng):
    """A relation module wider than the paper's 8 units learns the comparison faster here."""
    net, config = tm.MLP([10, 32, 16]), relation.Config(relation_hidden=(32,))
    before, after = train(relation, net, config, rng, steps=300, lr=0.01)
    test = episodes(np.random.default_rng(1), 50)
    acc_before, acc_after = accuracy(relation, net, before, config, test), accuracy(relation, net, after, config, test)
    assert acc_before < 0.4 and acc_after > 0.93, (acc_before, acc_after)
