"""Determinism: the same seed gives bit-identical training with 1 and 2 threads, run after run.

Each run is a fresh process (thread counts are fixed when Numba and BLAS
start): ``NUMBA_NUM_THREADS`` and the BLAS thread variables set to 1 or 2.
Within a backend every run must give the same bits; between backends
(Numba kernels against the NumPy reference) the summation order differs, so
results agree to rounding only -- the test measures by how much and bounds
it (RELIABILITY.md records the measured value).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 40
SCRIPT = """
import sys, tempfile
import numpy as np
from tinymeta.config import TrainConfig
from tinymeta.train import train
config = TrainConfig(algo=sys.argv[1], backend=sys.argv[2], hidden=(16, 16), meta_batch=4, iterations={it},
                     eval_every=0, log_every={it}, checkpoint_every={it}, val_tasks=3, seed=11)
with tempfile.TemporaryDirectory() as d:
    result = train(d, config, progress=False)
np.save(sys.stdout.buffer, np.concatenate([result.params[k].ravel() for k in sorted(result.params)]))
""".format(it=ITERATIONS)
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Numba kernels against the NumPy reference after ITERATIONS Adam steps, float64: measured 1.2e-16 relative
# (rounding in different summation orders); the bound leaves room for growth over longer runs.
BACKEND_REL_TOL = 1e-10


def _final_params(algo, backend, threads):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **{v: str(threads) for v in THREAD_VARIABLES}}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, algo, backend], capture_output=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    import io

    return np.load(io.BytesIO(proc.stdout), allow_pickle=False)  # noqa: the import is local to this helper


@pytest.fixture(scope="module")
def runs():
    """Final parameters of MAML (exact second order) per (backend, threads), one process each."""
    return {(b, t): _final_params("maml", b, t) for b in ("numba", "numpy") for t in (1, 2)}


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_one_and_two_threads_give_bit_identical_parameters(runs, backend):
    one, two = runs[(backend, 1)], runs[(backend, 2)]
    assert one.shape == two.shape and np.isfinite(one).all()
    assert one.tobytes() == two.tobytes(), f"{backend}: max |diff| {np.abs(one - two).max():.3g}"


def test_a_second_run_in_this_process_gives_the_same_bits(runs):
    from tinymeta.config import TrainConfig
    from tinymeta.train import train

    import tempfile

    config = TrainConfig(algo="maml", backend="numba", hidden=(16, 16), meta_batch=4, iterations=ITERATIONS,
                         eval_every=0, log_every=ITERATIONS, checkpoint_every=ITERATIONS, val_tasks=3, seed=11)
    with tempfile.TemporaryDirectory() as d:
        theta = train(d, config, progress=False).params["theta"]
    assert theta.tobytes() == runs[("numba", 1)].tobytes()


def test_backends_differ_only_by_rounding(runs):
    a, b = runs[("numba", 1)], runs[("numpy", 1)]
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    print(f"numba vs numpy after {ITERATIONS} MAML iterations: relative difference {rel:.3g}, "
          f"max |diff| {np.abs(a - b).max():.3g}")
    assert rel <= BACKEND_REL_TOL
