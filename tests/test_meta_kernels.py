"""The compiled meta-batch path (meta_batch.py, nn/meta_kernels.py) is pinned to
the per-task reference loops of inner_loop.py: 1e-12 relative in float64."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta.algorithms import anil, inner_loop, maml, meta_batch, metasgd
from tinymeta.gradcheck import FLOAT32_TOL, rel_error

TOL64 = 1e-12
SHAPES = [  # (sizes, activation, loss)
    ((1, 40, 40, 1), "relu", "mse"),  # the sinusoid net
    ((1, 40, 40, 1), "tanh", "mse"),
    ((3, 8, 6, 4), "tanh", "xent"),
    ((5, 3), "relu", "mse"),  # one affine layer
    ((784, 20, 12, 5), "relu", "xent"),  # a small 784-like classifier (28x28 inputs, 5-way)
    ((4, 7, 6, 5, 2), "sigmoid", "xent"),
]


def _batch(net, rng, T, K=5, Q=6):
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs, Xq = rng.standard_normal((T, K, d_in)), rng.standard_normal((T, Q, d_in))
    Xs, Xq = Xs.astype(net.dtype), Xq.astype(net.dtype)
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)).astype(net.dtype), Xq,
                        rng.standard_normal((T, Q, d_out)).astype(net.dtype))


def _precond(net, rng, kind):
    if kind == "maml":
        return np.full(net.n_params, 0.05, dtype=net.dtype)
    if kind == "metasgd":  # a learned vector, signs mixed
        return rng.uniform(-0.02, 0.1, net.n_params).astype(net.dtype)
    return (0.3 * anil.head_mask(net)).astype(net.dtype)  # ANIL: zero on the body


def _problem(sizes, activation, loss, rng, T=11, dtype="float64"):
    net = tm.MLP(sizes, activation=activation, loss=loss, dtype=dtype)
    theta = (net.init(rng) + 0.1 * rng.standard_normal(net.n_params)).astype(dtype)
    return net, theta, _batch(net, rng, T)


def _assert_close(got, want, tol):
    for name, a, b in zip(("loss", "d_theta", "d_precond"), got, want):
        assert rel_error(a, b) <= tol, (name, rel_error(a, b))


@pytest.mark.parametrize("sizes, activation, loss", SHAPES)
@pytest.mark.parametrize("steps", [0, 1, 2, 5])
@pytest.mark.parametrize("kind", ["maml", "metasgd", "anil"])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_matches_reference_in_float64(sizes, activation, loss, steps, kind, first_order, rng):
    net, theta, batch = _problem(sizes, activation, loss, rng)  # T = 11 > TASK_SLOTS: slots hold 1 or 2 tasks
    precond = _precond(net, rng, kind)
    got = meta_batch.meta_loss_and_grad(net, theta, batch, precond, steps, first_order)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, steps, first_order)
    _assert_close(got, want, TOL64)
    assert got[1].dtype == theta.dtype and got[2].shape == theta.shape


@pytest.mark.parametrize("steps", [1, 3])
def test_anil_body_is_untouched_by_the_inner_loop_and_exact(steps, rng):
    """P is zero on the body: the body's d_precond and meta-gradient still come out exactly."""
    net, theta, batch = _problem((3, 8, 6, 4), "tanh", "xent", rng, T=4)
    precond = _precond(net, rng, "anil")
    got = meta_batch.meta_loss_and_grad(net, theta, batch, precond, steps)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, steps)
    body = slice(0, net.layer_offsets[-2])
    assert np.any(got[1][body] != 0)  # the body-head Hessian block reaches the body
    assert rel_error(got[1][body], want[1][body]) <= TOL64
    assert rel_error(got[2][body], want[2][body]) <= TOL64
    _assert_close(got, want, TOL64)


@pytest.mark.parametrize("sizes, activation, loss", SHAPES[:3])
@pytest.mark.parametrize("first_order", [False, True])
def test_float32_is_close_to_float64(sizes, activation, loss, first_order, rng):
    net, theta, batch = _problem(sizes, activation, loss, rng, T=6)
    net32 = net.replace(dtype="float32")
    batch32 = tm.TaskBatch(*(a.astype("float32") if a.dtype.kind == "f" else a for a in batch))
    precond = _precond(net, rng, "metasgd")
    got = meta_batch.meta_loss_and_grad(net32, theta.astype("float32"), batch32, precond.astype("float32"), 2,
                                        first_order)
    want = meta_batch.meta_loss_and_grad(net, theta, batch, precond, 2, first_order)
    assert got[1].dtype == np.float32
    _assert_close(got, want, 10 * FLOAT32_TOL)


