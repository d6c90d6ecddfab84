"""The benchmark workloads and their inputs, generated once with NumPy from a seed.

Every library receives the same float64 arrays (cast to float32 for the
float32 runs): the same ``theta`` in tinymeta's layout, the same Meta-SGD
``alpha``, the same support and query sets.

Workloads (issue 5):

* ``sinusoid-*``: the MLP 1-40-40-1 (ReLU), K = 10 support and 10 query
  points per task, meta-batch 25 (Finn et al. 2017, section 5.1);
  MAML with 1 and 5 inner steps, FOMAML, Reptile (5 SGD steps), Meta-SGD.
* ``omniglot-*``: the MLP 784-256-128-64-64-5 (ReLU), 5-way 1-shot with 15
  or 5 queries per class, meta-batch 32 (Finn et al. 2017, section 5.2 and
  appendix A.1: the fully connected Omniglot network); MAML and FOMAML, 1
  inner step of size 0.4.
* ``protonet-*``: ProtoNet (Snell et al. 2017) with the embedding
  784-256-128-64-64, 5-way 1-shot and 5-shot, 15 queries per class, 1 and
  32 episodes.

The images are synthetic (uniform in [0, 1]): speed does not depend on
pixel values, and the sizes are Omniglot's (28 x 28).
"""
from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

SINUSOID_SIZES = (1, 40, 40, 1)  # Finn et al. 2017, section 5.1: two hidden layers of 40, ReLU
OMNIGLOT_SIZES = (784, 256, 128, 64, 64, 5)  # Finn et al. 2017, appendix A.1: 256, 128, 64, 64
EMBEDDING_SIZES = (784, 256, 128, 64, 64)  # the same body as an embedding for ProtoNet
SINUSOID_INNER_LR = 0.01  # Finn et al. 2017, section 5.1 (also used for Reptile here: cost does not depend on it)
OMNIGLOT_INNER_LR = 0.4  # Finn et al. 2017, section 5.2: alpha = 0.4 for Omniglot
METASGD_ALPHA_RANGE = (0.005, 0.1)  # Li et al. 2017, section 4.1: alpha initialised uniformly in [0.005, 0.1]
ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "protonet")


@dataclass(frozen=True)
class Workload:
    """One meta-iteration to time: an algorithm on a network and a meta-batch.

    ``n_support`` and ``n_query`` count samples per task (for classification,
    ``n_way * shots`` and ``n_way * queries per class``). ``n_tasks`` is the
    meta-batch size (episodes, for ProtoNet).
    """

    name: str
    algorithm: str
    sizes: tuple
    n_tasks: int
    n_support: int
    n_query: int
    n_way: int = 0  # 0: regression (loss "mse"); > 0: classification into n_way classes
    inner_lr: float = 0.0
    inner_steps: int = 0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.n_way and (self.n_support % self.n_way or self.n_query % self.n_way):
            raise ValueError(f"{self.name}: n_support={self.n_support} and n_query={self.n_query} "
                             f"must be multiples of n_way={self.n_way}")

    @property
    def loss(self) -> str:
        """``"mse"`` (regression), ``"xent"`` (classification) or ``"proto"`` (ProtoNet)."""
        if self.algorithm == "protonet":
            return "proto"
        return "xent" if self.n_way else "mse"

    @property
    def n_params(self) -> int:
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def grad_size(self) -> int:
        """Length of the checked meta-gradient (Meta-SGD: theta's and alpha's, concatenated)."""
        return 2 * self.n_params if self.algorithm == "metasgd" else self.n_params


def _fewshot(name, algorithm, sizes, n_tasks, shots, queries, n_way=5, **kw):
    return Workload(name, algorithm, sizes, n_tasks, n_way * shots, n_way * queries, n_way, **kw)


WORKLOADS = (
    Workload("sinusoid-maml1", "maml", SINUSOID_SIZES, 25, 10, 10, inner_lr=SINUSOID_INNER_LR, inner_steps=1),
    Workload("sinusoid-maml5", "maml", SINUSOID_SIZES, 25, 10, 10, inner_lr=SINUSOID_INNER_LR, inner_steps=5),
    Workload("sinusoid-fomaml1", "fomaml", SINUSOID_SIZES, 25, 10, 10, inner_lr=SINUSOID_INNER_LR, inner_steps=1),
    Workload("sinusoid-reptile5", "reptile", SINUSOID_SIZES, 25, 10, 10, inner_lr=SINUSOID_INNER_LR, inner_steps=5),
    Workload("sinusoid-metasgd1", "metasgd", SINUSOID_SIZES, 25, 10, 10, inner_steps=1),
    _fewshot("omniglot-maml1-q15", "maml", OMNIGLOT_SIZES, 32, 1, 15, inner_lr=OMNIGLOT_INNER_LR, inner_steps=1),
    _fewshot("omniglot-fomaml1-q15", "fomaml", OMNIGLOT_SIZES, 32, 1, 15, inner_lr=OMNIGLOT_INNER_LR, inner_steps=1),
    _fewshot("omniglot-maml1-q5", "maml", OMNIGLOT_SIZES, 32, 1, 5, inner_lr=OMNIGLOT_INNER_LR, inner_steps=1),
    _fewshot("omniglot-fomaml1-q5", "fomaml", OMNIGLOT_SIZES, 32, 1, 5, inner_lr=OMNIGLOT_INNER_LR, inner_steps=1),
    _fewshot("protonet-1shot-e1", "protonet", EMBEDDING_SIZES, 1, 1, 15),
    _fewshot("protonet-1shot-e32", "protonet", EMBEDDING_SIZES, 32, 1, 15),
    _fewshot("protonet-5shot-e1", "protonet", EMBEDDING_SIZES, 1, 5, 15),
    _fewshot("protonet-5shot-e32", "protonet", EMBEDDING_SIZES, 32, 5, 15),
)


