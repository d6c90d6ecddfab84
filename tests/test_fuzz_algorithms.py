"""Property-based fuzzing of every algorithm's public entry points (Hypothesis).

Each example builds a valid call, then corrupts one argument in one way: an
array's shape, dtype (int, bool, complex, object), values (NaN, inf, labels
out of range, a missing class), layout (strided, read-only, a list), a
hyper-parameter (zero, negative, NaN, a string, a bool), or the container
(a tuple for a TaskBatch, a params dict missing a key). The only outcomes
allowed: a correct result -- finite, of the right shape, equal to the NumPy
backend on a clean copy of the same input -- or a ValueError/TypeError whose
message names the corrupted argument. Never a Numba error, an IndexError or
KeyError from inside, a silent wrong shape or a warning.
"""
import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tinymeta as tm
from tinymeta.algorithms import (anil, cavia, imaml, maml, matching, matching_fce, metasgd, protonet, relation,
                                 reptile, siamese)

EXAMPLES = 40  # per entry point; see RELIABILITY.md for the totals
ARRAY_CORRUPTIONS = ["shape", "ndim", "int", "complex", "object", "bool", "nan", "inf", "strided", "readonly",
                     "empty", "list", "none", "string", "float32"]
LABEL_CORRUPTIONS = ["out_of_range", "negative", "float", "int32", "ndim", "missing_class", "empty", "object",
                     "strided", "list"]
BAD_STEP_SIZES = [0.0, -0.01, float("nan"), float("inf"), "0.01", True, None, 1j]
BAD_COUNTS = [-1, 1.5, True, "2", None, np.float64(2.0)]
BAD_FLAGS = ["no", 1.0, None, np.array([True, False])]
GOOD_SCALARS = {"count": [np.int64(2), 0], "step": [np.float32(0.02), 1], "flag": [np.bool_(True), False]}

GRAD_NET = tm.MLP([2, 5, 1], activation="tanh", loss="mse")
XENT_NET = tm.MLP([2, 5, 3], activation="tanh", loss="xent")
CAVIA_NET = cavia.widen_input(tm.MLP([2, 5, 1], activation="tanh"), 2)
EMBED_NET = tm.MLP([3, 6, 4], activation="tanh")  # metric learners: d_in 3, embedding width 4
N_WAY, SHOTS, QUERIES = 3, 2, 4


def _task_batch(rng, net, d_in, T=2, K=3, Q=4):
    if net.loss_name == "xent":
        n = net.sizes[-1]
        y_s, y_q = rng.integers(0, n, (T, K)), rng.integers(0, n, (T, Q))
    else:
        y_s, y_q = rng.standard_normal((T, K, 1)), rng.standard_normal((T, Q, 1))
    return {"X_support": rng.standard_normal((T, K, d_in)), "y_support": y_s,
            "X_query": rng.standard_normal((T, Q, d_in)), "y_query": y_q}


def _episode(rng):
    return {"X_support": rng.standard_normal((N_WAY * SHOTS, 3)), "y_support": np.tile(np.arange(N_WAY), SHOTS),
            "X_query": rng.standard_normal((QUERIES, 3)), "y_query": rng.integers(0, N_WAY, QUERIES)}


@dataclasses.dataclass
class Entry:
    """One public entry point: ``call(net, args)`` with the arguments ``valid(rng)`` draws.

    ``arrays``: float array arguments; ``labels``: integer label arguments;
    ``scalars``: {argument: "count" | "step" | "flag"}; ``batch``: the array
    arguments that travel inside a TaskBatch; ``params``: keys of a params dict.
    """

    net: tm.MLP
    valid: callable
    call: callable
    arrays: tuple = ()
    labels: tuple = ()
    scalars: dict = dataclasses.field(default_factory=dict)
    batch: bool = False
    params: tuple = ()
    errors: tuple = ()  # documented extra outcomes (iMAML's ConvergenceError)
    cross_backend: bool = True  # False: iterative solves to a tolerance amplify 1e-16 differences


def _batch(args):
    if args.get("_tuple"):
        return (args["X_support"], args["y_support"], args["X_query"], args["y_query"])
    return tm.TaskBatch(args["X_support"], args["y_support"], args["X_query"], args["y_query"])


def _grad_entry(net, call, extra=None, scalars=None, d_in=None, labels=False, **kw):
    def valid(rng):
        args = {"theta": net.init(rng), **_task_batch(rng, net, d_in or net.sizes[0])}
        if extra:
            args.update(extra(rng))
        return args

    names = ("theta", "X_support", "X_query") + (("y_support", "y_query") if not labels else ())
    return Entry(net, valid, call, arrays=names + tuple(kw.pop("more_arrays", ())),
                 labels=("y_support", "y_query") if labels else (), scalars=scalars or {}, batch=True, **kw)


