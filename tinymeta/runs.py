"""A trained run directory: test it on the fixed tasks, tune what its algorithm tunes, plot it.

``evaluate_run`` writes ``eval_<k>shot.json``: the test error after
``0..steps`` steps on the fixed test tasks (mean, 95% interval, diverged
count), the run's wall time and iteration, and any step size tuned on the
validation tasks (the pretrained baseline's). ``plot_run`` writes the
training curve, the adaptation of two held-out tasks and the error against
steps, as PNG files next to it.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from . import plots, registry
from .checkpoint import read_json, write_json
from .evaluate import Summary, evaluate
from .train import load_run, read_log

ADAPTATION_TASKS = (0, 1, 2)  # test tasks drawn in adaptation.png


def _tuned_config(config, net, params, algo, shots, steps):
    """The algorithm's Config with ``algo.tune`` chosen by validation error after ``steps`` steps."""
    algo_config = config.algorithm_config()
    if not algo.tune:
        return algo_config, None
    name, grid = algo.tune
    batch = config.task_family().fixed_tasks("val", shots, config.val_tasks, config.eval_query, config.dtype).batch
    scores = {}
    for value in grid:
        s = evaluate(net, algo.module, params, dataclasses.replace(algo_config, **{name: value}), batch, steps)
        scores[value] = float(s.mean[-1]) if s.diverged[-1] == 0 and np.isfinite(s.mean[-1]) else float("inf")
    best = min(grid, key=lambda v: scores[v])
    tuned = {"field": name, "value": best, "criterion": f"validation error after {steps} steps",
             "candidates": {str(v): (None if not np.isfinite(e) else e) for v, e in scores.items()}}
    return dataclasses.replace(algo_config, **{name: best}), tuned


def evaluate_run(run_dir, shots=None, steps=None, n_tasks=None) -> dict:
    """Test the run in ``run_dir`` on the fixed test tasks; write and return ``eval_<shots>shot.json``.

    ``shots``, ``steps``, ``n_tasks`` default to the run's ``eval_shots``,
    ``eval_steps`` and ``eval_tasks``.
    """
    run_dir = Path(run_dir)
    config, params, iteration, seconds = load_run(run_dir)
    shots = config.eval_shots if shots is None else shots
    steps = config.eval_steps if steps is None else steps
    n_tasks = config.eval_tasks if n_tasks is None else n_tasks
    net, algo = config.net(), registry.algorithm(config.algo)
    start = time.perf_counter()
    algo_config, tuned = _tuned_config(config, net, params, algo, shots, steps)
    tasks = config.task_family().fixed_tasks("test", shots, n_tasks, config.eval_query, config.dtype)
    summary = evaluate(net, algo.module, params, algo_config, tasks.batch, steps)
    result = {"run_dir": str(run_dir), "algo": config.algo, "task": config.task, "seed": config.seed,
              "train_shots": config.shots, "shots": shots, "steps": steps, "iteration": iteration,
              "iterations": config.iterations, "train_seconds": seconds, "tuned": tuned,
              "algorithm_config": dataclasses.asdict(algo_config), **summary.to_json(),
              **({"ways": config.ways, "train_ways": config.train_ways, "query": config.eval_query,
                  "test_steps": min(config.test_steps, steps)} if registry.task(config.task).classification else {}),
              "eval_seconds": time.perf_counter() - start}
    write_json(run_dir / f"eval_{shots}shot.json", result)
    return result


def read_evaluation(run_dir, shots) -> dict | None:
    """The saved ``eval_<shots>shot.json`` of ``run_dir``, or None."""
    path = Path(run_dir) / f"eval_{shots}shot.json"
    return read_json(path) if path.exists() else None


