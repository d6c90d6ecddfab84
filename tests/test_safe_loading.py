"""Every file tinymeta reads is safe to read: damage is detected and reported, pickles are refused.

Checkpoints carry a SHA-256 of their entries; a truncated or bit-flipped file,
one from another network, or one holding a pickled object must be refused
with an error naming the file -- never loaded, never half-used, never able to
run code. The Omniglot cache is rebuilt instead of used when it is bad.
"""
import ast
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymeta
from tinymeta import checkpoint
from tinymeta.checkpoint import CorruptCheckpoint
from tinymeta.config import TrainConfig
from tinymeta.tasks import omniglot
from tinymeta.tasks.images import ImageClasses
from tinymeta.train import load_run, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=(8,), meta_batch=2, shots=4, query=4, eval_shots=3, eval_steps=2, val_tasks=3, eval_tasks=5,
            log_every=1, eval_every=0, checkpoint_every=2)
TRUNCATIONS = 40  # prefix lengths tried per checkpoint
BIT_FLIPS = 300  # single-bit flips tried per checkpoint


class _Planted:
    """Unpickling this object would create the file ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run (Meta-SGD: two parameter vectors, Adam's state) and its checkpoint bytes."""
    run_dir = tmp_path_factory.mktemp("run")
    train(run_dir, TrainConfig(algo="metasgd", iterations=4, **TINY), progress=False)
    return run_dir, (run_dir / "checkpoint.npz").read_bytes()


def _same(a, b):
    return (a["config"] == b["config"] and a["scalars"] == b["scalars"]
            and a["rng"].bit_generator.state == b["rng"].bit_generator.state
            and all(np.array_equal(a[g][k], b[g][k]) and a[g][k].dtype == b[g][k].dtype
                    for g in ("params", "opt_state") for k in a[g]) and a["params"].keys() == b["params"].keys())


def test_every_truncation_is_refused_naming_the_file(run, tmp_path):
    _, raw = run
    path = tmp_path / "checkpoint.npz"
    lengths = np.unique(np.r_[0, 1, 21, len(raw) - 1, np.random.default_rng(1).integers(0, len(raw), TRUNCATIONS)])
    for n in lengths:
        path.write_bytes(raw[:n])
        with pytest.raises(CorruptCheckpoint, match=str(path)):
            checkpoint.load(path)


def test_a_bit_flip_anywhere_is_refused_or_changes_nothing(run, tmp_path):
    """Flips in the data, the zip headers or the checksum are caught; a flip in a field the zip
    reader ignores (a timestamp, say) may load -- and must then give exactly the original state."""
    _, raw = run
    original = checkpoint.load(run[0] / "checkpoint.npz")
    path = tmp_path / "checkpoint.npz"
    rng = np.random.default_rng(2)
    refused = 0
    for pos, bit in zip(rng.integers(0, len(raw), BIT_FLIPS), rng.integers(0, 8, BIT_FLIPS)):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(bit)
        path.write_bytes(bytes(flipped))
        try:
            loaded = checkpoint.load(path)
        except CorruptCheckpoint as err:
            assert str(path) in str(err)
            refused += 1
            continue
        assert _same(loaded, original), f"a flip of bit {bit} at byte {pos} changed the loaded state silently"
    assert refused > BIT_FLIPS // 2  # most bytes of the file matter


def test_a_consistent_edit_of_the_data_fails_the_checksum(run, tmp_path):
    """Even a well-formed .npz whose values were changed (CRCs recomputed) is caught."""
    _, raw = run
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        arrays = dict(f)
    arrays["param/theta"] = arrays["param/theta"].copy()
    arrays["param/theta"][0] += 1e-12
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    with pytest.raises(CorruptCheckpoint, match="fails its checksum"):
        checkpoint.load(path)


def test_a_checkpoint_of_another_network_is_refused_with_both_shapes(run, tmp_path):
    run_dir, _ = run
    state = checkpoint.load(run_dir / "checkpoint.npz")
    other = TrainConfig(algo="metasgd", iterations=4, **{**TINY, "hidden": (16,)}).to_dict()
    checkpoint.save(tmp_path / "checkpoint.npz", state["params"], state["opt_state"], state["rng"], other,
                    state["scalars"])  # a valid file whose config needs a larger theta
    for call in (lambda: load_run(tmp_path), lambda: train(tmp_path, resume=True, progress=False)):
        with pytest.raises(CorruptCheckpoint, match=r"'theta' of shape \(25,\).*needs shape \(49,\)"):
            call()
    with pytest.raises(ValueError, match="config differs"):  # resuming it under another config
        train(run_dir, TrainConfig(algo="metasgd", iterations=4, **{**TINY, "hidden": (16,)}), resume=True,
              progress=False)


def test_a_float32_checkpoint_for_a_float64_run_is_refused(run, tmp_path):
    state = checkpoint.load(run[0] / "checkpoint.npz")
    params = {k: v.astype(np.float32) for k, v in state["params"].items()}
    checkpoint.save(tmp_path / "checkpoint.npz", params, state["opt_state"], state["rng"], state["config"],
                    state["scalars"])
    with pytest.raises(CorruptCheckpoint, match="dtype float32.*dtype float64"):
        load_run(tmp_path)


