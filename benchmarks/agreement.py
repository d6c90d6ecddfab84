"""Nobody is fast by being wrong: the float64 meta-gradients of every library must agree.

Every implementation computes its meta-gradient (and meta-loss, where the
algorithm has one) on the same ``theta`` and batch in float64; each is
compared with tinymeta's, or with PyTorch eager's where tinymeta's module
is not there yet, by the norm-wise relative error
``||a - b||_2 / max(||a||_2, ||b||_2)``. Summation order differs between
libraries, so agreement is to rounding (~1e-14 here), not bit for bit;
``TOLERANCE`` sits far above rounding and far below any real mistake (a
dropped second-order term changes MAML's meta-gradient by ~1e-3 relative).
"""
from __future__ import annotations

import numpy as np

TOLERANCE = 1e-8
REFERENCE_ORDER = ("tinymeta", "torch-eager", "torch.func", "jax")


def rel_error(a, b) -> float:
    """``||a - b||_2 / max(||a||_2, ||b||_2)``; 0 when both are 0, inf when shapes differ."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def compare(results: dict, tol: float = TOLERANCE) -> list:
    """Check every implementation of one workload against the reference.

    Parameters
    ----------
    results : {impl: (loss or None, grad (G,) float64)} for one workload,
        thread count and float64
    tol : largest relative error that passes

    Returns
    -------
    list of dicts ``{impl, reference, grad_rel_error, loss_rel_error,
    passed}``, one per implementation other than the reference (empty when
    fewer than two implementations ran).
    """
    present = [impl for impl in REFERENCE_ORDER if impl in results] + sorted(set(results) - set(REFERENCE_ORDER))
    if len(present) < 2:
        return []
    reference = present[0]
    ref_loss, ref_grad = results[reference]
    rows = []
    for impl in present[1:]:
        loss, grad = results[impl]
        grad_err = rel_error(grad, ref_grad)
        loss_err = None if loss is None or ref_loss is None else rel_error(loss, ref_loss)
        worst = max(grad_err, loss_err or 0.0)
        rows.append({"impl": impl, "reference": reference, "grad_rel_error": grad_err,
                     "loss_rel_error": loss_err, "passed": bool(np.isfinite(worst) and worst <= tol)})
    return rows
