"""Activation functions with their first and second derivatives.

Every activation is a triple ``(f, f', f'')`` of vectorised NumPy functions:
the backward pass needs ``f'`` and the R-operator (Hessian-vector product)
needs ``f''``. Each triple is checked against finite differences in
``tests/test_activations.py``.

The integer ``code`` of each activation is what the Numba kernels receive
(``tinymeta.nn.kernels`` re-implements the same formulas element by element).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

RELU = 0
TANH = 1
SIGMOID = 2
SOFTPLUS = 3


def relu(z):
    r"""Rectified linear unit.

    .. math:: f(z) = \max(z, 0),\quad f'(z) = [z > 0],\quad f''(z) = 0

    The derivative at the kink ``z = 0`` is taken as 0.
    """
    return np.maximum(z, 0)


def relu_d1(z):
    return (z > 0).astype(z.dtype)


def relu_d2(z):
    return np.zeros_like(z)


def tanh(z):
    r"""Hyperbolic tangent: smooth, so finite-difference checks never cross a kink.

    .. math:: f = \tanh z,\quad f' = 1 - f^2,\quad f'' = -2 f (1 - f^2)
    """
    return np.tanh(z)


def tanh_d1(z):
    t = np.tanh(z)
    return 1 - t * t


def tanh_d2(z):
    t = np.tanh(z)
    return -2 * t * (1 - t * t)


def sigmoid(z):
    r"""Logistic sigmoid, written through tanh so it never overflows.

    .. math:: \sigma(z) = \tfrac12 (1 + \tanh(z/2)),\quad
              \sigma' = \sigma (1-\sigma),\quad
              \sigma'' = \sigma (1-\sigma)(1 - 2\sigma)
    """
    return 0.5 * (1 + np.tanh(0.5 * z))


def sigmoid_d1(z):
    s = sigmoid(z)
    return s * (1 - s)


def sigmoid_d2(z):
    s = sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


def softplus(z):
    r"""Softplus, a smooth ReLU.

    .. math:: f(z) = \log(1 + e^{z}),\quad f' = \sigma(z),\quad f'' = \sigma(z)(1-\sigma(z))
    """
    return np.logaddexp(0, z)


def softplus_d1(z):
    return sigmoid(z)


def softplus_d2(z):
    return sigmoid_d1(z)


class Activation(NamedTuple):
    """An activation: its name, kernel code, value and two derivatives."""

    name: str
    code: int
    f: Callable
    d1: Callable
    d2: Callable


ACTIVATIONS = {
    "relu": Activation("relu", RELU, relu, relu_d1, relu_d2),
    "tanh": Activation("tanh", TANH, tanh, tanh_d1, tanh_d2),
    "sigmoid": Activation("sigmoid", SIGMOID, sigmoid, sigmoid_d1, sigmoid_d2),
    "softplus": Activation("softplus", SOFTPLUS, softplus, softplus_d1, softplus_d2),
}


def get_activation(name: str) -> Activation:
    """Look an activation up by name; unknown names raise ``ValueError``."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        )
    return ACTIVATIONS[name]
