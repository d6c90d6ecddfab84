r"""Reptile: train on each task for a few steps, then move theta towards the result.

Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms",
arXiv:1803.02999, 2018 (Algorithm 2, the batched version).

.. math::
    \tilde\theta_i = U^k_{S_i}(\theta),\qquad
    \theta \leftarrow \theta + \epsilon\, \frac1T \sum_i (\tilde\theta_i - \theta)

where :math:`U^k` is ``k`` steps of SGD (or Adam) on task ``i``'s support
set. No query loss is differentiated and no Hessian appears, yet for SGD
:math:`\theta - \tilde\theta_i = \alpha \sum_{j<k} \nabla L(\theta_j)` carries, to
:math:`O(\alpha^2)`, the same two terms as MAML's gradient (section 5;
notebook 04).

In the training-loop protocol ``meta_step`` returns the direction
:math:`\frac1T\sum_i(\theta - \tilde\theta_i)` as the "gradient" of ``theta``;
the trainer applies it with plain SGD at learning rate :math:`\epsilon`
(``outer_lr``), annealed linearly to 0 if ``anneal`` (``outer_lr_at``).
Its meta-loss is the mean query loss at :math:`\tilde\theta_i`, the quantity
MAML reports, so that learning curves of all gradient-based methods mean
the same thing; Reptile does not descend it directly.

Defaults are the sinusoid demonstration of the paper's blog post. Its
few-shot classification runs (reference code README, 5-way 5-shot Omniglot)
use instead: Adam with beta1 = 0, lr 0.0015, 5 inner steps on batches of
10, outer step 0.7 annealed to 0, 5 tasks per meta-batch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .. import optim
from .. import validation as val
from . import inner_loop, meta_batch, protocol
from .maml import check_inputs

NAME = "reptile"
INNER_OPTIMIZERS = ("sgd", "adam")
OUTER_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Config:
    """Reptile hyper-parameters; defaults from the sinusoid demo of Nichol et al.
    (openai.com/research/reptile, 2018) unless marked."""

    inner_lr: float = 0.02  # "innerstepsize = 0.02"
    inner_steps: int = 5  # one epoch over the task's 50 points in minibatches of 10
    inner_batch_size: int | None = None  # ours: the whole support set each step (the demo's 10 points)
    inner_optimizer: str = "sgd"  # the demo's plain SGD; "adam" as in the classification runs
    adam_beta1: float = 0.0  # inner Adam without momentum (reference code, models.py)
    adam_beta2: float = 0.999  # Adam's default (Kingma and Ba 2015)
    outer_optimizer: str = "sgd"  # Algorithm 2: theta += eps * mean(theta_tilde - theta)
    outer_lr: float = 0.1  # eps: "outerstepsize0 = 0.1"
    anneal: bool = True  # eps -> 0 linearly: "outerstepsize0 * (1 - frac_done)"; README runs: --meta-step-final 0

    def __post_init__(self):
        val.check_float(self.inner_lr, "inner_lr", positive=True)
        val.check_int(self.inner_steps, "inner_steps", minimum=1)
        if self.inner_batch_size is not None:
            val.check_int(self.inner_batch_size, "inner_batch_size", minimum=1)
        for name, allowed in (("inner_optimizer", INNER_OPTIMIZERS), ("outer_optimizer", OUTER_OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        optim.Adam(self.inner_lr, self.adam_beta1, self.adam_beta2)  # validates the betas
        val.check_float(self.outer_lr, "outer_lr", positive=True)
        if not isinstance(self.anneal, bool):
            raise TypeError(f"anneal must be a bool, got {type(self.anneal).__name__}")


def outer_lr_at(config, step, n_steps):
    r"""The outer step :math:`\epsilon` at meta-iteration ``step`` of ``n_steps`` (0-based).

    .. math:: \epsilon_t = \epsilon_0 (1 - t / n) \text{ if anneal, else } \epsilon_0
    """
    n_steps = val.check_int(n_steps, "n_steps", minimum=1)
    step = val.check_int(step, "step", minimum=0)
    if step >= n_steps:
        raise ValueError(f"step must be < n_steps = {n_steps}, got {step}")
    return config.outer_lr * (1 - step / n_steps) if config.anneal else config.outer_lr


def iterates(net, theta, X, y, config):
    r"""Yield :math:`\theta_0 = \theta, \theta_1, \dots`: SGD or Adam steps on ``(X, y)``.

    Step ``j`` uses rows ``j*b .. j*b+b-1`` (mod ``n``) for ``b = inner_batch_size``,
    or all rows if it is None. Adam's state starts fresh for every task.
    Ends at the first non-finite iterate, which is not yielded.
    """
    n = X.shape[0]
    b = _batch_size(n, config)
    adam = optim.Adam(config.inner_lr, config.adam_beta1, config.adam_beta2)
    state = adam.init({"theta": theta}) if config.inner_optimizer == "adam" else None
    for j in itertools.count():
        yield theta
        rows = np.arange(j * b, j * b + b) % n
        g = net.loss_and_grad(theta, X[rows], y[rows])[1]
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected just below
            if state is None:
                theta = theta - config.inner_lr * g
            else:
                new, state = adam.update({"theta": theta}, {"theta": g}, state)
                theta = new["theta"]
        if not np.all(np.isfinite(theta)):
            return


def adapt(net, theta, X, y, config, steps=None):
    """``theta`` after ``steps`` (default ``inner_steps``) inner steps on ``(X, y)``.

    Raises ``FloatingPointError`` if the inner loop diverges (non-finite parameters).
    """
    steps = config.inner_steps if steps is None else val.check_int(steps, "steps", minimum=0)
    for k, theta_k in enumerate(iterates(net, theta, X, y, config)):
        if k == steps:
            return theta_k
    _diverged(k, steps, config)


def _diverged(k, steps, config):
    raise FloatingPointError(f"the Reptile inner loop diverged at step {k + 1} of {steps} "
                             f"(non-finite parameters); lower inner_lr = {config.inner_lr}")


def _batch_size(n, config):
    """Rows per inner step for a support set of ``n`` rows."""
    b = n if config.inner_batch_size is None else config.inner_batch_size
    if b > n:
        raise ValueError(f"inner_batch_size must be <= the support size {n}, got {b}")
    return b


def _compiled(net, config):
    """Whether the compiled batched path serves this net and config (plain SGD inner steps)."""
    return config.inner_optimizer == "sgd" and meta_batch.supports(net)


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}``."""
    return {"theta": net.init(rng)}


