"""Property-based fuzzing of the task samplers (Hypothesis): sinusoids and N-way K-shot episodes.

Every argument is drawn either valid or malformed (negative, zero, a float,
a bool, a string, None, a NumPy integer; an unknown dtype or split; a
generator that is not a ``np.random.Generator``; image data of the wrong
dtype or shape), and the combinations can be impossible (more ways than
classes, more shots and queries than drawings per class). The only outcomes
allowed: a correct result -- shapes, dtypes, finite values, labels 0..N-1 in
class-major order, distinct classes and drawings per episode -- or a
ValueError/TypeError naming one of the malformed arguments.
"""
import numbers

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tinymeta.tasks import episodes, sinusoid
from tinymeta.tasks.images import ImageClasses

EXAMPLES = 150  # per sampler; see RELIABILITY.md
GOOD_COUNTS = st.one_of(st.integers(1, 4), st.sampled_from([np.int64(3), np.int32(2)]))
BAD_COUNTS = st.one_of(st.integers(-2, 0), st.sampled_from([2.0, 1.5, True, False, None, "3", float("nan")]))
GOOD_DTYPES = st.sampled_from(["float64", "float32", np.float64])
BAD_DTYPES = st.sampled_from(["int32", "complex128", object, "foo", "U3", bool, "float16"])
GOOD_RNG, BAD_RNG = st.just("generator"), st.sampled_from(["none", "int", "legacy"])
FLOAT_DTYPES = {"float64", "float32", "float16"}
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _arguments(good: dict, bad: dict):
    """Valid arguments drawn from ``good``, then 0, 1 or 2 of them replaced by a draw from ``bad``."""
    names = sorted(bad)
    return st.builds(lambda g, b, which: {**g, **{k: b[k] for k in which}}, st.fixed_dictionaries(good),
                     st.fixed_dictionaries(bad), st.lists(st.sampled_from(names), max_size=2, unique=True))


def _count_ok(v, minimum=1):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= minimum


def _dtype_ok(d, allowed):
    try:
        return np.dtype(d).name in allowed
    except TypeError:
        return False


def _rng(kind):
    return {"generator": np.random.default_rng(5), "none": None, "int": 5,
            "legacy": np.random.RandomState(5)}[kind]


def _check_error(err, bad):
    assert bad, f"valid arguments were refused: {err}"
    assert any(name in str(err) for name in bad), f"{type(err).__name__} names none of {bad}: {err}"
    event(f"refused with {type(err).__name__}")


@SETTINGS
@given(args=_arguments({"n_tasks": GOOD_COUNTS, "n_support": GOOD_COUNTS, "n_query": GOOD_COUNTS, "dtype": GOOD_DTYPES,
                        "rng_kind": GOOD_RNG},
                       {"n_tasks": BAD_COUNTS, "n_support": BAD_COUNTS, "n_query": BAD_COUNTS, "dtype": BAD_DTYPES,
                        "rng_kind": BAD_RNG}))
def test_sinusoid_sample_gives_a_correct_batch_or_a_named_error(args):
    n_tasks, n_support, n_query, dtype, rng_kind = (args[k] for k in ("n_tasks", "n_support", "n_query", "dtype",
                                                                      "rng_kind"))
    bad = [name for name, ok in (("rng", rng_kind == "generator"), ("n_tasks", _count_ok(n_tasks)),
                                 ("n_support", _count_ok(n_support)), ("n_query", _count_ok(n_query)),
                                 ("dtype", _dtype_ok(dtype, {"float64", "float32"}))) if not ok]
    try:
        tasks = sinusoid.sample(_rng(rng_kind), n_tasks, n_support, n_query, dtype)
    except (ValueError, TypeError) as err:
        _check_error(err, bad)
        return
    assert not bad, f"accepted malformed {bad}"
    event("accepted: checked")
    b = tasks.batch
    T, K, Q = int(n_tasks), int(n_support), int(n_query)
    assert (b.X_support.shape, b.y_support.shape, b.X_query.shape, b.y_query.shape) == \
        ((T, K, 1), (T, K, 1), (T, Q, 1), (T, Q, 1))
    assert all(a.dtype == np.dtype(dtype) and a.flags.c_contiguous and np.isfinite(a).all() for a in b)
    assert np.abs(b.X_support).max() <= 5 and (tasks.amplitude >= 0.1).all() and (tasks.amplitude <= 5).all()
    np.testing.assert_allclose(b.y_query[..., 0], tasks.amplitude[:, None] * np.sin(b.X_query[..., 0].astype(
        np.float64) - tasks.phase[:, None]), rtol=1e-6 if np.dtype(dtype) == np.float32 else 1e-12, atol=1e-6)


@SETTINGS
@given(args=_arguments({"split": st.sampled_from(["test", "val"]), "n_support": GOOD_COUNTS,
                        "n_tasks": st.one_of(st.none(), GOOD_COUNTS), "n_query": GOOD_COUNTS},
                       {"split": st.sampled_from(["train", "", None, "TEST"]), "n_support": BAD_COUNTS,
                        "n_tasks": BAD_COUNTS.filter(lambda v: v is not None), "n_query": BAD_COUNTS}))
