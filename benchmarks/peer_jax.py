"""JAX peer: one ``jax.jit`` over the whole meta-iteration, ``jax.vmap`` over the tasks.

The per-task function is the same as torch.func's (inner steps with
``jax.grad``); the meta-gradient is ``jax.value_and_grad`` of the mean over
the vmapped tasks, all compiled as one XLA program. Parameters and batches
are passed as arguments (never closed over, so XLA cannot fold them into
constants) and live on the device before timing; each timed call ends with
``jax.block_until_ready``. float64 needs ``jax_enable_x64``, which we turn
on; float32 arrays stay float32.

Threads: XLA's CPU thread pool is sized when the process starts and has no
reliable run-time switch, so the worker process is pinned to ``threads``
CPUs (``os.sched_setaffinity``, which XLA reads to size its pool) and, for
one thread, also gets ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` (``environment(threads)``, set before
JAX is imported).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from .workloads import join_theta, split_theta

NAME = "jax"
IMPLS = ("jax",)
jax = jnp = None  # imported by load(), after the thread settings


class Prepared(NamedTuple):
    """``step()`` runs one meta-iteration; ``result(out)`` gives ``(loss or None, flat float64 grad)``."""

    step: object
    result: object


def environment(threads: int) -> dict:
    """Environment variables the worker process needs before JAX is imported."""
    env = {"JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def load(threads: int) -> dict:
    """Import JAX (CPU, x64 enabled); its versions and how its threads are set."""
    global jax, jnp
    import jax as _jax
    import jax.numpy as _jnp
    import jaxlib

    jax, jnp = _jax, _jnp
    jax.config.update("jax_enable_x64", True)
    flags = environment(threads).get("XLA_FLAGS", "(none)")
    return {"versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__},
            "thread_control": f"process pinned to {threads} CPU(s) by sched_setaffinity; XLA_FLAGS={flags}",
            "threads_seen": f"{len(os.sched_getaffinity(0))} CPU(s) in the affinity mask",
            "devices": [str(d) for d in jax.devices()]}


def _mlp(params, X):
    """``h_l = relu(h_{l-1} W_l + b_l)``, last layer linear; ``params = (W_0, b_0, ...)``."""
    h, L = X, len(params) // 2
    for l in range(L):
        h = h @ params[2 * l] + params[2 * l + 1]
        if l < L - 1:
            h = jax.nn.relu(h)
    return h


def _mse(out, y):
    """Mean over samples of the squared error summed over outputs."""
    return jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def _xent(out, y):
    logp = jax.nn.log_softmax(out, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _proto_loss(emb_s, onehot_s, emb_q, y_q):
    """Mean query cross-entropy of softmax(-squared distance to the class means of the support embeddings)."""
    protos = (onehot_s.T @ emb_s) / jnp.sum(onehot_s, axis=0)[:, None]
    d2 = jnp.sum((emb_q[:, None, :] - protos[None, :, :]) ** 2, axis=-1)
    return _xent(-d2, y_q)


def _step(workload, loss):
    lr, K, vmap = workload.inner_lr, workload.inner_steps, jax.vmap

    def adapt(params, Xs, ys, steps_lr):
        fast = params
        for _ in range(K):
            g = jax.grad(lambda p: loss(_mlp(p, Xs), ys))(fast)
            fast = tuple(w - a * gw for w, a, gw in zip(fast, steps_lr, g))
        return fast

    tasks = (None, 0, 0, 0, 0)
    a = workload.algorithm
    if a == "maml":
        def task_loss(params, Xs, ys, Xq, yq):
            return loss(_mlp(adapt(params, Xs, ys, (lr,) * len(params)), Xq), yq)
        return jax.value_and_grad(lambda p, *b: jnp.mean(vmap(task_loss, in_axes=tasks)(p, *b)))
    if a == "metasgd":
        def task_loss(params, alphas, Xs, ys, Xq, yq):
            return loss(_mlp(adapt(params, Xs, ys, alphas), Xq), yq)
        meta = lambda p, al, *b: jnp.mean(vmap(task_loss, in_axes=(None,) + tasks)(p, al, *b))
        return jax.value_and_grad(meta, argnums=(0, 1))
    if a == "fomaml":
        def task_value_and_grad(params, Xs, ys, Xq, yq):
            fast = adapt(params, Xs, ys, (lr,) * len(params))
            return jax.value_and_grad(lambda p: loss(_mlp(p, Xq), yq))(fast)
        def step(params, *batch):
            value, g = vmap(task_value_and_grad, in_axes=tasks)(params, *batch)
            return jnp.mean(value), tuple(jnp.mean(gi, axis=0) for gi in g)
        return step
    if a == "reptile":
        def step(params, Xs, ys, Xq, yq):
            fast = vmap(lambda X, y: adapt(params, X, y, (lr,) * len(params)))(Xs, ys)
            return jnp.zeros(()), tuple(p - jnp.mean(w, axis=0) for p, w in zip(params, fast))
        return step
    if a == "protonet":
        def episode_loss(params, Xs, onehot_s, Xq, yq):
            return _proto_loss(_mlp(params, Xs), onehot_s, _mlp(params, Xq), yq)
        return jax.value_and_grad(lambda p, *b: jnp.mean(vmap(episode_loss, in_axes=tasks)(p, *b)))
    raise ValueError(f"no JAX implementation of {a!r}")


def prepare(impl: str, workload, inputs) -> Prepared:
    """The jitted meta-iteration on ``inputs`` (already cast to the run's dtype), inputs on the device."""
    if impl != "jax":
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    put = lambda a: jax.device_put(np.ascontiguousarray(a))
    params = tuple(put(p) for p in split_theta(inputs.theta, workload.sizes))
    alphas = tuple(put(a) for a in split_theta(inputs.alpha, workload.sizes))
    ys = inputs.y_support
    if workload.algorithm == "protonet":
        ys = np.eye(workload.n_way, dtype=inputs.X_support.dtype)[ys]
    batch = (put(inputs.X_support), put(ys), put(inputs.X_query), put(inputs.y_query))
    loss = {"mse": _mse, "xent": _xent, "proto": None}[workload.loss]
    step = jax.jit(_step(workload, loss))
    reptile = workload.algorithm == "reptile"
    if workload.algorithm == "metasgd":
        return Prepared(lambda: jax.block_until_ready(step(params, alphas, *batch)),
                        lambda out: _result(out[0], list(out[1][0]) + list(out[1][1])))
    return Prepared(lambda: jax.block_until_ready(step(params, *batch)),
                    lambda out: _result(None if reptile else out[0], out[1]))


def _result(loss, grads):
    value = None if loss is None else float(loss)
    return value, join_theta([np.asarray(g) for g in grads])


def to_params(theta, sizes, dtype="float64"):
    """tinymeta's flat ``theta`` as JAX layers ``(W_0, b_0, ...)`` (for the round-trip test)."""
    return tuple(jnp.asarray(p.astype(dtype)) for p in split_theta(theta, sizes))


def from_params(params):
    """Inverse of ``to_params``: a flat float64 NumPy vector in tinymeta's layout."""
    return join_theta([np.asarray(p) for p in params])
