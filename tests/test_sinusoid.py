"""The sinusoid tasks: the protocol's distributions, determinism, the fixed evaluation sets, bad input."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta.tasks import sinusoid


def test_targets_are_the_sine_of_each_task(rng):
    tasks = sinusoid.sample(rng, 7, 4, 9)
    b = tasks.batch
    assert isinstance(b, tm.TaskBatch)
    assert b.X_support.shape == (7, 4, 1) and b.X_query.shape == (7, 9, 1)
    amp, phase = tasks.amplitude[:, None, None], tasks.phase[:, None, None]
    np.testing.assert_array_equal(b.y_support, amp * np.sin(b.X_support - phase))
    np.testing.assert_array_equal(b.y_query, amp * np.sin(b.X_query - phase))
    np.testing.assert_array_equal(tasks.true_function(3, b.X_query[3]), b.y_query[3])


def test_sampler_statistics_match_the_protocol(rng):
    """A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]: ranges, means and variances of uniforms."""
    tasks = sinusoid.sample(rng, 20000, 5, 5)
    x = np.concatenate([tasks.batch.X_support.ravel(), tasks.batch.X_query.ravel()])
    for values, (lo, hi) in ((tasks.amplitude, (0.1, 5.0)), (tasks.phase, (0.0, np.pi)), (x, (-5.0, 5.0))):
        n = values.size
        assert lo <= values.min() and values.max() <= hi
        mean, var = (lo + hi) / 2, (hi - lo) ** 2 / 12
        assert abs(values.mean() - mean) < 5 * np.sqrt(var / n)  # 5 standard errors
        assert abs(values.var() / var - 1) < 0.05
        assert values.min() - lo < 0.01 * (hi - lo) and hi - values.max() < 0.01 * (hi - lo)


def test_same_seed_same_tasks_other_seed_other_tasks():
    a = sinusoid.sample(np.random.default_rng(5), 3, 4, 6)
    b = sinusoid.sample(np.random.default_rng(5), 3, 4, 6)
    c = sinusoid.sample(np.random.default_rng(6), 3, 4, 6)
    for x, y, z in zip(a.batch, b.batch, c.batch):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)


def test_fixed_test_set_is_600_tasks_with_100_query_points_and_never_changes():
    test = sinusoid.fixed_tasks("test")
    assert test.batch.X_support.shape == (600, 5, 1) and test.batch.X_query.shape == (600, 100, 1)
    again = sinusoid.fixed_tasks("test")
    for x, y in zip(test.batch, again.batch):
        np.testing.assert_array_equal(x, y)
    val = sinusoid.fixed_tasks("val")
    assert val.n_tasks == 100 and not np.array_equal(val.amplitude, test.amplitude[:100])


def test_fixed_tasks_do_not_depend_on_shots_and_support_sets_are_nested():
    five, twenty = sinusoid.fixed_tasks("test", 5, n_tasks=50), sinusoid.fixed_tasks("test", 20, n_tasks=80)
    np.testing.assert_array_equal(five.amplitude, twenty.amplitude[:50])
    np.testing.assert_array_equal(five.phase, twenty.phase[:50])
    np.testing.assert_array_equal(five.batch.X_query, twenty.batch.X_query[:50])
    np.testing.assert_array_equal(five.batch.X_support, twenty.batch.X_support[:50, :5])


def test_float32_tasks():
    tasks = sinusoid.sample(np.random.default_rng(0), 2, 3, 4, dtype="float32")
    assert all(a.dtype == np.float32 for a in tasks.batch)


@pytest.mark.parametrize("args, message", [
    ((0, 5, 5), "n_tasks must be >= 1"),
    ((3, 0, 5), "n_support must be >= 1"),
    ((3, 5, 0), "n_query must be >= 1"),
    ((3, 2.5, 5), "n_support must be an integer"),
])
def test_bad_counts_raise_naming_the_argument(args, message, rng):
    with pytest.raises((ValueError, TypeError), match=message):
        sinusoid.sample(rng, *args)


def test_bad_rng_split_and_dtype_raise():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        sinusoid.sample(0, 2, 2, 2)
    with pytest.raises(ValueError, match="split must be one of"):
        sinusoid.fixed_tasks("train")
    with pytest.raises(ValueError, match="dtype must be"):
        sinusoid.sample(np.random.default_rng(0), 2, 2, 2, dtype="int32")
    with pytest.raises(ValueError, match="n_support must be >= 1"):
        sinusoid.fixed_tasks("test", 0)
