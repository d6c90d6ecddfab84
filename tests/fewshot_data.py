"""Synthetic few-shot episodes for the metric learners' tests (not a library module).

Each episode draws ``n_way`` new classes: a class is a random centre in the
first ``k`` input dimensions, its samples that centre plus small noise; the
other ``d - k`` dimensions are large class-independent noise. Raw inputs
classify poorly (the nuisance dimensions dominate every distance); an
embedding that learns to ignore them classifies almost perfectly. The
classes of test episodes are never seen in training.
"""
import numpy as np

import tinymeta as tm
from tinymeta.optim import Adam


def episodes(rng, T, n_way=5, shots=1, queries=5, d=10, k=4, noise=0.15, nuisance=2.0):
    """A TaskBatch of ``T`` ``n_way``-way ``shots``-shot episodes, ``queries`` queries per class."""
    Xs, Xq = np.empty((T, n_way * shots, d)), np.empty((T, n_way * queries, d))
    ys = np.tile(np.arange(n_way), (T, shots))
    yq = np.tile(np.arange(n_way), (T, queries))
    for t in range(T):
        centres = rng.standard_normal((n_way, k))
        for X, y in ((Xs, ys), (Xq, yq)):
            n = y.shape[1]
            X[t, :, :k] = centres[y[t]] + noise * rng.standard_normal((n, k))
            X[t, :, k:] = nuisance * rng.standard_normal((n, d - k))
    return tm.TaskBatch(Xs, ys, Xq, yq)


def random_episode(rng, d_in, n_way=3, shots=2, queries=7):
    """One episode of standard normal inputs: ``(X_support, y_support, X_query, y_query)``,
    support labels ``0..n_way-1`` repeated ``shots`` times, query labels random."""
    return (rng.standard_normal((n_way * shots, d_in)), np.tile(np.arange(n_way), shots),
            rng.standard_normal((queries, d_in)), rng.integers(0, n_way, queries))


def accuracy(module, net, params, config, batch):
    """Mean query accuracy of ``argmax predict`` over the episodes of ``batch``."""
    hits = []
    for i in range(batch.n_tasks):
        Xs, ys, Xq, yq = batch.task(i)
        scores = module.predict(net, params, Xs, ys, Xq, 0, config)
        assert scores.shape == (1, Xq.shape[0], int(ys.max()) + 1)
        hits.append(np.mean(scores[0].argmax(axis=1) == yq))
    return float(np.mean(hits))


def train(module, net, config, rng, steps=300, lr=0.01, T=4, **episode_kwargs):
    """Meta-train ``module`` with Adam on synthetic episodes; returns ``(params_before, params_after)``."""
    params = module.init_params(net, rng, config)
    start = params
    opt = Adam(lr)
    state = opt.init(params)
    for _ in range(steps):
        _, grads = module.meta_step(net, params, episodes(rng, T, **episode_kwargs), config)
        params, state = opt.update(params, grads, state)
    return start, params
