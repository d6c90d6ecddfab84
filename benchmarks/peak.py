"""This machine's matmul peak: large float32 and float64 ``A @ B`` with NumPy's BLAS.

Each measurement runs in its own process (``python -m benchmarks.peak``),
pinned to ``threads`` CPUs with ``OPENBLAS_NUM_THREADS=threads``, because
OpenBLAS reads its thread count and picks its kernel family
(``OPENBLAS_CORETYPE``: Haswell, Zen, SkylakeX, ...) once, when it starts.
We measure the family OpenBLAS picks by itself, and each family the CPU's
flags allow, and report them all; the best is the peak that GFLOP/s are
compared with. ``OPENBLAS_CORETYPE`` is set only in these measurement
processes, never where a benchmark runs, so no numerical result depends on
it. GFLOP/s = ``2 n^3 / t`` for the best of ``repeats`` products.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# OpenBLAS core types worth trying, and the CPU flags each needs (a wrong one dies of SIGILL).
CORETYPES = {"Haswell": {"avx2", "fma"}, "Zen": {"avx2", "fma"},
             "SkylakeX": {"avx512f", "avx512bw", "avx512dq", "avx512vl"},
             "Cooperlake": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}}


def candidate_coretypes(flags) -> list:
    """The ``OPENBLAS_CORETYPE`` values whose instructions this CPU has."""
    return [name for name, needs in CORETYPES.items() if needs <= set(flags)]


def matmul_gflops(n: int, repeats: int) -> dict:
    """Best-of-``repeats`` GFLOP/s of an ``(n, n) @ (n, n)`` product, float32 and float64."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for dtype in ("float32", "float64"):
        A, B = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
        C = np.empty((n, n), dtype)
        np.matmul(A, B, out=C)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(A, B, out=C)
            best = min(best, time.perf_counter() - t0)
        out[dtype] = 2.0 * n ** 3 / best / 1e9
    return out


def measure(threads: int, coretype=None, n=2048, repeats=5, timeout=120) -> dict:
    """Run ``matmul_gflops`` in a fresh process with ``threads`` BLAS threads and ``coretype`` forced (or not)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    cmd = [sys.executable, "-m", "benchmarks.peak", "--threads", str(threads), "--n", str(n),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    record = {"threads": threads, "coretype_forced": coretype, "n": n}
    if proc.returncode != 0:
        return {**record, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return {**record, **json.loads(proc.stdout)}


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="matmul GFLOP/s in this process")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    result = {"gflops": matmul_gflops(args.n, args.repeats)}
    try:
        from threadpoolctl import threadpool_info

        blas = [d for d in threadpool_info() if d.get("user_api") == "blas"]
        result["openblas_coretype"] = blas[0].get("architecture") if blas else None
        result["blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')}" if blas else None
    except ImportError:
        result["openblas_coretype"] = "unknown (threadpoolctl not installed)"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
