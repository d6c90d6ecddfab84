r"""One inner loop for the whole gradient-based family (DESIGN.md section 3).

Every gradient-based meta-learner adapts with preconditioned gradient steps
on the support loss and is scored by the query loss after adaptation:

.. math::
    \theta_0 = \theta,\qquad
    \theta_{k+1} = \theta_k - P \odot \nabla L_S(\theta_k),\qquad
    \mathcal L = L_Q(\theta_K)

Its exact gradient runs backwards through the ``K`` steps with
Hessian-vector products; no Hessian is ever formed. Since
:math:`\partial\theta_{k+1}/\partial\theta_k = I - \nabla^2 L_S(\theta_k)\,\mathrm{diag}(P)`
and :math:`\partial\theta_{k+1}/\partial P = -\mathrm{diag}(\nabla L_S(\theta_k))`:

.. math::
    u \leftarrow \nabla L_Q(\theta_K);\quad
    \text{for } k = K-1, \dots, 0:\quad
    \bar P \mathrel{-}= \nabla L_S(\theta_k) \odot u,\quad
    u \leftarrow u - \nabla^2 L_S(\theta_k)\,(P \odot u)

and then :math:`\partial\mathcal L/\partial\theta = u`,
:math:`\partial\mathcal L/\partial P = \bar P`. ``first_order=True`` drops
the Hessian term (FOMAML): ``u`` stays :math:`\nabla L_Q(\theta_K)`.

The algorithms differ only in ``P``: MAML ``alpha * 1``, Meta-SGD a learned
vector, ANIL ``alpha`` times a mask of the head. ``model`` is anything with
``loss_and_grad(theta, X, y)`` and ``hvp(theta, X, y, v)``: an ``MLP``, or
an adapter whose parameter vector includes extra variables (CAVIA's context).

``meta_loss_and_grad`` and ``predictions`` run the whole meta-batch in one
compiled call (``meta_batch.py``, ``tinymeta.nn.meta_kernels``) when the
model is a plain ``MLP`` on the ``"numba"`` backend (``meta_loss_and_grad``
on large meta-batches: ``low_rank.py``, stacked BLAS products and low-rank
per-task terms); the readable loops
over tasks, ``reference_meta_loss_and_grad`` and ``reference_predictions``,
are what they compute and what the tests pin them to.
"""
from __future__ import annotations

import numpy as np

from . import low_rank, meta_batch


def adapt(model, theta, X, y, precond, steps):
    """Run ``steps`` preconditioned gradient steps on ``(X, y)``.

    Parameters
    ----------
    model : MLP or adapter ; theta : (P,) ; X, y : one task's support set
    precond : (P,) the per-parameter step ``P`` ; steps : int ``K >= 0``

    Returns
    -------
    thetas : list of ``K + 1`` arrays ``theta_0 .. theta_K``
    grads : list of ``K`` arrays ``grad L_S(theta_0) .. grad L_S(theta_{K-1})``
    """
    thetas, grads = [theta], []
    for _ in range(steps):
        grads.append(model.loss_and_grad(thetas[-1], X, y)[1])
        thetas.append(thetas[-1] - precond * grads[-1])
    return thetas, grads


def task_meta_loss_and_grad(model, theta, X_support, y_support, X_query, y_query,
                            precond, steps, first_order=False):
    """Query loss after adaptation on one task, and its exact gradient.

    Returns
    -------
    loss : float, ``L_Q(theta_K)``
    d_theta : (P,) ``dL_Q(theta_K) / d theta``
    d_precond : (P,) ``dL_Q(theta_K) / d P``
    """
    thetas, grads = adapt(model, theta, X_support, y_support, precond, steps)
    loss, u = model.loss_and_grad(thetas[-1], X_query, y_query)
    d_precond = np.zeros_like(theta)
    for k in reversed(range(steps)):
        d_precond -= grads[k] * u
        if not first_order:
            u = u - model.hvp(thetas[k], X_support, y_support, precond * u)
    return loss, u, d_precond


