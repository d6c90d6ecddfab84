"""The one meta-training loop: schedules, logs, checkpoints, exact resume, non-finite stops, SIGINT."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tinymeta import checkpoint, registry
from tinymeta.algorithms import maml
from tinymeta.config import TrainConfig
from tinymeta.train import TrainingDiverged, TrainingStopped, learning_rate, load_run, read_log, train

TINY = dict(hidden=(8,), meta_batch=3, shots=4, query=5, eval_shots=3, eval_steps=2, val_tasks=5, eval_tasks=10,
            log_every=2, eval_every=3, checkpoint_every=4)


def _config(**changes):
    return TrainConfig(**{**TINY, "iterations": 8, **changes})


def test_schedules():
    c = _config(iterations=10, outer_lr=0.1)
    assert [learning_rate(c, t) for t in (0, 9)] == [0.1, 0.1]
    lin = dataclasses.replace(c, schedule="linear")
    assert learning_rate(lin, 0) == 0.1 and learning_rate(lin, 5) == pytest.approx(0.05)
    assert learning_rate(lin, 9) == pytest.approx(0.01)  # the last update, annealed almost to 0
    step = dataclasses.replace(c, schedule="step", lr_step_every=4, lr_step_factor=0.5)
    assert [learning_rate(step, t) for t in (0, 3, 4, 8)] == [0.1, 0.1, 0.05, 0.025]


def test_a_tiny_run_writes_config_log_and_checkpoint(tmp_path):
    result = train(tmp_path, _config(), progress=False)
    assert result.status == "finished" and result.iteration == 8
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == _config()
    records = read_log(tmp_path)
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8]
    assert [r["iteration"] for r in records if r["kind"] == "val"] == [0, 3, 6, 8]
    assert all(len(r["mean"]) == 3 for r in records if r["kind"] == "val")
    config, params, iteration, seconds = load_run(tmp_path)
    assert config == _config() and iteration == 8 and seconds > 0
    assert np.array_equal(params["theta"], result.params["theta"])


def test_training_lowers_the_validation_error(tmp_path):
    train(tmp_path, TrainConfig(iterations=60, eval_every=60, val_tasks=50, log_every=20), progress=False)
    val = [r for r in read_log(tmp_path) if r["kind"] == "val"]
    assert val[-1]["mean"][1] < 0.97 * val[0]["mean"][1]


@pytest.mark.parametrize("changes", [{}, {"optimizer": "sgd", "outer_lr": 0.05, "schedule": "linear",
                                          "clip_norm": 1.0}])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, changes):
    config = _config(iterations=10, **changes)
    straight = train(tmp_path / "straight", config, progress=False)
    first = train(tmp_path / "split", config, until=5, progress=False)  # 5 is not a checkpoint multiple
    assert first.status == "paused" and load_run(tmp_path / "split")[2] == 5
    second = train(tmp_path / "split", resume=True, progress=False)
    assert second.status == "finished" and second.iteration == 10
    a, b = checkpoint.load(tmp_path / "straight/checkpoint.npz"), checkpoint.load(tmp_path / "split/checkpoint.npz")
    for k in a["params"]:
        assert np.array_equal(a["params"][k], b["params"][k])
    for k in a["opt_state"]:
        assert np.array_equal(a["opt_state"][k], b["opt_state"][k])
    assert a["rng"].bit_generator.state == b["rng"].bit_generator.state

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(read_log(tmp_path / "straight")) == strip(read_log(tmp_path / "split"))


def test_an_existing_run_is_neither_overwritten_nor_resumed_with_another_config(tmp_path):
    train(tmp_path, _config(iterations=2), progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tmp_path, _config(iterations=2), progress=False)
    with pytest.raises(ValueError, match="config differs"):
        train(tmp_path, _config(iterations=3), resume=True, progress=False)
    (tmp_path / "adaptation.png").write_bytes(b"old plot")
    (tmp_path / "notes.png").write_bytes(b"the user's own file")
    assert train(tmp_path, _config(iterations=3, seed=1), overwrite=True, progress=False).iteration == 3
    assert not (tmp_path / "adaptation.png").exists() and (tmp_path / "notes.png").exists()
    with pytest.raises(FileNotFoundError, match="resume needs a checkpoint"):
        train(tmp_path / "empty", resume=True, progress=False)


def _faulty(monkeypatch, bad_call, what):
    """Register "faulty": MAML whose meta_step returns a NaN loss or gradient at call ``bad_call``."""
    calls = []

    def meta_step(net, params, batch, config):
        calls.append(1)
        loss, grads = maml.meta_step(net, params, batch, config)
        if len(calls) == bad_call:
            if what == "loss":
                return float("nan"), grads
            grads = {k: np.where(np.arange(g.size) % 3 == 0, np.inf, g) for k, g in grads.items()}
        return loss, grads

    module = types.SimpleNamespace(NAME="faulty", Config=maml.Config, init_params=maml.init_params,
                                   meta_step=meta_step, predict=maml.predict)
    monkeypatch.setitem(registry.ALGORITHMS, "faulty", registry.Algorithm(module))


@pytest.mark.parametrize("what, named", [("loss", "the meta-loss is nan"),
                                         ("grad", "the meta-gradient 'theta' has")])
def test_a_non_finite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, what, named):
    _faulty(monkeypatch, bad_call=7, what=what)
    config = _config(algo="faulty", iterations=20)
    with pytest.raises(TrainingDiverged) as err:
        train(tmp_path, config, progress=False)
    message = str(err.value)
    assert "iteration 7" in message and named in message and "Hint" in message
    assert "checkpoint.npz (iteration 4)" in message
    _, params, iteration, _ = load_run(tmp_path)
    assert iteration == 4 and all(np.isfinite(p).all() for p in params.values())
    assert read_log(tmp_path)[-1]["kind"] == "diverged"


def test_clipping_bounds_each_sgd_update(tmp_path):
    config = _config(iterations=1, optimizer="sgd", outer_lr=0.5, clip_norm=1e-3, eval_every=0)
    train(tmp_path, config, progress=False)
    from tinymeta.train import init_state

    theta0 = init_state(config)[0]["theta"]
    theta1 = load_run(tmp_path)[1]["theta"]
    assert np.linalg.norm(theta1 - theta0) == pytest.approx(0.5 * 1e-3, rel=1e-9)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "tinymeta.cli", "train", "--out", str(run_dir), "--iterations", "100000",
               "--log-every", "1", "--eval-every", "0", "--checkpoint-every", "100000", "--hidden", "8",
               "--meta-batch", "2", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(r["kind"] == "train" for r in read_log(run_dir)
                                             if (run_dir / "log.jsonl").exists()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted at iteration" in stderr and "--resume" in stderr
    config, _, iteration, _ = load_run(run_dir)
    assert 1 <= iteration < config.iterations
    logged = [r["iteration"] for r in read_log(run_dir) if r["kind"] == "train"]
    assert logged[-1] == iteration
    assert os.listdir(run_dir).count("checkpoint.npz") == 1


def test_an_algorithm_error_stops_training_with_the_iteration_and_the_checkpoint(tmp_path, monkeypatch):
    calls = []

    def meta_step(net, params, batch, config):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("the inner solver did not converge")
        return maml.meta_step(net, params, batch, config)

    module = types.SimpleNamespace(**{**vars(maml), "meta_step": meta_step})
    monkeypatch.setitem(registry.ALGORITHMS, "flaky", registry.Algorithm(module))
    with pytest.raises(TrainingStopped, match="iteration 6: flaky's meta_step raised RuntimeError: the inner "
                                              "solver did not converge. Last good checkpoint: .*iteration 4"):
        train(tmp_path, _config(algo="flaky", iterations=20), progress=False)
    assert load_run(tmp_path)[2] == 4 and read_log(tmp_path)[-1]["kind"] == "stopped"


def test_should_stop_checkpoints_and_returns_interrupted_then_resumes(tmp_path):
    calls = []
    result = train(tmp_path, _config(iterations=10), progress=False,
                   should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert result.status == "interrupted" and result.iteration == 3 and load_run(tmp_path)[2] == 3
    assert train(tmp_path, resume=True, progress=False).iteration == 10
