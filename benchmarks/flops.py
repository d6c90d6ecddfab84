r"""Analytic floating-point operation counts per meta-iteration.

Convention: we count the matrix products only, ``2 m k n`` for an
``(m, k) @ (k, n)`` product (one multiply and one add per term); bias
additions, activations, losses and parameter updates are left out (they are
``O(n d)``, against ``O(n d^2)`` for the products). The count is of the
textbook algorithm, the same for every library: a library that finds a
cheaper way (tinymeta's low-rank updates) or a costlier one (reverse-over-
reverse autodiff recomputing a forward pass) is credited with the same
work, so GFLOP/s compares like with like.

For an MLP with widths :math:`s_0 \dots s_L`, let
:math:`M = \sum_{l=1}^{L} s_{l-1} s_l` (the number of weights) and
:math:`F = s_0 s_1` (the first layer, which needs no input cotangent and
sees a zero input tangent). On ``n`` samples:

.. math::
    \mathrm{forward}(n) &= 2 n M \\
    \mathrm{grad}(n) &= \underbrace{2nM}_{\text{forward}}
        + \underbrace{2nM}_{\partial W = h^\top \delta}
        + \underbrace{2n(M - F)}_{\delta W^\top} = 6nM - 2nF \\
    \mathrm{hvp}(n) &= \underbrace{4nM - 2nF}_{R\{z\} = R\{h\}W + hV}
        + \underbrace{4nM - 2nF}_{R\{\partial W\} = R\{h\}^\top\delta + h^\top R\{\delta\}}
        + \underbrace{4n(M - F)}_{R\{\delta\} = R\{\delta\}W^\top + \delta V^\top}
        = 12nM - 8nF

(``hvp`` reuses the forward and backward pass of the inner step at the
same point.) Per meta-iteration, with ``T`` tasks, ``K`` inner steps,
``S`` support and ``Q`` query samples per task:

.. math::
    \mathrm{MAML} &= T\,[K\,\mathrm{grad}(S) + \mathrm{grad}(Q) + K\,\mathrm{hvp}(S)] \\
    \mathrm{FOMAML} &= T\,[K\,\mathrm{grad}(S) + \mathrm{grad}(Q)] \\
    \mathrm{Meta\text{-}SGD} &= \mathrm{MAML}
        \quad (\alpha \odot g \text{ is elementwise}) \\
    \mathrm{Reptile} &= T\,K\,\mathrm{grad}(S) \quad (\text{support set only}) \\
    \mathrm{ProtoNet} &= T\,[\mathrm{grad}_E(S + Q) + 6\,Q\,N\,D]

where ``grad_E`` is the embedding network's gradient (its output is the
``D``-dimensional embedding) and ``6 Q N D`` counts the squared distances
of ``Q`` queries to ``N`` prototypes and their gradients with respect to
both (``2 Q N D`` each), written as products.

Where the count has a shortcut: MAML's Omniglot-sized step, whose inner
update of a layer is a product of two thin matrices (tinymeta's low-rank
path). Where it has none: ProtoNet's, whose every product is needed in
full -- each layer's outputs on all ``S + Q`` samples, each weight
gradient ``h^T delta`` summed over all of them, each ``delta W^T`` but the
first layer's -- on dense inputs.
"""
from __future__ import annotations


def weights(sizes) -> int:
    """``M``: the number of weights (biases excluded) of an MLP with widths ``sizes``."""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def forward(sizes, n) -> int:
    """``2 n M``: one forward pass on ``n`` samples."""
    return 2 * n * weights(sizes)


def grad(sizes, n) -> int:
    """``6 n M - 2 n F``: loss and gradient with respect to the parameters on ``n`` samples."""
    return 6 * n * weights(sizes) - 2 * n * sizes[0] * sizes[1]


def hvp(sizes, n) -> int:
    """``12 n M - 8 n F``: one exact Hessian-vector product (R-forward and R-backward pass)."""
    return 12 * n * weights(sizes) - 8 * n * sizes[0] * sizes[1]


def meta_iteration(workload) -> int:
    """FLOPs of one meta-iteration of ``workload`` (module docstring)."""
    w, sizes = workload, workload.sizes
    T, K, S, Q = w.n_tasks, w.inner_steps, w.n_support, w.n_query
    if w.algorithm in ("maml", "metasgd"):
        return T * (K * grad(sizes, S) + grad(sizes, Q) + K * hvp(sizes, S))
    if w.algorithm == "fomaml":
        return T * (K * grad(sizes, S) + grad(sizes, Q))
    if w.algorithm == "reptile":
        return T * K * grad(sizes, S)
    if w.algorithm == "protonet":
        return T * (grad(sizes, S + Q) + 6 * Q * w.n_way * sizes[-1])
    raise ValueError(f"no FLOP count for algorithm {w.algorithm!r}")
