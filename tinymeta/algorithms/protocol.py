"""Checks shared by the public entry points of every algorithm.

An entry point (``meta_loss_and_grad``, ``loss_and_grad``, ``meta_step``,
``predict``) calls these first, so that bad input fails at the door with a
``TypeError``/``ValueError`` naming the argument, what was expected and what
came -- never deep inside a kernel, never as a ``KeyError`` or a silent
broadcast. Array checks themselves live in ``tinymeta.validation``; this
module adds the containers the algorithms take (params dicts, flags,
support/query sets of one task).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import validation as val
from ..nn import MLP


def check_net(net, name: str = "net") -> MLP:
    """Require a ``tinymeta.MLP``."""
    if not isinstance(net, MLP):
        raise TypeError(f"{name} must be a tinymeta.MLP, got {type(net).__name__}")
    return net


def check_flag(value, name: str) -> bool:
    """A bool (Python or NumPy), returned as ``bool``; anything else, even 0/1 or "no", is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_params(params, keys, name: str = "params") -> dict:
    """A mapping holding (at least) ``keys``; raises naming the first missing key."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{name} must be a dict of parameter arrays with keys {list(keys)}, "
                        f"got {type(params).__name__}")
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"{name} must hold the keys {list(keys)}: {name}[{missing[0]!r}] is missing "
                         f"(got keys {sorted(params)})")
    return dict(params)


def check_config(config, cls, name: str = "config"):
    """Require an instance of the algorithm's frozen ``Config`` dataclass ``cls``."""
    if not isinstance(config, cls):
        raise TypeError(f"{name} must be a {cls.__module__}.{cls.__qualname__}, got {type(config).__name__}")
    return config


def check_task(net, X_support, y_support, X_query, d_in=None):
    """One task's support set and query inputs, validated against ``net``.

    ``d_in`` is the width of the inputs (``net.sizes[0]`` unless the algorithm
    appends inputs of its own, as CAVIA's context). Targets follow the net's
    loss: float rows of width ``d_out`` for "mse", integer labels ``0..d_out-1``
    for "xent".

    Returns
    -------
    X_support (K, d_in), y_support (K, d_out) or (K,), X_query (Q, d_in): clean copies.
    """
    d_in = net.sizes[0] if d_in is None else d_in
    Xs = val.as_float_array(X_support, "X_support", net.dtype, (None, d_in))
    Xq = val.as_float_array(X_query, "X_query", net.dtype, (None, d_in))
    if net.loss_name == "xent":
        ys = val.as_labels(y_support, "y_support", Xs.shape[0], net.sizes[-1])
    else:
        ys = val.as_float_array(y_support, "y_support", net.dtype, (Xs.shape[0], net.sizes[-1]))
    return Xs, ys, Xq
