"""The hand-written optimizers: pure, and equal to their update rules."""
import numpy as np
import pytest

from tinymeta.optim import SGD, Adam, clip_by_global_norm, global_norm


def test_sgd_step():
    params, grads = {"theta": np.array([1.0, 2.0])}, {"theta": np.array([0.5, -1.0])}
    new, state = SGD(0.1).update(params, grads, SGD(0.1).init(params))
    assert np.allclose(new["theta"], [0.95, 2.1]) and state == {}
    assert np.array_equal(params["theta"], [1.0, 2.0])  # inputs untouched


def test_adam_first_step_moves_every_coordinate_by_lr():
    """With bias correction, step 1 is lr * g / (|g| + eps) = lr * sign(g)."""
    opt = Adam(lr=0.01)
    params = {"theta": np.array([1.0, -2.0, 3.0])}
    new, state = opt.update(params, {"theta": np.array([3.0, -0.5, 1e-3])}, opt.init(params))
    assert np.allclose(new["theta"] - params["theta"], [-0.01, 0.01, -0.01], rtol=1e-4)
    assert int(state["t"]) == 1


def test_adam_matches_the_update_rule_over_several_steps(rng):
    opt = Adam(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6)
    params = {"a": rng.standard_normal(4), "b": rng.standard_normal((2, 3))}
    state = opt.init(params)
    ref = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v_ = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(1, 6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        params, state = opt.update(params, grads, state)
        for k in ref:
            m[k] = 0.8 * m[k] + 0.2 * grads[k]
            v_[k] = 0.95 * v_[k] + 0.05 * grads[k] ** 2
            ref[k] = ref[k] - 0.05 * (m[k] / (1 - 0.8 ** t)) / (np.sqrt(v_[k] / (1 - 0.95 ** t)) + 1e-6)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-13)


def test_adam_lr_override_and_float32():
    opt = Adam(lr=1.0)
    params = {"theta": np.ones(3, dtype=np.float32)}
    new, _ = opt.update(params, {"theta": np.ones(3, dtype=np.float32)}, opt.init(params), lr=0.5)
    assert new["theta"].dtype == np.float32 and np.allclose(new["theta"], 0.5, rtol=1e-6)


def _adam_in_numpy(opt, p, g, m, v, lr, t):
    """Adam.update's formula as NumPy array operations (its path for mixed dtypes)."""
    m = opt.beta1 * m + (1 - opt.beta1) * g
    v = opt.beta2 * v + (1 - opt.beta2) * g * g
    new = (p - lr * (m / (1 - opt.beta1 ** t)) / (np.sqrt(v / (1 - opt.beta2 ** t)) + opt.eps)).astype(p.dtype)
    return new, m, v


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(1761,), (3,), (2, 5), (), (1,)])
def test_compiled_adam_gives_the_numpy_formulas_bits(dtype, shape, rng):
    """The compiled step (nn/optim_kernels.py) equals the NumPy formula bit for bit over 30 steps,
    with an lr schedule, gradients of every scale, and a zero gradient (v = 0: eps alone)."""
    opt = Adam(lr=0.003, beta1=0.85, beta2=0.99, eps=1e-7)
    p0 = rng.standard_normal(shape).astype(dtype)
    p0_copy = p0.copy()
    params, state = {"w": p0}, opt.init({"w": p0})
    p, m, v = p0, np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 31):
        scale = 10.0 ** rng.integers(-6, 6)
        g = (scale * rng.standard_normal(shape)).astype(dtype) if t != 3 else np.zeros(shape, dtype)
        lr = 0.003 * (1 - t / 40)
        params, state = opt.update(params, {"w": g}, state, lr=lr)
        p, m, v = _adam_in_numpy(opt, p, g, m, v, lr, t)
        for got, want in ((params["w"], p), (state["m/w"], m), (state["v/w"], v)):
            assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape
            assert got.tobytes() == want.tobytes()
    assert int(state["t"]) == 30
    assert p0.tobytes() == p0_copy.tobytes()  # the inputs are never written


def test_adam_numpy_scalars_and_mixed_dtypes(rng):
    """NumPy float64 settings do not promote a float32 step; mixed dtypes take the NumPy formula."""
    p = rng.standard_normal(7).astype(np.float32)
    g = rng.standard_normal(7).astype(np.float32)
    plain, numpyish = Adam(lr=0.01), Adam(lr=np.float64(0.01), beta1=np.float64(0.9))
    a, sa = plain.update({"w": p}, {"w": g}, plain.init({"w": p}))
    b, sb = numpyish.update({"w": p}, {"w": g}, numpyish.init({"w": p}), lr=np.float64(0.01))
    assert type(numpyish.lr) is float and a["w"].tobytes() == b["w"].tobytes() and sb["m/w"].dtype == np.float32
    g64 = g.astype(np.float64)
    c, sc = plain.update({"w": p}, {"w": g64}, plain.init({"w": p}))
    want = _adam_in_numpy(plain, p, g64, np.zeros(7, np.float32), np.zeros(7, np.float32), 0.01, 1)
    assert c["w"].dtype == np.float32 and c["w"].tobytes() == want[0].tobytes()
    assert sc["m/w"].tobytes() == want[1].tobytes()


def test_clip_by_global_norm():
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert global_norm(grads) == 5.0
    clipped = clip_by_global_norm(grads, 1.0)
    assert global_norm(clipped) == pytest.approx(1.0) and clipped["a"][0] == pytest.approx(0.6)
    assert clip_by_global_norm(grads, 10.0)["a"][0] == 3.0


@pytest.mark.parametrize("make,message", [
    (lambda: SGD(-1.0), "lr must be > 0"),
    (lambda: Adam(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    (lambda: Adam(lr=float("nan")), "lr must be finite"),
])
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_mismatched_grads_are_named():
    with pytest.raises(ValueError, match="grads must have the keys"):
        SGD(0.1).update({"theta": np.zeros(2)}, {"alpha": np.zeros(2)}, {})
    with pytest.raises(ValueError, match=r"grads\['theta'\] must have shape \(2,\)"):
        SGD(0.1).update({"theta": np.zeros(2)}, {"theta": np.zeros(3)}, {})
