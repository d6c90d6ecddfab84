"""Evaluation: per-task errors after 0..S steps, means and 95% intervals that diverged tasks cannot spoil."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta import evaluate as ev
from tinymeta.algorithms import inner_loop, maml
from tinymeta.tasks import sinusoid


def test_scores_are_the_query_loss_after_each_step(rng):
    net = tm.MLP([1, 8, 1], activation="tanh")
    params = {"theta": net.init(rng)}
    config = maml.Config(inner_lr=0.05)
    batch = sinusoid.sample(rng, 4, 5, 7).batch
    scores = ev.task_scores(net, maml, params, config, batch, steps=3)
    assert scores.shape == (4, 4)
    for i in range(4):
        Xs, ys, Xq, yq = batch.task(i)
        thetas, _ = inner_loop.adapt(net, params["theta"], Xs, ys, np.full(net.n_params, 0.05), 3)
        np.testing.assert_allclose(scores[i], [net.loss(t, Xq, yq) for t in thetas], rtol=1e-12)


def test_summary_mean_and_interval():
    scores = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    s = ev.summarize(scores)
    np.testing.assert_allclose(s.mean, [3.0, 2.0])
    np.testing.assert_allclose(s.ci95, [ev.Z95 * 2.0 / np.sqrt(3), 0.0])
    assert list(s.diverged) == [0, 0] and s.n_tasks == 3


def test_diverged_tasks_are_counted_not_averaged():
    scores = np.array([[1.0, 1.0, 1.0], [2.0, np.inf, np.nan], [3.0, 3.0, 1e9]])
    s = ev.summarize(scores)
    assert list(s.diverged) == [0, 1, 2]
    np.testing.assert_allclose(s.mean, [2.0, 2.0, 1.0])
    assert np.isfinite(s.mean).all()
    everything_diverged = ev.summarize(np.full((2, 2), np.nan))
    assert list(everything_diverged.diverged) == [2, 2] and np.isnan(everything_diverged.mean).all()


def test_summary_json_round_trip_keeps_nan_as_null():
    s = ev.summarize(np.array([[1.0, np.nan], [2.0, np.nan]]))
    d = s.to_json()
    assert d["mean"][1] is None and d["diverged"] == [0, 2]
    back = ev.Summary.from_json(d)
    np.testing.assert_array_equal(back.mean, s.mean)
    np.testing.assert_array_equal(back.diverged, s.diverged)


def test_a_diverging_step_size_is_reported_as_diverged(rng):
    net = tm.MLP([1, 40, 40, 1])
    params = {"theta": net.init(rng)}
    batch = sinusoid.fixed_tasks("val", 5, n_tasks=20).batch
    s = ev.evaluate(net, maml, params, maml.Config(inner_lr=50.0), batch, steps=4)
    assert s.diverged[0] == 0 and s.diverged[-1] > 0
    assert np.isfinite(s.mean[0])


@pytest.mark.parametrize("steps", [0, 2])
def test_classification_scores_are_accuracies(rng, steps):
    net = tm.MLP([2, 6, 3], activation="tanh", loss="xent")
    params = {"theta": net.init(rng)}
    X = rng.standard_normal((2, 6, 2))
    batch = tm.TaskBatch(X, rng.integers(0, 3, (2, 6)), X, rng.integers(0, 3, (2, 6)))
    s = ev.evaluate(net, maml, params, maml.Config(inner_lr=0.1), batch, steps)
    assert s.metric == "accuracy" and ((0 <= s.mean) & (s.mean <= 1)).all()


def test_median_counts_diverged_tasks_as_the_worst_and_resists_blow_ups():
    s = ev.summarize(np.array([[1.0, 1.0], [2.0, np.inf], [3.0, 500.0]]))
    np.testing.assert_allclose(s.median, [2.0, 500.0])
    # one task at 2000 (below the divergence threshold) moves the mean, not the median
    blown = ev.summarize(np.array([[0.2], [0.3], [0.25], [2000.0]]))
    assert blown.mean[0] > 400 and blown.median[0] == 0.275
    back = ev.Summary.from_json(blown.to_json())
    np.testing.assert_array_equal(back.median, blown.median)
    assert ev.Summary.from_json({k: v for k, v in blown.to_json().items() if k != "median"}).median is None
    accuracy = ev.summarize(np.array([[1.0], [np.nan], [0.5]]), metric="accuracy")
    assert accuracy.median[0] == 0.5