def select(patterns=None, workloads=WORKLOADS):
    """The workloads whose name matches any of the shell patterns (all when ``patterns`` is empty)."""
    if not patterns:
        return tuple(workloads)
    chosen = tuple(w for w in workloads if any(fnmatch.fnmatch(w.name, p) for p in patterns))
    if not chosen:
        names = ", ".join(w.name for w in workloads)
        raise ValueError(f"workload patterns {list(patterns)} match none of: {names}")
    return chosen


class Inputs(NamedTuple):
    """The arrays every library receives (float64; labels int64).

    theta : (P,) tinymeta layout ; alpha : (P,) Meta-SGD step sizes
    X_support : (T, S, d_in) ; y_support : (T, S, d_out) float or (T, S) int labels
    X_query : (T, Q, d_in) ; y_query : (T, Q, d_out) or (T, Q)
    """

    theta: np.ndarray
    alpha: np.ndarray
    X_support: np.ndarray
    y_support: np.ndarray
    X_query: np.ndarray
    y_query: np.ndarray

    def astype(self, dtype) -> "Inputs":
        """The float arrays cast to ``dtype``; labels unchanged."""
        cast = [a.astype(dtype) if a.dtype.kind == "f" else a for a in self]
        return Inputs(*cast)


def make_inputs(workload: Workload, rng: np.random.Generator) -> Inputs:
    """Parameters and one meta-batch for ``workload``, drawn from ``rng``.

    ``theta``: He-normal weights, std ``sqrt(2 / fan_in)``, and small random
    biases (non-zero, so that bias gradients are checked too). Sinusoid
    tasks: amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5] (Finn et al.
    2017, section 5.1). Classification: uniform pixels, support labels
    ``0..n_way-1`` per shot, the same for the queries, shuffled per task.
    """
    r_theta, r_alpha, r_data = rng.spawn(3)
    parts = []
    for a, b in zip(workload.sizes[:-1], workload.sizes[1:]):
        parts += [r_theta.normal(0.0, np.sqrt(2.0 / a), a * b), r_theta.normal(0.0, 0.01, b)]
    theta = np.concatenate(parts)
    alpha = r_alpha.uniform(*METASGD_ALPHA_RANGE, theta.size)
    T, S, Q, d_in = workload.n_tasks, workload.n_support, workload.n_query, workload.sizes[0]
    if workload.n_way == 0:
        amplitude = r_data.uniform(0.1, 5.0, (T, 1, 1))
        phase = r_data.uniform(0.0, np.pi, (T, 1, 1))
        Xs, Xq = r_data.uniform(-5.0, 5.0, (T, S, d_in)), r_data.uniform(-5.0, 5.0, (T, Q, d_in))
        ys, yq = amplitude * np.sin(Xs - phase), amplitude * np.sin(Xq - phase)
        return Inputs(theta, alpha, Xs, ys, Xq, yq)
    N = workload.n_way
    Xs, Xq = r_data.uniform(0.0, 1.0, (T, S, d_in)), r_data.uniform(0.0, 1.0, (T, Q, d_in))
    ys = np.stack([r_data.permutation(np.tile(np.arange(N), S // N)) for _ in range(T)]).astype(np.int64)
    yq = np.stack([r_data.permutation(np.tile(np.arange(N), Q // N)) for _ in range(T)]).astype(np.int64)
    return Inputs(theta, alpha, Xs, ys, Xq, yq)


def inputs_for(workload: Workload, seed: int) -> Inputs:
    """``make_inputs`` from a generator seeded by ``(seed, crc32(name))``: every process, same arrays."""
    return make_inputs(workload, np.random.default_rng([seed, zlib.crc32(workload.name.encode())]))


def split_theta(theta, sizes):
    """``[W_0, b_0, W_1, b_1, ...]``: copies of the layers of a flat ``theta`` in tinymeta's layout.

    ``W_l`` has shape ``(sizes[l], sizes[l+1])`` (row-major in ``theta``),
    then ``b_l`` of shape ``(sizes[l+1],)``. The peers compute ``h @ W + b``
    on these, so no transpose is needed.
    """
    theta = np.asarray(theta)
    expected = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    if theta.shape != (expected,):
        raise ValueError(f"theta must have shape ({expected},) for sizes {tuple(sizes)}, got {theta.shape}")
    out, start = [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        out.append(theta[start:start + a * b].reshape(a, b).copy())
        out.append(theta[start + a * b:start + a * b + b].copy())
        start += a * b + b
    return out


def join_theta(layers):
    """Inverse of ``split_theta``: one flat float64 vector from ``[W_0, b_0, ...]`` (any array-likes)."""
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in layers])
