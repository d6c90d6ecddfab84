r"""A batch of metric-learning episodes through the embedding net in one forward and one backward pass.

``embedding.batch_mean`` runs one forward pass and one ``net.vjp`` per
episode. Since the pull-back is linear in the cotangent and sums over rows,
the mean gradient over ``T`` episodes is one pull-back of every episode's
rows stacked:

.. math::
    \frac1T \sum_i J_{\theta,i}^\top dE_i
    = \frac1T\, J_\theta^\top \begin{bmatrix} dE_1 \\ \vdots \\ dE_T \end{bmatrix}

where :math:`J_\theta` is the Jacobian of ``f`` over all stacked rows. So
``batch_mean_on_embeddings`` embeds every support and query row of the
batch in one forward pass, computes each episode's loss and embedding
gradient in NumPy (all episodes in one call when the algorithm has a
batched version: ProtoNet's took 2.6 ms of a 24 ms float32 Omniglot step
episode by episode), and pulls them back in one backward pass
(``net.forward_and_vjp``: the pull-back reuses the forward pass instead of
running it again, as ``net.vjp`` would). It computes what
``embedding.batch_mean`` computes (tests pin the two together).

With batch norm (``net.batchnorm``) an episode's rows are normalised with
that episode's statistics (its support and query rows, as ``embedding.embed``
and every evaluation see them), so a pass over rows of several episodes would
compute another loss: there the episodes go through the network one at a
time.
"""
from __future__ import annotations

import numpy as np

from . import embedding as emb


def batch_mean_on_embeddings(net, theta, batch, embedding_loss_and_grad, batched=None):
    """Mean episode loss over ``batch`` and its gradient wrt ``theta``.

    Parameters
    ----------
    net : MLP embedding ``f`` ; theta : (net.n_params,) ; batch : TaskBatch of episodes
    embedding_loss_and_grad : callable
        ``(E_support, y_support, E_query, y_query, n_way) -> (loss, dE_support, dE_query)``,
        e.g. ``protonet.embedding_loss_and_grad``.
    batched : callable or None
        the same on every episode of a pass at once, arrays with a leading episode axis,
        returning the ``(T,)`` losses (``protonet.batch_embedding_loss_and_grad``); None: episode
        by episode.

    Returns
    -------
    (float, (net.n_params,) array)

    Every episode must be valid (``embedding.check_episode``; ``check_episodes`` checks
    them all at once) and have the same ``N``, as ``embedding.batch_mean`` requires.
    """
    emb.check_batch(batch)
    episodes = emb.check_episodes(net, batch)
    for i, episode in enumerate(episodes):
        if episode[4] != episodes[0][4]:
            raise ValueError(f"every episode of batch must have the same number of ways: episode 0 is "
                             f"{episodes[0][4]}-way, episode {i} is {episode[4]}-way "
                             f"(y_support labels 0..{episode[4] - 1})")
    passes = [episodes] if not net.batchnorm else [[episode] for episode in episodes]
    total, grad = 0.0, None
    for stacked in passes:
        loss, g = _summed_over(net, theta, stacked, embedding_loss_and_grad, batched)
        total, grad = total + loss, g if grad is None else grad + g
    T = batch.n_tasks
    return total / T, grad / T


def _summed_over(net, theta, episodes, embedding_loss_and_grad, batched=None):
    """Sum of the episodes' losses and of their gradients, from one pass over their stacked rows
    (episode ``t``'s support rows, then its query rows, then episode ``t + 1``'s)."""
    X = np.concatenate([a for Xs, _, Xq, _, _ in episodes for a in (Xs, Xq)])
    E, pullback = net.forward_and_vjp(theta, X)
    dE = np.empty_like(E)
    if batched is not None:  # every episode has the shapes of the first (the batch's arrays are stacked)
        T, n_s, n_way = len(episodes), episodes[0][0].shape[0], episodes[0][4]
        E3, dE3 = E.reshape(T, -1, E.shape[1]), dE.reshape(T, -1, E.shape[1])
        losses, dE3[:, :n_s], dE3[:, n_s:] = batched(E3[:, :n_s], np.stack([e[1] for e in episodes]), E3[:, n_s:],
                                                      np.stack([e[3] for e in episodes]), n_way)
        return sum(losses.tolist()), pullback(dE)  # summed in episode order, as below
    total, start = 0.0, 0
    for Xs, ys, Xq, yq, n_way in episodes:
        mid, end = start + Xs.shape[0], start + Xs.shape[0] + Xq.shape[0]
        loss, dE[start:mid], dE[mid:end] = embedding_loss_and_grad(E[start:mid], ys, E[mid:end], yq, n_way)
        total += loss
        start = end
    return total, pullback(dE)
