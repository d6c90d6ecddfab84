"""Losses on the network output, with their gradient and Hessian-vector product.

A loss owns the last step of every pass:

* ``value_and_grad(out, y)`` gives ``L`` and ``dout = dL/dout`` (the seed
  ``delta_L`` of backpropagation);
* ``hvp(out, y, out_dot)`` gives ``R{dout} = (d^2 L / dout^2) out_dot`` (the
  seed ``R{delta_L}`` of the R-backward pass).

Both losses are means over the ``n`` rows of ``out`` (shape ``(n, d_out)``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

MSE = 0
XENT = 1


def mse_value_and_grad(out, Y):
    r"""Mean over samples of the squared error summed over outputs.

    .. math::
        L = \frac1n \sum_{i,j} (out_{ij} - Y_{ij})^2,\qquad
        \frac{\partial L}{\partial out} = \frac2n (out - Y)

    Parameters
    ----------
    out, Y : (n, d_out) arrays
    """
    n = out.shape[0]
    r = out - Y
    return float(np.sum(r * r) / n), (2.0 / n) * r


def mse_hvp(out, Y, out_dot):
    r"""The MSE Hessian with respect to ``out`` is ``2/n I``.

    .. math:: R\{dout\} = \frac2n\, \dot{out}
    """
    return (2.0 / out.shape[0]) * out_dot


def softmax(out):
    """Row-wise softmax of ``out`` (n, C), shifted by the row maximum for stability."""
    e = np.exp(out - out.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def xent_value_and_grad(out, labels):
    r"""Mean softmax cross-entropy with integer labels.

    .. math::
        L = \frac1n \sum_i \Big(\log\sum_c e^{out_{ic}} - out_{i,y_i}\Big),\qquad
        \frac{\partial L}{\partial out} = \frac1n (p - \mathrm{onehot}(y)),\quad
        p = \mathrm{softmax}(out)

    Parameters
    ----------
    out : (n, C) logits
    labels : (n,) integers in ``0..C-1``
    """
    n = out.shape[0]
    rows = np.arange(n)
    shifted = out - out.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    value = float(np.sum(log_z - shifted[rows, labels]) / n)
    p = np.exp(shifted - log_z[:, None])
    p[rows, labels] -= 1
    return value, p / n


def xent_hvp(out, labels, out_dot):
    r"""Hessian of the mean cross-entropy with respect to the logits, times ``out_dot``.

    .. math:: R\{dout\}_i = \frac1n \big(\mathrm{diag}(p_i) - p_i p_i^\top\big)\,\dot{out}_i
              = \frac1n \big(p_i \odot \dot{out}_i - p_i\, (p_i \cdot \dot{out}_i)\big)

    It does not depend on the labels.
    """
    p = softmax(out)
    pv = np.sum(p * out_dot, axis=1, keepdims=True)
    return (p * out_dot - p * pv) / out.shape[0]


class Loss(NamedTuple):
    """A loss: its name, kernel code, ``value_and_grad`` and ``hvp``."""

    name: str
    code: int
    value_and_grad: Callable
    hvp: Callable


LOSSES = {
    "mse": Loss("mse", MSE, mse_value_and_grad, mse_hvp),
    "xent": Loss("xent", XENT, xent_value_and_grad, xent_hvp),
}


def get_loss(name: str) -> Loss:
    """Look a loss up by name; unknown names raise ``ValueError``."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]
