"""Two revisions of tinymeta against each other on the benchmark workloads, one process at a time.

    python -m benchmarks.ab BASE [NEW] [--workloads PATTERN ...] [--dtypes ...] [--threads N]
        [--alternations K] [--quick]

``BASE`` and ``NEW`` are git revisions; ``NEW`` defaults to ``.``, the working
tree with its uncommitted changes. Each side's ``tinymeta/`` goes into a
temporary folder beside a copy of the current ``benchmarks/`` (so that only
the library differs), with a Numba cache of its own, and the two sides'
workers (``benchmarks.worker``, tinymeta alone) run one after the other,
``K`` times each, in the order A B B A A B ...: a machine whose speed drifts
weighs on both sides alike. This machine's speed drifts by 20-50% within
minutes, more than most single changes gain, so a change is kept when this
says it pays, not when one run of each side says so.

For every workload and dtype it prints each side's best and median time
(over the repeats of all its workers), NEW / BASE for both, and in how many
of the ``K`` pairs of consecutive workers NEW's best was the lower. The
first worker of each side also compiles its kernels (not timed: the worker's
warm-up).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from . import timing
from .run import ROOT, run_worker, write_worker_config
from .workloads import select

WORKING_TREE = "."


def extract(rev: str, dest: Path) -> Path:
    """``dest`` with ``rev``'s ``tinymeta/`` (the working tree's for ``"."``) and the current
    ``benchmarks/``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    if rev == WORKING_TREE:
        shutil.copytree(ROOT / "tinymeta", dest / "tinymeta", ignore=ignore)
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "tinymeta"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # 3.11.4+
    shutil.copytree(ROOT / "benchmarks", dest / "benchmarks", ignore=ignore)
    return dest


def order(alternations: int) -> list:
    """The sides' turns: A B, then B A, then A B, ... (``alternations`` of each)."""
    return [side for k in range(alternations) for side in ("AB" if k % 2 == 0 else "BA")]


def run_side(tree: Path, threads: int, config: Path, out: Path) -> dict:
    """One tinymeta worker on ``tree`` (``run.run_worker``), with a Numba cache of its own:
    ``{(workload, dtype): per-repeat seconds}``."""
    report, _ = run_worker("tinymeta", threads, config, out, tree=tree,
                           env={"NUMBA_CACHE_DIR": str(tree / ".numba-cache"), "PYTHONPATH": None})
    if report.get("status") != "ok":
        raise RuntimeError(f"the worker on {tree} did not run: {report.get('note')}")
    cells = {}
    for cell in report["cells"]:
        if cell.get("status") != "ok":
            raise RuntimeError(f"{cell['workload']} {cell['dtype']} failed on {tree}: {cell.get('note')}")
        cells[(cell["workload"], cell["dtype"])] = cell["timing"]["samples"]
    return cells


def compare(runs_a: list, runs_b: list) -> list:
    """Rows ``(workload, dtype, best A, median A, best B, median B, pairs where B's best is lower)``
    (seconds) from the workers of each side, in the order they ran (run ``k`` of A beside run ``k`` of B)."""
    rows = []
    for key in runs_a[0]:
        a = [np.asarray(run[key]) for run in runs_a]
        b = [np.asarray(run[key]) for run in runs_b]
        wins = sum(int(y.min() < x.min()) for x, y in zip(a, b))
        a_all, b_all = np.concatenate(a), np.concatenate(b)
        rows.append((*key, a_all.min(), np.median(a_all), b_all.min(), np.median(b_all), wins))
    return rows


def table(rows, base: str, new: str, pairs: int) -> str:
    lines = [f"{'workload':22s} {'dtype':8s} {'BASE best/median us':>20s} {'NEW best/median us':>20s}  "
             f"NEW/BASE best, median  NEW faster", f"(BASE = {base}, NEW = {new})"]
    for name, dtype, a_min, a_med, b_min, b_med, wins in rows:
        lines.append(f"{name:22s} {dtype:8s} {a_min * 1e6:9.1f}/{a_med * 1e6:<10.1f} {b_min * 1e6:9.1f}/"
                     f"{b_med * 1e6:<10.1f}  {b_min / a_min:6.3f}  {b_med / a_med:6.3f}     {wins} of {pairs}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision of side A")
    parser.add_argument("new", nargs="?", default=WORKING_TREE, help="git revision of side B ('.': the working tree)")
    parser.add_argument("--workloads", nargs="+", default=["sinusoid-maml1"], metavar="PATTERN")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alternations", type=int, default=4, help="workers per side (default 4)")
    parser.add_argument("--quick", action="store_true", help="short timings: checks the tool")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.alternations < 1:
        parser.error(f"--alternations must be >= 1, got {args.alternations}")
    if not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads must lie in 1..{len(os.sched_getaffinity(0))}, got {args.threads}")
    try:
        workloads = select(args.workloads)
    except ValueError as exc:
        parser.error(str(exc))
    settings = timing.QUICK if args.quick else timing.FULL
    with tempfile.TemporaryDirectory(prefix="tinymeta-ab-") as tmp:
        tmp = Path(tmp)
        trees = {"A": extract(args.base, tmp / "A"), "B": extract(args.new, tmp / "B")}
        config = tmp / "config.json"
        write_worker_config(config, workloads, args.dtypes, args.seed, settings)
        runs = {"A": [], "B": []}
        for k, side in enumerate(order(args.alternations)):
            print(f"[ab] {side} ({args.base if side == 'A' else args.new}), worker {k + 1} of "
                  f"{2 * args.alternations}", file=sys.stderr, flush=True)
            runs[side].append(run_side(trees[side], args.threads, config, tmp / f"{side}-{k}"))
    print(table(compare(runs["A"], runs["B"]), args.base, args.new, args.alternations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
