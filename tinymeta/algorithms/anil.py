r"""ANIL (Almost No Inner Loop): MAML whose inner loop adapts only the head.

Raghu, Raghu, Bengio and Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020 (section 4, ANIL).

The network's last layer ``(W_L, b_L)`` is the head; everything before it
is the body. The inner loop updates the head only; the outer loop updates
both:

.. math::
    \theta_{k+1} = \theta_k - \alpha\, m \odot \nabla L_{S_i}(\theta_k),\qquad
    m = [\,0_{\text{body}};\ 1_{\text{head}}\,]

This is inner_loop.py with ``P = alpha * m``. The body still receives an
exact meta-gradient: the adapted head depends on the body through
:math:`\nabla L_{S_i}`, and the recursion carries it,

.. math::
    u \leftarrow u - \nabla^2 L_{S_i}(\theta_k)\, (\alpha\, m \odot u)

where the Hessian-vector product has a direction supported on the head but
returns all rows, body included (the body-head block of the Hessian).
``first_order=True`` drops that term, as FOMAML does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from . import inner_loop, protocol
from .maml import check_inputs

NAME = "anil"


@dataclass(frozen=True)
class Config:
    """ANIL hyper-parameters. Raghu et al. (2020) keep MAML's, here the sinusoid ones
    of Finn et al. 2017, section 5.1."""

    inner_lr: float = 0.01  # alpha, as MAML's "fixed step size alpha = 0.01" (Finn et al., section 5.1)
    inner_steps: int = 1  # as MAML at meta-training (Finn et al., section 5.1)
    first_order: bool = False

    def __post_init__(self):
        val.check_float(self.inner_lr, "inner_lr", positive=True)
        val.check_int(self.inner_steps, "inner_steps", minimum=0)


def head_mask(net):
    """``m`` of shape ``(net.n_params,)``: 1 on the last layer's ``W`` and ``b``, 0 elsewhere."""
    mask = np.zeros(net.n_params, dtype=net.dtype)
    mask[net.layer_offsets[-2]:] = 1
    return mask


def preconditioner(net, config):
    """The inner loop's step vector ``P = alpha * head_mask(net)``, used by ``predict`` and batched evaluation."""
    return config.inner_lr * head_mask(net)


def meta_loss_and_grad(net, theta, batch, inner_lr=0.01, inner_steps=1, first_order=False, mask=None):
    """Mean query loss after ``inner_steps`` head-only SGD steps, and its gradient.

    Parameters
    ----------
    net : MLP ; theta : (net.n_params,)
    batch : TaskBatch with leading axis = task
    inner_lr : float > 0 ; inner_steps : int >= 0 ; first_order : bool
    mask : (net.n_params,) of 0s and 1s, optional
        The parameters the inner loop adapts; ``head_mask(net)`` by default.
        (All ones is MAML.)

    Returns
    -------
    (float, (net.n_params,) array): mean over tasks of ``L_Q(theta_K)`` and
    its exact gradient with respect to every entry of ``theta``.
    """
    config = Config(inner_lr, inner_steps, protocol.check_flag(first_order, "first_order"))
    theta, batch = check_inputs(net, theta, batch)
    mask = head_mask(net) if mask is None else check_mask(net, mask)
    loss, d_theta, _ = inner_loop.meta_loss_and_grad(net, theta, batch, config.inner_lr * mask,
                                                     config.inner_steps, config.first_order, precond_grad=False)
    return loss, d_theta


def check_mask(net, mask):
    """A validated 0/1 mask of shape ``(net.n_params,)`` (bool, int or float), as ``net.dtype``."""
    if isinstance(mask, np.ndarray) and mask.dtype.kind in "biu":
        mask = mask.astype(net.dtype)
    mask = val.as_float_array(mask, "mask", net.dtype, (net.n_params,))
    if not np.isin(mask, (0, 1)).all():
        bad = mask[~np.isin(mask, (0, 1))][0]
        raise ValueError(f"mask must hold only 0s and 1s, got {bad}")
    return mask


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}`` (body and head are both meta-learned)."""
    return {"theta": net.init(rng)}


def meta_step(net, params, batch, config):
    """Meta-loss and meta-gradient of one meta-batch, keyed like ``params``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    loss, grad = meta_loss_and_grad(net, params["theta"], batch, config.inner_lr, config.inner_steps,
                                    config.first_order)
    return loss, {"theta": grad}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Query outputs after ``0..steps`` head-only SGD steps: ``(steps+1, Q, d_out)``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "theta", net.dtype, (net.n_params,))
    X_support, y_support, X_query = protocol.check_task(net, X_support, y_support, X_query)
    steps = val.check_int(steps, "steps", minimum=0)
    return inner_loop.predictions(net, theta, X_support, y_support, X_query,
                                  preconditioner(net, config), steps)