def _metric_entry(module, extra_params=None, config=None):
    def valid(rng):
        params = module.init_params(EMBED_NET, rng, config or module.Config())
        return {**{f"params['{k}']": v for k, v in params.items()}, **_episode(rng)}

    keys = tuple(module.init_params(EMBED_NET, np.random.default_rng(0), config or module.Config()))

    def call(net, a):
        params = {k: a[f"params['{k}']"] for k in keys if f"params['{k}']" in a}
        return module.loss_and_grad(net, params, a["X_support"], a["y_support"], a["X_query"], a["y_query"])

    return Entry(EMBED_NET, valid, call, arrays=tuple(f"params['{k}']" for k in keys) + ("X_support", "X_query"),
                 labels=("y_support", "y_query"), params=keys)


ENTRIES = {
    "maml": _grad_entry(GRAD_NET, lambda net, a: maml.meta_loss_and_grad(
        net, a["theta"], _batch(a), inner_lr=a["inner_lr"], inner_steps=a["inner_steps"],
        first_order=a["first_order"]),
        extra=lambda rng: {"inner_lr": 0.05, "inner_steps": 2, "first_order": False},
        scalars={"inner_lr": "step", "inner_steps": "count", "first_order": "flag"}),
    "maml_xent": _grad_entry(XENT_NET, lambda net, a: maml.meta_loss_and_grad(
        net, a["theta"], _batch(a), inner_lr=a["inner_lr"]), extra=lambda rng: {"inner_lr": 0.1},
        scalars={"inner_lr": "step"}, labels=True),
    "metasgd": _grad_entry(GRAD_NET, lambda net, a: metasgd.meta_loss_and_grad(
        net, a["theta"], a["alpha"], _batch(a), inner_steps=a["inner_steps"]),
        extra=lambda rng: {"alpha": rng.uniform(0.005, 0.1, GRAD_NET.n_params), "inner_steps": 1},
        scalars={"inner_steps": "count"}, more_arrays=("alpha",)),
    "anil": _grad_entry(GRAD_NET, lambda net, a: anil.meta_loss_and_grad(
        net, a["theta"], _batch(a), inner_lr=a["inner_lr"], inner_steps=a["inner_steps"],
        first_order=a["first_order"]),
        extra=lambda rng: {"inner_lr": 0.05, "inner_steps": 1, "first_order": False},
        scalars={"inner_lr": "step", "inner_steps": "count", "first_order": "flag"}),
    "cavia": _grad_entry(CAVIA_NET, lambda net, a: cavia.meta_loss_and_grad(
        net, a["theta"], _batch(a), n_context=2, inner_lr=a["inner_lr"], inner_steps=a["inner_steps"],
        first_order=a["first_order"]), d_in=2,
        extra=lambda rng: {"inner_lr": 0.5, "inner_steps": 1, "first_order": False},
        scalars={"inner_lr": "step", "inner_steps": "count", "first_order": "flag"}),
    "imaml": _grad_entry(GRAD_NET, lambda net, a: imaml.meta_loss_and_grad(net, a["theta"], _batch(a), lam=a["lam"]),
                         extra=lambda rng: {"lam": 2.0}, scalars={"lam": "step"}, errors=(imaml.ConvergenceError,),
                         cross_backend=False),
    "reptile": _grad_entry(GRAD_NET, lambda net, a: reptile.meta_step(
        net, {"theta": a["theta"]}, _batch(a), reptile.Config(inner_steps=2)), extra=lambda rng: {}),
    "protonet": Entry(EMBED_NET, lambda rng: {"theta": EMBED_NET.init(rng), **_episode(rng)},
                      lambda net, a: protonet.loss_and_grad(net, a["theta"], a["X_support"], a["y_support"],
                                                            a["X_query"], a["y_query"]),
                      arrays=("theta", "X_support", "X_query"), labels=("y_support", "y_query")),
    "matching": Entry(EMBED_NET, lambda rng: {"theta": EMBED_NET.init(rng), "eps": 1e-8, **_episode(rng)},
                      lambda net, a: matching.loss_and_grad(net, a["theta"], a["X_support"], a["y_support"],
                                                            a["X_query"], a["y_query"], eps=a["eps"]),
                      arrays=("theta", "X_support", "X_query"), labels=("y_support", "y_query"),
                      scalars={"eps": "step"}),
    "matching_fce": _metric_entry(matching_fce),
    "siamese": _metric_entry(siamese),
    "relation": _metric_entry(relation),
}


