"""The compiled meta-batch path (meta_batch.py, nn/meta_kernels.py) is pinned to
the per-task reference loops of inner_loop.py: 1e-12 relative in float64."""
import numpy as np
import pytest
from task_batches import random_batch

import tinymeta as tm
from tinymeta import evaluate
from tinymeta.algorithms import anil, inner_loop, maml, meta_batch, metasgd, reptile
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


def _precond(net, rng, kind):
    if kind == "maml":
        return np.full(net.n_params, 0.05, dtype=net.dtype)
    if kind == "metasgd":  # a learned vector, signs mixed
        return rng.uniform(-0.02, 0.1, net.n_params).astype(net.dtype)
    return (0.3 * anil.head_mask(net)).astype(net.dtype)  # ANIL: zero on the body


def _problem(sizes, activation, loss, rng, T=11, dtype="float64"):
    net = tm.MLP(sizes, activation=activation, loss=loss, dtype=dtype)
    theta = (net.init(rng) + 0.1 * rng.standard_normal(net.n_params)).astype(dtype)
    return net, theta, random_batch(net, rng, T)


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


@pytest.mark.parametrize("compiled", [True, False])
def test_without_the_precond_gradient_the_rest_is_the_same_bits(compiled, rng, monkeypatch):
    """MAML's ``precond_grad=False`` skips d_precond (None); loss and d_theta keep their bits,
    also for a read-only theta (theta_0 is theta itself in the kernel)."""
    if not compiled:
        monkeypatch.setattr(meta_batch, "supports", lambda *a: False)
    net, theta, batch = _problem((3, 8, 6, 4), "tanh", "xent", rng, T=9)
    precond = _precond(net, rng, "metasgd")
    full = inner_loop.meta_loss_and_grad(net, theta, batch, precond, 2)
    theta.flags.writeable = False
    lean = inner_loop.meta_loss_and_grad(net, theta, batch, precond, 2, precond_grad=False)
    assert lean[2] is None and full[2].shape == theta.shape
    assert lean[0] == full[0] and np.array_equal(lean[1], full[1])


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


def test_result_does_not_depend_on_the_number_of_threads(rng, monkeypatch):
    import numba

    monkeypatch.setattr(meta_batch, "PARALLEL_MIN_WORK", 0)  # every call may use every thread
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


@pytest.mark.parametrize("limit", [0, 10 ** 12])
def test_small_calls_run_on_one_thread_and_leave_the_thread_count_alone(limit, rng, monkeypatch):
    import numba

    monkeypatch.setattr(meta_batch, "PARALLEL_MIN_WORK", limit)
    seen = []
    for name in ("meta_batch_kernel", "meta_batch_serial"):
        kernel = getattr(meta_batch, name)
        monkeypatch.setattr(meta_batch, name, lambda *a, k=kernel, name=name: seen.append(name) or k(*a))
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=3)
    before = numba.get_num_threads()
    meta_batch.meta_loss_and_grad(net, theta, batch, _precond(net, rng, "maml"), 1)
    threads = limit == 0 and before > 1  # one thread: nothing to run in parallel
    assert seen == ["meta_batch_kernel" if threads else "meta_batch_serial"]
    assert numba.get_num_threads() == before


def test_thread_choice_probes_both_then_keeps_the_faster_and_probes_again(monkeypatch):
    """A fake clock: one thread takes 3 s a call, all threads 2 s; later the other way round."""
    monkeypatch.setattr(meta_batch.ThreadChoice, "PROBE", 3)
    monkeypatch.setattr(meta_batch.ThreadChoice, "KEEP", 4)
    choice, now, modes = meta_batch.ThreadChoice(), 0.0, []
    for cost in ({False: 3.0, True: 2.0}, {False: 1.0, True: 2.0}):
        for _ in range(10):  # 6 probes, 4 kept
            threaded = choice.choose(now)
            modes.append(threaded)
            now += cost[threaded]
    probes = [False, True] * 3
    assert modes == probes + [True] * 4 + probes + [False] * 4


