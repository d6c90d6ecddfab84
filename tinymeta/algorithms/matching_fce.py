r"""Matching Networks with full-context embeddings (FCE), every gradient by hand.

Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016,
section 2.1.2 and appendix A. ``f' = g'`` is the MLP ``net`` (``theta``);
the context comes from three LSTMs (``phi``). The support set is read as a
sequence, in the order given, by a bidirectional LSTM with a skip connection
(appendix A.2):

.. math::
    g(x_j, S) = \overrightarrow{h}_j + \overleftarrow{h}_j + s'_j,\qquad
    \overrightarrow{h}_j = \mathrm{LSTM}(s'_j, \overrightarrow{h}_{j-1}),\quad
    \overleftarrow{h}_j = \mathrm{LSTM}(s'_j, \overleftarrow{h}_{j+1})

and each query by ``K`` "processing steps" of an LSTM that attends over
:math:`G = g(S)` (appendix A.1), from :math:`h_0 = 0, c_0 = 0`:

.. math::
    r_{k-1} = \operatorname{softmax}(h_{k-1} G^\top)\, G,\quad
    \hat h_k, c_k = \mathrm{LSTM}(q', [h_{k-1}, r_{k-1}], c_{k-1}),\quad
    h_k = \hat h_k + q',\quad f(x, S) = h_K

The loss is ``matching.embedding_loss_and_grad`` on :math:`(G, F)`. The
LSTM cell, gates ``[i, f, o, u]`` from :math:`a = x W_x + h W_h + b`:

.. math::
    c' = \sigma(a_f) c + \sigma(a_i)\tanh(a_u),\quad h' = \sigma(a_o)\tanh(c')

and its VJP, with :math:`\bar c_{tot} = \bar c' + \bar h'\,\sigma(a_o)(1 - \tanh^2 c')`:
:math:`\bar a_o = \bar h' \tanh(c')\,\sigma'`, :math:`\bar a_i = \bar c_{tot}\tanh(a_u)\,\sigma'`,
:math:`\bar a_f = \bar c_{tot}\, c\,\sigma'`, :math:`\bar a_u = \bar c_{tot}\,\sigma(a_i)(1-\tanh^2 a_u)`,
:math:`\bar c = \bar c_{tot}\sigma(a_f)`; then :math:`\bar W_x = x^\top\bar a`,
:math:`\bar W_h = h^\top\bar a`, :math:`\bar b = \sum\bar a`, :math:`\bar x = \bar a W_x^\top`,
:math:`\bar h = \bar a W_h^\top`. The attention read :math:`r = A G`,
:math:`A = \operatorname{softmax}(h G^\top)` gives :math:`\bar G \mathrel{+}= A^\top\bar r`,
:math:`\bar Z = A\odot(\bar A - \sum A\odot\bar A)` with :math:`\bar A = \bar r G^\top`,
:math:`\bar h \mathrel{+}= \bar Z G`, :math:`\bar G \mathrel{+}= \bar Z^\top h`.
Backpropagation through time runs these in reverse order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validation as val
from ..nn.activations import sigmoid
from ..nn.losses import softmax
from . import embedding as emb
from . import matching, protocol

NAME = "matching_fce"
LSTMS = ("forward", "backward", "attention")  # the layout of phi, in this order


@dataclass(frozen=True)
class Config:
    """Matching Networks with FCE (Vinyals et al. 2016, appendix A)."""

    processing_steps: int = 2  # K: ours, the paper does not give it
    cosine_eps: float = matching.COSINE_EPS  # as in matching.Config (ours)
    forget_bias: float = 1.0  # initial forget-gate bias: ours (the common LSTM practice)

    def __post_init__(self):
        val.check_int(self.processing_steps, "processing_steps", minimum=1)
        val.check_float(self.cosine_eps, "cosine_eps", positive=True)
        val.check_float(self.forget_bias, "forget_bias")


# --------------------------------------------------------------- parameters
def lstm_shapes(D):
    """``{name: (n_x, n_h)}``: input width and recurrent-input width of each LSTM; all output ``D``."""
    return {"forward": (D, D), "backward": (D, D), "attention": (D, 2 * D)}


def n_params(D):
    """Length of ``phi`` for embedding width ``D``."""
    return sum((n_x + n_h) * 4 * D + 4 * D for n_x, n_h in lstm_shapes(D).values())


def unflatten(phi, D):
    """``{name: (W_x (n_x, 4D), W_h (n_h, 4D), b (4D,))}`` as views into ``phi``."""
    out, start = {}, 0
    for name, (n_x, n_h) in lstm_shapes(D).items():
        sizes = (n_x * 4 * D, n_h * 4 * D, 4 * D)
        W_x, W_h, b = np.split(phi[start:start + sum(sizes)], np.cumsum(sizes)[:2])
        out[name] = (W_x.reshape(n_x, 4 * D), W_h.reshape(n_h, 4 * D), b)
        start += sum(sizes)
    return out


# ------------------------------------------------------------ the LSTM cell
def lstm_step(p, x, h, c):
    """One LSTM step on rows: ``(h_new, c_new, cache)`` for ``lstm_step_vjp``."""
    W_x, W_h, b = p
    D = b.shape[0] // 4
    a = x @ W_x + h @ W_h + b
    i, f, o, u = sigmoid(a[:, :D]), sigmoid(a[:, D:2 * D]), sigmoid(a[:, 2 * D:3 * D]), np.tanh(a[:, 3 * D:])
    c_new = f * c + i * u
    t = np.tanh(c_new)
    return o * t, c_new, (x, h, c, i, f, o, u, t)


def lstm_step_vjp(p, cache, dh_new, dc_new, grad_p):
    """Cotangents ``(dx, dh, dc)`` of one step; adds the parameter gradient into ``grad_p``."""
    W_x, W_h, _ = p
    x, h, c, i, f, o, u, t = cache
    dc_tot = dc_new + dh_new * o * (1 - t * t)
    da = np.concatenate([dc_tot * u * i * (1 - i), dc_tot * c * f * (1 - f),
                         dh_new * t * o * (1 - o), dc_tot * i * (1 - u * u)], axis=1)
    gW_x, gW_h, gb = grad_p
    gW_x += x.T @ da
    gW_h += h.T @ da
    gb += da.sum(axis=0)
    return da @ W_x.T, da @ W_h.T, dc_tot * f


# ------------------------------------------------------- the two embeddings
def _run(p, X, order):
    """The LSTM over the rows of ``X`` (one sequence) in ``order``: ``(H (n, D), caches)``."""
    D = X.shape[1]
    H, caches = np.zeros_like(X), {}
    h, c = np.zeros((1, D), X.dtype), np.zeros((1, D), X.dtype)
    for j in order:
        h, c, caches[j] = lstm_step(p, X[j:j + 1], h, c)
        H[j] = h[0]
    return H, caches


def _run_vjp(p, dH, caches, order, grad_p):
    dX = np.zeros_like(dH)
    dh, dc = np.zeros((1, dH.shape[1]), dH.dtype), np.zeros((1, dH.shape[1]), dH.dtype)
    for j in reversed(order):
        dx, dh, dc = lstm_step_vjp(p, caches[j], dh + dH[j:j + 1], dc, grad_p)
        dX[j] = dx[0]
    return dX


def context_embeddings(phi, S, Q, steps):
    """``(G (n_s, D), F (n_q, D), cache)``: the FCE of support ``S`` and queries ``Q``."""
    D = S.shape[1]
    P = unflatten(phi, D)
    n_s = S.shape[0]
    fwd, bwd = list(range(n_s)), list(reversed(range(n_s)))
    H_f, c_f = _run(P["forward"], S, fwd)
    H_b, c_b = _run(P["backward"], S, bwd)
    G = S + H_f + H_b
    h, c, trail = np.zeros_like(Q), np.zeros_like(Q), []
    for _ in range(steps):
        A = softmax(h @ G.T)
        h_hat, c, cell = lstm_step(P["attention"], Q, np.concatenate([h, A @ G], axis=1), c)
        trail.append((h, A, cell))
        h = h_hat + Q
    return G, h, (P, c_f, c_b, trail)


def context_embeddings_vjp(phi, G, cache, dG, dF):
    """Pull ``(dG, dF)`` back to ``(dS, dQ, dphi)`` (backpropagation through time)."""
    P, c_f, c_b, trail = cache
    D = G.shape[1]
    dphi = np.zeros_like(phi)
    grads = unflatten(dphi, D)
    dG = dG.copy()
    dQ, dh, dc = np.zeros_like(dF), dF, np.zeros_like(dF)
    for h_prev, A, cell in reversed(trail):
        dQ += dh  # skip connection h_k = h_hat_k + q'
        dx, dhr, dc = lstm_step_vjp(P["attention"], cell, dh, dc, grads["attention"])
        dQ += dx
        dh, dr = dhr[:, :D], dhr[:, D:]
        dG += A.T @ dr
        dA = dr @ G.T
        dZ = A * (dA - np.sum(A * dA, axis=1, keepdims=True))
        dh = dh + dZ @ G
        dG += dZ.T @ h_prev
    n_s = G.shape[0]
    dS = dG + _run_vjp(P["forward"], dG, c_f, list(range(n_s)), grads["forward"])
    dS += _run_vjp(P["backward"], dG, c_b, list(reversed(range(n_s))), grads["backward"])
    return dS, dQ, dphi


def embedding_loss_and_grad(phi, S, y_support, Q, y_query, n_way, steps, eps=matching.COSINE_EPS):
    """Matching loss on the FCE of ``(S, Q)``: ``(loss, dS, dQ, dphi)`` (``S, Q`` are ``g', f'``)."""
    G, F, cache = context_embeddings(phi, S, Q, steps)
    loss, dG, dF = matching.embedding_loss_and_grad(G, y_support, F, y_query, n_way, eps)
    return (loss, *context_embeddings_vjp(phi, G, cache, dG, dF))


# ------------------------------------------------ through the embedding net
def check_params(net, params):
    """``(theta, phi)`` validated against ``net``."""
    params = protocol.check_params(params, ("theta", "phi"))
    return (val.as_float_array(params["theta"], "params['theta']", net.dtype, (net.n_params,)),
            val.as_float_array(params["phi"], "params['phi']", net.dtype, (n_params(net.sizes[-1]),)))


def _episode(net, checked, config, X_support, y_support, X_query, y_query):
    theta, phi = checked
    Xs, ys, Xq, yq, n_way = emb.check_episode(net, X_support, y_support, X_query, y_query)
    S, Q = emb.embed(net, theta, Xs, Xq)
    loss, dS, dQ, dphi = embedding_loss_and_grad(phi, S, ys, Q, yq, n_way, config.processing_steps,
                                                 config.cosine_eps)
    return loss, {"theta": emb.pull_back(net, theta, Xs, Xq, dS, dQ), "phi": dphi}, n_way


def loss_and_grad(net, params, X_support, y_support, X_query, y_query, config=Config()):
    """FCE matching loss of one episode and its gradients ``{"theta", "phi"}``."""
    protocol.check_config(config, Config)
    return _episode(net, check_params(net, params), config, X_support, y_support, X_query, y_query)[:2]


# ------------------------------------------------ the training-loop protocol
def init_params(net, rng, config):
    """``theta = net.init``; LSTM weights normal with std ``1/sqrt(n_x + n_h)`` (ours),
    biases zero but the forget gate's, ``config.forget_bias``."""
    val.check_rng(rng)
    r_theta, r_phi = rng.spawn(2)
    D = net.sizes[-1]
    phi = np.zeros(n_params(D), dtype=net.dtype)
    for W_x, W_h, b in unflatten(phi, D).values():
        std = 1 / np.sqrt(W_x.shape[0] + W_h.shape[0])
        W_x[...], W_h[...] = r_phi.normal(0, std, W_x.shape), r_phi.normal(0, std, W_h.shape)
        b[D:2 * D] = config.forget_bias
    return {"theta": net.init(r_theta), "phi": phi}


def meta_step(net, params, batch, config):
    """Mean FCE matching loss over the episodes and its gradients ``{"theta", "phi"}``."""
    protocol.check_config(config, Config)
    checked = check_params(net, params)
    return emb.batch_mean(lambda *episode: _episode(net, checked, config, *episode), batch)


def predict(net, params, X_support, y_support, X_query, steps, config):
    """Label distribution ``P``, shape ``(1, n_q, N)``: no adaptation, ``steps`` unused."""
    emb.check_steps(steps)
    protocol.check_config(config, Config)
    theta, phi = check_params(net, params)
    Xs, ys, Xq, _, n_way = emb.check_episode(net, X_support, y_support, X_query)
    G, F, _ = context_embeddings(phi, *emb.embed(net, theta, Xs, Xq), config.processing_steps)
    return (matching.attention(G, F, config.cosine_eps) @ emb.one_hot(ys, n_way, G.dtype))[None]