@pytest.mark.parametrize("counters", [{}, {"iteration": -1, "seconds": 0, "loss_sum": 0, "loss_count": 0},
                                      {"iteration": "4", "seconds": 0, "loss_sum": 0, "loss_count": 0},
                                      {"iteration": 99, "seconds": 0, "loss_sum": 0, "loss_count": 0}])
def test_invalid_counters_are_refused(run, tmp_path, counters):
    state = checkpoint.load(run[0] / "checkpoint.npz")
    checkpoint.save(tmp_path / "checkpoint.npz", state["params"], state["opt_state"], state["rng"],
                    state["config"], counters)
    with pytest.raises(CorruptCheckpoint, match="invalid counters"):
        load_run(tmp_path)


def test_a_pickle_bearing_npz_is_refused_and_runs_no_code(run, tmp_path):
    _, raw = run
    marker = tmp_path / "code_ran"
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        arrays = dict(f)
    arrays["param/theta"] = np.array([_Planted(marker)], dtype=object)
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)  # np.savez pickles object arrays
    with pytest.raises(CorruptCheckpoint, match="pickled object array; refused"):
        checkpoint.load(path)
    with pytest.raises(ValueError, match="pickled"):
        train(tmp_path, resume=True, progress=False)
    assert not marker.exists()
    with pytest.raises(TypeError, match="hold no pickled objects"):  # nor can one be written
        checkpoint.save(tmp_path / "other.npz", {"theta": np.array([None], dtype=object)}, {},
                        np.random.default_rng(0), {}, {})


def test_a_plain_pickle_or_npy_in_place_of_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoint.npz"
    import pickle

    path.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CorruptCheckpoint, match="pickle"):
        checkpoint.load(path)
    np.save(tmp_path / "x.npy", np.zeros(3))
    os.replace(tmp_path / "x.npy", path)
    with pytest.raises(CorruptCheckpoint, match="not an .npz"):
        checkpoint.load(path)
    assert not marker.exists()


def test_the_command_reports_a_corrupted_checkpoint_and_exits_2(run, tmp_path):
    _, raw = run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.npz").write_bytes(raw[: len(raw) // 2])
    proc = subprocess.run([sys.executable, "-m", "tinymeta.cli", "train", "--resume", "--out", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2
    assert "corrupted or truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_a_pickle_bearing_omniglot_cache_is_rebuilt_and_runs_no_code(tmp_path, monkeypatch, rng):
    images = rng.integers(0, 256, (2, 20, 28, 28), dtype=np.uint8)
    data = ImageClasses(images, np.array(["a/c1", "a/c2"]))
    calls = []
    monkeypatch.setattr(omniglot, "decode_archive", lambda path, resize: calls.append(1) or data)
    archive = tmp_path / "images_background.zip"
    archive.write_bytes(b"archive bytes")
    omniglot.cached_decode(archive, "nearest", tmp_path)
    (file,) = tmp_path.glob("*.npz")
    with np.load(file, allow_pickle=False) as z:
        fields = dict(z)
    marker = tmp_path / "code_ran"
    fields["names"] = np.array([_Planted(marker), "a/c2"], dtype=object)
    np.savez(file, **fields)
    again, status = omniglot.cached_decode(archive, "nearest", tmp_path)
    assert status == "rebuilt" and len(calls) == 2 and not marker.exists()
    np.testing.assert_array_equal(again.images, images)


def test_the_package_never_unpickles():
    """Static check of the source: every np.load passes allow_pickle=False, and nothing imports
    pickle, marshal or shelve or calls eval/exec."""
    package = Path(tinymeta.__file__).parent
    loads = 0
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "marshal", "shelve", "dill", "joblib"} & set(names), source
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                assert name not in ("eval", "exec"), f"{source}:{node.lineno}"
                if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "np":
                    loads += 1
                    flags = {k.arg: k.value for k in node.keywords}
                    assert "allow_pickle" in flags and isinstance(flags["allow_pickle"], ast.Constant) \
                        and flags["allow_pickle"].value is False, f"{source}:{node.lineno}"
    assert loads >= 2  # the checkpoint and the Omniglot cache


def test_a_checkpoint_written_before_checksums_still_loads_but_a_damaged_one_does_not(run, tmp_path):
    """Runs trained before checksums existed stay usable; the zip's CRC-32 still catches damage."""
    _, raw = run
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "checksum"}
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    assert _same(checkpoint.load(path), checkpoint.load(run[0] / "checkpoint.npz"))
    legacy = bytearray(path.read_bytes())
    offset = legacy.find(arrays["param/theta"].tobytes())
    legacy[offset + 3] ^= 0x10  # a bit of theta: only the CRC-32 can tell
    path.write_bytes(bytes(legacy))
    with pytest.raises(CorruptCheckpoint, match="corrupted or truncated"):
        checkpoint.load(path)