def test_mid_sized_calls_use_the_thread_choice(rng, monkeypatch):
    import numba

    seen = []
    for name in ("meta_batch_kernel", "meta_batch_serial"):
        kernel = getattr(meta_batch, name)
        monkeypatch.setattr(meta_batch, name, lambda *a, k=kernel, name=name: seen.append(name) or k(*a))
    monkeypatch.setattr(meta_batch, "TUNE_MIN_WORK", 0)
    meta_batch._meta_plan.cache_clear()  # a fresh ThreadChoice: its first calls are probes
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=3)
    results = [meta_batch.meta_loss_and_grad(net, theta, batch, _precond(net, rng, "maml"), 1) for _ in range(4)]
    if numba.get_num_threads() > 1:  # the first probes alternate
        assert seen == ["meta_batch_serial", "meta_batch_kernel"] * 2
    else:
        assert seen == ["meta_batch_serial"] * 4
    assert all(np.array_equal(r[1], results[0][1]) for r in results)


def test_serial_and_parallel_kernels_and_reused_workspaces_give_the_same_bits(rng, monkeypatch):
    """The same meta-batch through both compiled variants, and again after another shape has used
    the cached workspaces: identical results; the returned arrays are not the workspaces."""
    net, theta, batch = _problem((1, 40, 40, 1), "tanh", "mse", rng, T=11)
    _, _, other = _problem((1, 40, 40, 1), "tanh", "mse", rng, T=4)
    precond = _precond(net, rng, "maml")
    results = []
    for limit in (10 ** 12, 0, 10 ** 12):
        monkeypatch.setattr(meta_batch, "PARALLEL_MIN_WORK", limit)
        results.append(meta_batch.meta_loss_and_grad(net, theta, batch, precond, 2))
        meta_batch.meta_loss_and_grad(net, theta, other, precond, 2)
    for got in results[1:]:
        assert got[0] == results[0][0]
        assert np.array_equal(got[1], results[0][1]) and np.array_equal(got[2], results[0][2])
    assert results[0][1] is not results[2][1] and not np.shares_memory(results[0][1], results[2][1])
    want = inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, 2)
    _assert_close(results[0], want, TOL64)


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
    config = reptile.Config(inner_lr=0.1, inner_steps=3, inner_batch_size=2)
    adapted = meta_batch.batched_adapt(net, theta, batch.X_support, batch.y_support, np.full_like(theta, 0.1), 3, 2)[0]
    for i in range(batch.n_tasks):
        assert rel_error(adapted[i], reptile.adapt(net, theta, batch.X_support[i], batch.y_support[i], config)) <= TOL64


# ------------------------------------------------------ Reptile, evaluation
@pytest.mark.parametrize("sizes, activation, loss", SHAPES[:3] + SHAPES[4:5])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_batched_adapt_matches_reptile_iterates(sizes, activation, loss, batch_size, rng):
    net, theta, batch = _problem(sizes, activation, loss, rng)
    config = reptile.Config(inner_lr=0.05, inner_steps=4, inner_batch_size=batch_size)
    adapted, diverged_at, losses = meta_batch.batched_adapt(
        net, theta, batch.X_support, batch.y_support, np.full_like(theta, 0.05), 4, batch_size,
        batch.X_query, batch.y_query)
    assert (diverged_at == -1).all()
    for i in range(batch.n_tasks):
        X_support, y_support, X_query, y_query = batch.task(i)
        want = reptile.adapt(net, theta, X_support, y_support, config)
        assert rel_error(adapted[i], want) <= TOL64
        assert losses[i] == pytest.approx(net.loss(want, X_query, y_query), rel=TOL64)


@pytest.mark.parametrize("threads", [False, True])
def test_batched_adapt_reuses_its_workspaces_and_may_use_threads(threads, rng, monkeypatch):
    """Reused buffers (another shape in between) and the thread choice change no bit; the
    returned arrays are new on every call."""
    import numba

    # every call lets ThreadChoice decide (its first calls alternate), or none does
    monkeypatch.setattr(meta_batch, "TUNE_MIN_WORK", 0 if threads else 10 ** 12)
    meta_batch._adapt_plan.cache_clear()
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=11)
    _, _, other = _problem((1, 40, 40, 1), "relu", "mse", rng, T=4)
    step = np.full_like(theta, 0.05)
    seen = []
    original = meta_batch._threads
    monkeypatch.setattr(meta_batch, "_threads", lambda threaded: seen.append(threaded) or original(threaded))
    results = []
    for _ in range(3):
        results.append(meta_batch.batched_adapt(net, theta, batch.X_support, batch.y_support, step, 3, 2,
                                                batch.X_query, batch.y_query))
        meta_batch.batched_adapt(net, theta, other.X_support, other.y_support, step, 3, 2, other.X_query,
                                 other.y_query)
    for got in results[1:]:
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, results[0]))
    assert not np.shares_memory(results[0][0], results[1][0])
    assert (True in seen) == (threads and numba.get_num_threads() > 1)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_reptile_meta_step_compiled_equals_reference(batch_size, rng, monkeypatch):
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng)
    config = reptile.Config(inner_lr=0.02, inner_steps=5, inner_batch_size=batch_size)
    got = reptile.meta_step(net, {"theta": theta}, batch, config)
    monkeypatch.setattr(reptile, "_compiled", lambda net, config: False)
    want = reptile.meta_step(net, {"theta": theta}, batch, config)
    assert got[0] == pytest.approx(want[0], rel=TOL64)
    assert rel_error(got[1]["theta"], want[1]["theta"]) <= TOL64


