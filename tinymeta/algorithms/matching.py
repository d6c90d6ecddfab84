r"""Matching Networks: attention over cosine similarities to the support set.

Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, "Matching Networks
for One Shot Learning", NeurIPS 2016 (section 2.1, eq. 1-2; training
objective, section 2.2). Here ``f = g`` is one MLP, without the full-context
embeddings (section 2.1.2); ``matching_fce.py`` (``NAME = "matching_fce"``) adds them.

.. math::
    \hat q_i = \frac{q_i}{\sqrt{\|q_i\|^2 + \epsilon^2}},\quad
    K_{ij} = \hat q_i \cdot \hat s_j,\quad
    a_{ij} = \operatorname{softmax}_j K_{ij},\quad
    P = a\, Y_S,\quad
    \mathcal L = -\frac1{n_Q}\sum_i \log P_{i, y_i}

Gradient on embeddings. With :math:`M_{ij} = [y_i = y^S_j]` and
:math:`\pi_i = P_{i,y_i} = \sum_j a_{ij} M_{ij}`:
:math:`\partial\mathcal L/\partial a_{ij} = -M_{ij}/(n_Q \pi_i)`; through the
softmax, :math:`\bar K_{ij} = a_{ij}(\bar a_{ij} - \sum_k a_{ik}\bar a_{ik})`:

.. math::
    \bar K = \frac1{n_Q}\big(a - a \odot M / \pi\big),\qquad
    \bar{\hat Q} = \bar K \hat S,\qquad \bar{\hat S} = \bar K^\top \hat Q,

and through the normalisation :math:`\hat u = u / r`, :math:`r = \sqrt{\|u\|^2 + \epsilon^2}`:

.. math:: \bar u = \big(\bar{\hat u} - (\bar{\hat u}\cdot\hat u)\,\hat u\big) / r

The epsilon keeps the cosine smooth at a zero embedding: there
:math:`\hat u = 0` and :math:`\bar u = \bar{\hat u}/\epsilon` (large but
finite). Away from zero it changes the cosine by :math:`O(\epsilon^2/\|u\|^2)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..nn.losses import softmax
from . import embedding as emb
from . import protocol

NAME = "matching"
COSINE_EPS = 1e-8  # ours: the paper does not say how it guards the cosine at zero norm


@dataclass(frozen=True)
class Config:
    """Matching Networks settings (Vinyals et al. 2016): trained on N-way
    episodes like those it is tested on (section 2.2). The paper's
    full-context-embedding results are on miniImageNet; ``matching_fce``.
    """

    cosine_eps: float = COSINE_EPS  # the epsilon of the normalisation above (ours)

    def __post_init__(self):
        val.check_float(self.cosine_eps, "cosine_eps", positive=True)


# ------------------------------------------------------------ on embeddings
def normalize(U, eps=COSINE_EPS):
    r"""Rows ``u / sqrt(|u|^2 + eps^2)`` and their norms ``r``: ``(U_hat (n, D), r (n,))``."""
    r = np.sqrt(np.sum(U * U, axis=1) + eps * eps)
    return U / r[:, None], r


def normalize_vjp(U_hat, r, dU_hat):
    r"""Pull ``dU_hat`` back through the normalisation: :math:`(\bar{\hat u} - (\bar{\hat u}\cdot\hat u)\hat u)/r`."""
    return (dU_hat - np.sum(dU_hat * U_hat, axis=1)[:, None] * U_hat) / r[:, None]


def attention(E_support, E_query, eps=COSINE_EPS):
    """Attention ``a`` (eq. 2), shape ``(n_q, n_s)``: softmax over cosine similarities."""
    return softmax(normalize(E_query, eps)[0] @ normalize(E_support, eps)[0].T)


def embedding_loss_and_grad(E_support, y_support, E_query, y_query, n_way, eps=COSINE_EPS):
    """Mean negative log-probability of the true labels and its gradient wrt the embeddings.

    Parameters
    ----------
    E_support : (n_s, D) ; y_support : (n_s,) ; E_query : (n_q, D) ; y_query : (n_q,)
    n_way : int ``N`` ; eps : float, the cosine's epsilon

    Returns
    -------
    (float, dE_support (n_s, D), dE_query (n_q, D))
    """
    S_hat, r_s = normalize(E_support, eps)
    Q_hat, r_q = normalize(E_query, eps)
    a = softmax(Q_hat @ S_hat.T)
    M = (y_query[:, None] == y_support[None, :]).astype(a.dtype)
    pi = np.sum(a * M, axis=1)  # > 0: every class has a support example
    n_q = E_query.shape[0]
    loss = float(-np.mean(np.log(pi)))
    dK = (a - a * M / pi[:, None]) / n_q
    dE_query = normalize_vjp(Q_hat, r_q, dK @ S_hat)
    dE_support = normalize_vjp(S_hat, r_s, dK.T @ Q_hat)
    return loss, dE_support, dE_query


# ------------------------------------------------ through the embedding net
def loss_and_grad(net, theta, X_support, y_support, X_query, y_query, eps=COSINE_EPS):
    """Mean query negative log-probability of one episode and its gradient wrt ``theta``.

    Shapes as in ``protonet.loss_and_grad``. Returns ``(float, (net.n_params,) array)``.
    """
    eps = val.check_float(eps, "eps", positive=True)
    return _episode(net, theta, X_support, y_support, X_query, y_query, eps)[:2]


def _episode(net, theta, X_support, y_support, X_query, y_query, eps):
    Xs, ys, Xq, yq, n_way = emb.check_episode(net, X_support, y_support, X_query, y_query)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    loss, dEs, dEq = embedding_loss_and_grad(Es, ys, Eq, yq, n_way, eps)
    return loss, emb.pull_back(net, theta, Xs, Xq, dEs, dEq), n_way


def probabilities(net, theta, X_support, y_support, X_query, eps=COSINE_EPS):
    """Predicted label distribution ``P = a Y_S`` (eq. 1), shape ``(n_q, N)``."""
    Xs, ys, Xq, _, n_way = emb.check_episode(net, X_support, y_support, X_query)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    return attention(Es, Eq, eps) @ emb.one_hot(ys, n_way, Es.dtype)


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}``."""
    return {"theta": net.init(rng)}


def meta_step(net, params, batch, config):
    """Mean episode loss over the batch and its gradient, keyed like ``params``."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "params['theta']", net.dtype, (net.n_params,))

    def episode(Xs, ys, Xq, yq):
        loss, grad, n_way = _episode(net, theta, Xs, ys, Xq, yq, config.cosine_eps)
        return loss, {"theta": grad}, n_way

    return emb.batch_mean(episode, batch)


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Label distribution ``P``, shape ``(1, n_q, N)``: no adaptation, ``steps`` unused."""
    emb.check_steps(steps)
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    return probabilities(net, params["theta"], X_support, y_support, X_query, config.cosine_eps)[None]
