"""Files a training run writes: atomic, pickle-free, loadable without running code.

A checkpoint is one ``.npz`` (read with ``allow_pickle=False``) holding

* ``param/<key>``: the meta-parameters (``{"theta": ...}``, Meta-SGD's ``alpha`` ...);
* ``opt/<key>``: the outer optimizer's state (``tinymeta.optim`` states are dicts of arrays);
* ``rng``: the data generator's ``bit_generator.state`` as JSON text;
* ``config``: the full run configuration as JSON text;
* ``scalars``: JSON text of the loop's counters (iteration, wall time, running sums).

Every file is written to a temporary file in the same directory, flushed
and fsync-ed, then renamed over the target (``os.replace`` is atomic), so
that an interruption leaves either the old file or the new one, never a
torn one.
"""
from __future__ import annotations

import io
import json
import os
import secrets

import numpy as np

# Bit generators a checkpoint may name; loading never looks up anything else.
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


def save(path, params: dict, opt_state: dict, rng: np.random.Generator, config: dict, scalars: dict) -> None:
    """Write a checkpoint atomically (see the module docstring for its layout)."""
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"opt/{k}": np.asarray(v) for k, v in opt_state.items()})
    arrays["rng"] = np.array(rng_to_json(rng))
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    arrays["scalars"] = np.array(json.dumps(scalars, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def load(path) -> dict:
    """Read a checkpoint: ``{"params", "opt_state", "rng", "config", "scalars"}``."""
    with np.load(path, allow_pickle=False) as f:
        missing = {"rng", "config", "scalars"} - set(f.files)
        if missing:
            raise ValueError(f"{path} is not a tinymeta checkpoint: missing {sorted(missing)}")
        params = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
        opt_state = {k[len("opt/"):]: f[k] for k in f.files if k.startswith("opt/")}
        return {"params": params, "opt_state": opt_state, "rng": rng_from_json(str(f["rng"])),
                "config": json.loads(str(f["config"])), "scalars": json.loads(str(f["scalars"]))}