def test_reptile_divergence_raises_the_same_error(rng, monkeypatch):
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=5)
    batch.X_support[3] *= 1e60
    config = reptile.Config(inner_lr=0.02, inner_steps=6)
    errors = []
    for compiled in (True, False):
        monkeypatch.setattr(reptile, "_compiled", lambda net, config, c=compiled: c)
        with pytest.raises(FloatingPointError) as info, np.errstate(over="ignore", invalid="ignore"):
            reptile.meta_step(net, {"theta": theta}, batch, config)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "diverged at step" in errors[0]


@pytest.mark.parametrize("algo", ["maml", "metasgd", "anil", "reptile"])
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_batched_evaluation_scores_equal_task_by_task(algo, loss, rng, monkeypatch):
    sizes = (1, 40, 40, 1) if loss == "mse" else (3, 8, 6, 4)
    net, theta, batch = _problem(sizes, "relu", loss, rng, T=13)
    module = {"maml": maml, "metasgd": metasgd, "anil": anil, "reptile": reptile}[algo]
    config = module.Config()
    params = module.init_params(net, np.random.default_rng(1), config)
    params["theta"] = theta
    diverges = algo == "reptile" and loss == "mse"
    if diverges:  # one task diverges: NaN from that step on, counted by summarize
        batch.X_support[5] *= 1e40
    got = evaluate.task_scores(net, module, params, config, batch, 6)
    monkeypatch.setattr(evaluate, "BATCHED_PREDICT", frozenset())
    want = evaluate.task_scores(net, module, params, config, batch, 6)
    np.testing.assert_allclose(got, want, rtol=TOL64, atol=0, equal_nan=True)
    assert np.isnan(want[5]).any() == diverges


