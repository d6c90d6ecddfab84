r"""Prototypical Networks: classify a query by its squared distance to class means.

Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning",
NeurIPS 2017 (section 2.2, eq. 1-2; Algorithm 1; section 2.4).

.. math::
    c_k = \frac1{|S_k|}\sum_{j \in S_k} f(x_j),\qquad
    p(y = k \mid x) = \operatorname{softmax}_k\!\big(-\|f(x) - c_k\|^2\big),\qquad
    \mathcal L = -\frac1{n_Q}\sum_{i \in Q} \log p(y_i \mid x_i)

The gradient on embeddings, with :math:`D_{ik} = \|q_i - c_k\|^2`,
:math:`G = \partial\mathcal L/\partial(-D) = (P - Y_Q)/n_Q` and the
averaging matrix :math:`A = \mathrm{diag}(1/|S_k|)\, Y_S^\top` (so :math:`C = A E_S`):

.. math::
    \frac{\partial\mathcal L}{\partial E_Q} = -2\big(\mathrm{diag}(G\mathbf 1) E_Q - G C\big) = 2\,G C,\qquad
    \frac{\partial\mathcal L}{\partial C} = -2\big(\mathrm{diag}(G^\top\mathbf 1) C - G^\top E_Q\big),\qquad
    \frac{\partial\mathcal L}{\partial E_S} = A^\top \frac{\partial\mathcal L}{\partial C}

(:math:`G\mathbf 1 = 0` since each row of :math:`P - Y_Q` sums to zero.)
The prototypes depend on :math:`\theta`, so the support embeddings receive
a gradient through them; both are pulled back through ``f`` with ``net.vjp``.

Training uses more ways than testing (``Config.train_ways``, section 3.1):
the episode sampler reads it; the loss takes ``N`` from the labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..nn.losses import softmax, xent_value_and_grad
from . import embedding as emb
from . import episode_batch, protocol

NAME = "protonet"


@dataclass(frozen=True)
class Config:
    """ProtoNet settings; defaults are Snell et al. 2017, section 3.1 (Omniglot).

    The algorithm has no hyper-parameter of its own: the fields tell the
    episode sampler (the trainer) how to build training episodes. The
    paper trains with Adam at 1e-3, halved every 2000 episodes (section 3.1).
    """

    train_ways: int = 60  # "training episodes containing 60 classes" (section 3.1)
    train_queries: int = 5  # "and 5 query points per class" (section 3.1)

    def __post_init__(self):
        val.check_int(self.train_ways, "train_ways", minimum=2)
        val.check_int(self.train_queries, "train_queries", minimum=1)


# ------------------------------------------------------------ on embeddings
def prototypes(E_support, y_support, n_way):
    r"""Class means :math:`C = A E_S` (eq. 1), shape ``(N, D)``, and the averaging matrix ``A`` ``(N, n_s)``."""
    A = emb.one_hot(y_support, n_way, E_support.dtype).T
    A /= A.sum(axis=1, keepdims=True)
    return A @ E_support, A


def squared_distances(E_query, C):
    r""":math:`D_{ik} = \|q_i\|^2 - 2 q_i \cdot c_k + \|c_k\|^2`, shape ``(n_q, N)`` (``(T, n_q, N)``
    for episodes stacked on a leading axis)."""
    return (np.sum(E_query ** 2, axis=-1)[..., :, None] - 2 * E_query @ C.swapaxes(-1, -2)
            + np.sum(C ** 2, axis=-1)[..., None, :])


def linear_classifier(C):
    r"""The linear-model view of squared distances (section 2.4).

    .. math::
        -\|q - c_k\|^2 = -\|q\|^2 + w_k \cdot q + b_k,\qquad w_k = 2 c_k,\quad b_k = -\|c_k\|^2

    The first term is the same for every class, so the softmax over
    ``q @ W + b`` equals the softmax over ``-D``.

    Returns
    -------
    W : (D, N) ; b : (N,)
    """
    return 2 * C.T, -np.sum(C ** 2, axis=1)


def embedding_loss_and_grad(E_support, y_support, E_query, y_query, n_way):
    """Mean query cross-entropy of softmax(-D) and its gradient wrt the embeddings.

    Parameters
    ----------
    E_support : (n_s, D) ; y_support : (n_s,) labels, every class present
    E_query : (n_q, D) ; y_query : (n_q,) labels ; n_way : int ``N``

    Returns
    -------
    (float, dE_support (n_s, D), dE_query (n_q, D))
    """
    C, A = prototypes(E_support, y_support, n_way)
    loss, G = xent_value_and_grad(-squared_distances(E_query, C), y_query)
    dD = -G  # the logits are -D
    dE_query = 2 * (dD.sum(axis=1)[:, None] * E_query - dD @ C)
    dC = 2 * (dD.sum(axis=0)[:, None] * C - dD.T @ E_query)
    return loss, A.T @ dC, dE_query


def batch_embedding_loss_and_grad(E_support, y_support, E_query, y_query, n_way):
    """``embedding_loss_and_grad`` of ``T`` episodes at once: the same equations with a leading
    episode axis (stacked products, one NumPy call per operation instead of one per episode).

    Parameters
    ----------
    E_support : (T, n_s, D) ; y_support : (T, n_s) labels, every class present in every episode
    E_query : (T, n_q, D) ; y_query : (T, n_q) labels ; n_way : int ``N``, the same for every episode

    Returns
    -------
    (losses (T,), dE_support (T, n_s, D), dE_query (T, n_q, D))
    """
    T, n_s = y_support.shape
    n_q = y_query.shape[1]
    episodes = np.arange(T)[:, None]
    A = np.zeros((T, n_way, n_s), dtype=E_support.dtype)  # A_t = diag(1/|S_k|) Y_S^T, as prototypes()
    A[episodes, y_support, np.arange(n_s)[None, :]] = 1
    A /= A.sum(axis=2, keepdims=True)
    C = A @ E_support
    D = squared_distances(E_query, C)
    # xent_value_and_grad(-D_t, y_query_t) for every t
    shifted = -D - (-D).max(axis=2, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=2))
    rows = np.arange(n_q)[None, :]
    losses = np.sum(log_z - shifted[episodes, rows, y_query], axis=1) / n_q
    P = np.exp(shifted - log_z[:, :, None])
    P[episodes, rows, y_query] -= 1
    dD = -(P / n_q)
    dE_query = 2 * (dD.sum(axis=2)[:, :, None] * E_query - dD @ C)
    dC = 2 * (dD.sum(axis=1)[:, :, None] * C - dD.transpose(0, 2, 1) @ E_query)
    return losses, A.transpose(0, 2, 1) @ dC, dE_query


# ------------------------------------------------ through the embedding net
def loss_and_grad(net, theta, X_support, y_support, X_query, y_query):
    """Mean query cross-entropy of one episode and its gradient wrt ``theta``.

    Parameters
    ----------
    net : MLP embedding ``f`` ; theta : (net.n_params,)
    X_support : (n_s, d_in) ; y_support : (n_s,) labels ``0..N-1``, every class present
    X_query : (n_q, d_in) ; y_query : (n_q,) labels in ``0..N-1``

    Returns
    -------
    (float, (net.n_params,) array)
    """
    return _episode(net, theta, X_support, y_support, X_query, y_query)[:2]


def _episode(net, theta, X_support, y_support, X_query, y_query):
    Xs, ys, Xq, yq, n_way = emb.check_episode(net, X_support, y_support, X_query, y_query)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    loss, dEs, dEq = embedding_loss_and_grad(Es, ys, Eq, yq, n_way)
    return loss, emb.pull_back(net, theta, Xs, Xq, dEs, dEq), n_way


def logits(net, theta, X_support, y_support, X_query):
    """Class scores ``-D`` of each query, shape ``(n_q, N)``; softmax gives eq. 2."""
    Xs, ys, Xq, _, n_way = emb.check_episode(net, X_support, y_support, X_query)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    return -squared_distances(Eq, prototypes(Es, ys, n_way)[0])


def probabilities(net, theta, X_support, y_support, X_query):
    """``p(y = k | x)`` for each query (eq. 2), shape ``(n_q, N)``."""
    return softmax(logits(net, theta, X_support, y_support, X_query))


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """Meta-parameters: ``{"theta": net.init(rng)}``."""
    return {"theta": net.init(rng)}


def batch_loss_and_grad(net, theta, batch):
    """Mean episode loss over ``batch`` and its gradient wrt ``theta``: every episode's
    rows in one forward pass and one backward pass (``episode_batch.py``), every episode's
    loss on its embeddings in one ``batch_embedding_loss_and_grad``.

    Parameters
    ----------
    net : MLP embedding ``f`` ; theta : (net.n_params,)
    batch : TaskBatch of ``T`` episodes with the same ``N``

    Returns
    -------
    (float, (net.n_params,) array): the mean over episodes of ``loss_and_grad``.
    """
    theta = val.as_float_array(theta, "theta", net.dtype, (net.n_params,))
    return episode_batch.batch_mean_on_embeddings(net, theta, batch, embedding_loss_and_grad,
                                                  batch_embedding_loss_and_grad)


def meta_step(net, params, batch, config):
    """Mean episode loss over the batch and its gradient ``{"theta": ...}`` (``batch_loss_and_grad``)."""
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    theta = val.as_float_array(params["theta"], "params['theta']", net.dtype, (net.n_params,))
    loss, grad = batch_loss_and_grad(net, theta, batch)
    return loss, {"theta": grad}


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Class scores ``-D``, shape ``(1, n_q, N)``.

    ProtoNet does not adapt: the first axis has length 1 whatever ``steps``
    (validated, then unused), the prediction "after 0 steps".
    """
    emb.check_steps(steps)
    params, config = protocol.check_params(params, ("theta",)), protocol.check_config(config, Config)
    return logits(net, params["theta"], X_support, y_support, X_query)[None]
