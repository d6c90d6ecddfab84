"""Files a training run writes: atomic, pickle-free, loadable without running code.

A checkpoint is one ``.npz`` (read with ``allow_pickle=False``) holding

* ``param/<key>``: the meta-parameters (``{"theta": ...}``, Meta-SGD's ``alpha`` ...);
* ``opt/<key>``: the outer optimizer's state (``tinymeta.optim`` states are dicts of arrays);
* ``rng``: the data generator's ``bit_generator.state`` as JSON text;
* ``config``: the full run configuration as JSON text;
* ``scalars``: JSON text of the loop's counters (iteration, wall time, running sums);
* ``checksum``: the SHA-256 of every other entry (name, dtype, shape and bytes), checked on load
  (checkpoints written before it existed are read with the zip's CRC-32 as their only check).

Loading refuses, with a ``CorruptCheckpoint`` (a ``ValueError``) naming the
file and what is wrong, a truncated or bit-flipped file (the zip's CRC or the
checksum), an entry that would need pickle (object arrays are never read), a
missing field, and (``check_like``) arrays of another shape or dtype than the
run's network needs.

Every file is written to a temporary file in the same directory, flushed
and fsync-ed, then renamed over the target (``os.replace`` is atomic), so
that an interruption leaves either the old file or the new one, never a
torn one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

# Bit generators a checkpoint may name; loading never looks up anything else.
FIELDS = ("rng", "config", "scalars")  # and "checksum", but for checkpoints written before it existed
BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")}


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync the directory)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # a new file, with the usual permissions (umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _temporary_pid(name: str, target: str):
    """The writer's pid if ``name`` is a temporary of ``atomic_write`` for ``target``, else None."""
    prefix = f".{target}."
    parts = name[len(prefix):].split(".") if name.startswith(prefix) and name.endswith(".tmp") else []
    return int(parts[0]) if len(parts) == 3 and parts[0].isdigit() else None


def remove_stale_temporaries(directory, targets) -> list:
    """Delete the temporaries ``atomic_write`` left in ``directory`` for ``targets`` (file names)
    when their writer was killed mid-write (SIGKILL, power loss); return the paths removed.

    A temporary whose writer is still alive is kept.
    """
    removed = []
    for entry in os.scandir(directory):
        pid = next((p for t in targets if (p := _temporary_pid(entry.name, t)) is not None), None)
        if pid is None or (pid != os.getpid() and _alive(pid)):
            continue
        os.unlink(entry.path)
        removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_json(path, obj) -> None:
    """``obj`` as indented JSON, written atomically."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path):
    """The JSON value stored at ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rng_to_json(rng: np.random.Generator) -> str:
    """The generator's complete state as JSON text (Python ints keep every bit; arrays become lists)."""
    return json.dumps(rng.bit_generator.state, default=lambda a: np.asarray(a).tolist())


def rng_from_json(text: str) -> np.random.Generator:
    """A generator in exactly the state ``rng_to_json`` recorded."""
    state = json.loads(text)
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in BIT_GENERATORS:
        raise ValueError(f"rng state must name one of {sorted(BIT_GENERATORS)}, got {name!r}")
    bit_generator = BIT_GENERATORS[name]()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


class CorruptCheckpoint(ValueError):
    """A checkpoint that cannot be trusted: truncated, bit-flipped, pickle-bearing or of another shape."""


def checksum(arrays: dict) -> str:
    """SHA-256 over the entries of ``arrays`` in name order: name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path, params: dict, opt_state: dict, rng: np.random.Generator, config: dict, scalars: dict) -> None:
    """Write a checkpoint atomically (see the module docstring for its layout)."""
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"opt/{k}": np.asarray(v) for k, v in opt_state.items()})
    arrays["rng"] = np.array(rng_to_json(rng))
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    arrays["scalars"] = np.array(json.dumps(scalars, sort_keys=True))
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"{name} must be a numeric array (checkpoints hold no pickled objects), got dtype object")
    arrays["checksum"] = np.array(checksum(arrays))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


# What reading a damaged .npz can raise: the zip layer (BadZipFile; NotImplementedError for a flipped
# compression method; RuntimeError for a flipped encryption flag), decompression, the .npy header, a
# short read. A file is parsed here and nowhere else, so any of them means "damaged".
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError,
                NotImplementedError, RuntimeError, SyntaxError, TypeError, OverflowError, MemoryError)


def _read_all(path) -> dict:
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise CorruptCheckpoint(f"{path} is not a tinymeta checkpoint: a single .npy array, not an .npz")
        with f:
            return {name: f[name] for name in f.files}
    except CorruptCheckpoint:
        raise
    except FileNotFoundError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise CorruptCheckpoint(f"{path} holds a pickled object array; refused (tinymeta never unpickles: "
                                    f"loading it could run arbitrary code)") from None
        raise CorruptCheckpoint(f"{path} is corrupted or truncated ({err}); resume from a copy or start "
                                f"the run again with --overwrite") from None
    except _READ_ERRORS as err:
        raise CorruptCheckpoint(f"{path} is corrupted or truncated ({type(err).__name__}: {err}); resume from "
                                f"a copy or start the run again with --overwrite") from None


def load(path) -> dict:
    """Read and verify a checkpoint: ``{"params", "opt_state", "rng", "config", "scalars"}``.

    Raises ``CorruptCheckpoint`` (a ``ValueError``) if the file is damaged, fails its
    checksum, needs pickle or misses a field.
    """
    arrays = _read_all(path)
    missing = sorted(set(FIELDS) - set(arrays))
    if missing:
        raise CorruptCheckpoint(f"{path} is not a tinymeta checkpoint: missing {missing}")
    # Checkpoints of tinymeta 0.1 before checksums: the zip's CRC-32 per entry (checked by the reader
    # above) is their only check; every checkpoint written now carries the SHA-256.
    stored = str(arrays.pop("checksum")) if "checksum" in arrays else None
    if stored is not None and checksum(arrays) != stored:
        raise CorruptCheckpoint(f"{path} fails its checksum (stored {stored[:12]}..., computed "
                                f"{checksum(arrays)[:12]}...): the file was altered or damaged after it was "
                                f"written; resume from a copy or start the run again with --overwrite")
    try:
        params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        opt_state = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}
        return {"params": params, "opt_state": opt_state, "rng": rng_from_json(str(arrays["rng"])),
                "config": json.loads(str(arrays["config"])), "scalars": json.loads(str(arrays["scalars"]))}
    except (ValueError, TypeError, KeyError) as err:
        raise CorruptCheckpoint(f"{path} has a malformed field ({type(err).__name__}: {err})") from None


def check_like(state: dict, params: dict, opt_state: dict, path) -> None:
    """Raise ``CorruptCheckpoint`` unless ``state`` (from ``load``) holds exactly the keys, shapes and
    dtypes of ``params`` and ``opt_state`` (e.g. those a fresh run of its config would start from)."""
    for kind, got, want in (("parameter", state["params"], params), ("optimizer state", state["opt_state"], opt_state)):
        if set(got) != set(want):
            raise CorruptCheckpoint(f"{path} holds {kind} entries {sorted(got)}, but its config needs {sorted(want)}")
        for k in want:
            g, w = np.asarray(got[k]), np.asarray(want[k])
            if g.shape != w.shape or g.dtype != w.dtype:
                raise CorruptCheckpoint(
                    f"{path} holds {kind} {k!r} of shape {g.shape} and dtype {g.dtype}, but the network of its "
                    f"config needs shape {w.shape} and dtype {w.dtype} (a checkpoint of another network?)")
