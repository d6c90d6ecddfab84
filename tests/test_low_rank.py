"""The stacked / low-rank meta-batch (algorithms/low_rank.py) against the per-task reference
loops of inner_loop.py (1e-12 relative in float64, 1-3 inner steps), finite differences of the
meta-objective, and where inner_loop.meta_loss_and_grad sends a call."""
import threading

import numpy as np
import pytest
from task_batches import random_batch

import tinymeta as tm
from tinymeta import gradcheck as gc
from tinymeta.algorithms import anil, batched_predict, inner_loop, low_rank, maml, meta_batch

TOL64 = 1e-12
SHAPES = [  # (sizes, activation, loss)
    ((784, 20, 12, 5), "relu", "xent"),  # a small Omniglot-like classifier
    ((3, 8, 6, 4), "tanh", "xent"),
    ((1, 40, 40, 1), "relu", "mse"),  # the sinusoid net
    ((4, 7, 6, 5, 2), "sigmoid", "mse"),
    ((4, 9, 3), "softplus", "xent"),
    ((5, 3), "tanh", "mse"),  # one affine layer: no hidden activation
]


def _precond(net, rng, kind):
    """MAML's one step size; per-layer weight steps with any bias steps; ANIL's head-only step."""
    if kind == "maml":
        return np.full(net.n_params, 0.05, dtype=net.dtype)
    if kind == "anil":
        return (0.3 * anil.head_mask(net)).astype(net.dtype)
    precond = rng.uniform(-0.02, 0.1, net.n_params)  # the biases: a vector, signs mixed
    for l, (d_in, d_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        start = net.layer_offsets[l]
        precond[start:start + d_in * d_out] = rng.uniform(0.01, 0.1)
    return precond.astype(net.dtype)


def _problem(sizes, activation, loss, rng, T=7, dtype="float64", K=5, Q=6):
    net = tm.MLP(sizes, activation=activation, loss=loss, dtype=dtype)
    theta = (net.init(rng) + 0.1 * rng.standard_normal(net.n_params)).astype(dtype)
    return net, theta, random_batch(net, rng, T, K, Q)


@pytest.mark.kernels
@pytest.mark.parametrize("sizes, activation, loss", SHAPES)
@pytest.mark.parametrize("kind", ["maml", "per_layer", "anil"])
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_matches_reference_in_float64(sizes, activation, loss, kind, steps, first_order, rng):
    net, theta, batch = _problem(sizes, activation, loss, rng)
    precond = _precond(net, rng, kind)
    got = low_rank.meta_loss_and_grad(net, theta, batch, precond, steps, first_order)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, steps, first_order)
    assert gc.rel_error(got[0], want[0]) <= TOL64
    assert gc.rel_error(got[1], want[1]) <= TOL64


@pytest.mark.parametrize("first_order", [False, True])
def test_float32_matches_float64(first_order, rng):
    net, theta, batch = _problem((784, 20, 12, 5), "tanh", "xent", rng)
    net32 = tm.MLP(net.sizes, activation="tanh", loss="xent", dtype="float32")
    batch32 = tm.TaskBatch(*(a.astype(np.float32) if a.dtype.kind == "f" else a for a in batch))
    precond = _precond(net, rng, "maml")
    got = low_rank.meta_loss_and_grad(net32, theta.astype(np.float32), batch32, precond.astype(np.float32),
                                      2, first_order)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, 2, first_order)
    assert got[1].dtype == np.float32
    assert gc.rel_error(got[0], want[0]) <= gc.FLOAT32_TOL
    assert gc.rel_error(got[1], want[1]) <= gc.FLOAT32_TOL


@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_finite_differences(loss, steps, rng):
    net, theta, batch = _problem((6, 12, 10, 3), "tanh", loss, rng, T=3)
    precond = _precond(net, rng, "per_layer")

    def meta_loss(t):
        return inner_loop.reference_meta_loss_and_grad(net, t, batch, precond, steps)[0]

    _, grad = low_rank.meta_loss_and_grad(net, theta, batch, precond, steps)
    assert gc.rel_error(grad, gc.numerical_gradient(meta_loss, theta)) < gc.FD_TOL


