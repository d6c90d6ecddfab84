r"""iMAML: implicit MAML, a proximal inner problem and its implicit meta-gradient.

Rajeswaran, Finn, Kakade and Levine, "Meta-Learning with Implicit
Gradients", NeurIPS 2019 (sections 3.1-3.2, Algorithms 1-2).

Each task adapts by solving a proximal problem around ``theta``; the
outer loop descends the query loss at its solution:

.. math::
    \phi_i^*(\theta) = \arg\min_\phi\; G_i(\phi) = L_{S_i}(\phi) + \frac\lambda2 \|\phi - \theta\|^2,
    \qquad \theta \leftarrow \theta - \beta\, \frac1T \sum_i \frac{d L_{Q_i}(\phi_i^*)}{d\theta}

At the solution :math:`\nabla L_{S_i}(\phi^*) + \lambda(\phi^* - \theta) = 0`; differentiating
in ``theta`` gives :math:`d\phi^*/d\theta = (I + H/\lambda)^{-1}` with
:math:`H = \nabla^2 L_{S_i}(\phi^*)`, so the meta-gradient needs neither the
inner path nor its length:

.. math::
    \frac{d L_{Q_i}(\phi^*)}{d\theta} = \Big(I + \frac{H}{\lambda}\Big)^{-1} \nabla L_{Q_i}(\phi^*)

solved by conjugate gradient with Hessian-vector products (solvers.py).

Inner solver (documented choice): Newton-CG with a backtracking line search,
the paper's "Hessian-free" inner optimiser, started at ``phi = theta`` and
stopped when :math:`\|\nabla G(\phi)\| \le` ``inner_tol`` (then
:math:`\|\phi - \phi^*\| \lesssim` ``inner_tol`` / :math:`\mu`, where
:math:`\mu = \lambda + \lambda_{\min}(H) > 0` bounds G's curvature from below). Both
solvers are capped; a solve that misses its tolerance raises
``ConvergenceError`` naming the task, the residual reached and the cap.

The implicit gradient assumes ``G`` twice differentiable at its minimiser:
use a smooth activation (tanh, softplus). With ReLU the minimiser can sit on
a kink, where :math:`\|\nabla G\|` does not vanish and the inner solve
cannot meet its tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import validation as val
from . import protocol, solvers
from .maml import check_inputs

NAME = "imaml"


@dataclass(frozen=True)
class Config:
    """iMAML hyper-parameters. lam is the paper's reference setting; the tolerances and
    caps are ours (the paper runs fixed iteration counts: 16 inner steps, 5 CG steps)."""

    lam: float = 2.0  # lambda: reference command for Omniglot 5-way 1-shot (aravindr93/imaml_dev, --lam 2.0)
    inner_tol: float = 1e-6  # ours: |grad G(phi)| at which the inner solve stops
    inner_max_steps: int = 50  # ours: Newton-CG steps allowed (sinusoid, tanh, lam = 2: at most 33 seen)
    cg_tol: float = 1e-6  # ours: relative residual |b - A x| / |b| of every CG solve
    cg_max_iter: int = 100  # ours: CG iterations allowed per solve (sinusoid, tanh, lam = 2: at most 51 seen)

    def __post_init__(self):
        val.check_float(self.lam, "lam", positive=True)
        val.check_float(self.inner_tol, "inner_tol", positive=True)
        val.check_int(self.inner_max_steps, "inner_max_steps", minimum=0)
        val.check_float(self.cg_tol, "cg_tol", positive=True)
        val.check_int(self.cg_max_iter, "cg_max_iter", minimum=1)


class ConvergenceError(RuntimeError):
    """An inner solve or a CG solve missed its tolerance within its cap."""


class SolveReport(NamedTuple):
    """One task: Newton-CG ``inner_steps`` and final ``inner_residual`` ``|grad G|``, then the
    implicit-gradient CG solve (``solvers.CGResult``)."""

    inner_steps: int
    inner_residual: float
    inner_converged: bool
    cg: solvers.CGResult


def proximal_objective(net, theta, X, y, lam):
    """``(G, grad G)`` and ``hvp`` of ``G(phi) = L(phi) + lam/2 |phi - theta|^2`` on ``(X, y)``."""
    def fun_and_grad(phi):
        loss, grad = net.loss_and_grad(phi, X, y)
        diff = phi - theta
        return loss + 0.5 * lam * float(diff @ diff), grad + lam * diff

    return fun_and_grad, lambda phi, v: net.hvp(phi, X, y, v) + lam * v


def solve_inner(net, theta, X, y, config):
    """``(phi, steps, |grad G(phi)|)``: Newton-CG on ``G`` from ``theta`` until ``inner_tol``
    or ``inner_max_steps``."""
    iterates = solvers.newton_cg_iterates(*proximal_objective(net, theta, X, y, config.lam), theta,
                                          config.cg_max_iter)
    for steps, (phi, g_norm) in enumerate(iterates):
        if g_norm <= config.inner_tol or steps == config.inner_max_steps:
            break
    return phi, steps, g_norm


def task_meta_loss_and_grad(net, theta, X_support, y_support, X_query, y_query, config):
    """``(L_Q(phi*), (I + H/lam)^-1 grad L_Q(phi*), SolveReport)`` for one task."""
    phi, steps, g_norm = solve_inner(net, theta, X_support, y_support, config)
    loss, g = net.loss_and_grad(phi, X_query, y_query)
    lam = config.lam
    grad, cg = solvers.conjugate_gradient(lambda v: v + net.hvp(phi, X_support, y_support, v) / lam, g,
                                          config.cg_tol, config.cg_max_iter)
    return loss, grad, SolveReport(steps, g_norm, g_norm <= config.inner_tol, cg)


def meta_loss_grad_and_report(net, theta, batch, config):
    """Mean query loss, its implicit gradient, and one ``SolveReport`` per task; never raises
    on a missed tolerance (``meta_loss_and_grad`` does)."""
    theta, batch = check_inputs(net, theta, batch)
    loss, grad, reports = 0.0, np.zeros_like(theta), []
    for i in range(batch.n_tasks):
        l_i, g_i, report = task_meta_loss_and_grad(net, theta, *batch.task(i), config)
        loss, grad = loss + l_i, grad + g_i
        reports.append(report)
    return loss / batch.n_tasks, grad / batch.n_tasks, reports


def meta_loss_and_grad(net, theta, batch, lam=2.0, inner_tol=1e-6, inner_max_steps=50, cg_tol=1e-6,
                       cg_max_iter=100):
    """Mean query loss at the proximal solutions, and its implicit gradient.

    Parameters
    ----------
    net : MLP ; theta : (net.n_params,) ; batch : TaskBatch (leading axis = task)
    lam, inner_tol, inner_max_steps, cg_tol, cg_max_iter : see ``Config``

    Returns
    -------
    (float, (net.n_params,) array)

    Raises
    ------
    ConvergenceError
        If a task's inner solve or CG solve misses its tolerance.
    """
    config = Config(lam, inner_tol, inner_max_steps, cg_tol, cg_max_iter)
    loss, grad, reports = meta_loss_grad_and_report(net, theta, batch, config)
    check_reports(reports, config)
    return loss, grad


def check_reports(reports, config):
    """Raise ``ConvergenceError`` for the first task whose solves missed their tolerance."""
    for i, r in enumerate(reports):
        if not r.inner_converged:
            raise ConvergenceError(
                f"iMAML task {i}: the inner solve reached |grad G| = {r.inner_residual:.3g} after {r.inner_steps} "
                f"Newton-CG steps, above inner_tol = {config.inner_tol} (inner_max_steps = "
                f"{config.inner_max_steps}); raise inner_max_steps or lam, or loosen inner_tol (with ReLU the "
                f"minimiser can sit on a kink, where |grad G| never vanishes: use a smooth activation)")
        if r.cg.negative_curvature:
            raise ConvergenceError(
                f"iMAML task {i}: I + H/lam is not positive definite at the inner solution (CG met "
                f"negative curvature after {r.cg.iterations} iterations, lam = {config.lam}); raise lam")
        if not r.cg.converged:
            raise ConvergenceError(
                f"iMAML task {i}: conjugate gradient reached relative residual {r.cg.residual:.3g} after "
                f"{r.cg.iterations} iterations, above cg_tol = {config.cg_tol} (cg_max_iter = "
                f"{config.cg_max_iter}); raise cg_max_iter or loosen cg_tol")


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}``."""
    return {"theta": net.init(rng)}


def meta_step(net, params, batch, config):
    """Meta-loss and implicit meta-gradient of one meta-batch; raises ``ConvergenceError``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    loss, grad, reports = meta_loss_grad_and_report(net, params["theta"], batch, config)
    check_reports(reports, config)
    return loss, {"theta": grad}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Query outputs after ``0..steps`` Newton-CG steps on ``G``: ``(steps+1, Q, d_out)``.

    Once the solve stops (tolerance met exactly, or no decrease possible) the
    last outputs repeat; non-finite outputs become NaN from that step on.
    """
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "theta", net.dtype, (net.n_params,))
    X_support, y_support, X_query = protocol.check_task(net, X_support, y_support, X_query)
    steps = val.check_int(steps, "steps", minimum=0)
    out = []
    fun_and_grad, hvp = proximal_objective(net, theta, X_support, y_support, config.lam)
    for phi, _ in solvers.newton_cg_iterates(fun_and_grad, hvp, theta, config.cg_max_iter):
        out.append(net.forward(phi, X_query))
        if len(out) == steps + 1 or not np.all(np.isfinite(out[-1])):
            break
    out.extend(out[-1:] * (steps + 1 - len(out)))
    out = np.stack(out)
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        out[np.argmax(bad):] = np.nan
    return out