# ------------------------------------------------------- ProtoNet episodes
@pytest.mark.parametrize("shots, n_way, T, batchnorm", [(1, 5, 1, False), (5, 5, 7, False), (2, 3, 4, False),
                                                      (2, 3, 4, True), (1, 5, 1, True)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batched_protonet_episodes_match_episode_by_episode(shots, n_way, T, batchnorm, dtype, rng):
    """With batch norm too: an episode is normalised with its own statistics, never the batch's."""
    from tinymeta.algorithms import embedding, protonet

    net = tm.MLP((20, 16, 8), activation="relu", loss="mse", dtype=dtype, batchnorm=batchnorm)
    theta = net.init(rng)
    ys = np.tile(np.repeat(np.arange(n_way), shots), (T, 1))
    yq = rng.integers(0, n_way, (T, 6))
    batch = tm.TaskBatch(rng.standard_normal((T, n_way * shots, 20)).astype(dtype), ys,
                         rng.standard_normal((T, 6, 20)).astype(dtype), yq)
    got = protonet.batch_loss_and_grad(net, theta, batch)

    def episode(Xs, ys, Xq, yq):
        loss, grad = protonet.loss_and_grad(net, theta, Xs, ys, Xq, yq)
        return loss, {"theta": grad}, int(ys.max()) + 1
    want_loss, want = embedding.batch_mean(episode, batch)
    tol = TOL64 if dtype == "float64" else FLOAT32_TOL
    assert got[1].dtype == theta.dtype
    assert got[0] == pytest.approx(want_loss, rel=tol) and rel_error(got[1], want["theta"]) <= tol


def test_bad_inputs_are_named_before_any_kernel_runs(rng):
    net, theta, batch = _problem((3, 8, 6, 4), "tanh", "xent", rng, T=3)
    precond = _precond(net, rng, "maml")
    bad_labels = batch.y_query.copy()
    bad_labels[1, 2] = 4
    cases = [
        (dict(batch=batch._replace(y_query=bad_labels)), r"y_query must hold labels in 0..3, got values from 0 to 4"),
        (dict(batch=batch._replace(X_query=batch.X_query[:, :, :2])), r"X_query must have shape \(3, n, 3\)"),
        (dict(batch=batch._replace(y_support=batch.y_support[:2])), r"y_support must hold integer labels of shape"),
        (dict(precond=precond[:-1]), rf"precond must have shape \({net.n_params},\)"),
    ]
    for change, message in cases:
        args = {"net": net, "theta": theta, "batch": batch, "precond": precond, "steps": 1, **change}
        with pytest.raises(ValueError, match=message):
            meta_batch.meta_loss_and_grad(**args)
    mse, theta2, batch2 = _problem((2, 5, 1), "tanh", "mse", rng, T=2)
    with pytest.raises(ValueError, match=r"y_support must have shape \(2, 5, 1\) for loss 'mse'"):
        meta_batch.predictions(mse, theta2, batch2.X_support, batch2.y_support[..., 0], batch2.X_query, theta2, 1)


def test_predict_batch_refuses_other_algorithms_and_bad_params(rng):
    from tinymeta.algorithms import batched_predict, protonet

    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=2)
    with pytest.raises(ValueError, match="module must be one of the algorithms"):
        batched_predict.predict_batch(net, protonet, {"theta": theta}, protonet.Config(), batch, 1)
    with pytest.raises((KeyError, ValueError, TypeError), match="alpha"):
        batched_predict.predict_batch(net, metasgd, {"theta": theta}, metasgd.Config(), batch, 1)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 41])
def test_finite_vector_finds_every_non_finite_entry(dtype, n):
    from tinymeta.nn.meta_kernels import _finite_vector

    a = np.full(n, np.finfo(dtype).max, dtype=dtype)  # the largest finite values: x * 0 is still 0
    assert _finite_vector(a)
    for i in range(n):
        for bad in (np.inf, -np.inf, np.nan):
            b = a.copy()
            b[i] = bad
            with np.errstate(invalid="ignore"):  # inf * 0, as plain Python under NUMBA_DISABLE_JIT=1
                assert not _finite_vector(b), (i, bad)


@pytest.mark.kernels
def test_all_finite_agrees_with_numpy():
    """validation.all_finite (the compiled check for float arrays) on dtypes, layouts and read-only arrays."""
    from tinymeta import validation as val

    base = np.arange(24.0).reshape(4, 6)
    cases = [base, base.astype(np.float32), base[:, ::2], base.T, base.astype(">f8"), np.arange(5), np.zeros(0),
             np.array([True, False])]
    for bad in (np.inf, -np.inf, np.nan):
        for where in ((0, 0), (3, 5), (2, 3)):
            b = base.copy()
            b[where] = bad
            cases += [b, b.astype(np.float32), b[:, ::-1]]
    frozen = base.copy()
    frozen.flags.writeable = False
    cases.append(frozen)
    for a in cases:
        assert val.all_finite(a) == bool(np.isfinite(a).all()), (a.dtype, a.shape, a.strides)


def test_reptile_direction_adds_the_tasks_in_order(rng, monkeypatch):
    """The compiled meta_step sums theta - adapted_i over tasks vectorised; the bits are the loop's."""
    net, theta, batch = _problem((1, 40, 40, 1), "relu", "mse", rng, T=13)
    adapted = theta + rng.standard_normal((13, net.n_params)) * 10.0 ** rng.integers(-8, 3, (13, 1))
    losses = rng.random(13) * 10.0 ** rng.integers(-8, 3, 13)
    calls = []
    monkeypatch.setattr(meta_batch, "batched_adapt", lambda *a: calls.append(1) or (adapted, np.full(13, -1), losses))
    loss, grads = reptile.meta_step(net, {"theta": theta}, batch, reptile.Config(inner_lr=0.02, inner_steps=5))
    assert calls == [1]
    want_direction, want_loss = np.zeros_like(theta), 0.0
    for i in range(13):
        want_direction += theta - adapted[i]
        want_loss += losses[i]
    assert np.array_equal(grads["theta"], want_direction / 13) and loss == want_loss / 13
