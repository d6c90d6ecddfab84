"""Plots of a trained classification run: training curve, one test episode with its predictions,
the confusion matrix over test episodes, and accuracy against adaptation steps.

Predictions are those after the run's ``test_steps`` (the headline number's steps).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plots, registry
from .evaluate import Summary, confusion_matrix, predicted_labels
from .tasks.families import EpisodeStream
from .tasks.episodes import EpisodeIndex
from .train import load_run, read_log

CONFUSION_EPISODES = 100  # fixed test episodes pooled in the confusion matrix


def _subset(stream: EpisodeStream, n: int) -> EpisodeStream:
    i = stream.index
    return EpisodeStream(stream.data, EpisodeIndex(i.classes[:n], i.drawings[:n], i.k_shot), stream.dtype,
                         stream.chunk)


def plot_image_run(run_dir, evaluation) -> list:
    """Write training_curve.png, episode_<k>shot.png, confusion_<k>shot.png (and, for the
    learners that adapt, error_vs_steps_<k>shot.png) in ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    config, params, iteration, _ = load_run(run_dir)
    net, algo = config.net(), registry.algorithm(config.algo)
    algo_config = config.algorithm_config()
    shots, steps = evaluation["shots"], evaluation["test_steps"]
    what = f"{config.algo} on {config.task}, {config.ways}-way {shots}-shot"
    after = f"after {steps} step{'s' * (steps != 1)}" if steps else "(no adaptation)"
    paths = [run_dir / "training_curve.png", run_dir / f"episode_{shots}shot.png",
             run_dir / f"confusion_{shots}shot.png"]
    plots.training_curve(paths[0], read_log(run_dir), val_step=config.test_steps,
                         title=f"{config.algo} on {config.task}: meta-training (seed {config.seed}, "
                               f"{config.train_ways}-way {config.shots}-shot, meta-batch {config.meta_batch})")
    fixed = config.task_family().fixed_tasks("test", shots, evaluation["n_tasks"], config.eval_query, config.dtype)
    stream = fixed.batch
    Xs, ys, Xq, yq = stream.task(0)
    pred = predicted_labels(net, algo.module, params, algo_config, _subset(stream, 1), steps)[0]
    plots.episode_grid(paths[1], Xs, ys, Xq, yq, pred,
                       title=f"{what}: test episode 0, predictions {after} ({iteration} iterations)")
    part = _subset(stream, min(CONFUSION_EPISODES, stream.n_tasks))
    predicted = predicted_labels(net, algo.module, params, algo_config, part, steps)
    truth = np.concatenate([b.y_query for b in part])
    plots.confusion(paths[2], confusion_matrix(truth, predicted, config.ways),
                    title=f"{what}, {part.n_tasks} test episodes {after}")
    if evaluation["steps"] > 0:
        paths.append(run_dir / f"error_vs_steps_{shots}shot.png")
        s = Summary.from_json(evaluation)
        plots.error_vs_steps(paths[-1], [{"label": f"{config.algo} (seed {config.seed}, {iteration} iterations)",
                                          "mean": s.mean, "ci95": s.ci95}],
                             title=f"{what}: test accuracy, {s.n_tasks} fixed episodes, 95% intervals",
                             metric=s.metric)
    return paths
