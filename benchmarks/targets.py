"""Issue 5's speed targets, checked against one run (BENCHMARKS.md, section "Targets").

A target asks tinymeta's median to be ``ratio`` times faster than a peer's
(1 thread, same dtype), or its 2-thread median ``ratio`` times faster than
its own 1-thread one. For every row the check also says what meeting the
target would take: the ``needed`` time (the peer's median over the ratio,
or the 1-thread median over it) and the rate of matrix-product FLOPs that
time demands (``flops.meta_iteration``, the textbook count) as a share of
the matmul peak this run measured at that dtype and thread count. Above
100%, the target asks more of the textbook products than this machine's
best matrix product reached: no loop order or fusion gets there, only a
way to do fewer FLOPs (``flops.py`` says which counts have one).
"""
from __future__ import annotations

import fnmatch
from typing import NamedTuple

from . import flops
from .workloads import WORKLOADS

BOTH = ("float32", "float64")


class Target(NamedTuple):
    """tinymeta ``ratio`` times faster than ``peer`` (or, with ``peer`` None, on 2 threads than on 1)
    on the workloads matching ``pattern`` with at least ``min_tasks`` tasks, at these dtypes."""

    label: str
    pattern: str
    dtypes: tuple
    peer: str | None
    ratio: float
    min_tasks: int = 0


TARGETS = (  # issue 5, "Targets"
    Target("sinusoid >= 2x JAX", "sinusoid-*", BOTH, "jax", 2.0),
    Target("sinusoid >= 40x PyTorch eager", "sinusoid-*", BOTH, "torch-eager", 40.0),
    Target("Omniglot MAML, 5 queries per class >= 1.5x JAX", "omniglot-maml1-q5", ("float32",), "jax", 1.5),
    Target("Omniglot FOMAML, 5 queries per class >= 1.5x JAX", "omniglot-fomaml1-q5", ("float32",), "jax", 1.5),
    Target("ProtoNet 5-way 5-shot x 32 >= 1.5x JAX", "protonet-5shot-e32", BOTH, "jax", 1.5),
    Target("2 threads >= 1.7x 1 thread (25 or more tasks)", "*", BOTH, None, 1.7, min_tasks=25),
)
MET, MISSED, BEYOND, UNMEASURED = "met", "missed", "missed: needs more than the peak", "not measured"


def _median(cells, impl, name, dtype, threads):
    cell = cells.get((impl, name, dtype, threads))
    return cell["timing"]["median"] if cell and cell.get("status") == "ok" else None


def check(results, cells, peak) -> list:
    """One dict per (target, workload, dtype) of this run: ``target``, ``workload``, ``dtype``,
    ``threads`` (tinymeta's), ``measured`` (the ratio, None if not measured), ``needed_s``
    (tinymeta's time that meets it), ``share`` (that time's FLOP rate over ``peak(results, dtype,
    threads)``, None without a peak) and ``status`` (MET, MISSED, BEYOND or UNMEASURED)."""
    by_name = {w.name: w for w in WORKLOADS}
    rows = []
    for target in TARGETS:
        threads = 1 if target.peer else 2
        for name in results["workloads"]:
            w = by_name[name]
            if not fnmatch.fnmatchcase(name, target.pattern) or w.n_tasks < target.min_tasks:
                continue
            for dtype in target.dtypes:
                if dtype not in results["dtypes"] or threads not in results["threads"]:
                    continue
                mine = _median(cells, "tinymeta", name, dtype, threads)
                base = _median(cells, target.peer or "tinymeta", name, dtype, 1)
                row = {"target": target.label, "workload": name, "dtype": dtype, "threads": threads,
                       "measured": None, "needed_s": None, "share": None, "status": UNMEASURED}
                if mine is not None and base is not None:
                    needed = base / target.ratio
                    best = peak(results, dtype, threads)
                    share = flops.meta_iteration(w) / needed / (best * 1e9) if best else None
                    measured = base / mine
                    status = MET if measured >= target.ratio else BEYOND if share and share > 1 else MISSED
                    row.update(measured=measured, needed_s=needed, share=share, status=status)
                rows.append(row)
    return rows


def render(rows) -> list:
    """The "Targets" section of BENCHMARKS.md (lines)."""
    if not rows:
        return []
    counts = {s: sum(r["status"] == s for r in rows) for s in (MET, MISSED, BEYOND, UNMEASURED)}
    lines = ["## Targets (issue 5)", "",
             "Each target's ratio from the medians above (1 thread, same dtype; the last target compares "
             "tinymeta's 2-thread median with its 1-thread one). `needed` is the tinymeta time that meets the "
             "target; `needs` is the rate of matrix-product FLOPs (the textbook count, Method) that this time "
             "demands, as a share of the matmul peak measured in this run at that dtype and thread count. A "
             "target that needs more than 100% asks the textbook products to run faster than this machine's "
             "best matrix product: only doing fewer FLOPs could meet it.", "",
             f"Met: {counts[MET]} of {len(rows)}. Missed: {counts[MISSED] + counts[BEYOND]}, of which "
             f"{counts[BEYOND]} {'needs' if counts[BEYOND] == 1 else 'need'} more than the measured peak."
             + (f" Not measured: {counts[UNMEASURED]}." if counts[UNMEASURED] else ""), "",
             "| target | workload | dtype | threads | measured | needed us | needs % peak | result |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        measured = f"{r['measured']:.2f}x" if r["measured"] is not None else ""
        needed = f"{r['needed_s'] * 1e6:,.1f}" if r["needed_s"] is not None else ""
        share = f"{100 * r['share']:.0f}" if r["share"] is not None else ""
        result = f"**{r['status']}**" if r["status"] == BEYOND else r["status"]
        lines.append(f"| {r['target']} | {r['workload']} | {r['dtype']} | {r['threads']} | {measured} | "
                     f"{needed} | {share} | {result} |")
    return lines + [""]
