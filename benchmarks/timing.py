"""Timing one meta-iteration: warm-up, calibration, repeats; medians and spreads.

Like ``timeit``: the garbage collector is off inside a timed block (and
run between blocks), each repeat times ``number`` back-to-back calls and
records their mean, and the summary is over repeats. Besides wall time,
each block records the process's CPU time, so ``cpu_per_wall`` shows how
many cores a library actually kept busy (about 1.0 with one thread, up to
the thread count otherwise).
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Settings:
    """How long to time each cell.

    repeats : number of timed blocks (the spread is over these)
    min_block_s : each block runs enough calls to last at least this long
    max_cell_s : fewer repeats (but at least ``min_repeats``) for calls so slow that
        ``repeats`` blocks would exceed this
    warmup : untimed calls first (compilation, caches, allocator); one more untimed
        call follows, to calibrate the block length
    warmup_s : and the warm-up goes on for at least this long after the first
        call (which may compile): a library may settle over its first calls
        (tinymeta's ``ThreadChoice`` times one thread against all threads on
        its first 16 calls of a sinusoid meta-batch, and its first threaded
        call starts the thread pool; taken as the calibration call, that one
        made every block one call long, with a garbage collection between calls)
    """

    repeats: int = 7
    min_block_s: float = 0.04
    max_cell_s: float = 1.5
    min_repeats: int = 3
    warmup: int = 1
    warmup_s: float = 0.25


FULL = Settings()
QUICK = Settings(repeats=3, min_block_s=0.005, max_cell_s=0.3, min_repeats=2, warmup=1, warmup_s=0.05)


def _block(step, number):
    gc.collect()
    gc.disable()
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(number):
            step()
        w1, c1 = time.perf_counter(), time.process_time()
    finally:
        gc.enable()
    return (w1 - w0) / number, (c1 - c0) / max(w1 - w0, 1e-12)


def measure(step, settings: Settings = FULL):
    """Time ``step()`` (one meta-iteration, returning when its work is done).

    Returns
    -------
    (first_output, summary): the output of the first warm-up call (used for
    the agreement check), and a JSON-ready dict of seconds per call:
    ``median``, ``q1``, ``q3`` (quartiles over repeats), ``min``, ``max``,
    ``samples`` (one per repeat), ``number`` (calls per repeat),
    ``cpu_per_wall`` (median over repeats).
    """
    first = step()  # compiles, if it must: warmup_s counts from its end
    start, calls = time.perf_counter(), 1
    while calls < settings.warmup or time.perf_counter() - start < settings.warmup_s:
        step()
        calls += 1
    single, _ = _block(step, 1)
    number = max(1, math.ceil(settings.min_block_s / max(single, 1e-9)))
    repeats = settings.repeats
    if repeats * number * single > settings.max_cell_s:
        repeats = max(settings.min_repeats, int(settings.max_cell_s // max(number * single, 1e-9)))
    samples, cpu = zip(*(_block(step, number) for _ in range(repeats)))
    return first, summarise(samples, cpu, number)


def summarise(samples, cpu_per_wall, number):
    """Median, quartiles and extremes of per-call times (seconds) over repeats."""
    s = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(s.min()),
            "max": float(s.max()), "samples": [float(x) for x in s], "number": int(number),
            "cpu_per_wall": float(np.median(cpu_per_wall))}
