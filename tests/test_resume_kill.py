"""Interrupted training loses at most one checkpoint interval and resumes bit for bit.

Each test runs ``python -m tinymeta.cli train`` as a subprocess, interrupts it
at a random iteration (SIGKILL: no chance to clean up; SIGINT: must save a
checkpoint first), resumes it with ``--resume`` until it finishes, and
compares the final checkpoint with an uninterrupted run of the same seed:
parameters, optimizer state and generator state must be bit-identical.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinymeta import checkpoint
from tinymeta.config import TrainConfig
from tinymeta.train import CHECKPOINT, read_log, train

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS, EVERY = 300, 20
SETTINGS = ["--iterations", str(ITERATIONS), "--checkpoint-every", str(EVERY), "--hidden", "16", "--meta-batch", "4",
            "--log-every", "1", "--eval-every", "50", "--val-tasks", "5", "--eval-tasks", "10", "--seed", "3"]
FLAGS = ["--no-progress", "--no-plots"]
TIMEOUT = 120  # seconds a subprocess may take before the test gives up (a hang, not a timing assertion)
KILLS = 2  # interruptions per run (SIGKILL test)
RUN_FILES = {"checkpoint.npz", "config.json", "log.jsonl", "eval_5shot.json"}


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _command(run_dir, resume=False):
    head = [sys.executable, "-m", "tinymeta.cli", "train", "--out", str(run_dir)]
    return head + FLAGS + (["--resume"] if resume else SETTINGS)


def _run(command):
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc


def _last_iteration(run_dir):
    """The iteration of the last complete record of the log (a cheap look at its tail), 0 if none."""
    try:
        with open(run_dir / "log.jsonl", "rb") as f:
            start = max(0, f.seek(0, os.SEEK_END) - 4096)
            f.seek(start)
            lines = f.read().decode(errors="replace").split("\n")
    except FileNotFoundError:
        return 0
    whole = lines[1 if start else 0:-1]  # the first may be cut by the window, the last torn by the writer
    return json.loads(whole[-1])["iteration"] if whole else 0


def _interrupt(command, run_dir, at, sig):
    """Start ``command``, send ``sig`` once the log reaches iteration ``at``; ``(returncode, stderr, logged)``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.poll() is None and _last_iteration(run_dir) < at:
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.005)
        logged = _last_iteration(run_dir)
        if proc.poll() is None:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr, logged


def _assert_same_final_state(a_dir, b_dir):
    a, b = checkpoint.load(a_dir / CHECKPOINT), checkpoint.load(b_dir / CHECKPOINT)
    assert a["scalars"]["iteration"] == b["scalars"]["iteration"] == ITERATIONS
    assert a["params"].keys() == b["params"].keys() and a["opt_state"].keys() == b["opt_state"].keys()
    for k in a["params"]:
        assert a["params"][k].tobytes() == b["params"][k].tobytes(), k  # bit-identical, not just close
    for k in a["opt_state"]:
        assert np.array_equal(a["opt_state"][k], b["opt_state"][k]), k
    assert a["rng"].bit_generator.state == b["rng"].bit_generator.state

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(read_log(a_dir)) == strip(read_log(b_dir))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of the same configuration, in this process (the command builds the same
    TrainConfig): the reference every interrupted run must equal."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    options = dict(zip(SETTINGS[::2], SETTINGS[1::2]))
    config = TrainConfig(hidden=(int(options["--hidden"]),), **{
        name[2:].replace("-", "_"): int(value) for name, value in options.items() if name != "--hidden"})
    assert train(run_dir, config, progress=False).iteration == ITERATIONS
    return run_dir


