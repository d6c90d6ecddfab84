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

Numba's cache keeps a compiled kernel until *its own* source file changes;
a change to a function it calls in another file (``meta_passes._mm``
called by ``meta_kernels``) would go unnoticed, and the old code would
run. ``kernel`` therefore drops every cached kernel of ``tinymeta.nn``
when any of the package's source files differ from the ones they were
compiled from (``clear_stale_cache``; a stamp file beside them holds the
sources' SHA-256).

``TINYMETA_SLP=0`` in the environment compiles the kernels without it (for
a suspected miscompilation; the stamp covers the setting, so the cached
kernels are compiled again). A kernel compiled with SLP off is correct and
slower; ``tests/test_jit.py`` checks that both give the same bits.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.core import cgutils, config
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

ENABLED = os.environ.get("TINYMETA_SLP", "1") != "0"
PACKAGE = Path(__file__).resolve().parent  # tinymeta/nn: every kernel lives here
STAMP = "tinymeta-nn-sources.sha256"  # beside the cached kernels
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


def sources_digest(package=PACKAGE, slp=ENABLED) -> str:
    """SHA-256 over the names and bytes of the package's ``.py`` files, in name order, and over
    whether SLP is on (so that ``TINYMETA_SLP=0`` recompiles rather than loading SLP code)."""
    h = hashlib.sha256(b"slp\0" if slp else b"no-slp\0")
    for path in sorted(Path(package).glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def clear_stale_cache(cache_dir, digest, modules) -> bool:
    """Delete the cached kernels of ``modules`` (file stems) in ``cache_dir`` unless its stamp says
    ``digest``; then write the stamp. Returns whether the stamp differed (kernels dropped)."""
    cache_dir = Path(cache_dir)
    stamp = cache_dir / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:  # no stamp yet: a cache from before this guard, or none
        pass
    for path in [*cache_dir.glob("*.nbi"), *cache_dir.glob("*.nbc")]:
        if path.name.split(".", 1)[0] in modules:
            path.unlink(missing_ok=True)
    from ..checkpoint import atomic_write

    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(stamp, digest.encode())
    return True


_guarded = set()  # cache folders checked by this process


def _guard(dispatcher, fn):
    """``clear_stale_cache`` once per process for the cache folder of a ``tinymeta.nn`` kernel."""
    cache_dir = getattr(getattr(dispatcher, "_cache", None), "_cache_path", None)
    if cache_dir is None or cache_dir in _guarded or Path(inspect.getfile(fn)).resolve().parent != PACKAGE:
        return
    _guarded.add(cache_dir)
    try:
        clear_stale_cache(cache_dir, sources_digest(), {p.stem for p in PACKAGE.glob("*.py")})
    except OSError:  # a folder this process may not write: Numba will not cache there either
        pass


def kernel(fn=None, *, parallel=False, error_model="python"):
    """``numba.njit(cache=True, parallel=parallel, error_model=error_model)`` whose compilations
    run inside ``slp_vectorizer``.

    Use as ``@kernel`` or ``@kernel(parallel=True)``. ``error_model="numpy"``
    makes ``x / 0`` give inf or NaN as in NumPy instead of raising
    ``ZeroDivisionError``; a loop that divides is then vectorised (the
    check before every division stops it otherwise). Under
    ``NUMBA_DISABLE_JIT=1`` the function stays plain Python.
    """
    if fn is None:
        return lambda f: kernel(f, parallel=parallel, error_model=error_model)
    dispatcher = njit(cache=True, parallel=parallel, error_model=error_model)(fn)
    compile_ = getattr(dispatcher, "compile", None)
    if compile_ is None:  # NUMBA_DISABLE_JIT: njit returned fn itself
        return dispatcher
    _guard(dispatcher, fn)
    if not ENABLED:
        return dispatcher

    def compile_with_slp(sig):
        with slp_vectorizer():
            return compile_(sig)

    dispatcher.compile = compile_with_slp
    return dispatcher


# ------------------------------------------------------------------ views
def view(buf, offset, rows, cols):
    """The contiguous ``(rows, cols)`` view of ``buf[offset : offset + rows*cols]``; ``buf`` is 1-D.

    This is ``buf[offset:offset + rows * cols].reshape((rows, cols))``, and
    it is what runs under ``NUMBA_DISABLE_JIT=1``. Compiled, the same view is
    built directly (``_view_of``): Numba's ``reshape`` calls a C helper that
    took about 30 ns a view, and a meta-batch task makes about a hundred.
    """
    return buf[offset:offset + rows * cols].reshape((rows, cols))


@intrinsic
def _view_of(typingctx, buf, offset, rows, cols):
    """``view`` as an array header: ``buf``'s data from ``offset`` on, shape ``(rows, cols)``,
    C strides, ``buf``'s memory owner (borrowed, so the buffer outlives the view). No checks."""
    if not (isinstance(buf, types.Array) and buf.ndim == 1 and buf.layout == "C"):
        return None
    result = types.Array(buf.dtype, 2, "C")

    def codegen(context, builder, signature, args):
        src = make_array(signature.args[0])(context, builder, args[0])
        offset_, rows_, cols_ = (context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:]))
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(buf.dtype)))
        out = make_array(result)(context, builder)
        populate_array(out, data=builder.gep(src.data, [offset_]),
                       shape=cgutils.pack_array(builder, [rows_, cols_]),
                       strides=cgutils.pack_array(builder, [builder.mul(cols_, itemsize), itemsize]),
                       itemsize=itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, result, out._getvalue())

    return result(buf, offset, rows, cols), codegen


@overload(view)
def _view_compiled(buf, offset, rows, cols):
    def impl(buf, offset, rows, cols):
        if offset < 0 or rows < 0 or cols < 0 or offset + rows * cols > buf.shape[0]:
            raise IndexError("view: the block does not fit in the buffer")
        return _view_of(buf, offset, rows, cols)
    return impl


# ---------------------------------------------------------- dtype constants
def is_float32(a):
    """Whether the array ``a`` holds float32; a constant in compiled code.

    ``a.itemsize == 4`` is read from the array at run time, so a branch on
    it is compiled and optimised for both outcomes; with this function the
    branch not taken for ``a``'s type is dropped before LLVM optimises the
    rest (``meta_passes._mm``'s 16-column tiles are float32 only: the
    float64 kernels compile faster without them).
    """
    return a.dtype == np.float32


@overload(is_float32)
def _is_float32_compiled(a):
    answer = isinstance(a, types.Array) and a.dtype == types.float32
    return lambda a: answer
