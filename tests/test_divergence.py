"""Numerical faults: a diverging run stops cleanly, names what diverged, and keeps its last good checkpoint.

A step size too large makes the parameters, the inner adaptation or the
meta-gradient overflow. Training must stop at the first non-finite quantity
with a TrainingDiverged naming the iteration, the quantity and a hint --
never a ValueError from deep inside the engine, never a RuntimeWarning, never
a checkpoint holding NaN -- and clipping the meta-gradient's norm must be
available to prevent it.
"""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import checkpoint
from tinymeta.algorithms import anil, inner_loop, maml, reptile
from tinymeta.config import TrainConfig
from tinymeta.train import TrainingDiverged, load_run, read_log, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=(8,), meta_batch=2, shots=4, query=4, eval_shots=3, eval_steps=2, val_tasks=3, eval_tasks=5,
            log_every=1, eval_every=0, checkpoint_every=3)
DIVERGING = dict(optimizer="sgd", outer_lr=5.0, iterations=60)  # diverges within a few iterations (measured)


def _diverge(run_dir, **changes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "never warn and carry on": the loop stops without warnings
        with pytest.raises(TrainingDiverged) as err:
            train(run_dir, TrainConfig(**{**TINY, **DIVERGING, **changes}), progress=False)
    return str(err.value)


@pytest.mark.parametrize("algo", ["maml", "metasgd", "anil", "fomaml"])
def test_a_too_large_outer_step_stops_with_iteration_quantity_hint_and_a_good_checkpoint(tmp_path, algo):
    message = _diverge(tmp_path, algo=algo)
    stopped = int(re.search(r"stopped at iteration (\d+)", message).group(1))
    assert re.search(r"meta-loss|meta-gradient|parameter|must be finite|overflowed", message), message
    assert "Hint: lower the outer learning rate" in message and "--clip-norm" in message
    assert read_log(tmp_path)[-1]["kind"] == "diverged"
    if stopped > TINY["checkpoint_every"]:
        saved = re.search(r"Last good checkpoint: (.+) \(iteration (\d+)\)", message)
        assert saved and Path(saved.group(1)) == tmp_path / "checkpoint.npz"
        config, params, iteration, _ = load_run(tmp_path)  # verified, loadable, finite
        assert iteration == int(saved.group(2)) and stopped - iteration <= TINY["checkpoint_every"]
        assert all(np.isfinite(p).all() for p in params.values())
        resumed = checkpoint.load(tmp_path / "checkpoint.npz")
        assert all(np.isfinite(v).all() for v in resumed["opt_state"].values())
    else:
        assert "none was saved" in message


def test_a_huge_inner_step_stops_at_the_first_iteration_naming_the_inner_loop(tmp_path):
    message = _diverge(tmp_path, optimizer="adam", outer_lr=1e-3, algo_options={"inner_lr": 1e50, "inner_steps": 3})
    assert "stopped at iteration 1" in message and "none was saved" in message
    assert "diverged inside" in message or "meta-loss" in message


def test_reptile_inner_divergence_is_a_training_divergence_not_a_crash(tmp_path):
    message = _diverge(tmp_path, algo="reptile", algo_options={"inner_lr": 1e6}, optimizer=None, outer_lr=None)
    assert "stopped at iteration 1" in message and "Reptile inner loop diverged" in message


def test_clipping_the_global_norm_keeps_the_same_run_finite(tmp_path):
    result = train(tmp_path, TrainConfig(**{**TINY, **DIVERGING, "clip_norm": 1.0}), progress=False)
    assert result.status == "finished" and all(np.isfinite(p).all() for p in result.params.values())
    assert all(np.isfinite(r["meta_loss"]) for r in read_log(tmp_path) if r["kind"] == "train")


def test_the_command_reports_divergence_with_exit_1_and_clip_grad_prevents_it(tmp_path):
    def run(*extra):
        command = [sys.executable, "-m", "tinymeta.cli", "train", "--out", str(tmp_path / "run"), "--overwrite",
                   "--optimizer", "sgd", "--outer-lr", "5", "--iterations", "40", "--hidden", "8",
                   "--meta-batch", "2", "--eval-every", "0", "--checkpoint-every", "3", "--eval-tasks", "5",
                   "--val-tasks", "3", "--no-progress", "--no-plots", *extra]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    proc = run()
    assert proc.returncode == 1, proc.stderr
    assert "training stopped at iteration" in proc.stderr and "Hint" in proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert run("--clip-grad", "1").returncode == 0


def test_a_non_finite_meta_gradient_norm_from_finite_entries_is_caught(tmp_path, monkeypatch):
    """Entries of 1e200 are finite, their squares are not: the norm (and clipping by it) would be inf."""
    import types

    from tinymeta import registry

    def meta_step(net, params, batch, config):
        loss, grads = maml.meta_step(net, params, batch, config)
        return loss, {k: np.full_like(g, 1e200) for k, g in grads.items()}

    module = types.SimpleNamespace(**{**vars(maml), "meta_step": meta_step})
    monkeypatch.setitem(registry.ALGORITHMS, "huge", registry.Algorithm(module))
    message = _diverge(tmp_path, algo="huge", clip_norm=1.0)
    assert "stopped at iteration 1: the meta-gradient's norm overflowed (largest entry 1e+200)" in message


@pytest.mark.parametrize("module, config", [(maml, maml.Config(inner_lr=1e50)), (anil, anil.Config(inner_lr=1e50)),
                                            (reptile, reptile.Config(inner_lr=1e50))])
def test_diverging_predictions_are_nan_from_the_diverging_step_without_warnings(module, config, rng):
    net = tm.MLP([1, 8, 1])
    params = module.init_params(net, rng, config)
    X, y = rng.uniform(-5, 5, (10, 1)), rng.standard_normal((10, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 * inf and overflow are divergence, not warnings
        out = module.predict(net, params, X, y, X, 8, config)
    assert out.shape == (9, 10, 1) and np.isfinite(out[0]).all()
    bad = ~np.isfinite(out).all(axis=(1, 2))
    assert bad.any() and bad[np.argmax(bad):].all()  # NaN from the first diverged step on


def test_inner_loop_predictions_with_a_masked_infinite_gradient_warn_nothing(rng):
    """ANIL's mask multiplies a body gradient of inf by 0: NaN, reported as divergence, silently."""
    net = tm.MLP([1, 8, 1])
    theta = net.init(rng) * 1e150
    X, y = rng.uniform(-5, 5, (4, 1)), rng.standard_normal((4, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = inner_loop.predictions(net, theta, X, y, X, anil.head_mask(net), 3)
    assert out.shape == (4, 4, 1)
