"""One library at one thread count, in its own process (``python -m benchmarks.worker``).

The parent (``benchmarks.run``) starts one worker per (library, threads)
with the thread environment already set (``run.worker_environment``); the
worker pins itself to the first ``threads`` CPUs it may use, before
importing anything that starts threads, then times every selected
(workload, dtype, implementation) cell and writes

* ``<out>.json``: library versions, how threads were controlled, one record
  per cell (status, timing summary, loss);
* ``<out>.npz``: the float64 meta-gradients, keyed ``<impl>__<workload>``,
  for the agreement check.

A library that is not installed writes ``status: "not installed"`` and
exits 0: the peers are optional.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

LIBRARIES = {"tinymeta": "benchmarks.tinymeta_side", "torch": "benchmarks.peer_torch", "jax": "benchmarks.peer_jax"}
INSTALL_HINT = {"torch": "pip install torch==2.13.0", "jax": "pip install jax jaxlib", "tinymeta": "pip install -e ."}


def pin(threads: int) -> list:
    """Restrict this process to the first ``threads`` CPUs of its current affinity; the CPUs kept."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads > len(allowed):
        raise ValueError(f"threads must be <= the {len(allowed)} CPUs this process may use, got {threads}")
    os.sched_setaffinity(0, allowed[:threads])
    return allowed[:threads]


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return [{k: d.get(k) for k in ("internal_api", "prefix", "version", "architecture", "num_threads")}
            for d in threadpool_info()]


def run_cells(side, workloads, dtypes, settings, seed):
    """Time every (workload, dtype, impl) cell of one library module; records and float64 gradients."""
    from . import timing
    from .workloads import inputs_for

    records, grads = [], {}
    for workload in workloads:
        inputs64 = inputs_for(workload, seed)
        for dtype in dtypes:
            inputs = inputs64.astype(dtype)
            for impl in side.IMPLS:
                record = {"impl": impl, "workload": workload.name, "dtype": dtype}
                try:
                    prepared = side.prepare(impl, workload, inputs)
                    first, summary = timing.measure(prepared.step, settings)
                    loss, grad = prepared.result(first)
                    record.update(status="ok", timing=summary, loss=loss)
                    if dtype == "float64":
                        grads[f"{impl}__{workload.name}"] = grad
                except Exception as exc:  # noqa: BLE001 -- reported in the table, and fails the run
                    unavailable = type(exc).__name__ == "Unavailable"
                    record.update(status="unavailable" if unavailable else "error", note=str(exc).splitlines()[0]
                                  if unavailable else "".join(traceback.format_exception_only(exc)).strip())
                    if not unavailable:
                        traceback.print_exc()
                records.append(record)
                print(f"  {side.NAME:8s} {impl:12s} {workload.name:22s} {dtype}: "
                      + (f"{record['timing']['median'] * 1e6:10.1f} us" if record["status"] == "ok"
                         else record["status"]), file=sys.stderr, flush=True)
    return records, grads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True, choices=sorted(LIBRARIES))
    parser.add_argument("--threads", required=True, type=int)
    parser.add_argument("--config", required=True, help="JSON: workloads, dtypes, seed, settings")
    parser.add_argument("--out", required=True, help="output prefix (.json and .npz are added)")
    args = parser.parse_args(argv)
    cpus = pin(args.threads)

    import numpy as np

    from . import files, timing
    from .workloads import select

    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    report = {"library": args.library, "threads": args.threads, "cpus": cpus}
    side = importlib.import_module(LIBRARIES[args.library])
    try:
        report.update(side.load(args.threads))
    except ImportError as exc:
        report.update(status="not installed", note=f"{args.library} not installed ({exc}); "
                                                   f"`{INSTALL_HINT[args.library]}` or `make bench`")
        files.write_text(args.out + ".json", json.dumps(report, indent=1))
        return 0
    settings = timing.Settings(**config["settings"])
    records, grads = run_cells(side, select(config["workloads"]), config["dtypes"], settings, config["seed"])
    report.update(status="ok", cells=records, blas=_blas_info())
    if args.library == "tinymeta":
        import numba
        try:
            report["numba_threading_layer"] = numba.threading_layer()
        except ValueError:
            report["numba_threading_layer"] = "none used (no parallel region ran)"
    files.write_npz(args.out + ".npz", {k: np.asarray(v, np.float64) for k, v in grads.items()})
    files.write_text(args.out + ".json", json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