def test_workspaces_carry_nothing_between_calls(rng):
    """A call on other data between two calls on the same data changes nothing (the
    workspaces of a shape are reused), and no input is written."""
    net, theta, batch = _problem((784, 20, 12, 5), "relu", "xent", rng)
    other = random_batch(net, rng, 7)
    precond = _precond(net, rng, "maml")
    copies = [a.copy() for a in (theta, precond, *batch)]
    first = low_rank.meta_loss_and_grad(net, theta, batch, precond)
    low_rank.meta_loss_and_grad(net, theta + 0.5, other, precond)
    again = low_rank.meta_loss_and_grad(net, theta, batch, precond)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    assert all(np.array_equal(a, b) for a, b in zip(copies, (theta, precond, *batch)))


def test_two_threads_get_the_serial_results(rng):
    net, theta, batch = _problem((784, 20, 12, 5), "tanh", "xent", rng)
    precond = _precond(net, rng, "maml")
    thetas = [theta + 0.01 * i for i in range(2)]
    want = [low_rank.meta_loss_and_grad(net, t, batch, precond) for t in thetas]
    got = [None, None]

    def run(i):
        for _ in range(20):
            got[i] = low_rank.meta_loss_and_grad(net, thetas[i], batch, precond)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for g, w in zip(got, want):
        assert g[0] == w[0] and np.array_equal(g[1], w[1])


def test_what_it_takes(rng, monkeypatch):
    monkeypatch.setattr(low_rank, "MIN_WORK", 0)
    net, theta, batch = _problem((40, 30, 3), "tanh", "xent", rng)
    precond = _precond(net, rng, "per_layer")
    assert low_rank.applies(net, batch, precond, 1, False)
    assert not low_rank.applies(net, batch, precond, 0, False)
    assert low_rank._saving(net, 3 * 5 + 6) < low_rank.MIN_SAVING  # 3 steps on 5 rows + 6 query rows: too many
    assert not low_rank.applies(net, batch, precond, 3, False)
    assert not low_rank.applies(net, batch, precond, 1, True)  # no gradient wrt precond
    metasgd = rng.uniform(0.01, 0.1, net.n_params)  # a step per weight
    assert not low_rank.applies(net, batch, metasgd, 1, False)
    assert not low_rank.applies(net, batch, precond[:-1], 1, False)
    for other in (tm.MLP(net.sizes, activation="tanh", loss="xent", backend="numpy"),
                  tm.MLP(net.sizes, activation="tanh", loss="xent", batchnorm=True)):
        assert not low_rank.applies(other, batch, np.full(other.n_params, 0.1), 1, False)
    assert not low_rank.applies(net, tm.TaskBatch(*(a[:1] for a in batch)), precond, 1, False)  # one task
    wide = random_batch(net, rng, 7, K=40)  # 40 support rows: the rank-46 terms cost more than the matrices
    assert low_rank._saving(net, 40 + 6) < low_rank.MIN_SAVING <= low_rank._saving(net, 5 + 6)
    assert not low_rank.applies(net, wide, precond, 1, False)
    with pytest.raises(ValueError, match="one step size per weight matrix"):
        low_rank.meta_loss_and_grad(net, theta, batch, metasgd)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        low_rank.meta_loss_and_grad(net, theta, batch, precond, 0)


def _benchmark_nets():
    """The Omniglot net 5-way and 20-way, and the sinusoid net, in float32."""
    return (tm.MLP([784, 256, 128, 64, 64, 5], loss="xent", dtype="float32"),
            tm.MLP([784, 256, 128, 64, 64, 20], loss="xent", dtype="float32"), tm.MLP([1, 40, 40, 1], dtype="float32"))


def test_the_shipped_thresholds(rng):
    """The benchmark's Omniglot meta-batches and the 20-way 1-shot protocol (5 steps) take this
    path; one Omniglot task, 20-way 5-shot with 5 steps and sinusoid meta-batches of any size
    do not."""
    omniglot, omniglot20, sinusoid = _benchmark_nets()
    for net, T, K, Q, steps, want in ((omniglot, 32, 5, 25, 1, True), (omniglot, 32, 5, 75, 1, True),
                                      (omniglot, 2, 1, 5, 1, True), (omniglot, 32, 5, 25, 5, True),
                                      (omniglot20, 16, 20, 20, 5, True), (omniglot20, 16, 100, 100, 5, False),
                                      (omniglot, 1, 5, 25, 1, False), (sinusoid, 25, 10, 10, 1, False),
                                      (sinusoid, 1000, 10, 10, 1, False)):
        batch = random_batch(net, rng, T, K, Q)
        assert low_rank.applies(net, batch, np.full(net.n_params, 0.4, np.float32), steps, False) is want


