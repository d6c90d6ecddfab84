r"""MAML: Model-Agnostic Meta-Learning, exact second order; FOMAML is a flag.

Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", ICML 2017 (Algorithm 2; eq. 1 iterated K times).

.. math::
    \theta'_i = \theta_K,\quad
    \theta_{k+1} = \theta_k - \alpha \nabla L_{S_i}(\theta_k),\quad \theta_0 = \theta

    \theta \leftarrow \theta - \beta\, \nabla_\theta \frac1T \sum_i L_{Q_i}(\theta'_i)

The meta-gradient is the chain rule through the K steps (inner_loop.py with
``P = alpha * 1``):

.. math::
    u = \nabla L_{Q_i}(\theta_K);\quad
    u \leftarrow u - \alpha \nabla^2 L_{S_i}(\theta_k)\, u \quad (k = K-1 \dots 0);\quad
    \nabla_\theta L_{Q_i}(\theta'_i) = u

``first_order=True`` is FOMAML (Finn et al. 2017, section 5.2): the Hessian
terms are dropped and the meta-gradient is :math:`\nabla L_{Q_i}(\theta_K)`.
On a batch-normalised net, ``adapt_bn_offsets=False`` sets ``P`` to 0 on the
hidden biases (batch norm's offsets), which the reference code does not adapt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..tasks import TaskBatch
from . import inner_loop, protocol

NAME = "maml"


@dataclass(frozen=True)
class Config:
    """MAML hyper-parameters; defaults are the sinusoid settings of Finn et al. 2017, section 5.1."""

    inner_lr: float = 0.01  # alpha: "a fixed step size alpha = 0.01" (section 5.1)
    inner_steps: int = 1  # "one gradient update" at meta-training (section 5.1)
    first_order: bool = False  # True: FOMAML (section 5.2)
    # False: on a batch-normalised net the hidden biases (batch norm's offsets) stay out of the inner
    # loop, as in the reference code, where the offsets are separate variables it does not adapt
    adapt_bn_offsets: bool = True

    def __post_init__(self):
        val.check_float(self.inner_lr, "inner_lr", positive=True)
        val.check_int(self.inner_steps, "inner_steps", minimum=0)
        protocol.check_flag(self.first_order, "first_order")
        protocol.check_flag(self.adapt_bn_offsets, "adapt_bn_offsets")


def preconditioner(net, config) -> np.ndarray:
    """The inner loop's step vector ``P``: ``alpha`` everywhere, except 0 on the hidden biases of a
    batch-normalised net when ``config.adapt_bn_offsets`` is False."""
    precond = np.full(net.n_params, config.inner_lr, dtype=net.dtype)
    if net.batchnorm and not config.adapt_bn_offsets:
        for _, b in net.unflatten(precond)[:-1]:
            b[...] = 0.0
    return precond


def meta_loss_and_grad(net, theta, batch, inner_lr=0.01, inner_steps=1, first_order=False, adapt_bn_offsets=True):
    """Mean query loss after ``inner_steps`` SGD steps of size ``inner_lr``, and its gradient.

    Parameters
    ----------
    net : MLP ; theta : (net.n_params,)
    batch : TaskBatch with leading axis = task
    inner_lr : float > 0 ; inner_steps : int >= 0 ; first_order : bool
    adapt_bn_offsets : bool, see ``Config``

    Returns
    -------
    (float, (net.n_params,) array): mean over tasks of ``L_Q(theta_K)`` and
    its exact gradient with respect to ``theta`` (FOMAML's approximation if
    ``first_order``).
    """
    return _meta_loss_and_grad(net, theta, batch, Config(inner_lr, inner_steps, first_order, adapt_bn_offsets))


def _meta_loss_and_grad(net, theta, batch, config):
    """``meta_loss_and_grad`` with a checked ``Config`` (meta_step has one already)."""
    theta, batch = check_inputs(net, theta, batch)
    precond = preconditioner(net, config)
    loss, d_theta, _ = inner_loop.meta_loss_and_grad(net, theta, batch, precond, config.inner_steps,
                                                     config.first_order, precond_grad=False)
    return loss, d_theta


def check_inputs(net, theta, batch):
    """Validated ``(theta, batch)`` for ``net`` (shapes, dtypes, finite values, labels)."""
    protocol.check_net(net)
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a tinymeta.TaskBatch, got {type(batch).__name__}")
    theta = val.as_float_array(theta, "theta", net.dtype, (net.n_params,))
    return theta, batch.checked(net.sizes[0], net.sizes[-1], net.loss_name == "xent", net.dtype)


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}``."""
    return {"theta": net.init(rng)}


def meta_step(net, params, batch, config):
    """Meta-loss and meta-gradient of one meta-batch, keyed like ``params``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    loss, grad = _meta_loss_and_grad(net, params["theta"], batch, config)
    return loss, {"theta": grad}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Query outputs after ``0..steps`` SGD steps of size ``inner_lr``: ``(steps+1, Q, d_out)``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "params['theta']", net.dtype, (net.n_params,))
    X_support, y_support, X_query = protocol.check_task(net, X_support, y_support, X_query)
    steps = val.check_int(steps, "steps", minimum=0)
    return inner_loop.predictions(net, theta, X_support, y_support, X_query, preconditioner(net, config), steps)