def adaptation_panels(run_dir, shots, steps=10, tasks=ADAPTATION_TASKS, inner=None):
    """Data of ``plots.adaptation`` for test ``tasks`` (sinusoid-like 1-D regression only).

    ``inner``: a tuned ``{field: value}`` for the algorithm's Config (see ``evaluate_run``).
    """
    config, params, _, _ = load_run(run_dir)
    net, algo = config.net(), registry.algorithm(config.algo)
    algo_config = dataclasses.replace(config.algorithm_config(), **(inner or {}))
    fixed = registry.task(config.task).module.fixed_tasks("test", shots, max(tasks) + 1, dtype=config.dtype)
    x = np.linspace(-5, 5, 250)
    panels = []
    for i in tasks:
        Xs, ys, _, _ = fixed.batch.task(i)
        pred = algo.module.predict(net, params, Xs, ys, x[:, None].astype(config.dtype), steps, algo_config)
        panels.append({"title": f"{config.algo}, test task {i}: A = {fixed.amplitude[i]:.2f}, "
                                f"phase = {fixed.phase[i]:.2f}",
                       "x": x, "y_true": fixed.true_function(i, x), "X_support": Xs[:, 0], "y_support": ys[:, 0],
                       "predictions": pred[:, :, 0]})
    return panels


def plot_run(run_dir, evaluation) -> list:
    """Write training_curve.png, adaptation.png and error_vs_steps.png; return their paths."""
    run_dir = Path(run_dir)
    config, _, iteration, _ = load_run(run_dir)
    if registry.task(config.task).classification:
        from .image_runs import plot_image_run

        return plot_image_run(run_dir, evaluation)
    shots = evaluation["shots"]
    paths = [run_dir / "training_curve.png", run_dir / "adaptation.png", run_dir / f"error_vs_steps_{shots}shot.png"]
    plots.training_curve(paths[0], read_log(run_dir), val_step=config.eval_steps,
                         title=f"{config.algo} on {config.task}: meta-training (seed {config.seed}, "
                               f"K = {config.shots}, meta-batch {config.meta_batch})")
    inner = {evaluation["tuned"]["field"]: evaluation["tuned"]["value"]} if evaluation.get("tuned") else None
    steps = [s for s in (0, 1, 5, 10) if s <= evaluation["steps"]]
    plots.adaptation(paths[1], adaptation_panels(run_dir, shots, max(steps), inner=inner), steps=steps)
    s = Summary.from_json(evaluation)
    plots.error_vs_steps(paths[2], [{"label": f"{config.algo} (seed {config.seed}, {iteration} iterations)",
                                      "mean": s.mean, "ci95": s.ci95}],
                         title=f"{config.task}: {shots}-shot test error, {s.n_tasks} fixed tasks, 95% intervals",
                         metric=s.metric)
    return paths


def plot_comparison(path, evaluations) -> Path:
    """One error-against-steps figure with a line (and 95% band) per evaluation; returns ``path``."""
    curves = [{"label": f"{Path(e['run_dir']).name}: {e['algo']}, seed {e['seed']}, K = {e['train_shots']}, "
                        f"{e['iteration']} iterations",
               "mean": Summary.from_json(e).mean, "ci95": Summary.from_json(e).ci95} for e in evaluations]
    shots = sorted({e["shots"] for e in evaluations})
    plots.error_vs_steps(path, curves, metric=evaluations[0]["metric"],
                         title=f"{evaluations[0]['task']}: {'/'.join(map(str, shots))}-shot test error, "
                               f"{evaluations[0]['n_tasks']} fixed tasks, 95% intervals")
    return Path(path)


def format_table(evaluations, steps=(0, 1, 5, 10)) -> str:
    """A plain-text table: one row per evaluation, ``mean ± ci95`` after each of ``steps``."""
    header = ["algo", "seed", "shots"] + [f"{s} step{'s' * (s != 1)}" for s in steps] + ["diverged", "train time"]
    rows = [header]
    for e in evaluations:
        cells = [e["algo"], str(e["seed"]), str(e["shots"])]
        for s in steps:
            m, c = (e["mean"][s], e["ci95"][s]) if s < len(e["mean"]) else (None, None)
            cells.append("-" if m is None else f"{m:.3f} ± {c or 0:.3f}")
        cells += [str(max(e["diverged"])), f"{e['train_seconds']:.0f} s"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