def _record_calls(monkeypatch, function):
    """The list that records which module's ``function`` (low_rank's or meta_batch's) each call reaches."""
    calls = []
    for module in (low_rank, meta_batch):
        real = getattr(module, function)
        monkeypatch.setattr(module, function, lambda *a, _real=real, _name=module.__name__.rsplit(".", 1)[1], **k:
                            calls.append(_name) or _real(*a, **k))
    return calls


@pytest.mark.parametrize("threshold, path", [(0, "low_rank"), (10**18, "meta_batch")])
@pytest.mark.parametrize("steps", [1, 2])
def test_inner_loop_sends_calls_by_size(threshold, path, steps, rng, monkeypatch):
    monkeypatch.setattr(low_rank, "MIN_WORK", threshold)
    net, theta, batch = _problem((40, 30, 3), "tanh", "xent", rng, K=2, Q=3)
    calls = _record_calls(monkeypatch, "meta_loss_and_grad")
    config = maml.Config(inner_lr=0.1, inner_steps=steps)
    loss, grad = maml.meta_loss_and_grad(net, theta, batch, config.inner_lr, steps)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, maml.preconditioner(net, config), steps)
    assert calls == [path]
    assert gc.rel_error(loss, want[0]) <= TOL64 and gc.rel_error(grad, want[1]) <= TOL64


# ----------------------------------------------------------------- predictions
def _reference_predictions(net, theta, batch, precond, steps):
    return np.stack([inner_loop.reference_predictions(net, theta, batch.X_support[i], batch.y_support[i],
                                                      batch.X_query[i], precond, steps)
                     for i in range(batch.n_tasks)])


@pytest.mark.parametrize("sizes, activation, loss", SHAPES)
@pytest.mark.parametrize("kind", ["maml", "per_layer", "anil"])
@pytest.mark.parametrize("steps", [1, 4])
def test_predictions_match_reference_in_float64(sizes, activation, loss, kind, steps, rng):
    net, theta, batch = _problem(sizes, activation, loss, rng)
    precond = _precond(net, rng, kind)
    got = low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, steps)
    want = _reference_predictions(net, theta, batch, precond, steps)
    assert got.shape == want.shape == (7, steps + 1, 6, sizes[-1]) and np.isfinite(want).all()
    assert gc.rel_error(got, want) <= TOL64


def test_predictions_in_float32_match_float64(rng):
    net, theta, batch = _problem((784, 20, 12, 5), "tanh", "xent", rng)
    net32 = tm.MLP(net.sizes, activation="tanh", loss="xent", dtype="float32")
    batch32 = tm.TaskBatch(*(a.astype(np.float32) if a.dtype.kind == "f" else a for a in batch))
    precond = _precond(net, rng, "maml")
    got = low_rank.predictions(net32, theta.astype(np.float32), batch32.X_support, batch32.y_support,
                               batch32.X_query, precond.astype(np.float32), 3)
    assert got.dtype == np.float32
    assert gc.rel_error(got, _reference_predictions(net, theta, batch, precond, 3)) <= gc.FLOAT32_TOL


@pytest.mark.parametrize("dtype, kind, activation, scale", [  # 2-5 of 12 tasks diverge, at steps 5-10
    ("float64", "maml", "relu", 1000), ("float32", "maml", "relu", 30), ("float32", "maml", "softplus", 30),
    ("float32", "anil", "relu", 100), ("float32", "anil", "softplus", 30)])
def test_diverging_tasks_are_nan_from_the_reference_step(dtype, kind, activation, scale, rng, monkeypatch):
    """Steps so large that some tasks overflow: the NaN pattern is the reference's, the other
    outputs agree, and only the tasks that left the sure range were computed again by the
    per-task path."""
    net, theta, batch = _problem((3, 8, 6, 2), activation, "mse", rng, T=12, dtype=dtype, K=4, Q=3)
    precond = _precond(net, rng, kind) * scale
    again = []
    real = meta_batch.predictions
    monkeypatch.setattr(meta_batch, "predictions", lambda net, theta, Xs, *a: again.append(len(Xs)) or
                        real(net, theta, Xs, *a))
    with np.errstate(over="ignore", invalid="ignore"):
        got = low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 10)
        want = _reference_predictions(net, theta, batch, precond, 10)
    diverged = np.isnan(want).any(axis=(2, 3))
    assert 0 < diverged[:, -1].sum() < 12
    assert np.array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    tol = TOL64 if dtype == "float64" else gc.FLOAT32_TOL
    assert np.allclose(got[finite], want[finite], rtol=1e3 * tol, atol=0)  # values grow over steps
    assert again and diverged[:, -1].sum() <= again[0] < 12


