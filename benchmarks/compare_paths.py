"""The meta-batch paths of the gradient-based family against each other, in one process.

    NUMBA_NUM_THREADS=1 python -m benchmarks.compare_paths [--net NAME] [--steps K]
        [--first-order] [--dtype float64|float32] [--predictions]

Times, on the same meta-batch, the compiled per-task path
(``meta_batch.meta_loss_and_grad``, without the gradient wrt the step
sizes, as MAML calls it), the stacked low-rank path
(``low_rank.meta_loss_and_grad``, for ``--steps`` 1 or more, whatever
``low_rank.applies`` would choose) and the per-task reference loop
(``inner_loop.reference_meta_loss_and_grad``) with ``timing.measure``
(medians over repeats), alternating them so that a change of machine load
hits all. ``sinusoid``: 25 tasks, 10 support and
10 query points, 1-40-40-1, mse, step 0.01 (Finn et al. 2017, section 5.1).
``omniglot``: 32 tasks, 5-way 1-shot, 15 queries per class, 784-256-128-64-64-5,
xent, step 0.4 (random data of that shape); ``omniglot-q5``: the same with 5
queries per class; ``omniglot-20w1s``: 16 tasks, 20-way 1-shot, 1 query per
class, step 0.1 (Finn et al.'s 20-way settings; use ``--steps 5``);
``omniglot-eval``: 50 tasks, 5-way 1-shot, 15 queries per class, step 0.01
(a chunk of the evaluation's episodes; with random inputs a larger step
makes tasks diverge, whose predictions the low-rank path computes again).

``--predictions`` times the evaluation's call instead (``inner_loop.predictions``
of every task after ``0..K`` steps): ``meta_batch.predictions``,
``low_rank.predictions`` and the reference loop (``reference_predictions``
task by task), and says how many tasks diverged.
"""
from __future__ import annotations

import argparse

import numpy as np

from . import timing

NETS = {  # sizes, loss, tasks, support rows, query rows, inner step
    "sinusoid": ((1, 40, 40, 1), "mse", 25, 10, 10, 0.01),
    "omniglot": ((784, 256, 128, 64, 64, 5), "xent", 32, 5, 75, 0.4),
    "omniglot-q5": ((784, 256, 128, 64, 64, 5), "xent", 32, 5, 25, 0.4),
    "omniglot-20w1s": ((784, 256, 128, 64, 64, 20), "xent", 16, 20, 20, 0.1),
    "omniglot-eval": ((784, 256, 128, 64, 64, 5), "xent", 50, 5, 75, 0.01),
}


def problem(name, dtype, rng):
    """``(net, theta, batch, precond)`` for one of ``NETS``."""
    import tinymeta as tm

    sizes, loss, T, n, q, step = NETS[name]
    net = tm.MLP(sizes, loss=loss, dtype=dtype)
    theta = net.init(rng)

    def targets(rows):
        if loss == "xent":
            return rng.integers(0, sizes[-1], (T, rows))
        return rng.standard_normal((T, rows, sizes[-1])).astype(dtype)
    batch = tm.TaskBatch(rng.standard_normal((T, n, sizes[0])).astype(dtype), targets(n),
                         rng.standard_normal((T, q, sizes[0])).astype(dtype), targets(q))
    return net, theta, batch, np.full_like(theta, step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="sinusoid")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--predictions", action="store_true", help="time the evaluation's predictions")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two paths")
    args = parser.parse_args(argv)
    import numba

    from tinymeta.algorithms import inner_loop, low_rank, meta_batch

    net, theta, batch, precond = problem(args.net, args.dtype, np.random.default_rng(0))
    K, first_order = args.steps, args.first_order
    if args.predictions:
        data = (batch.X_support, batch.y_support, batch.X_query, precond, K)
        paths = {"compiled": lambda: meta_batch.predictions(net, theta, *data)}
        if K >= 1:
            paths["low-rank"] = lambda: low_rank.predictions(net, theta, *data)
        paths["reference"] = lambda: np.stack([inner_loop.reference_predictions(
            net, theta, *(a[i] for a in data[:3]), precond, K) for i in range(batch.n_tasks)])
        diverged = np.isnan(paths["compiled"]()[:, -1]).any(axis=(1, 2)).sum()
        print(f"predictions after 0..{K} steps; tasks that diverge: {diverged} of {batch.n_tasks}")
    else:
        paths = {"compiled": lambda: meta_batch.meta_loss_and_grad(net, theta, batch, precond, K, first_order,
                                                                   False)}
        if K >= 1:
            paths["low-rank"] = lambda: low_rank.meta_loss_and_grad(net, theta, batch, precond, K, first_order)
        paths["reference"] = lambda: inner_loop.reference_meta_loss_and_grad(net, theta, batch, precond, K,
                                                                             first_order)
    medians = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            _, summary = timing.measure(fn)
            medians[name].append(summary["median"] * 1e6)
    print(f"{args.net} K={args.steps} first_order={args.first_order} {args.dtype} "
          f"numba threads={numba.get_num_threads()}")
    for name, values in medians.items():
        print(f"  {name:9s} median of round medians {np.median(values):12,.0f} us   rounds: "
              + ", ".join(f"{v:,.0f}" for v in values))
    for name in paths:
        if name != "reference":
            print(f"  {name} speed-up over the reference "
                  f"{np.median(medians['reference']) / np.median(medians[name]):.1f}x")


if __name__ == "__main__":
    main()
