"""First-call time of the compiled meta-batch entry points: cold (empty Numba cache) or warm.

    python -m benchmarks.compile_times

Run it twice from a fresh copy of the repository (no ``__pycache__``): the
first run compiles and caches the kernels (cold), the second loads them
(warm). The engine's own kernels (``net.loss_and_grad``, ``net.hvp``) are
called first and not timed, so the times are those of the meta-batch
kernels (``tinymeta/nn/meta_kernels.py``) on the sinusoid net.
"""
from __future__ import annotations

import time

import numpy as np


def main():
    import tinymeta as tm
    from tinymeta.algorithms import meta_batch

    rng = np.random.default_rng(0)
    for dtype in ("float64", "float32"):
        net = tm.MLP([1, 40, 40, 1], dtype=dtype)
        theta = net.init(rng)
        step = np.full_like(theta, 0.01)
        batch = tm.TaskBatch(*(rng.standard_normal((25, 10, 1)).astype(dtype) for _ in range(4)))
        net.loss_and_grad(theta, batch.X_support[0], batch.y_support[0])
        net.hvp(theta, batch.X_support[0], batch.y_support[0], theta)
        calls = {
            "meta_loss_and_grad": lambda: meta_batch.meta_loss_and_grad(net, theta, batch, step, 1),
            "predictions": lambda: meta_batch.predictions(net, theta, batch.X_support, batch.y_support,
                                                          batch.X_query, step, 2),
            "batched_adapt": lambda: meta_batch.batched_adapt(net, theta, batch.X_support, batch.y_support, step, 2),
        }
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            print(f"{dtype} {name}: first call {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
