"""tinymeta's benchmark suite: tinymeta against PyTorch (eager, torch.func) and JAX, side by side.

Run ``make bench`` (or ``python -m benchmarks.run --help``); it writes
BENCHMARKS.md. Not part of the ``tinymeta`` package: the package never
imports it, and PyTorch and JAX stay optional (``pip install -e '.[bench]'``).

Modules: ``workloads`` (what is timed, same inputs for all), ``flops``
(analytic counts), ``tinymeta_side``, ``peer_torch``, ``peer_jax`` (one
meta-iteration each), ``timing``, ``agreement`` (float64 meta-gradients must
agree), ``peak`` (matmul peak), ``machine``, ``worker`` (one library at one
thread count, in its own process), ``run`` (the command), ``report``
(BENCHMARKS.md), ``files`` (atomic writes).
"""
