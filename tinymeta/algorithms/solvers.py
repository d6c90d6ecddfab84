r"""Conjugate gradient and line-search Newton-CG, on Hessian-vector products only.

iMAML (imaml.py) uses both: Newton-CG to solve its proximal inner problem,
and conjugate gradient for its implicit meta-gradient
:math:`(I + H/\lambda)^{-1} g`. Neither ever forms a matrix; the matrix is
a function ``matvec(v)`` (for a network, ``net.hvp``).

Conjugate gradient (Hestenes and Stiefel 1952; Nocedal and Wright,
*Numerical Optimization*, Algorithm 5.2) for a symmetric positive definite
``A``, from ``x = 0, r = p = b``:

.. math::
    a = \frac{r^\top r}{p^\top A p},\quad x \mathrel{+}= a\, p,\quad
    r \mathrel{-}= a\, A p,\quad p \leftarrow r + \frac{r_{\text{new}}^\top r_{\text{new}}}{r^\top r}\, p

Line-search Newton-CG (Nocedal and Wright, Algorithm 7.1) on ``f``: solve
:math:`\nabla^2 f\, d = -\nabla f` by CG to the relative tolerance
:math:`\min(1/2, \sqrt{\|\nabla f\|})`, stopping early at negative curvature;
then backtrack from step 1 until :math:`f` decreases enough (Armijo).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

ARMIJO = 1e-4  # sufficient-decrease constant (Nocedal and Wright, section 3.1)
MAX_HALVINGS = 40  # steps 1, 1/2, ..., 2^-40 before the line search gives up
ROUNDING_ULPS = 8  # near a minimum f changes by less than rounding: allow 8 ulps of |f|


class CGResult(NamedTuple):
    """``iterations`` run, final relative ``residual`` ``|r| / |b|``, ``converged``
    (residual <= tol), ``negative_curvature`` (``p.Ap <= 0`` met: ``A`` is not positive definite)."""

    iterations: int
    residual: float
    converged: bool
    negative_curvature: bool


def conjugate_gradient(matvec, b, tol, max_iter):
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given by ``matvec``.

    Stops when ``|r| <= tol * |b|`` (``r = b - A x``, updated recursively),
    after ``max_iter`` iterations, or at negative curvature ``p.Ap <= 0``;
    in every case it returns the iterate reached and says why it stopped.

    Parameters
    ----------
    matvec : callable (n,) -> (n,) ; b : (n,) ; tol : float > 0 ; max_iter : int >= 1

    Returns
    -------
    x : (n,) ; CGResult
    """
    x, r = np.zeros_like(b), b.copy()
    p, rr = r.copy(), float(r @ r)
    b_norm = np.sqrt(rr)
    if b_norm == 0:
        return x, CGResult(0, 0.0, True, False)
    for i in range(max_iter):
        if np.sqrt(rr) <= tol * b_norm:
            return x, CGResult(i, np.sqrt(rr) / b_norm, True, False)
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if not pAp > 0:
            return x, CGResult(i, np.sqrt(rr) / b_norm, False, True)
        a = rr / pAp
        x += a * p
        r -= a * Ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, CGResult(max_iter, np.sqrt(rr) / b_norm, bool(np.sqrt(rr) <= tol * b_norm), False)


def newton_cg_iterates(fun_and_grad, hvp, x0, cg_max_iter):
    """Yield ``(x_k, |grad f(x_k)|)`` for ``k = 0, 1, ...`` of line-search Newton-CG from ``x0``.

    Parameters
    ----------
    fun_and_grad : callable x -> (float, (n,)) ; hvp : callable (x, v) -> (n,)
    x0 : (n,) ; cg_max_iter : int >= 1, CG iterations per Newton step

    The generator ends when the gradient is zero or non-finite, or when no
    step of the line search decreases ``f``; ``f`` never increases (beyond
    rounding) along the iterates. The caller decides when to stop.
    """
    x, (f, g) = x0, fun_and_grad(x0)
    while True:
        g_norm = float(np.linalg.norm(g))
        yield x, g_norm
        if not np.isfinite(g_norm) or g_norm == 0:
            return
        d, _ = conjugate_gradient(lambda v, x=x: hvp(x, v), -g, min(0.5, np.sqrt(g_norm)), cg_max_iter)
        if not d.any():  # negative curvature at the first CG step: steepest descent
            d = -g
        slope, slack, t = float(g @ d), ROUNDING_ULPS * np.finfo(x.dtype).eps * abs(f), 1.0
        for _ in range(MAX_HALVINGS):
            trial = x + t * d
            if np.all(np.isfinite(trial)):
                f_trial, g_trial = fun_and_grad(trial)
                if f_trial <= f + ARMIJO * t * slope + slack:
                    break
            t /= 2
        else:
            return
        x, f, g = trial, f_trial, g_trial
