"""Atomic writes for the benchmark's outputs: the library's own (``tinymeta.checkpoint.atomic_write``:
temporary file, fsync, rename, fsync of the folder)."""
from __future__ import annotations

import io

import numpy as np

from tinymeta.checkpoint import atomic_write


def write_text(path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def write_npz(path, arrays: dict) -> None:
    """``np.savez`` of plain numeric arrays (read back with ``allow_pickle=False``)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())
