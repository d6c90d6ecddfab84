"""Every task of a batch predicted in one call, for evaluation (``evaluate.task_scores``).

MAML (and FOMAML, the pretrained baseline), Meta-SGD and ANIL predict with
``inner_loop.predictions`` and a fixed preconditioner ``P`` read from their
parameters and config; Reptile's ``predict`` takes stacked tasks itself.
``predict_batch`` gives what calling the algorithm's ``predict`` task by
task and stacking would give, ``(T, steps + 1, Q, d_out)``, in one compiled
call where ``meta_batch.supports`` the net. The tests pin the two together
(``tests/test_meta_kernels.py``).
"""
from __future__ import annotations

import numpy as np

from .. import validation as val
from . import anil, inner_loop, maml, metasgd, protocol, reptile


def _metasgd(net, params, config):
    return val.as_float_array(params["alpha"], "alpha", net.dtype, (net.n_params,))


# module NAME -> (module, parameter keys, preconditioner from (net, params, config))
PRECONDITIONED = {
    maml.NAME: (maml, ("theta",), lambda net, params, config: maml.preconditioner(net, config)),
    metasgd.NAME: (metasgd, ("theta", "alpha"), _metasgd),
    anil.NAME: (anil, ("theta",), lambda net, params, config: anil.preconditioner(net, config)),
}
SUPPORTED = frozenset(PRECONDITIONED) | {reptile.NAME}


def predict_batch(net, module, params, config, batch, steps):
    """Query outputs of every task of ``batch`` after ``0..steps`` steps.

    Parameters
    ----------
    net : MLP ; module : an algorithm module whose ``NAME`` is in ``SUPPORTED``
    params, config : as for ``module.predict`` ; batch : TaskBatch ; steps : int >= 0

    Returns
    -------
    (T, steps + 1, Q, d_out) array, NaN from the step a task diverges.
    """
    name = getattr(module, "NAME", None)
    if name not in SUPPORTED:
        raise ValueError(f"module must be one of the algorithms {sorted(SUPPORTED)}, got {name!r}")
    batch = batch.checked(net.sizes[0], net.sizes[-1], net.loss_name == "xent", net.dtype)
    steps = val.check_int(steps, "steps", minimum=0)
    if name == reptile.NAME:
        return reptile.predict(net, params, batch.X_support, batch.y_support, batch.X_query, steps, config)
    module, keys, preconditioner = PRECONDITIONED[name]
    params, config = protocol.check_params(params, keys), protocol.check_config(config, module.Config)
    theta = val.as_float_array(params["theta"], "theta", net.dtype, (net.n_params,))
    return inner_loop.predictions(net, theta, batch.X_support, batch.y_support, batch.X_query,
                                  preconditioner(net, params, config), steps)
