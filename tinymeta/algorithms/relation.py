r"""Relation Networks: a learned relation module scores (class, query) pairs.

Sung, Yang, Zhang, Xiang, Torr and Hospedales, "Learning to Compare:
Relation Network for Few-Shot Learning", CVPR 2018 (section 3.2, eq. 1-3).
The embedding ``f`` is ``net`` (parameters ``theta``), the relation module
``g`` a second MLP (parameters ``phi``, ``relation_net``):

.. math::
    e_k = \sum_{j \in S_k} f(x_j),\quad
    r_{ik} = \sigma\big(g([e_k, f(x_i)])\big),\quad
    \mathcal L = \frac1{n_Q}\sum_{i \in Q}\sum_{k=1}^N \big(r_{ik} - [y_i = k]\big)^2

(``class_embedding="sum"``: the paper's element-wise sum for K-shot,
section 3.2; ``"mean"`` divides by :math:`|S_k|`. The pair is
concatenated in the paper's order, class first. The paper sums the squared
errors; we take the mean over queries, as the engine's ``"mse"``.)

Backward: :math:`\bar r = 2 (r - T)/n_Q`, :math:`\bar s = \bar r\, r(1-r)` on the
module's output :math:`s`; ``g.vjp(phi, Z, s_bar, input_grad=True)`` gives
:math:`\bar\phi` and :math:`\bar Z` for the pair rows :math:`Z_{(i,k)} = [e_k, q_i]`; then

.. math::
    \bar e_k = \sum_i \bar Z_{(i,k)}[{:}D],\quad
    \bar q_i = \sum_k \bar Z_{(i,k)}[D{:}],\quad
    \bar s_j = \bar e_{y_j} \ (\text{sum})\ \text{or}\ \bar e_{y_j}/|S_{y_j}|\ (\text{mean})

and ``net.vjp`` takes :math:`(\bar E_S, \bar E_Q)` back to :math:`\bar\theta`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..nn import MLP
from ..nn.activations import sigmoid
from . import embedding as emb
from . import protocol

NAME = "relation"
CLASS_EMBEDDINGS = ("sum", "mean")


@dataclass(frozen=True)
class Config:
    """Relation Network settings (Sung et al. 2018)."""

    relation_hidden: tuple = (8,)  # the relation module's FC layers are 8 and 1 wide (section 3.4)
    relation_activation: str = "relu"  # "All fully-connected layers are ReLU" but the output (section 3.4)
    class_embedding: str = "sum"  # K-shot: element-wise sum of the class's embeddings (section 3.2)

    def __post_init__(self):
        if not isinstance(self.relation_hidden, tuple):
            raise TypeError(f"relation_hidden must be a tuple of layer widths, got {self.relation_hidden!r}")
        for i, h in enumerate(self.relation_hidden):
            val.check_int(h, f"relation_hidden[{i}]", minimum=1)
        if self.class_embedding not in CLASS_EMBEDDINGS:
            raise ValueError(f"class_embedding must be one of {CLASS_EMBEDDINGS}, got {self.class_embedding!r}")


def relation_net(net, config):
    """The relation module ``g``: an MLP ``[2 D, *relation_hidden, 1]``, last layer linear
    (the sigmoid is applied here), with ``net``'s dtype and backend."""
    D = net.sizes[-1]
    return MLP((2 * D, *config.relation_hidden, 1), activation=config.relation_activation, loss="mse",
               dtype=net.dtype, backend=net.backend)


# ------------------------------------------------------------ on embeddings
def class_embeddings(E_support, y_support, n_way, mode="sum"):
    """``(e (N, D), A (N, n_s))`` with ``e = A E_support``: sum (or mean) per class."""
    A = emb.one_hot(y_support, n_way, E_support.dtype).T
    if mode == "mean":
        A /= A.sum(axis=1, keepdims=True)
    return A @ E_support, A


def pair_rows(e, E_query):
    """``Z`` of shape ``(n_q * N, 2 D)``, row ``i * N + k`` = ``[e_k, q_i]``."""
    N, n_q = e.shape[0], E_query.shape[0]
    return np.concatenate([np.tile(e, (n_q, 1)), np.repeat(E_query, N, axis=0)], axis=1)


def relation_scores(g, phi, e, E_query):
    """``r`` of shape ``(n_q, N)``: ``sigmoid(g([e_k, q_i]))``."""
    return sigmoid(g.forward(phi, pair_rows(e, E_query))).reshape(E_query.shape[0], e.shape[0])


