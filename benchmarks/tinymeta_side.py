"""tinymeta's side: thin adapters onto its public API, nothing re-implemented.

* MAML / FOMAML: ``maml.meta_loss_and_grad(net, theta, batch, inner_lr=,
  inner_steps=, first_order=)``.
* Meta-SGD: ``metasgd.meta_loss_and_grad(net, theta, alpha, batch,
  inner_steps=)`` -> ``(loss, grad theta, grad alpha)``.
* Reptile: ``reptile.meta_loss_and_grad(net, theta, batch, inner_lr=,
  inner_steps=)`` -> ``(loss, theta - theta_K averaged over tasks)``, or
  the training-loop protocol ``reptile.meta_step`` when that is all the
  module has.
* ProtoNet: ``protonet.batch_loss_and_grad(net, theta, batch)`` (every
  episode's rows in one forward pass and one ``net.vjp``) when the module
  has it; otherwise ``protonet.loss_and_grad(net, theta, X_support,
  y_support, X_query, y_query)`` per episode, averaged over a Python loop.

An algorithm module that does not exist yet makes its rows "tinymeta: not
available yet" (``Unavailable``); no number stands in for it.

Threads: ``numba.set_num_threads(threads)`` (and ``NUMBA_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` in the worker's environment, plus the worker's
CPU affinity).
"""
from __future__ import annotations

import importlib
import inspect
from typing import NamedTuple

import numpy as np

NAME = "tinymeta"
IMPLS = ("tinymeta",)
MODULES = {"maml": "maml", "fomaml": "maml", "metasgd": "metasgd", "reptile": "reptile", "protonet": "protonet"}
tm = None  # imported by load()


class Unavailable(Exception):
    """This workload's tinymeta module is not there yet: the row says so instead of a number."""


class Prepared(NamedTuple):
    """``step()`` runs one meta-iteration; ``result(out)`` gives ``(loss or None, flat float64 grad)``."""

    step: object
    result: object


def load(threads: int) -> dict:
    """Import tinymeta and Numba, set Numba's thread count; versions and thread settings."""
    global tm
    import numba

    import tinymeta

    tm = tinymeta
    numba.set_num_threads(threads)
    return {"versions": {"tinymeta": tinymeta.__version__, "numba": numba.__version__, "numpy": np.__version__},
            "thread_control": f"numba.set_num_threads({threads}); NUMBA_NUM_THREADS={threads}; "
                              f"OPENBLAS_NUM_THREADS={threads}; process pinned to {threads} CPU(s)",
            "threads_seen": numba.get_num_threads()}


def algorithm_module(algorithm: str):
    """``tinymeta.algorithms.<module>`` for ``algorithm``; ``Unavailable`` when it is not importable."""
    name = f"tinymeta.algorithms.{MODULES[algorithm]}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise Unavailable(f"tinymeta: not available yet ({name} does not exist)") from None
        raise


def _accepted(fn, **kwargs):
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def prepare(impl: str, workload, inputs) -> Prepared:
    """tinymeta's call for ``workload`` on ``inputs`` (cast to the run's dtype); ``Unavailable`` if missing."""
    if impl != "tinymeta":
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    module = algorithm_module(workload.algorithm)
    dtype = inputs.theta.dtype.name
    loss = "xent" if workload.loss == "xent" else "mse"  # ProtoNet's loss is its own; the net's is unused
    net = tm.MLP(list(workload.sizes), activation="relu", loss=loss, dtype=dtype)
    theta = inputs.theta
    batch = tm.TaskBatch(*inputs[2:])
    a, lr, K = workload.algorithm, workload.inner_lr, workload.inner_steps

    if a in ("maml", "fomaml"):
        fn = lambda: module.meta_loss_and_grad(net, theta, batch, inner_lr=lr, inner_steps=K,
                                               first_order=a == "fomaml")
        return Prepared(fn, lambda out: (float(out[0]), np.asarray(out[1], np.float64)))
    if a == "metasgd":
        _require(module, "meta_loss_and_grad")
        fn = lambda: module.meta_loss_and_grad(net, theta, inputs.alpha, batch, inner_steps=K)
        return Prepared(fn, lambda out: (float(out[0]), np.concatenate([out[1], out[2]]).astype(np.float64)))
    if a == "reptile":
        return _reptile(module, net, theta, batch, lr, K)
    if a == "protonet" and hasattr(module, "batch_loss_and_grad"):
        fn = lambda: module.batch_loss_and_grad(net, theta, batch)
        return Prepared(fn, lambda out: (float(out[0]), np.asarray(out[1], np.float64)))
    if a == "protonet":
        _require(module, "loss_and_grad")
        episodes = [tuple(arr[i] for arr in inputs[2:]) for i in range(workload.n_tasks)]

        def fn():
            loss, grad = 0.0, np.zeros_like(theta)
            for episode in episodes:
                l_i, g_i = module.loss_and_grad(net, theta, *episode)
                loss += l_i
                grad += g_i
            return loss / len(episodes), grad / len(episodes)
        return Prepared(fn, lambda out: (float(out[0]), np.asarray(out[1], np.float64)))
    raise ValueError(f"no tinymeta adapter for {a!r}")


def _require(module, attr):
    if not hasattr(module, attr):
        raise Unavailable(f"tinymeta: not available yet ({module.__name__} has no {attr})")


def _reptile(module, net, theta, batch, lr, K):
    """Reptile's direction ``mean_i (theta - theta_K,i)`` through whichever public entry the module has."""
    if hasattr(module, "meta_loss_and_grad"):
        kwargs = _accepted(module.meta_loss_and_grad, inner_lr=lr, inner_steps=K)
        fn = lambda: module.meta_loss_and_grad(net, theta, batch, **kwargs)
        return Prepared(fn, lambda out: (None, np.asarray(out[1], np.float64)))
    if hasattr(module, "meta_step") and hasattr(module, "Config"):
        config = module.Config(**_accepted(module.Config, inner_lr=lr, inner_steps=K))
        params = {"theta": theta}
        fn = lambda: module.meta_step(net, params, batch, config)
        return Prepared(fn, lambda out: (None, np.asarray(out[1]["theta"], np.float64)))
    raise Unavailable(f"tinymeta: not available yet ({module.__name__} has neither meta_loss_and_grad nor meta_step)")