def _corrupt_array(a, how, rng):
    a = np.asarray(a)
    if how == "shape":
        return np.resize(a, tuple(s + int(rng.integers(1, 3)) for s in a.shape))
    if how == "ndim":
        return a.reshape(a.shape + (1,)) if rng.random() < 0.5 else a.ravel()[:1].reshape(())
    if how in ("int", "int32"):
        return a.astype(np.int64 if how == "int" else np.int32)
    if how in ("complex", "object", "bool", "float"):
        return a.astype({"complex": np.complex128, "object": object, "bool": bool, "float": np.float64}[how])
    if how in ("nan", "inf"):
        b = a.astype(np.float64)
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
        return a[..., :0] if a.ndim else a
    if how == "list":
        return a.tolist()
    if how == "float32":
        return a.astype(np.float32)
    if how in ("out_of_range", "negative", "missing_class"):
        b = a.copy()
        i = int(rng.integers(b.size))
        if how == "missing_class":
            b[b == b.max()] = 0
            return b
        b.flat[i] = b.max() + 1 + int(rng.integers(0, 3)) if how == "out_of_range" else -1 - int(rng.integers(0, 3))
        return b
    return {"none": None, "string": "oops"}[how]


def _clean(v, like):
    """A fresh, contiguous, writeable copy of ``v`` with the dtype kind of the valid ``like``."""
    if isinstance(like, np.ndarray):
        return np.array(v, dtype=np.int64 if like.dtype.kind in "iu" else like.dtype)
    return v


def _outputs(result):
    out = []
    for r in (result if isinstance(result, tuple) else (result,)):
        out.extend(r.values() if isinstance(r, dict) else [r])
    return out


@pytest.mark.parametrize("name", sorted(ENTRIES))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 63), pick=st.integers(0, 63))
def test_malformed_input_gives_a_correct_result_or_a_named_error(name, seed, which, pick):
    entry = ENTRIES[name]
    rng = np.random.default_rng(seed)
    args = entry.valid(rng)
    valid = dict(args)
    targets = [*entry.arrays, *entry.labels, *entry.scalars, *(["batch"] if entry.batch else []),
               *(["params"] if entry.params else [])]
    target = targets[which % len(targets)]
    if target in entry.arrays:
        how = ARRAY_CORRUPTIONS[pick % len(ARRAY_CORRUPTIONS)]
        args[target] = _corrupt_array(args[target], how, rng)
    elif target in entry.labels:
        how = LABEL_CORRUPTIONS[pick % len(LABEL_CORRUPTIONS)]
        args[target] = _corrupt_array(args[target], how, rng)
    elif target in entry.scalars:
        kind = entry.scalars[target]
        choices = {"step": BAD_STEP_SIZES, "count": BAD_COUNTS, "flag": BAD_FLAGS}[kind] + GOOD_SCALARS[kind]
        how = args[target] = choices[pick % len(choices)]
    elif target == "batch":  # a plain tuple of the four arrays instead of a TaskBatch
        how, args["_tuple"] = "tuple", True
    else:  # a params dict missing a key
        key = entry.params[pick % len(entry.params)]
        how, target = "missing key", f"'{key}'"
        del args[f"params['{key}']"]
    named = target.split("'")[1] if target.startswith("params[") else target

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "never warn and carry on"
        try:
            got = entry.call(entry.net, args)
        except (ValueError, TypeError) as err:
            assert named in str(err), \
                f"{name}: {type(err).__name__} does not name {target!r} (corruption {how!r}): {err}"
            event(f"refused with {type(err).__name__}")
            return
        except entry.errors as err:
            event(f"refused with {type(err).__name__}")
            return
    event("accepted: checked against a clean copy")
    assert how not in ("tuple", "missing key"), f"{name}: {how} {target} was accepted"
    clean = {k: _clean(v, valid.get(k)) for k, v in args.items()}
    same = _outputs(entry.call(entry.net, clean))  # layout and container must not change a single bit
    got = _outputs(got)
    assert len(got) == len(same)
    for g, w in zip(got, same):
        assert np.shape(g) == np.shape(w) and np.all(np.isfinite(g)), f"{name}: {how} {target}"
        np.testing.assert_array_equal(g, w)
    if entry.cross_backend:  # and the NumPy reference agrees to the engine's tolerance
        for g, w in zip(got, _outputs(entry.call(entry.net.replace(backend="numpy"), clean))):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    grads = [g for g in got if np.ndim(g) == 1]
    assert any(np.shape(g) == np.shape(valid.get("theta", valid.get("params['theta']"))) for g in grads)


