r"""CAVIA: adapt only a few context inputs per task; meta-learn the shared network.

Zintgraf, Shiarlis, Kurin, Hofmann and Whiteson, "Fast Context Adaptation
via Meta-Learning", ICML 2019 (section 3, Algorithm 1).

Each task gets context parameters ``phi`` (``n_context`` numbers),
concatenated to every input row, reset to zero per task and adapted in the
inner loop; the network weights ``theta`` are shared and meta-learned:

.. math::
    \phi_0 = 0,\quad
    \phi_{k+1} = \phi_k - \alpha \nabla_\phi L_{S_i}(\theta, \phi_k),\qquad
    \theta \leftarrow \theta - \beta\, \nabla_\theta \frac1T \sum_i L_{Q_i}(\theta, \phi_K)

This is the one inner loop (inner_loop.py) on ``w = [theta; phi]`` with
``P = alpha * [0; 1]``, through ``ContextModel``, an adapter whose inputs
are ``[X, 1 phi^T]``. Its gradient and Hessian-vector product come from the
engine's input cotangents and input tangents: ``phi`` enters every row, so

.. math::
    \nabla_\phi L = \textstyle\sum_{\text{rows}} \partial L/\partial X_{[:, d_x:]},\qquad
    \nabla^2 L \begin{bmatrix} v_\theta \\ v_\phi \end{bmatrix} =
    \begin{bmatrix} h_\theta \\ \sum_{\text{rows}} h_{X[:, d_x:]} \end{bmatrix},\quad
    (h_\theta, h_X) = \nabla^2_{(\theta, X)} L\,(v_\theta, \dot X),\ \dot X = [0, 1 v_\phi^\top]

The recursion then gives the exact meta-gradient for ``w``; its ``theta``
block is CAVIA's meta-gradient (``phi_0 = 0`` is not learned).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..tasks import TaskBatch
from . import inner_loop, protocol

NAME = "cavia"


@dataclass(frozen=True)
class Config:
    """CAVIA hyper-parameters: the sinusoid settings of Zintgraf et al. 2019 (section 5.1)
    as set in their reference code (lmzintgraf/cavia, regression/arguments.py)."""

    n_context: int = 5  # context inputs at the first layer (reference default; the paper's sine results vary it)
    inner_lr: float = 1.0  # inner step on phi (reference lr_inner; MAML's 0.01 would barely move phi)
    inner_steps: int = 1  # one inner update at meta-training (reference num_inner_updates)
    first_order: bool = False

    def __post_init__(self):
        val.check_int(self.n_context, "n_context", minimum=1)
        val.check_float(self.inner_lr, "inner_lr", positive=True)
        val.check_int(self.inner_steps, "inner_steps", minimum=0)


@dataclass(frozen=True)
class ContextModel:
    """``net`` seen as a function of ``w = [theta; phi]``, inputs ``X`` of width ``d_x``.

    ``net.sizes[0] = d_x + n_context``; the network sees ``[X, 1 phi^T]``.
    Exposes what inner_loop.py needs: ``forward``, ``loss_and_grad``, ``hvp``.
    """

    net: object
    n_context: int

    @property
    def n_params(self) -> int:
        """Length of ``w``: ``net.n_params + n_context``."""
        return self.net.n_params + self.n_context

    def _inputs(self, w, X):
        phi = w[self.net.n_params:]
        return np.hstack([X, np.broadcast_to(phi, (X.shape[0], self.n_context))])

    def forward(self, w, X):
        """``f([X, 1 phi^T]; theta)``, shape ``(n, d_out)``."""
        return self.net.forward(w[:self.net.n_params], self._inputs(w, X))

    def loss_and_grad(self, w, X, y):
        """``(L, [dL/dtheta; dL/dphi])``; ``dL/dphi`` sums the context columns of ``dX``."""
        loss, d_theta, dX = self.net.loss_and_grad(w[:self.net.n_params], self._inputs(w, X), y,
                                                   input_grad=True)
        return loss, np.concatenate([d_theta, dX[:, -self.n_context:].sum(axis=0)])

    def hvp(self, w, X, y, v):
        """The Hessian of ``L`` over ``w`` times ``v = [v_theta; v_phi]``, exact."""
        P = self.net.n_params
        X_dot = np.zeros((X.shape[0], self.net.sizes[0]), dtype=self.net.dtype)
        X_dot[:, -self.n_context:] = v[P:]
        h_theta, hX = self.net.hvp(w[:P], self._inputs(w, X), y, v[:P], X_dot=X_dot, input_grad=True)
        return np.concatenate([h_theta, hX[:, -self.n_context:].sum(axis=0)])


def widen_input(net, n_context):
    """``net`` with ``n_context`` more inputs: the network CAVIA needs for inputs of width ``net.sizes[0]``."""
    n_context = val.check_int(n_context, "n_context", minimum=1)
    return net.replace(sizes=[net.sizes[0] + n_context, *net.sizes[1:]])


def meta_loss_and_grad(net, theta, batch, n_context=5, inner_lr=1.0, inner_steps=1, first_order=False):
    """Mean query loss after ``inner_steps`` context steps from ``phi = 0``, and its gradient.

    Parameters
    ----------
    net : MLP whose input width is ``d_x + n_context`` ; theta : (net.n_params,)
    batch : TaskBatch with inputs of width ``d_x`` (leading axis = task)
    n_context : int >= 1 ; inner_lr : float > 0 ; inner_steps : int >= 0 ; first_order : bool

    Returns
    -------
    (float, (net.n_params,) array): mean over tasks of ``L_Q(theta, phi_K)``
    and its exact gradient with respect to ``theta``.
    """
    config = Config(n_context, inner_lr, inner_steps, protocol.check_flag(first_order, "first_order"))
    model, w, precond = _setup(net, theta, config)
    batch = check_batch(net, batch, config.n_context)
    loss, d_w, _ = inner_loop.meta_loss_and_grad(model, w, batch, precond, config.inner_steps,
                                                 config.first_order, precond_grad=False)
    return loss, d_w[:net.n_params]


def _setup(net, theta, config):
    """The adapter, ``w_0 = [theta; 0]`` and ``P = inner_lr * [0; 1]``."""
    protocol.check_net(net)
    if net.sizes[0] <= config.n_context:
        raise ValueError(f"net.sizes[0] must exceed n_context = {config.n_context} (inputs are [X, context]), "
                         f"got {net.sizes[0]}; build the net with cavia.widen_input")
    theta = val.as_float_array(theta, "theta", net.dtype, (net.n_params,))
    w = np.concatenate([theta, np.zeros(config.n_context, dtype=net.dtype)])
    precond = np.zeros_like(w)
    precond[net.n_params:] = config.inner_lr
    return ContextModel(net, config.n_context), w, precond


def check_batch(net, batch, n_context):
    """A validated ``TaskBatch`` whose inputs have width ``net.sizes[0] - n_context``."""
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a tinymeta.TaskBatch, got {type(batch).__name__}")
    return batch.checked(net.sizes[0] - n_context, net.sizes[-1], net.loss_name == "xent", net.dtype)


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}`` (``phi`` is per task, always from 0)."""
    return {"theta": net.init(rng)}


def meta_step(net, params, batch, config):
    """Meta-loss and meta-gradient of one meta-batch, keyed like ``params``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    loss, grad = meta_loss_and_grad(net, params["theta"], batch, config.n_context, config.inner_lr,
                                    config.inner_steps, config.first_order)
    return loss, {"theta": grad}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Query outputs after ``0..steps`` context steps from ``phi = 0``: ``(steps+1, Q, d_out)``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    model, w, precond = _setup(net, params["theta"], config)
    steps = val.check_int(steps, "steps", minimum=0)
    X_support, y_support, X_query = protocol.check_task(net, X_support, y_support, X_query,
                                                        d_in=net.sizes[0] - config.n_context)
    return inner_loop.predictions(model, w, X_support, y_support, X_query, precond, steps)