def test_sigkill_at_random_moments_loses_at_most_one_interval_and_resumes_bit_identically(straight, tmp_path):
    rng = np.random.default_rng(20261201)
    run_dir = tmp_path / "run"
    targets = np.sort(rng.choice(np.arange(1, ITERATIONS - 2 * EVERY), KILLS, replace=False))
    command, killed = _command(run_dir), 0
    for at in targets:
        returncode, stderr, logged = _interrupt(command, run_dir, int(at), signal.SIGKILL)
        if returncode != -signal.SIGKILL:  # finished before the signal landed: nothing left to interrupt
            assert returncode == 0, stderr
            break
        killed += 1
        if not (run_dir / CHECKPOINT).exists():  # killed before the first checkpoint: start afresh
            assert logged < EVERY
            command = _command(run_dir) + ["--overwrite"]
            continue
        saved = checkpoint.load(run_dir / CHECKPOINT)["scalars"]["iteration"]  # a whole, loadable file
        assert saved % EVERY == 0 and logged - saved <= EVERY, (logged, saved)  # at most one interval lost
        command = _command(run_dir, resume=True)
    assert killed >= 1, "no kill landed before training finished"
    _run(_command(run_dir, resume=True))
    assert {p.name for p in run_dir.iterdir()} <= RUN_FILES  # no stale temporary survives the resume
    _assert_same_final_state(straight, run_dir)


@pytest.mark.parametrize("signum, code, words", [(signal.SIGINT, 130, "interrupted at iteration"),
                                                  (signal.SIGTERM, 143, "interrupted by SIGTERM at iteration")])
def test_sigint_or_sigterm_saves_the_current_iteration_and_resumes_bit_identically(straight, tmp_path, signum,
                                                                                     code, words):
    run_dir = tmp_path / "run"
    at = int(np.random.default_rng(7 + signum).integers(EVERY + 1, ITERATIONS - 2 * EVERY))
    returncode, stderr, logged = _interrupt(_command(run_dir), run_dir, at, signum)
    assert returncode == code, stderr
    assert words in stderr and "--resume" in stderr
    saved = checkpoint.load(run_dir / CHECKPOINT)["scalars"]["iteration"]
    assert saved >= logged and saved == _last_iteration(run_dir)  # nothing lost: the stop iteration is saved
    assert {p.name for p in run_dir.iterdir()} <= RUN_FILES
    _run(_command(run_dir, resume=True))
    _assert_same_final_state(straight, run_dir)


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    """A kill in the middle of a log write leaves a partial last line; resuming must not trip on it."""
    config = TrainConfig(hidden=(8,), meta_batch=3, shots=4, query=5, eval_shots=3, eval_steps=2, val_tasks=5,
                         eval_tasks=10, log_every=1, eval_every=3, checkpoint_every=4, iterations=10)
    train(tmp_path / "straight", config, progress=False)
    train(tmp_path / "split", config, until=6, progress=False)
    with open(tmp_path / "split" / "log.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "iteration": ')  # what a kill mid-write leaves behind
    assert read_log(tmp_path / "split")[-1]["iteration"] == 6
    train(tmp_path / "split", resume=True, progress=False)
    assert all(json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines())
    a = checkpoint.load(tmp_path / "straight" / CHECKPOINT)["params"]["theta"]
    b = checkpoint.load(tmp_path / "split" / CHECKPOINT)["params"]["theta"]
    assert a.tobytes() == b.tobytes()


def test_a_corrupted_log_line_in_the_middle_is_reported(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"kind": "train", "iteration": 1}\nnot json\n{"kind": "train", "iteration": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON record"):
        read_log(tmp_path)


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".checkpoint.npz.{dead_pid}.0a1b2c3d.tmp"
    live = tmp_path / f".checkpoint.npz.{os.getppid()}.0a1b2c3d.tmp"  # our parent is alive
    other = tmp_path / ".notes.txt.1.0a1b2c3d.tmp"  # not one of the targets: never touched
    for p in (stale, live, other):
        p.write_bytes(b"half a file")
    removed = checkpoint.remove_stale_temporaries(tmp_path, ["checkpoint.npz"])
    assert removed == [str(stale)] and not stale.exists() and live.exists() and other.exists()
