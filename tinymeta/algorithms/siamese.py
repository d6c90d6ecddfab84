r"""Siamese networks: a learned verification score on pairs, then one-shot by nearest match.

Koch, Zemel and Salakhutdinov, "Siamese Neural Networks for One-shot Image
Recognition", ICML Deep Learning Workshop 2015 (section 3.1: weighted L1 and
sigmoid; 3.2: cross-entropy and initialisation; 4.3: one-shot by the best-scoring pair).

.. math::
    \Delta = f(x_1) - f(x_2),\quad z = \sum_j w_j |\Delta_j| + b,\quad p = \sigma(z),\quad
    \mathcal L = \sum_{\text{pairs}} \omega\, \big(\operatorname{softplus}(z) - t z\big)

(:math:`\operatorname{softplus}(z) - t z = -t\log p - (1-t)\log(1-p)`;
:math:`t = 1` for a same-class pair; the pair weights :math:`\omega` sum to 1.)
With :math:`\bar z = \omega(\sigma(z) - t)`:

.. math::
    \bar w = \sum \bar z\, |\Delta|,\quad \bar b = \sum \bar z,\quad
    \frac{\partial\mathcal L}{\partial f(x_1)} = \bar z\, w \odot \operatorname{sign}(\Delta)
    = -\frac{\partial\mathcal L}{\partial f(x_2)}

:math:`|\cdot|` has a kink at :math:`\Delta_j = 0` (``sign(0) = 0`` there, a
subgradient); finite-difference checks stay away from it.

Episodes (``meta_step``): every (query, support) pair, weighted so that
same- and different-class pairs count half each (our choice; the paper
trains on sampled same/different pairs, which ``sample_pairs`` draws with
an explicit generator for ``pair_loss_and_grad``). One-shot classification
(``predict``): a query's score for class ``k`` is its highest ``p`` against
the support examples of class ``k``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..nn.activations import sigmoid, softplus
from . import embedding as emb
from . import protocol

NAME = "siamese"


@dataclass(frozen=True)
class Config:
    """Initialisation of the verification layer ``(w, b)`` (Koch et al. 2015, section 3.2)."""

    w_init_std: float = 0.2  # fully-connected weights: normal, mean 0, std 2e-1 (section 3.2)
    b_init_mean: float = 0.5  # biases: normal, mean 0.5, std 1e-2 (section 3.2)
    b_init_std: float = 0.01

    def __post_init__(self):
        val.check_float(self.w_init_std, "w_init_std", nonnegative=True)
        val.check_float(self.b_init_mean, "b_init_mean")
        val.check_float(self.b_init_std, "b_init_std", nonnegative=True)


# ------------------------------------------------------------ on embeddings
def verification_loss_and_grad(E1, E2, same, weights, w, b):
    """Weighted binary cross-entropy of the pairs ``(E1[i], E2[i])`` and its gradients.

    Parameters
    ----------
    E1, E2 : (n, D) embeddings ; same : (n,) bool/0-1 targets ``t``
    weights : (n,) pair weights ``omega`` ; w : (D,) ; b : (1,)

    Returns
    -------
    (float, dE1 (n, D), dE2 (n, D), dw (D,), db (1,))
    """
    delta = E1 - E2
    dist = np.abs(delta)
    t = np.asarray(same, dtype=E1.dtype)
    z = dist @ w + b[0]
    loss = float(np.sum(weights * (softplus(z) - t * z)))
    dz = weights * (sigmoid(z) - t)
    dE1 = dz[:, None] * w[None, :] * np.sign(delta)
    return loss, dE1, -dE1, dist.T @ dz, np.array([dz.sum()], dtype=E1.dtype)


def balanced_weights(same):
    """Pair weights summing to 1, half on same-class pairs and half on the others
    (all on one group if the other is empty)."""
    same = np.asarray(same, dtype=bool)
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if n_same == 0 or n_diff == 0:
        return np.full(same.shape, 1.0 / same.size)
    return np.where(same, 0.5 / n_same, 0.5 / n_diff)


def embedding_loss_and_grad(E_support, y_support, E_query, y_query, w, b):
    """The balanced loss over all (query, support) pairs of an episode, on embeddings.

    Pair ``(i, j)`` is row ``i * n_s + j``. Returns
    ``(float, dE_support (n_s, D), dE_query (n_q, D), dw (D,), db (1,))``.
    """
    n_s, n_q, D = E_support.shape[0], E_query.shape[0], E_support.shape[1]
    same = (y_query[:, None] == y_support[None, :]).ravel()
    E1, E2 = np.repeat(E_query, n_s, axis=0), np.tile(E_support, (n_q, 1))
    loss, dE1, dE2, dw, db = verification_loss_and_grad(E1, E2, same, balanced_weights(same).astype(E1.dtype),
                                                        w, b)
    return loss, dE2.reshape(n_q, n_s, D).sum(axis=0), dE1.reshape(n_q, n_s, D).sum(axis=1), dw, db


def match_probabilities(E_support, E_query, w, b):
    """``p(same)`` of every (query, support) pair, shape ``(n_q, n_s)``."""
    return sigmoid(np.abs(E_query[:, None, :] - E_support[None, :, :]) @ w + b[0])


# ------------------------------------------------ through the embedding net
def check_params(net, params):
    """``(theta, w, b)`` validated against ``net``: shapes ``(P,)``, ``(D,)``, ``(1,)``."""
    params = protocol.check_params(params, ("theta", "w", "b"))
    return (val.as_float_array(params["theta"], "params['theta']", net.dtype, (net.n_params,)),
            val.as_float_array(params["w"], "params['w']", net.dtype, (net.sizes[-1],)),
            val.as_float_array(params["b"], "params['b']", net.dtype, (1,)))


def loss_and_grad(net, params, X_support, y_support, X_query, y_query):
    """Balanced pair loss of one episode and its gradients ``{"theta", "w", "b"}``."""
    return _episode(net, check_params(net, params), X_support, y_support, X_query, y_query)[:2]


def _episode(net, checked, X_support, y_support, X_query, y_query):
    theta, w, b = checked
    Xs, ys, Xq, yq, n_way = emb.check_episode(net, X_support, y_support, X_query, y_query)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    loss, dEs, dEq, dw, db = embedding_loss_and_grad(Es, ys, Eq, yq, w, b)
    return loss, {"theta": emb.pull_back(net, theta, Xs, Xq, dEs, dEq), "w": dw, "b": db}, n_way


def sample_pairs(rng, X, y, n_pairs):
    """Draw ``n_pairs`` pairs from a labelled set, half same-class (rounded up), half not.

    Parameters
    ----------
    rng : np.random.Generator ; X : (n, d_in) ; y : (n,) int labels
        e.g. an episode's support and query sets stacked.
    n_pairs : int >= 1

    Returns
    -------
    X1, X2 : (n_pairs, d_in) ; same : (n_pairs,) bool, same-class pairs first
    """
    val.check_rng(rng)
    n_pairs = val.check_int(n_pairs, "n_pairs", minimum=1)
    X, y = np.asarray(X), np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must have shape (n, d_in) and y shape (n,), got X {X.shape} and y {y.shape}")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2 or counts.max() < 2:
        raise ValueError(f"y must hold at least 2 classes and a class with 2 examples to draw same and "
                         f"different pairs, got class counts {dict(zip(classes.tolist(), counts.tolist()))}")
    n_same = (n_pairs + 1) // 2
    first, second = [], []
    for c in rng.choice(classes[counts >= 2], n_same):  # same-class pairs
        i, j = rng.choice(np.flatnonzero(y == c), 2, replace=False)
        first.append(i), second.append(j)
    for _ in range(n_pairs - n_same):  # different-class pairs
        c1, c2 = rng.choice(classes, 2, replace=False)
        first.append(rng.choice(np.flatnonzero(y == c1))), second.append(rng.choice(np.flatnonzero(y == c2)))
    return X[first], X[second], np.arange(n_pairs) < n_same


def pair_loss_and_grad(net, params, X1, X2, same):
    """Mean binary cross-entropy of the pairs ``(X1[i], X2[i])``; gradients ``{"theta", "w", "b"}``."""
    theta, w, b = check_params(net, params)
    X1 = val.as_float_array(X1, "X1", net.dtype, (None, net.sizes[0]))
    X2 = val.as_float_array(X2, "X2", net.dtype, X1.shape)
    same = np.asarray(same)
    if same.shape != (X1.shape[0],) or same.dtype.kind not in "biu" or not np.isin(same, (0, 1)).all():
        raise ValueError(f"same must be {X1.shape[0]} booleans (1 = same class), got {same.dtype} {same.shape}")
    E1, E2 = emb.embed(net, theta, X1, X2)
    weights = np.full(X1.shape[0], 1.0 / X1.shape[0], dtype=E1.dtype)
    loss, dE1, dE2, dw, db = verification_loss_and_grad(E1, E2, same, weights, w, b)
    return loss, {"theta": emb.pull_back(net, theta, X1, X2, dE1, dE2), "w": dw, "b": db}


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """``{"theta": net.init, "w": N(0, w_init_std), "b": N(b_init_mean, b_init_std)}``, sub-streams of ``rng``."""
    val.check_rng(rng)
    r_theta, r_head = rng.spawn(2)
    return {"theta": net.init(r_theta),
            "w": r_head.normal(0.0, config.w_init_std, net.sizes[-1]).astype(net.dtype),
            "b": r_head.normal(config.b_init_mean, config.b_init_std, 1).astype(net.dtype)}


def meta_step(net, params, batch, config):
    """Mean balanced pair loss over the episodes and its gradients ``{"theta", "w", "b"}``."""
    protocol.check_config(config, Config)
    checked = check_params(net, params)
    return emb.batch_mean(lambda *episode: _episode(net, checked, *episode), batch)


def predict(net, params, X_support, y_support, X_query, steps, config):
    """One-shot scores by nearest match, shape ``(1, n_q, N)``: the highest ``p`` of each
    query against each class's support examples. No adaptation: ``steps`` unused."""
    emb.check_steps(steps)
    protocol.check_config(config, Config)
    theta, w, b = check_params(net, params)
    Xs, ys, Xq, _, n_way = emb.check_episode(net, X_support, y_support, X_query)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    p = match_probabilities(Es, Eq, w, b)
    return np.stack([p[:, ys == k].max(axis=1) for k in range(n_way)], axis=1)[None]
