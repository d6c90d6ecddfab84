"""``make bench``: tinymeta against PyTorch and JAX, side by side, in one run; writes BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--workloads 'sinusoid-*' ...] [--libraries tinymeta torch jax]
                             [--dtypes float32 float64] [--threads 1 2] [--rounds 2] [--output BENCHMARKS.md]

One run: measure the machine's matmul peak (``peak.py``), then start one
worker process per (thread count, library) (``worker.py``) with its thread
environment (``--rounds N``: N per library, in alternating order, their repeats
pooled), gather the timings and float64 meta-gradients, check that the
gradients agree (``agreement.py``), and write the report (``report.py``)
and the raw results (``--json``). Exits 1 when a gradient disagrees or a
cell fails, after writing the report, so that ``make bench`` fails loudly.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import agreement, files, machine, peak, report, timing
from .workloads import WORKLOADS, select

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("tinymeta", "torch", "jax")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
WORKER_TIMEOUT_S = 1800


def worker_environment(library: str, threads: int, base=None, coretype=None) -> dict:
    """The environment of the worker for ``library`` at ``threads`` threads.

    Every worker: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
    ``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` = ``threads``; JAX's worker
    also ``JAX_PLATFORMS=cpu``, ``JAX_ENABLE_X64=1`` and, for one thread,
    ``XLA_FLAGS`` (``peer_jax.environment``). ``OPENBLAS_CORETYPE`` is
    ``coretype`` if given (``--openblas-coretype``), else whatever the
    caller set, untouched. Only NumPy's OpenBLAS reads it: tinymeta's BLAS
    products; PyTorch and JAX choose their own kernels.
    """
    from . import peer_jax

    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    if library == "jax":
        env.update(peer_jax.environment(threads))
    return env


def write_worker_config(path, workloads, dtypes, seed, settings):
    """The JSON file every worker reads (``benchmarks.worker --config``)."""
    Path(path).write_text(json.dumps({"workloads": [w.name for w in workloads], "dtypes": list(dtypes),
                                      "seed": seed, "settings": settings.__dict__}))


def run_worker(library, threads, config_path, out_prefix, coretype=None, tree=ROOT, env=None):
    """Start one worker, stream its progress, and return its report (or an error record).

    The worker runs in ``tree`` and imports the ``tinymeta`` found there (``benchmarks.ab`` passes
    another revision's); ``env`` updates its environment, a value of None removing the variable."""
    cmd = [sys.executable, "-m", "benchmarks.worker", "--library", library, "--threads", str(threads),
           "--config", str(config_path), "--out", str(out_prefix)]
    print(f"[bench] {library} with {threads} thread(s)", file=sys.stderr, flush=True)
    environment = worker_environment(library, threads, coretype=coretype)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=environment, timeout=WORKER_TIMEOUT_S)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    json_path = Path(str(out_prefix) + ".json")
    if code != 0 or not json_path.exists():
        return {"library": library, "threads": threads, "status": "error",
                "note": f"worker exited with {code}; see the output above"}, {}
    result = json.loads(json_path.read_text())
    result["wall_s"] = time.perf_counter() - t0
    npz = Path(str(out_prefix) + ".npz")
    grads = {}
    if npz.exists():
        with np.load(npz, allow_pickle=False) as data:
            grads = {k: data[k] for k in data.files}
    return result, grads


def worker_order(libraries, rounds):
    """The order the workers of one thread count run in: the libraries, then (from the second round)
    reversed, forward, ... -- A B C C B A for two rounds, so that a load drifting during the run
    weighs on every library alike."""
    return [lib for r in range(rounds) for lib in (libraries if r % 2 == 0 else libraries[::-1])]


def merge_rounds(results: list) -> dict:
    """One worker record from the records of its rounds: each cell's timing pools the repeats of
    every round (``timing.summarise``); a round that failed, or a cell that did not run in every
    round, makes the record (or the cell) the failing one."""
    failed = [r for r in results if r.get("status") != "ok"]
    if failed or len(results) == 1:
        return failed[0] if failed else results[0]
    merged = {**results[0], "rounds": len(results), "wall_s": sum(r.get("wall_s", 0.0) for r in results)}
    cells = []
    for group in zip(*(r["cells"] for r in results)):
        bad = [c for c in group if c.get("status") != "ok" or "timing" not in c]
        if bad:
            cells.append(bad[0])
            continue
        samples = [x for c in group for x in c["timing"]["samples"]]
        cells.append({**group[0], "timing": timing.summarise(samples, [c["timing"]["cpu_per_wall"] for c in group],
                                                             sum(c["timing"]["number"] for c in group))})
    merged["cells"] = cells
    return merged


def measure_peaks(threads_list, quick, flags):
    """Matmul GFLOP/s for each thread count, with OpenBLAS's own kernel choice and each forced one."""
    n, repeats = (1024, 3) if quick else (2048, 5)
    rows = []
    for threads in threads_list:
        for coretype in [None] + peak.candidate_coretypes(flags):
            print(f"[bench] matmul peak: {threads} thread(s), OPENBLAS_CORETYPE={coretype or '(not set)'}",
                  file=sys.stderr, flush=True)
            rows.append(peak.measure(threads, coretype, n=n, repeats=repeats))
    return rows


def check_agreement(workers, grads_by_worker, workload_names):
    """Agreement rows for every (workload, thread count) with at least two float64 gradients."""
    rows = []
    threads_list = sorted({w["threads"] for w in workers})
    for threads in threads_list:
        for name in workload_names:
            results = {}
            for w, grads in zip(workers, grads_by_worker):
                if w["threads"] != threads or w.get("status") != "ok":
                    continue
                for cell in w["cells"]:
                    key = f"{cell['impl']}__{name}"
                    if cell["workload"] == name and cell["dtype"] == "float64" and key in grads:
                        results[cell["impl"]] = (cell.get("loss"), grads[key])
            rows += [{"workload": name, "threads": threads, **row} for row in agreement.compare(results)]
    return rows


def failures_of(workers, agreement_rows):
    """Human-readable list of everything that must fail the run."""
    out = []
    for w in workers:
        if w.get("status") == "error":
            out.append(f"{w['library']} worker ({w['threads']} thread(s)) failed: {w.get('note')}")
        for cell in w.get("cells", []):
            if cell["status"] == "error":
                out.append(f"{cell['impl']} {cell['workload']} {cell['dtype']} {w['threads']}t: {cell['note']}")
    for row in agreement_rows:
        if not row["passed"]:
            out.append(f"meta-gradient disagreement: {row['impl']} vs {row['reference']} on {row['workload']} "
                       f"({row['threads']} thread(s)): rel. error {row['grad_rel_error']:.2e} "
                       f"(loss {row['loss_rel_error']}) > {agreement.TOLERANCE:.0e}")
    return out


def previous_peak(path) -> dict | None:
    """``{"date", "float32", "float64", "cpu"}``: the best one-thread matmul GFLOP/s of the full run whose
    raw results ``path`` holds (the one this run replaces), and its CPU (``machine.cpu_name``, None if
    not recorded), for the report to compare with this run's. None when there is no such file, it
    cannot be read, or it is a ``--quick`` run (a small matmul)."""
    try:
        old = json.loads(Path(path).read_text())
        if old["quick"]:
            return None
        rows = [p["gflops"] for p in old["peaks"] if p.get("threads") == 1 and "gflops" in p]
        best = {dtype: max(float(r[dtype]) for r in rows) for dtype in ("float32", "float64")}
        return {"date": old["date"], **best, "cpu": machine.cpu_name(old.get("machine"))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings, small peak matmul: checks the harness")
    parser.add_argument("--workloads", nargs="+", default=None, metavar="PATTERN",
                        help="shell patterns over: " + " ".join(w.name for w in WORKLOADS))
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every library's worker this many times, in alternating order (A B C C B A "
                             "for 2), and pool their repeats: ratios robust to a load that drifts (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--openblas-coretype", default=None, choices=sorted(peak.CORETYPES), metavar="FAMILY",
                        help="OPENBLAS_CORETYPE for the workers (NumPy's OpenBLAS: tinymeta's BLAS products), "
                             f"one of {', '.join(sorted(peak.CORETYPES))}; default: the caller's environment. "
                             "The report's matmul peak table shows what each family reaches here")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "last_run.json"),
                        help="raw results (timings, agreement, machine); '' for none")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    usable = len(os.sched_getaffinity(0))
    if any(t < 1 or t > usable for t in args.threads):
        parser.error(f"--threads must lie in 1..{usable} (the CPUs this process may use), got {args.threads}")
    if args.openblas_coretype and args.openblas_coretype not in peak.candidate_coretypes(machine.describe()["all_flags"]):
        parser.error(f"--openblas-coretype {args.openblas_coretype} needs instructions this CPU lacks "
                     f"({' '.join(sorted(peak.CORETYPES[args.openblas_coretype]))}); OpenBLAS would die of SIGILL")
    try:
        args.selected = select(args.workloads)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = timing.QUICK if args.quick else timing.FULL
    started = dt.datetime.now(dt.timezone.utc)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv)
    if os.environ.get("MAKELEVEL"):
        command = f"make bench BENCH_ARGS={shlex.quote(' '.join(argv))}  ->  {command}" if argv else \
            f"make bench  ->  {command}"
    info = machine.describe()
    previous = previous_peak(args.json) if args.json else None
    peaks = measure_peaks(args.threads, args.quick, info["all_flags"])
    workers, grads = [], []
    with tempfile.TemporaryDirectory(prefix="tinymeta-bench-") as tmp:
        config = Path(tmp) / "config.json"
        write_worker_config(config, args.selected, args.dtypes, args.seed, settings)
        for threads in args.threads:
            runs = {library: [] for library in args.libraries}
            for k, library in enumerate(worker_order(args.libraries, args.rounds)):
                runs[library].append(run_worker(library, threads, config, Path(tmp) / f"{library}-{threads}-{k}",
                                                coretype=args.openblas_coretype))
            for library in args.libraries:  # the gradients do not depend on the round: the first is kept
                workers.append(merge_rounds([result for result, _ in runs[library]]))
                grads.append(runs[library][0][1])
    names = [w.name for w in args.selected]
    agree = check_agreement(workers, grads, names)
    failures = failures_of(workers, agree)
    results = {"date": started.isoformat(timespec="seconds"), "command": command, "quick": args.quick,
               "settings": settings.__dict__, "seed": args.seed, "rounds": args.rounds,
               "worker_order": worker_order(args.libraries, args.rounds), "dtypes": args.dtypes,
               "threads": args.threads,
               "libraries": args.libraries, "workloads": names, "machine": info, "peaks": peaks,
               "previous_peak": previous, "workers": workers, "agreement": agree, "failures": failures,
               "elapsed_s": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
               "thread_environment": {name: "<threads>" for name in THREAD_VARIABLES}
               | {"OPENBLAS_CORETYPE": args.openblas_coretype or os.environ.get("OPENBLAS_CORETYPE", "(not set)")}}
    files.write_text(args.output, report.render(results))
    if args.json:
        slim = {**results, "machine": {k: v for k, v in info.items() if k != "all_flags"}}
        files.write_text(args.json, json.dumps(slim, indent=1) + "\n")
    print(f"[bench] wrote {args.output} in {results['elapsed_s']:.0f} s", file=sys.stderr)
    if failures:
        print("\n" + "!" * 72 + "\n[bench] FAILED:\n  " + "\n  ".join(failures) + "\n" + "!" * 72, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