# ------------------------------------------------ predict: the training-loop protocol's test-time entry
def _predict_case(module, net, config, d_in=None, metric=False):
    def valid(rng):
        params = module.init_params(net, rng, config)
        if metric:
            task = _episode(rng)
            task.pop("y_query")
        else:
            b = _task_batch(rng, net, d_in or net.sizes[0], T=1)
            task = {k: v[0] for k, v in b.items() if k != "y_query"}
        return {**{f"params['{k}']": v for k, v in params.items()}, **task, "steps": 2}

    keys = tuple(module.init_params(net, np.random.default_rng(0), config))
    return module, net, config, valid, keys, metric


PREDICT = {
    "maml": _predict_case(maml, GRAD_NET, maml.Config(inner_lr=0.05)),
    "maml_xent": _predict_case(maml, XENT_NET, maml.Config(inner_lr=0.1)),
    "metasgd": _predict_case(metasgd, GRAD_NET, metasgd.Config()),
    "anil": _predict_case(anil, GRAD_NET, anil.Config()),
    "cavia": _predict_case(cavia, CAVIA_NET, cavia.Config(n_context=2, inner_lr=0.5), d_in=2),
    "imaml": _predict_case(imaml, GRAD_NET, imaml.Config()),
    "reptile": _predict_case(reptile, GRAD_NET, reptile.Config(inner_steps=2)),
    "protonet": _predict_case(protonet, EMBED_NET, protonet.Config(), metric=True),
    "matching": _predict_case(matching, EMBED_NET, matching.Config(), metric=True),
    "matching_fce": _predict_case(matching_fce, EMBED_NET, matching_fce.Config(), metric=True),
    "siamese": _predict_case(siamese, EMBED_NET, siamese.Config(), metric=True),
    "relation": _predict_case(relation, EMBED_NET, relation.Config(), metric=True),
}


def _predict(module, net, config, a, keys):
    params = {k: a[f"params['{k}']"] for k in keys if f"params['{k}']" in a}
    return module.predict(net, params, a["X_support"], a["y_support"], a["X_query"], a["steps"],
                          a.get("config", config))


@pytest.mark.parametrize("name", sorted(PREDICT))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 63), pick=st.integers(0, 63))
def test_predict_gives_a_correct_result_or_a_named_error(name, seed, which, pick):
    module, net, config, valid_args, keys, metric = PREDICT[name]
    rng = np.random.default_rng(seed)
    args = valid_args(rng)
    valid = dict(args)
    labels = metric or net.loss_name == "xent"
    arrays = [f"params['{k}']" for k in keys] + ["X_support", "X_query"] + ([] if labels else ["y_support"])
    targets = arrays + (["y_support"] if labels else []) + ["steps", "params", "config"]
    target = targets[which % len(targets)]
    if target in arrays:
        how = ARRAY_CORRUPTIONS[pick % len(ARRAY_CORRUPTIONS)]
        args[target] = _corrupt_array(args[target], how, rng)
    elif target == "y_support":
        how = LABEL_CORRUPTIONS[pick % len(LABEL_CORRUPTIONS)]
        args[target] = _corrupt_array(args[target], how, rng)
    elif target == "steps":
        choices = BAD_COUNTS + GOOD_SCALARS["count"]
        how = args[target] = choices[pick % len(choices)]
    elif target == "config":
        how, args["config"] = "a dict for a Config", dataclasses.asdict(config)
    else:
        key = keys[pick % len(keys)]
        how, target = "missing key", f"'{key}'"
        del args[f"params['{key}']"]
    named = target.split("'")[1] if target.startswith("params[") else target
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            got = _predict(module, net, config, args, keys)
        except (ValueError, TypeError) as err:
            assert named in str(err), f"{name}: {type(err).__name__} does not name {target!r} ({how!r}): {err}"
            event(f"refused with {type(err).__name__}")
            return
    event("accepted: checked against a clean copy")
    assert how not in ("missing key", "a dict for a Config"), f"{name}: {how} was accepted"
    clean = {k: _clean(v, valid.get(k)) for k, v in args.items()}
    same = _predict(module, net, config, clean, keys)
    n_q = np.shape(clean["X_query"])[0]
    steps = int(clean["steps"])
    want_shape = (1, n_q, int(np.max(clean["y_support"])) + 1) if metric else (steps + 1, n_q, net.sizes[-1])
    assert got.shape == want_shape and np.isfinite(got).all(), f"{name}: {how} {target}: {got.shape}"
    np.testing.assert_array_equal(got, same)
