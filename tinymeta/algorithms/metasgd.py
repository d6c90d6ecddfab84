r"""Meta-SGD: MAML with a learned per-parameter step vector, meta-trained with theta.

Li, Zhou, Chen and Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", arXiv:1707.09835, 2017 (section 3, Algorithm 1).

.. math::
    \theta'_i = \theta - \alpha \odot \nabla L_{S_i}(\theta),\qquad
    (\theta, \alpha) \leftarrow (\theta, \alpha) - \beta\, \nabla_{(\theta, \alpha)}
        \frac1T \sum_i L_{Q_i}(\theta'_i)

``alpha`` has the shape of ``theta``: it sets both the direction and the
size of the adaptation step. The exact meta-gradient is the inner-loop
recursion with ``P = alpha`` (inner_loop.py), which also yields
:math:`\partial/\partial P`; for one step:

.. math::
    u = \nabla L_{Q_i}(\theta'_i),\qquad
    \frac{\partial L_{Q_i}}{\partial \theta} = u - \nabla^2 L_{S_i}(\theta)\,(\alpha \odot u),\qquad
    \frac{\partial L_{Q_i}}{\partial \alpha} = -\nabla L_{S_i}(\theta) \odot u

Meta-SGD is a one-step method (REPRODUCTION-NOTES): a large share of the
learned steps end up negative, and repeating the step at test time can
diverge. ``inner_steps > 1`` is supported (the recursion is exact for any
number of steps) but is not the paper's method.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from . import inner_loop, protocol
from .maml import check_inputs

NAME = "metasgd"


@dataclass(frozen=True)
class Config:
    """Meta-SGD hyper-parameters (Li et al. 2017); the sinusoid set-up is Finn et al.'s."""

    inner_steps: int = 1  # "one step" of adaptation, at meta-training and test (section 3)
    alpha_init_low: float = 0.005  # alpha ~ U[0.005, 0.1] entrywise (section 4)
    alpha_init_high: float = 0.1

    def __post_init__(self):
        val.check_int(self.inner_steps, "inner_steps", minimum=0)
        low = val.check_float(self.alpha_init_low, "alpha_init_low", nonnegative=True)
        high = val.check_float(self.alpha_init_high, "alpha_init_high", nonnegative=True)
        if high < low:
            raise ValueError(f"alpha_init_high must be >= alpha_init_low = {low}, got {high}")


def meta_loss_and_grad(net, theta, alpha, batch, inner_steps=1):
    """Mean query loss after ``inner_steps`` steps ``theta - alpha * grad``, and its gradients.

    Parameters
    ----------
    net : MLP ; theta : (net.n_params,)
    alpha : (net.n_params,) the learned per-parameter steps (any sign)
    batch : TaskBatch with leading axis = task ; inner_steps : int >= 0

    Returns
    -------
    loss : float, mean over tasks of ``L_Q(theta_K)``
    d_theta : (net.n_params,) its exact gradient with respect to ``theta``
    d_alpha : (net.n_params,) its exact gradient with respect to ``alpha``
    """
    inner_steps = val.check_int(inner_steps, "inner_steps", minimum=0)
    theta, batch = check_inputs(net, theta, batch)
    alpha = val.as_float_array(alpha, "alpha", net.dtype, (net.n_params,))
    return inner_loop.meta_loss_and_grad(net, theta, batch, alpha, inner_steps)


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """``{"theta": net.init(rng), "alpha": U[low, high]}``, drawn in that order from ``rng``.

    ``theta`` is therefore the same vector ``maml.init_params`` draws from a
    generator in the same state.
    """
    val.check_rng(rng)
    theta = net.init(rng)
    alpha = rng.uniform(config.alpha_init_low, config.alpha_init_high, net.n_params).astype(net.dtype)
    return {"theta": theta, "alpha": alpha}


def meta_step(net, params, batch, config):
    """Meta-loss and meta-gradients ``{"theta": ..., "alpha": ...}`` of one meta-batch."""
    params, config = protocol.check_params(params, ("theta", "alpha")), protocol.check_config(config, Config)
    loss, d_theta, d_alpha = meta_loss_and_grad(net, params["theta"], params["alpha"], batch,
                                                config.inner_steps)
    return loss, {"theta": d_theta, "alpha": d_alpha}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Query outputs after ``0..steps`` steps ``theta - alpha * grad``: ``(steps+1, Q, d_out)``.

    Steps beyond the first repeat the learned step; they can diverge (NaN
    from the step a task diverges).
    """
    params, config = protocol.check_params(params, ("theta", "alpha")), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "theta", net.dtype, (net.n_params,))
    alpha = val.as_float_array(params["alpha"], "alpha", net.dtype, (net.n_params,))
    X_support, y_support, X_query = protocol.check_task(net, X_support, y_support, X_query)
    steps = val.check_int(steps, "steps", minimum=0)
    return inner_loop.predictions(net, theta, X_support, y_support, X_query, alpha, steps)
