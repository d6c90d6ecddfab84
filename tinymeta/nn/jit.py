"""How tinymeta compiles its kernels: ``numba.njit(cache=True)`` with LLVM's SLP vectorizer on.

The matrix products of the kernels (``meta_passes._mm``) keep a 4 x 8 tile
of sums in 32 scalars. LLVM's SLP ("superword-level parallelism")
vectorizer packs such independent scalar operations into vector
registers; its loop vectorizer, which Numba runs by default, does not. On
the development machine (AMD EPYC, Zen 4) a 10 x 40 x 40 product in
float32 took 0.6 us with SLP and 3.6 us without; the untiled loop it
replaced took 1.0 us (issue 5 notes).

Numba switched SLP off by default in 2023 after miscompilations in other
code (numba PR #8852). tinymeta switches it on only while one of its own
kernels compiles (``kernel``), never for the rest of the process, and the
tests pin every kernel to the NumPy reference. SLP packs operations
without reordering any sum, so the results are the same bits with it or
without it; only the speed differs.

``TINYMETA_SLP=0`` in the environment compiles the kernels without it (for
a suspected miscompilation; clear Numba's cache, ``__pycache__``, first,
or the cached code is loaded as it was compiled). A kernel compiled with
SLP off is correct and slower; ``tests/test_jit.py`` checks that both give
the same bits.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

from numba import njit
from numba.core import config

ENABLED = os.environ.get("TINYMETA_SLP", "1") != "0"
_lock = threading.Lock()
_depth = 0  # kernels being compiled now, over all threads
_saved = None  # the process's setting, restored when the last one is done


@contextmanager
def slp_vectorizer():
    """Numba's ``SLP_VECTORIZE`` on for what compiles inside the block; nesting and threads counted."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = config.SLP_VECTORIZE
            config.SLP_VECTORIZE = 1
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                config.SLP_VECTORIZE = _saved


def kernel(fn=None, *, parallel=False):
    """``numba.njit(cache=True, parallel=parallel)`` whose compilations run inside ``slp_vectorizer``.

    Use as ``@kernel`` or ``@kernel(parallel=True)``. Under
    ``NUMBA_DISABLE_JIT=1`` the function stays plain Python.
    """
    if fn is None:
        return lambda f: kernel(f, parallel=parallel)
    dispatcher = njit(cache=True, parallel=parallel)(fn)
    compile_ = getattr(dispatcher, "compile", None)
    if compile_ is None or not ENABLED:  # NUMBA_DISABLE_JIT: njit returned fn itself
        return dispatcher

    def compile_with_slp(sig):
        with slp_vectorizer():
            return compile_(sig)

    dispatcher.compile = compile_with_slp
    return dispatcher
