"""PyTorch peers: eager autograd (a Python loop over tasks) and torch.func (vmap over tasks + grad).

Both work on the layers ``[W_0, b_0, ...]`` of tinymeta's ``theta``
(``workloads.split_theta``; ``W`` is ``(d_in, d_out)`` and a layer is
``torch.addmm(b, h, W)``, so no transpose), keep the result in PyTorch's own
per-layer form (what a PyTorch user holds), and are converted to a flat
vector only for the agreement check, outside the timed call.

* ``torch-eager``: the meta-batch loop of learn2learn / higher style MAML,
  ``torch.autograd.grad(..., create_graph=True)`` for the inner steps (no
  ``create_graph`` for FOMAML and Reptile), one backward pass over the mean
  query loss. ProtoNet needs no task loop: all episodes go through the
  embedding in one batched forward pass.
* ``torch.func``: a per-task function (inner steps with ``torch.func.grad``),
  ``torch.vmap`` over the tasks, ``torch.func.grad_and_value`` of the mean.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .workloads import join_theta, split_theta

NAME = "torch"
IMPLS = ("torch-eager", "torch.func")
torch = None  # imported by load(), after the thread settings


class Prepared(NamedTuple):
    """``step()`` runs one meta-iteration; ``result(out)`` gives ``(loss or None, flat float64 grad)``."""

    step: object
    result: object


def load(threads: int) -> dict:
    """Import PyTorch with ``threads`` intra-op and inter-op threads; its versions and thread settings."""
    global torch
    import torch as _torch

    torch = _torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    return {"versions": {"torch": torch.__version__},
            "thread_control": f"torch.set_num_threads({threads}), torch.set_num_interop_threads({threads})",
            "threads_seen": torch.get_num_threads(),
            "config": torch.__config__.parallel_info().strip().splitlines()[:6]}


# ------------------------------------------------------------ the model
def _mlp(params, X):
    """``h_l = relu(h_{l-1} W_l + b_l)``, last layer linear; ``params = [W_0, b_0, ...]``."""
    h, L = X, len(params) // 2
    for l in range(L):
        h = torch.addmm(params[2 * l + 1], h, params[2 * l])  # fused h @ W + b, as nn.Linear does
        if l < L - 1:
            h = torch.relu(h)
    return h


def _mse(out, y):
    """Mean over samples of the squared error summed over outputs."""
    return ((out - y) ** 2).sum(-1).mean()


def _xent(out, y):
    return torch.nn.functional.cross_entropy(out, y)


def _proto_loss(emb_s, onehot_s, emb_q, y_q):
    """Mean query cross-entropy of softmax(-squared distance to the class means of the support embeddings)."""
    protos = (onehot_s.transpose(-1, -2) @ emb_s) / onehot_s.sum(-2)[..., None]
    d2 = ((emb_q[..., :, None, :] - protos[..., None, :, :]) ** 2).sum(-1)
    return torch.nn.functional.cross_entropy(-d2.reshape(-1, d2.shape[-1]), y_q.reshape(-1))


# ------------------------------------------------------------ eager
def _eager_maml(params, tasks, lr, steps, loss, first_order):
    total = 0.0
    for Xs, ys, Xq, yq in tasks:
        fast = params
        for _ in range(steps):
            g = torch.autograd.grad(loss(_mlp(fast, Xs), ys), fast, create_graph=not first_order)
            fast = [w - lr * gw for w, gw in zip(fast, g)]
        total = total + loss(_mlp(fast, Xq), yq)
    meta = total / len(tasks)
    return meta.detach(), torch.autograd.grad(meta, params)


def _eager_metasgd(params, alphas, tasks, steps, loss):
    total = 0.0
    for Xs, ys, Xq, yq in tasks:
        fast = params
        for _ in range(steps):
            g = torch.autograd.grad(loss(_mlp(fast, Xs), ys), fast, create_graph=True)
            fast = [w - a * gw for w, a, gw in zip(fast, alphas, g)]
        total = total + loss(_mlp(fast, Xq), yq)
    meta = total / len(tasks)
    return meta.detach(), torch.autograd.grad(meta, params + alphas)


def _eager_reptile(params, tasks, lr, steps, loss):
    direction = [torch.zeros_like(p) for p in params]
    for Xs, ys, _, _ in tasks:
        fast = [p.detach().requires_grad_() for p in params]
        for _ in range(steps):
            g = torch.autograd.grad(loss(_mlp(fast, Xs), ys), fast)
            with torch.no_grad():
                fast = [(w - lr * gw).requires_grad_() for w, gw in zip(fast, g)]
        with torch.no_grad():
            for d, p, w in zip(direction, params, fast):
                d += p - w
    return None, [d / len(tasks) for d in direction]


def _eager_protonet(params, X_all, onehot_s, y_q, n_support):
    T = onehot_s.shape[0]
    emb = _mlp(params, X_all).reshape(T, -1, params[-1].shape[0])
    loss = _proto_loss(emb[:, :n_support], onehot_s, emb[:, n_support:], y_q)
    return loss.detach(), torch.autograd.grad(loss, params)


# ------------------------------------------------------------ torch.func
def _func_step(workload, loss):
    from torch.func import grad, grad_and_value

    lr, K, vmap = workload.inner_lr, workload.inner_steps, torch.vmap

    def adapt(params, Xs, ys, steps_lr):
        fast = params
        for _ in range(K):
            g = grad(lambda p: loss(_mlp(p, Xs), ys))(fast)
            fast = tuple(w - a * gw for w, a, gw in zip(fast, steps_lr, g))
        return fast

    tasks = (None, 0, 0, 0, 0)
    if workload.algorithm == "maml":
        def task_loss(params, Xs, ys, Xq, yq):
            return loss(_mlp(adapt(params, Xs, ys, (lr,) * len(params)), Xq), yq)
        return grad_and_value(lambda p, *b: vmap(task_loss, in_dims=tasks)(p, *b).mean())
    if workload.algorithm == "metasgd":
        def task_loss(params, alphas, Xs, ys, Xq, yq):
            return loss(_mlp(adapt(params, Xs, ys, alphas), Xq), yq)
        meta = lambda p, a, *b: vmap(task_loss, in_dims=(None,) + tasks)(p, a, *b).mean()
        return grad_and_value(meta, argnums=(0, 1))
    if workload.algorithm == "fomaml":
        def task_grad(params, Xs, ys, Xq, yq):
            fast = adapt(params, Xs, ys, (lr,) * len(params))
            return grad_and_value(lambda p: loss(_mlp(p, Xq), yq))(fast)
        def step(params, *batch):
            g, value = vmap(task_grad, in_dims=tasks)(params, *batch)
            return tuple(gi.mean(0) for gi in g), value.mean()
        return step
    if workload.algorithm == "reptile":
        def step(params, Xs, ys, Xq, yq):
            fast = vmap(lambda X, y: adapt(params, X, y, (lr,) * len(params)))(Xs, ys)
            return tuple(p - w.mean(0) for p, w in zip(params, fast)), None
        return step
    if workload.algorithm == "protonet":
        def episode_loss(params, Xs, onehot_s, Xq, yq):
            return _proto_loss(_mlp(params, Xs), onehot_s, _mlp(params, Xq), yq)
        return grad_and_value(lambda p, *b: vmap(episode_loss, in_dims=tasks)(p, *b).mean())
    raise ValueError(f"no torch.func implementation of {workload.algorithm!r}")


# ------------------------------------------------------------ prepare
def prepare(impl: str, workload, inputs) -> Prepared:
    """The timed call of ``impl`` on ``workload`` with ``inputs`` (already cast to the run's dtype)."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    params = [t(p).requires_grad_() for p in split_theta(inputs.theta, workload.sizes)]
    alphas = [t(a).requires_grad_() for a in split_theta(inputs.alpha, workload.sizes)]
    Xs, ys, Xq, yq = (t(a) for a in inputs[2:])
    loss = {"mse": _mse, "xent": _xent, "proto": None}[workload.loss]
    if workload.algorithm == "protonet":
        ys = torch.nn.functional.one_hot(ys, workload.n_way).to(Xs.dtype)

    if impl == "torch-eager":
        tasks = list(zip(Xs.unbind(0), ys.unbind(0), Xq.unbind(0), yq.unbind(0)))
        a = workload.algorithm
        if a in ("maml", "fomaml"):
            fn = lambda: _eager_maml(params, tasks, workload.inner_lr, workload.inner_steps, loss, a == "fomaml")
        elif a == "metasgd":
            fn = lambda: _eager_metasgd(params, alphas, tasks, workload.inner_steps, loss)
        elif a == "reptile":
            fn = lambda: _eager_reptile(params, tasks, workload.inner_lr, workload.inner_steps, loss)
        else:
            X_all = torch.cat([Xs, Xq], dim=1).reshape(-1, Xs.shape[-1])
            fn = lambda: _eager_protonet(params, X_all, ys, yq, workload.n_support)
        return Prepared(fn, lambda out: _result(out[0], out[1]))
    if impl == "torch.func":
        step = _func_step(workload, loss)
        p = tuple(x.detach() for x in params)
        if workload.algorithm == "metasgd":
            a = tuple(x.detach() for x in alphas)
            return Prepared(lambda: step(p, a, Xs, ys, Xq, yq),
                            lambda out: _result(out[1], list(out[0][0]) + list(out[0][1])))
        return Prepared(lambda: step(p, Xs, ys, Xq, yq), lambda out: _result(out[1], out[0]))
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _result(loss, grads):
    value = None if loss is None else float(loss)
    return value, join_theta([g.detach().numpy() for g in grads])


def to_params(theta, sizes, dtype="float64"):
    """tinymeta's flat ``theta`` as PyTorch layers ``[W_0, b_0, ...]`` (for the round-trip test)."""
    return [torch.from_numpy(p.astype(dtype)) for p in split_theta(theta, sizes)]


def from_params(params):
    """Inverse of ``to_params``: a flat float64 NumPy vector in tinymeta's layout."""
    return join_theta([p.detach().numpy() for p in params])
