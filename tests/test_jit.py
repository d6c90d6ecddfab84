"""tinymeta.nn.jit: the SLP vectorizer is on only while tinymeta's kernels compile, and changes no bits.

The second test compiles the meta-batch kernel again in a fresh process
with ``TINYMETA_SLP=0`` and an empty Numba cache, and compares its
meta-gradients with this process's bit for bit (float32 and float64; the
sinusoid net, and a 5-way classifier whose widths leave rows and columns
over from the 4 x 8 tiles).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from numba.core import config

import tinymeta as tm
from tinymeta.algorithms import maml
from tinymeta.nn import jit
from tinymeta.nn.jit import view

SCRIPT = r"""
import sys
import numpy as np
from tinymeta.algorithms import maml
from tinymeta.nn import jit
from tests.test_jit import CASES, make
assert not jit.ENABLED
out = {}
for name, case in CASES.items():
    net, theta, batch = make(*case)
    loss, grad = maml.meta_loss_and_grad(net, theta, batch, inner_lr=0.1, inner_steps=2)
    out[name] = np.concatenate([[loss], grad.astype(np.float64)])
np.savez(sys.argv[1], **out)
"""
CASES = {"sinusoid64": ([1, 40, 40, 1], "mse", "float64"), "sinusoid32": ([1, 40, 40, 1], "mse", "float32"),
         "classes64": ([13, 24, 9, 5], "xent", "float64")}


def make(sizes, loss, dtype):
    """A net, parameters and a meta-batch of 3 tasks (6 support, 7 query rows), all from seed 0."""
    rng = np.random.default_rng(0)
    net = tm.MLP(sizes, activation="relu", loss=loss, dtype=dtype)
    theta = net.init(rng)
    X = rng.standard_normal((3, 13, sizes[0])).astype(dtype)
    if loss == "mse":
        y = rng.standard_normal((3, 13, sizes[-1])).astype(dtype)
    else:
        y = rng.integers(0, sizes[-1], size=(3, 13))
    return net, theta, tm.TaskBatch(X[:, :6], y[:, :6], X[:, 6:], y[:, 6:])


@jit.kernel
def _double(a):
    return 2.0 * a


def test_setting_restored_after_compiling():
    before = config.SLP_VECTORIZE
    assert _double(np.float64(1.5)) == 3.0
    assert _double(np.ones(2))[0] == 2.0  # a second signature: a second compilation
    assert config.SLP_VECTORIZE == before


def test_nested_and_threaded_blocks_restore_the_setting():
    before = config.SLP_VECTORIZE
    inside, release = threading.Event(), threading.Event()
    seen = []

    def worker():
        with jit.slp_vectorizer():
            seen.append(config.SLP_VECTORIZE)
            inside.set()
            release.wait(10)
            seen.append(config.SLP_VECTORIZE)

    thread = threading.Thread(target=worker)
    with jit.slp_vectorizer():
        thread.start()
        assert inside.wait(10)
        with jit.slp_vectorizer():
            assert config.SLP_VECTORIZE == 1
    assert config.SLP_VECTORIZE == 1  # the other thread is still inside its block
    release.set()
    thread.join(10)
    assert seen == [1, 1]
    assert config.SLP_VECTORIZE == before


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="compiles the kernels")
def test_same_bits_without_slp(tmp_path):
    assert jit.ENABLED, "run the suite without TINYMETA_SLP=0"
    env = {**os.environ, "TINYMETA_SLP": "0", "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out.npz")], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "out.npz", allow_pickle=False) as without:
        for name, case in CASES.items():
            net, theta, batch = make(*case)
            loss_value, grad = maml.meta_loss_and_grad(net, theta, batch, inner_lr=0.1, inner_steps=2)
            here = np.concatenate([[loss_value], grad.astype(np.float64)])
            assert np.array_equal(here, without[name]), name


@jit.kernel
def _view_shape(buf, offset, rows, cols):
    return view(buf, offset, rows, cols).shape


@jit.kernel
def _view_add(buf, offset, rows, cols, value):
    v = view(buf, offset, rows, cols)
    v[:, :] += value  # a view: writes reach buf
    return v.sum()


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_view_is_the_reshaped_slice(dtype):
    buf = np.arange(40, dtype=dtype)
    expected = buf.copy()
    expected[7:19] += 0.5
    assert _view_add(buf, 7, 3, 4, 0.5) == expected[7:19].sum()
    assert np.array_equal(buf, expected)
    assert _view_shape(buf, 40, 0, 4) == (0, 4)
    assert _view_shape(buf, 0, 5, 8) == (5, 8)


@pytest.mark.kernels
@pytest.mark.parametrize("offset, rows, cols", [(30, 3, 4), (-1, 2, 2), (0, 41, 1)])
def test_view_out_of_the_buffer_is_refused(offset, rows, cols):
    with pytest.raises((IndexError, ValueError)):
        _view_shape(np.zeros(40), offset, rows, cols)


def test_stale_cached_kernels_are_dropped(tmp_path):
    modules = {"meta_kernels", "kernels"}
    ours = ["meta_kernels._slot-72.py311.nbi", "meta_kernels._slot-72.py311.1.nbc", "kernels.matmul-80.py311.nbi"]
    kept = ["other._f-1.py311.nbi", "meta_kernels.cpython-311.pyc"]
    for name in ours + kept:
        (tmp_path / name).write_bytes(b"x")
    assert jit.clear_stale_cache(tmp_path, "a" * 64, modules)  # no stamp yet: compiled from unknown sources
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [jit.STAMP])
    (tmp_path / ours[0]).write_bytes(b"x")  # compiled again from these sources
    assert not jit.clear_stale_cache(tmp_path, "a" * 64, modules)
    assert (tmp_path / ours[0]).exists()
    assert jit.clear_stale_cache(tmp_path, "b" * 64, modules)  # a source file changed
    assert not (tmp_path / ours[0]).exists() and (tmp_path / jit.STAMP).read_text() == "b" * 64


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no compiled kernels")
def test_the_kernel_cache_is_stamped_with_these_sources():
    assert len(jit._guarded) == 1  # every kernel of tinymeta.nn caches in one folder
    folder = next(iter(jit._guarded))
    assert (Path(folder) / jit.STAMP).read_text() == jit.sources_digest()
    assert jit.sources_digest() != jit.sources_digest(Path(folder).parent.parent)  # another folder, other sources
    assert jit.sources_digest() != jit.sources_digest(slp=not jit.ENABLED)  # the other setting: compile again


@pytest.mark.kernels
def test_is_float32_follows_the_array_dtype_compiled_and_as_python():
    @njit
    def f(a):
        return jit.is_float32(a)

    for dtype, want in (("float32", True), ("float64", False), ("int32", False)):
        a = np.zeros(3, dtype=dtype)
        assert bool(jit.is_float32(a)) is want and f(a) == want