def test_result_does_not_depend_on_the_number_of_threads(rng):
    import numba

    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=13)
    precond = _precond(net, rng, "maml")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = meta_batch.meta_loss_and_grad(net, theta, batch, precond, 2)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = meta_batch.meta_loss_and_grad(net, theta, batch, precond, 2)
    finally:
        numba.set_num_threads(before)
    assert one[0] == many[0] and np.array_equal(one[1], many[1]) and np.array_equal(one[2], many[2])


def test_public_algorithms_take_the_compiled_path(rng, monkeypatch):
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=5)
    calls = []
    compiled = meta_batch.meta_loss_and_grad
    monkeypatch.setattr(meta_batch, "meta_loss_and_grad", lambda *a: calls.append(1) or compiled(*a))
    got = maml.meta_loss_and_grad(net, theta, batch, 0.01, 1)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, np.full_like(theta, 0.01), 1)
    alpha = rng.uniform(0.0, 0.1, net.n_params)
    got_sgd = metasgd.meta_loss_and_grad(net, theta, alpha, batch)
    want_sgd = inner_loop.reference_meta_loss_and_grad(net, theta, batch, alpha, 1)
    assert len(calls) == 2
    assert rel_error(got[1], want[1]) <= TOL64 and rel_error(got_sgd[2], want_sgd[2]) <= TOL64


@pytest.mark.parametrize("change", ["numpy backend", "batchnorm"])
def test_other_models_fall_back_to_the_reference(change, rng, monkeypatch):
    net, theta, batch = _problem((2, 5, 1), "tanh", "mse", rng, T=3)
    if change == "numpy backend":
        net = net.replace(backend="numpy")
    else:
        object.__setattr__(net, "batchnorm", True)  # stands in for a batch-normalised MLP
    monkeypatch.setattr(meta_batch, "meta_loss_and_grad", lambda *a: pytest.fail("compiled path taken"))
    assert not meta_batch.supports(net, batch.X_support)
    got = inner_loop.meta_loss_and_grad(net, theta, batch, np.full_like(theta, 0.1), 2)
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, np.full_like(theta, 0.1), 2)
    assert np.array_equal(got[1], want[1])


# ----------------------------------------------------------- predictions
def _reference_predictions(net, theta, Xs, ys, Xq, precond, steps):
    return np.stack([inner_loop.reference_predictions(net, theta, Xs[i], ys[i], Xq[i], precond, steps)
                     for i in range(len(Xs))])


@pytest.mark.parametrize("sizes, activation, loss", SHAPES)
@pytest.mark.parametrize("kind", ["maml", "metasgd", "anil"])
def test_batched_predictions_match_reference(sizes, activation, loss, kind, rng):
    net, theta, batch = _problem(sizes, activation, loss, rng)
    precond = _precond(net, rng, kind)
    got = inner_loop.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 4)
    want = _reference_predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 4)
    assert got.shape == (11, 5, 6, sizes[-1])
    assert rel_error(got, want) <= TOL64


def test_batched_predictions_mark_diverged_tasks_like_the_reference(rng):
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=6)
    precond = np.full(net.n_params, 0.01)
    Xs = batch.X_support.copy()
    Xs[2] *= 1e60  # task 2 diverges within a few steps
    with np.errstate(over="ignore", invalid="ignore"):
        got = inner_loop.predictions(net, theta, Xs, batch.y_support, batch.X_query, precond, 6)
        want = _reference_predictions(net, theta, Xs, batch.y_support, batch.X_query, precond, 6)
    bad = ~np.isfinite(want)
    assert bad[2].any() and not bad[[0, 1, 3, 4, 5]].any()
    assert np.array_equal(bad, ~np.isfinite(got))
    assert rel_error(got[~bad], want[~bad]) <= TOL64


# ------------------------------------------- runs as plain Python as well
@pytest.mark.kernels
@pytest.mark.parametrize("activation, loss", [("tanh", "xent"), ("relu", "mse")])
def test_small_case_matches_reference(activation, loss, rng):
    """Also run under NUMBA_DISABLE_JIT=1 (the kernels as plain Python)."""
    net, theta, batch = _problem((2, 5, 4, 3), activation, loss, rng, T=3)
    precond = _precond(net, rng, "metasgd")
    for first_order in (False, True):
        got = meta_batch.meta_loss_and_grad(net, theta, batch, precond, 2, first_order)
        want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, 2, first_order)
        _assert_close(got, want, TOL64)
    got = inner_loop.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 2)
    want = _reference_predictions(net, theta, batch.X_support, batch.y_support, batch.X_query, precond, 2)
    assert rel_error(got, want) <= TOL64
