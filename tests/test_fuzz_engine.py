"""Property-based fuzzing of the engine's public entry points (Hypothesis).

Each example takes a valid call and corrupts one argument in one way (shape,
dtype, non-finite values, layout, emptiness, a non-array). The only outcomes
allowed: a correct result (equal to the NumPy reference on the same input) or
a ValueError/TypeError whose message names the corrupted argument -- never a
Numba error, an IndexError from inside a kernel, a crash or a silent wrong shape.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinymeta as tm

NETS = {
    "mse": tm.MLP([3, 5, 2], activation="tanh", loss="mse"),
    "xent": tm.MLP([3, 5, 4], activation="relu", loss="xent"),
    "mse_batchnorm": tm.MLP([3, 5, 2], activation="tanh", loss="mse", batchnorm=True),
}
METHODS = {  # method -> the arguments it takes besides theta
    "forward": ("X",), "loss": ("X", "y"), "loss_and_grad": ("X", "y"),
    "vjp": ("X", "dout"), "jvp": ("X", "v"), "hvp": ("X", "y", "v"),
}
CORRUPTIONS = ["shape", "ndim", "int", "complex", "object", "bool", "nan", "inf",
               "strided", "readonly", "empty", "list", "none", "string", "float32"]
EXAMPLES = 80  # per (method, net) pair: 1440 malformed calls per run


def _valid(net, rng, n):
    out = net.sizes[-1]
    return {
        "theta": net.init(rng), "X": rng.standard_normal((n, net.sizes[0])),
        "y": rng.integers(0, out, n) if net.loss_name == "xent" else rng.standard_normal((n, out)),
        "dout": rng.standard_normal((n, out)), "v": rng.standard_normal(net.n_params),
    }


def _corrupt(a, how, rng):
    a = np.asarray(a)
    if how == "shape":
        return np.resize(a, tuple(s + int(rng.integers(1, 3)) for s in a.shape))
    if how == "ndim":
        return a.reshape(a.shape + (1,)) if rng.random() < 0.5 else a.ravel()[:1].reshape(())
    if how == "int":
        return a.astype(np.int64)
    if how == "complex":
        return a.astype(np.complex128)
    if how == "object":
        return a.astype(object)
    if how == "bool":
        return a.astype(bool)
    if how in ("nan", "inf"):
        b = a.astype(np.float64 if a.dtype.kind != "f" else a.dtype)
        b.flat[int(rng.integers(b.size))] = np.nan if how == "nan" else -np.inf
        return b
    if how == "strided":
        big = np.zeros(a.shape + (2,), dtype=a.dtype)
        big[..., 0] = a
        return big[..., 0]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "empty":
        return a[:0]
    if how == "list":
        return a.tolist()
    if how == "float32":
        return a.astype(np.float32) if a.dtype.kind == "f" else a
    return {"none": None, "string": "oops"}[how]


@pytest.mark.parametrize("loss", sorted(NETS))
@pytest.mark.parametrize("method", sorted(METHODS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), how=st.sampled_from(CORRUPTIONS),
       which=st.integers(0, 3))
def test_malformed_input_gives_a_correct_result_or_a_named_error(loss, method, seed, n, how, which):
    net = NETS[loss]
    rng = np.random.default_rng(seed)
    args = _valid(net, rng, max(n, 2) if net.batchnorm else n)  # batch norm needs two rows
    names = ("theta",) + METHODS[method]
    target = names[which % len(names)]
    args[target] = _corrupt(args[target], how, rng)
    call = [args[k] for k in names]
    try:
        got = getattr(net, method)(*call)
    except (ValueError, TypeError) as err:
        assert target in str(err), f"{type(err).__name__} does not name {target!r}: {err}"
        return
    want = getattr(net.replace(backend="numpy"), method)(*call)
    got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
    for g, w in zip(got, want):
        assert np.shape(g) == np.shape(w) and np.all(np.isfinite(g))
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