def meta_loss_and_grad(model, theta, batch, precond, steps, first_order=False, precond_grad=True):
    """Mean over the tasks of ``batch`` of ``task_meta_loss_and_grad``.

    A large meta-batch: ``low_rank.meta_loss_and_grad`` (shared products
    stacked over the tasks, when ``low_rank.applies``); else the
    compiled path (``meta_batch.meta_loss_and_grad``) when
    ``meta_batch.supports`` the model and batch; else
    ``reference_meta_loss_and_grad``. All give the same numbers (to rounding).
    ``precond_grad=False``: the gradient wrt ``P`` is not needed (None is
    returned in its place; the compiled path then skips it).

    Returns
    -------
    (float, (P,), (P,) or None): mean query loss, its gradient wrt ``theta`` and wrt ``P``.
    """
    if low_rank.applies(model, batch, precond, steps, precond_grad):
        loss, d_theta = low_rank.meta_loss_and_grad(model, theta, batch, precond, steps, first_order)
        return loss, d_theta, None
    if meta_batch.supports(model, batch.X_support, batch.y_support, batch.X_query, batch.y_query):
        return meta_batch.meta_loss_and_grad(model, theta, batch, precond, steps, first_order, precond_grad)
    loss, d_theta, d_precond = reference_meta_loss_and_grad(model, theta, batch, precond, steps, first_order)
    return loss, d_theta, d_precond if precond_grad else None


def reference_meta_loss_and_grad(model, theta, batch, precond, steps, first_order=False):
    """Mean over the tasks of ``batch`` of ``task_meta_loss_and_grad``: a loop over tasks.

    Returns
    -------
    (float, (P,), (P,)): mean query loss, its gradient wrt ``theta`` and wrt ``P``.
    """
    loss, d_theta, d_precond = 0.0, np.zeros_like(theta), np.zeros_like(theta)
    for i in range(batch.n_tasks):
        l_i, g_i, p_i = task_meta_loss_and_grad(model, theta, *batch.task(i), precond, steps, first_order)
        loss += l_i
        d_theta += g_i
        d_precond += p_i
    T = batch.n_tasks
    return loss / T, d_theta / T, d_precond / T


def predictions(model, theta, X_support, y_support, X_query, precond, steps):
    """Query predictions after ``0, 1, ..., steps`` adaptation steps.

    One task (``X_support`` of shape ``(K, d_in)``): ``reference_predictions``.
    Stacked tasks (``(T, K, d_in)``, leading axis = task) give
    ``(T, steps + 1, Q, d_out)``: through ``low_rank.predictions`` (the
    adapted weights kept as terms) when ``low_rank.predicts``, else in one
    compiled call when ``meta_batch.supports`` the model, else task by task.

    Returns
    -------
    (steps + 1, Q, d_out) array, or (T, steps + 1, Q, d_out) for stacked tasks
    """
    if np.ndim(X_support) == 3:
        if low_rank.predicts(model, X_support, y_support, X_query, precond, steps):
            return low_rank.predictions(model, theta, X_support, y_support, X_query, precond, steps)
        if meta_batch.supports(model, X_support, y_support, X_query):
            return meta_batch.predictions(model, theta, X_support, y_support, X_query, precond, steps)
        return np.stack([reference_predictions(model, theta, X_support[i], y_support[i], X_query[i],
                                               precond, steps) for i in range(len(X_support))])
    return reference_predictions(model, theta, X_support, y_support, X_query, precond, steps)


def reference_predictions(model, theta, X_support, y_support, X_query, precond, steps):
    """Query predictions of one task after ``0, 1, ..., steps`` adaptation steps.

    A task whose adaptation diverges (non-finite parameters) gets NaN
    predictions from that step on, so that evaluation can count it.

    Returns
    -------
    (steps + 1, Q, d_out) array
    """
    out = [model.forward(theta, X_query)]
    for _ in range(steps):
        if not np.all(np.isfinite(out[-1])):
            break
        with np.errstate(over="ignore", invalid="ignore"):  # 0 * inf, overflow: a divergence, caught below
            theta = theta - precond * model.loss_and_grad(theta, X_support, y_support)[1]
        if not np.all(np.isfinite(theta)):
            break
        out.append(model.forward(theta, X_query))
    while len(out) < steps + 1:
        out.append(np.full_like(out[0], np.nan))
    return np.stack(out)