def test_sinusoid_fixed_tasks_give_a_correct_batch_or_a_named_error(args):
    split, n_support, n_tasks, n_query = (args[k] for k in ("split", "n_support", "n_tasks", "n_query"))
    bad = [name for name, ok in (("split", split in ("test", "val")), ("n_support", _count_ok(n_support)),
                                 ("n_tasks", n_tasks is None or _count_ok(n_tasks)),
                                 ("n_query", _count_ok(n_query))) if not ok]
    try:
        tasks = sinusoid.fixed_tasks(split, n_support, n_tasks, n_query)
    except (ValueError, TypeError) as err:
        _check_error(err, bad)
        return
    assert not bad, f"accepted malformed {bad}"
    event("accepted: checked")
    T = (600 if split == "test" else 100) if n_tasks is None else int(n_tasks)
    assert tasks.batch.X_support.shape == (T, int(n_support), 1)
    assert tasks.batch.X_query.shape == (T, int(n_query), 1)


def _data(n_classes, n_drawings, corruption):
    images = np.random.default_rng(n_classes * 31 + n_drawings).integers(
        0, 256, (n_classes, n_drawings, 28, 28), dtype=np.uint8)
    names = np.array([f"c{i}" for i in range(n_classes)])
    if corruption == "float images":
        images = images.astype(np.float64)
    elif corruption == "wrong side":
        images = images[:, :, :20, :20]
    elif corruption == "3-D images":
        images = images[:, 0]
    elif corruption == "names length":
        names = names[:-1]
    elif corruption == "a list":
        images = images.tolist()
    return ImageClasses(images, names)


@SETTINGS
@given(n_classes=st.integers(1, 8), n_drawings=st.integers(1, 8),
       args=_arguments({"corruption": st.none(), "n_way": GOOD_COUNTS, "k_shot": GOOD_COUNTS, "n_query": GOOD_COUNTS,
                        "n_episodes": GOOD_COUNTS, "dtype": GOOD_DTYPES, "rng_kind": GOOD_RNG},
                       {"corruption": st.sampled_from(["float images", "wrong side", "3-D images", "names length",
                                                       "a list"]),
                        "n_way": BAD_COUNTS, "k_shot": BAD_COUNTS, "n_query": BAD_COUNTS, "n_episodes": BAD_COUNTS,
                        "dtype": BAD_DTYPES.filter(lambda d: d != "float16"), "rng_kind": BAD_RNG}))
def test_episodes_give_correct_n_way_k_shot_batches_or_a_named_error(n_classes, n_drawings, args):
    corruption, n_way, k_shot, n_query, n_episodes, dtype, rng_kind = (args[k] for k in (
        "corruption", "n_way", "k_shot", "n_query", "n_episodes", "dtype", "rng_kind"))
    data = _data(n_classes, n_drawings, corruption)
    bad = [name for name, ok in (
        ("images" if corruption != "names length" else "names", corruption is None),
        ("rng", rng_kind == "generator"), ("n_way", _count_ok(n_way)), ("k_shot", _count_ok(k_shot)),
        ("n_query", _count_ok(n_query)), ("n_episodes", _count_ok(n_episodes))) if not ok]
    if not bad and n_way > n_classes:
        bad = ["n_way"]
    if not bad and k_shot + n_query > n_drawings:
        bad = ["k_shot + n_query"]
    if not bad and not _dtype_ok(dtype, FLOAT_DTYPES):
        bad = ["dtype"]
    try:
        batch = episodes.sample_episodes(data, _rng(rng_kind), n_way, k_shot, n_query, n_episodes, dtype)
    except (ValueError, TypeError) as err:
        _check_error(err, bad)
        return
    assert not bad, f"accepted malformed {bad}"
    event("accepted: checked")
    T, N, K, Q = int(n_episodes), int(n_way), int(k_shot), int(n_query)
    assert batch.X_support.shape == (T, N * K, 784) and batch.X_query.shape == (T, N * Q, 784)
    assert batch.X_support.dtype == np.dtype(dtype) and batch.y_support.dtype == np.int64
    np.testing.assert_array_equal(batch.y_support, np.tile(np.repeat(np.arange(N), K), (T, 1)))
    np.testing.assert_array_equal(batch.y_query, np.tile(np.repeat(np.arange(N), Q), (T, 1)))
    assert np.isfinite(batch.X_support).all() and 0 <= batch.X_support.min() and batch.X_support.max() <= 1
    # each episode: N distinct classes, K + Q distinct drawings of each -- found back in the data by value
    flat = data.images.reshape(n_classes, n_drawings, 784).astype(np.float64) / 255
    for t in range(T):
        rows = np.concatenate([batch.X_support[t].reshape(N, K, 784), batch.X_query[t].reshape(N, Q, 784)], axis=1)
        found = [[np.flatnonzero(np.all(np.isclose(flat.reshape(-1, 784), r, atol=1e-3), axis=1))
                  for r in rows[n]] for n in range(N)]
        assert all(len(f) >= 1 for cls in found for f in cls)
        classes = [{int(f[0]) // n_drawings for f in cls} for cls in found]
        assert all(len(c) == 1 for c in classes) and len(set().union(*classes)) == N


@pytest.mark.parametrize("dtype, error", [("foo", TypeError), (object, TypeError), ("int32", TypeError),
                                          ("complex128", TypeError)])
def test_to_batch_names_a_bad_dtype(dtype, error, rng):
    data = _data(3, 4, None)
    index = episodes.sample_index(data, rng, 2, 1, 1)
    with pytest.raises(error, match="dtype"):
        episodes.to_batch(data, index, dtype)
