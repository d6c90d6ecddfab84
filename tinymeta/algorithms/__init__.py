"""Meta-learning algorithms, one file each, each opening with its update rule.

Every algorithm module follows one protocol, so that one training loop
(``tinymeta.train``) serves them all:

``NAME``
    The name used by the ``tinymeta`` command.
``Config``
    A frozen dataclass of the algorithm's hyper-parameters; each default
    cites its source (paper, section or table).
``init_params(net, rng, config) -> dict[str, ndarray]``
    The meta-parameters, e.g. ``{"theta": ...}`` or, for Meta-SGD,
    ``{"theta": ..., "alpha": ...}``.
``meta_step(net, params, batch, config) -> (float, dict[str, ndarray])``
    The meta-loss of a ``TaskBatch`` and the meta-gradient, keyed like
    ``params`` (Reptile returns its update direction ``theta - theta_K``).
``predict(net, params, X_support, y_support, X_query, steps, config)``
    Query outputs after ``0..steps`` adaptation steps on one task's support
    set, shape ``(steps + 1, Q, d_out)``; NaN from the step a task diverges.

Each module also exposes its public contract (DESIGN.md section 6), e.g.
``maml.meta_loss_and_grad(net, theta, batch, inner_lr=, inner_steps=, first_order=)``.
"""
from . import anil, cavia, imaml, inner_loop, maml, metasgd, reptile, solvers  # the gradient-based family
from . import embedding, matching, matching_fce, protonet, relation, siamese  # the metric family

__all__ = ["anil", "cavia", "imaml", "inner_loop", "maml", "metasgd", "reptile", "solvers",
           "embedding", "matching", "matching_fce", "protonet", "relation", "siamese"]