def meta_step(net, params, batch, config):
    r"""Mean query loss at the adapted parameters, and the update direction
    :math:`\frac1T \sum_i (\theta - \tilde\theta_i)` under the key ``"theta"``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta, batch = check_inputs(net, params["theta"], batch)
    if _compiled(net, config):  # one compiled call for every task (meta_batch.batched_adapt)
        adapted, diverged_at, losses = meta_batch.batched_adapt(
            net, theta, batch.X_support, batch.y_support, np.full_like(theta, config.inner_lr),
            config.inner_steps, _batch_size(batch.X_support.shape[1], config), batch.X_query, batch.y_query)
        if (diverged_at >= 0).any():
            k = diverged_at[np.argmax(diverged_at >= 0)] - 1
            _diverged(k, config.inner_steps, config)
        # task by task, in order, as in the loop below
        direction, loss = meta_batch.steps_sum(theta, adapted), sum(losses.tolist())
        return loss / batch.n_tasks, {"theta": direction / batch.n_tasks}
    loss, direction = 0.0, np.zeros_like(theta)
    for i in range(batch.n_tasks):
        X_support, y_support, X_query, y_query = batch.task(i)
        adapted = adapt(net, theta, X_support, y_support, config)
        direction += theta - adapted
        loss += net.loss(adapted, X_query, y_query)
    return loss / batch.n_tasks, {"theta": direction / batch.n_tasks}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Query outputs after ``0..steps`` inner steps: ``(steps+1, Q, d_out)``, NaN once diverged.

    Stacked tasks (``X_support`` of shape ``(T, K, d_in)``) give ``(T, steps+1, Q, d_out)``;
    with plain full-batch SGD in one compiled call (``inner_loop.predictions``).
    """
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "theta", net.dtype, (net.n_params,))
    steps = val.check_int(steps, "steps", minimum=0)
    if np.ndim(X_support) == 3:
        if _compiled(net, config) and config.inner_batch_size in (None, np.shape(X_support)[1]):
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected just below
                out = inner_loop.predictions(net, theta, X_support, y_support, X_query,
                                             np.full_like(theta, config.inner_lr), steps)
            for task in out:  # a step with any non-finite output is NaN, and so is every later one
                bad = ~np.isfinite(task).all(axis=(1, 2))
                if bad.any():
                    task[np.argmax(bad):] = np.nan
            return out
        return np.stack([predict(net, params, X_support[i], y_support[i], X_query[i], steps, config)
                         for i in range(len(X_support))])
    X_support, y_support, X_query = protocol.check_task(net, X_support, y_support, X_query)
    out = []
    for theta_k in iterates(net, theta, X_support, np.asarray(y_support), config):
        out.append(net.forward(theta_k, X_query))
        if len(out) == steps + 1 or not np.all(np.isfinite(out[-1])):
            break
    out = np.concatenate([np.stack(out), np.full((steps + 1 - len(out), *out[0].shape), np.nan, out[0].dtype)])
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        out[np.argmax(bad):] = np.nan
    return out