def test_predictions_near_overflow_are_computed_again(rng, monkeypatch):
    """A task whose values pass SURE_LIMIT goes to the per-task path even when nothing overflowed."""
    net, theta, batch = _problem((3, 8, 6, 2), "tanh", "mse", rng, T=5, K=4, Q=3)
    precond = _precond(net, rng, "maml")
    want = low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 3)
    again = []
    real = meta_batch.predictions
    monkeypatch.setattr(meta_batch, "predictions", lambda net, theta, Xs, *a: again.append(len(Xs)) or
                        real(net, theta, Xs, *a))
    low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 3)
    assert again == []
    monkeypatch.setattr(low_rank, "SURE_LIMIT", 1e-308)  # every value is now "near overflow"
    got = low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 3)
    assert again == [5] and gc.rel_error(got, want) <= TOL64


def test_predictions_carry_nothing_between_calls(rng):
    net, theta, batch = _problem((784, 20, 12, 5), "relu", "xent", rng)
    other = random_batch(net, rng, 7)
    precond = _precond(net, rng, "maml")
    copies = [a.copy() for a in (theta, precond, *batch)]
    first = low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 3)
    low_rank.predictions(net, theta + 0.5, other.X_support, other.y_support, other.X_query, precond, 3)
    low_rank.meta_loss_and_grad(net, theta, other, precond, 3)  # the same workspace shape
    again = low_rank.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 3)
    assert np.array_equal(first, again)
    assert all(np.array_equal(a, b) for a, b in zip(copies, (theta, precond, *batch)))


def test_predicts_and_its_refusals(rng):
    """The Omniglot net's 5-way 1-shot evaluation (10 steps, 50 tasks a call) takes this path;
    5-shot (measured even) and 20-way 1-shot (rank 200: refused, although measured 1.3x faster
    with 300 query rows), one task, no step, Meta-SGD's per-parameter steps and the sinusoid net
    do not; predictions refuses what it cannot take."""
    omniglot, omniglot20, sinusoid = _benchmark_nets()
    for net, T, K, Q, steps, want in ((omniglot, 50, 5, 75, 10, True), (omniglot, 50, 5, 75, 1, True),
                                      (omniglot, 50, 25, 75, 10, False), (omniglot20, 50, 20, 300, 10, False),
                                      (omniglot, 1, 5, 75, 10, False), (omniglot, 50, 5, 75, 0, False),
                                      (sinusoid, 600, 10, 100, 10, False)):
        b = random_batch(net, rng, T, K, Q)
        precond = np.full(net.n_params, 0.4, np.float32)
        assert low_rank.predicts(net, b.X_support, b.y_support, b.X_query, precond, steps) is want
    b = random_batch(omniglot, rng, 50, 5, 75)
    metasgd = rng.uniform(0.1, 0.5, omniglot.n_params).astype(np.float32)
    assert not low_rank.predicts(omniglot, b.X_support, b.y_support, b.X_query, metasgd, 10)
    with pytest.raises(ValueError, match="one step size per weight matrix"):
        low_rank.predictions(omniglot, omniglot.init(rng), b.X_support, b.y_support, b.X_query, metasgd, 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        low_rank.predictions(omniglot, omniglot.init(rng), b.X_support, b.y_support, b.X_query, metasgd * 0, 0)


@pytest.mark.parametrize("threshold, path", [(0, "low_rank"), (10**18, "meta_batch")])
def test_inner_loop_sends_predictions_by_size(threshold, path, rng, monkeypatch):
    monkeypatch.setattr(low_rank, "MIN_WORK", threshold)
    net, theta, batch = _problem((40, 30, 3), "tanh", "xent", rng, K=2, Q=3)
    calls = _record_calls(monkeypatch, "predictions")
    config = maml.Config(inner_lr=0.1, inner_steps=1)
    got = batched_predict.predict_batch(net, maml, {"theta": theta}, config, batch, 3)  # evaluation's call
    want = _reference_predictions(net, theta, batch, maml.preconditioner(net, config), 3)
    assert calls == [path]
    assert gc.rel_error(got, want) <= TOL64