def embedding_loss_and_grad(g, phi, E_support, y_support, E_query, y_query, n_way, mode="sum"):
    """The relation loss of an episode and its gradients on embeddings and on ``phi``.

    Parameters
    ----------
    g : MLP relation module ; phi : (g.n_params,)
    E_support : (n_s, D) ; y_support : (n_s,) ; E_query : (n_q, D) ; y_query : (n_q,)
    n_way : int ``N`` ; mode : "sum" or "mean"

    Returns
    -------
    (float, dE_support (n_s, D), dE_query (n_q, D), dphi (g.n_params,))
    """
    e, A = class_embeddings(E_support, y_support, n_way, mode)
    Z = pair_rows(e, E_query)
    n_q, D = E_query.shape
    r = sigmoid(g.forward(phi, Z)).reshape(n_q, n_way)
    T = emb.one_hot(y_query, n_way, r.dtype)
    loss = float(np.sum((r - T) ** 2) / n_q)
    ds = (2 * (r - T) / n_q) * r * (1 - r)
    dphi, dZ = g.vjp(phi, Z, ds.reshape(-1, 1), input_grad=True)
    dZ = dZ.reshape(n_q, n_way, 2 * D)
    de, dE_query = dZ[:, :, :D].sum(axis=0), dZ[:, :, D:].sum(axis=1)
    return loss, A.T @ de, dE_query, dphi


# ------------------------------------------------ through the embedding net
def check_params(net, g, params):
    """``(theta, phi)`` validated against ``net`` and ``g``."""
    params = protocol.check_params(params, ("theta", "phi"))
    return (val.as_float_array(params["theta"], "params['theta']", net.dtype, (net.n_params,)),
            val.as_float_array(params["phi"], "params['phi']", g.dtype, (g.n_params,)))


def _episode(net, g, checked, X_support, y_support, X_query, y_query, mode):
    theta, phi = checked
    Xs, ys, Xq, yq, n_way = emb.check_episode(net, X_support, y_support, X_query, y_query)
    _check_balanced(ys, mode)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    loss, dEs, dEq, dphi = embedding_loss_and_grad(g, phi, Es, ys, Eq, yq, n_way, mode)
    return loss, {"theta": emb.pull_back(net, theta, Xs, Xq, dEs, dEq), "phi": dphi}, n_way


def _check_balanced(y_support, mode):
    counts = np.bincount(y_support)
    if mode == "sum" and counts.min() != counts.max():
        raise ValueError(f"y_support must have the same number of shots per class for class_embedding='sum' "
                         f"(a K-shot episode), got counts {counts.tolist()}; use class_embedding='mean'")


def loss_and_grad(net, params, X_support, y_support, X_query, y_query, config=Config()):
    """Relation loss of one episode and its gradients ``{"theta", "phi"}``.

    Shapes as in ``protonet.loss_and_grad``; ``g = relation_net(net, config)``.
    """
    g = relation_net(net, protocol.check_config(config, Config))
    return _episode(net, g, check_params(net, g, params), X_support, y_support, X_query, y_query,
                    config.class_embedding)[:2]


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """``{"theta": net.init, "phi": g.init}`` from two sub-streams of ``rng``."""
    val.check_rng(rng)
    r_theta, r_phi = rng.spawn(2)
    return {"theta": net.init(r_theta), "phi": relation_net(net, config).init(r_phi)}


def meta_step(net, params, batch, config):
    """Mean relation loss over the episodes and its gradients ``{"theta", "phi"}``."""
    g = relation_net(net, protocol.check_config(config, Config))
    checked = check_params(net, g, params)
    return emb.batch_mean(lambda *ep: _episode(net, g, checked, *ep, config.class_embedding), batch)


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Relation scores ``r``, shape ``(1, n_q, N)``: no adaptation, ``steps`` unused."""
    emb.check_steps(steps)
    g = relation_net(net, protocol.check_config(config, Config))
    theta, phi = check_params(net, g, params)
    Xs, ys, Xq, _, n_way = emb.check_episode(net, X_support, y_support, X_query)
    _check_balanced(ys, config.class_embedding)
    Es, Eq = emb.embed(net, theta, Xs, Xq)
    return relation_scores(g, phi, class_embeddings(Es, ys, n_way, config.class_embedding)[0], Eq)[None]
