r"""Batch normalisation with the batch's own statistics: value, VJP, JVP and R-backward.

The MAML paper's non-convolutional Omniglot network (Finn et al. 2017,
reference code) normalises every hidden pre-activation over the rows of the
batch it is given (support set in the inner loop, query set for the
meta-loss), always with that batch's statistics. Per feature (column) ``j``
of ``A`` (n, d):

.. math::
    \mu = \tfrac1n \mathbf 1^\top A,\qquad
    \sigma = \sqrt{\tfrac1n \mathbf 1^\top (A - \mu)^2 + \epsilon},\qquad
    \hat X = (A - \mu) / \sigma

The Jacobian of one column is the symmetric matrix

.. math:: J = \frac1\sigma\Big(I - \tfrac1n \mathbf 1\mathbf 1^\top - \tfrac1n \hat x \hat x^\top\Big),

so the VJP and the JVP are the same operator,
``J g = (g - mean(g) - x_hat * mean(x_hat * g)) / sigma`` (``normalize_apply``).
Along a tangent ``A_dot``, ``sigma_dot = mean(x_hat * A_dot)`` and
``X_hat_dot = J A_dot``; differentiating ``dA = J dX_hat`` once more gives
the R-backward rule

.. math::
    \mathcal R\{dA\} = J\,\mathcal R\{d\hat X\}
      - \frac{\dot\sigma}{\sigma}\, dA
      - \frac1\sigma\Big(\dot{\hat X}\; \overline{\hat X \odot d\hat X}
                        + \hat X\; \overline{\dot{\hat X} \odot d\hat X}\Big)

where the bar is the mean over rows. Nothing here is learned: in a
normalised layer the layer's own bias is added *after* the normalisation
(``Z = normalize(H W) + b``), which plays the role of batch norm's shift
(the bias before the normalisation would be cancelled by it).

This is the reference code's layer exactly: ``tf.contrib.layers.batch_norm``
with its defaults ``center=True, scale=False, epsilon=1e-3,
is_training=True`` (a learned offset, no learned scale, batch statistics
always). There the offset is a variable of its own and the inner loop
adapts only the weights and the (cancelled) biases before it; here the
offset *is* ``b`` and a plain MAML step adapts it too. Zero the hidden
biases in the preconditioner ``P`` (``inner_loop.py``) to freeze them.
"""
from __future__ import annotations

import numpy as np

BN_EPS = 1e-3  # variance floor; tf.contrib.layers.batch_norm's default epsilon (MAML reference code)


def normalize(A, eps=BN_EPS):
    """``X_hat = (A - mean) / sigma`` per column over the rows.

    Returns
    -------
    X_hat : (n, d) ; sigma : (d,)
    """
    centred = A - A.mean(axis=0)
    sigma = np.sqrt((centred * centred).mean(axis=0) + eps)
    return centred / sigma, sigma


def normalize_apply(X_hat, sigma, G):
    """``J G`` column by column: the VJP (and, J being symmetric, the JVP) of ``normalize``."""
    return (G - G.mean(axis=0) - X_hat * (X_hat * G).mean(axis=0)) / sigma


def normalize_r_backward(X_hat, sigma, A_dot, dX_hat, dX_hat_dot):
    """``R{dA}`` for ``dA = J dX_hat``, along the input tangent ``A_dot``.

    Parameters
    ----------
    X_hat, sigma : from ``normalize(A)``
    A_dot : (n, d) tangent of the input ``A``
    dX_hat, dX_hat_dot : (n, d) the cotangent of the output and its tangent

    Returns
    -------
    (n, d) array
    """
    sigma_dot = (X_hat * A_dot).mean(axis=0)
    X_hat_dot = normalize_apply(X_hat, sigma, A_dot)
    dA = normalize_apply(X_hat, sigma, dX_hat)
    return (normalize_apply(X_hat, sigma, dX_hat_dot) - sigma_dot / sigma * dA
            - (X_hat_dot * (X_hat * dX_hat).mean(axis=0) + X_hat * (X_hat_dot * dX_hat).mean(axis=0)) / sigma)
