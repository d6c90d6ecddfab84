r"""Outer-loop optimizers, by hand and pure: state in, state out.

Parameters, gradients and optimizer state are dicts of NumPy arrays keyed by
name (``{"theta": ..., "alpha": ...}``), so that a checkpoint is one ``.npz``
with no pickled objects. ``update`` never modifies its inputs.

SGD:

.. math:: \theta \leftarrow \theta - \eta\, g

Adam (Kingma and Ba 2015, Algorithm 1), step ``t = 1, 2, ...``:

.. math::
    m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
    \theta \leftarrow \theta - \eta\, \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import validation as val
from .nn.optim_kernels import adam_kernel


def _check(params, grads):
    if set(params) != set(grads):
        raise ValueError(f"grads must have the keys of params {sorted(params)}, got {sorted(grads)}")
    for k in params:
        if np.shape(grads[k]) != np.shape(params[k]):
            raise ValueError(f"grads[{k!r}] must have shape {np.shape(params[k])}, got {np.shape(grads[k])}")


@dataclass(frozen=True)
class SGD:
    """Plain gradient descent with learning rate ``lr``."""

    lr: float

    def __post_init__(self):
        val.check_float(self.lr, "lr", positive=True)

    def init(self, params: dict) -> dict:
        """SGD keeps no state."""
        return {}

    def update(self, params: dict, grads: dict, state: dict, lr: float | None = None):
        """One step; ``lr`` overrides ``self.lr`` (for schedules). Returns ``(params, state)``."""
        _check(params, grads)
        lr = self.lr if lr is None else lr
        return {k: params[k] - lr * grads[k] for k in params}, dict(state)


@dataclass(frozen=True)
class Adam:
    """Adam with the bias corrections of Kingma and Ba (2015), Algorithm 1."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        val.check_float(self.lr, "lr", positive=True)
        for name in ("beta1", "beta2"):
            b = val.check_float(getattr(self, name), name)
            if not 0 <= b < 1:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        val.check_float(self.eps, "eps", positive=True)
        for name in ("lr", "beta1", "beta2", "eps"):  # Python floats: a NumPy float64 would promote float32 steps
            object.__setattr__(self, name, float(getattr(self, name)))

    def init(self, params: dict) -> dict:
        """Zero moments ``m/<key>``, ``v/<key>`` and the step count ``t``."""
        state = {"t": np.zeros((), dtype=np.int64)}
        for k, p in params.items():
            state[f"m/{k}"] = np.zeros_like(p)
            state[f"v/{k}"] = np.zeros_like(p)
        return state

    def update(self, params: dict, grads: dict, state: dict, lr: float | None = None):
        """One step; ``lr`` overrides ``self.lr`` (for schedules). Returns ``(params, state)``."""
        _check(params, grads)
        lr = float(self.lr if lr is None else lr)  # a NumPy float64 would promote float32 arithmetic
        t = int(state["t"]) + 1
        new_params, new_state = {}, {"t": np.array(t, dtype=np.int64)}
        for k, g in grads.items():
            if _one_float_dtype(params[k], g, state[f"m/{k}"], state[f"v/{k}"]):  # the usual case: compiled
                new_params[k], new_state[f"m/{k}"], new_state[f"v/{k}"] = self._compiled(
                    params[k], g, state[f"m/{k}"], state[f"v/{k}"], lr, t)
                continue
            m = self.beta1 * state[f"m/{k}"] + (1 - self.beta1) * g
            v = self.beta2 * state[f"v/{k}"] + (1 - self.beta2) * g * g
            m_hat = m / (1 - self.beta1 ** t)
            v_hat = v / (1 - self.beta2 ** t)
            new_params[k] = (params[k] - lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(params[k].dtype)
            new_state[f"m/{k}"], new_state[f"v/{k}"] = m, v
        return new_params, new_state

    def _compiled(self, p, g, m, v, lr, t):
        """The loop above in one compiled pass (nn/optim_kernels.py): the same bits, ~2x faster."""
        f = p.dtype.type  # NumPy rounds each Python float to the arrays' dtype before using it
        out = adam_kernel(p.ravel(), g.ravel(), m.ravel(), v.ravel(), f(lr), f(self.beta1), f(1 - self.beta1),
                          f(self.beta2), f(1 - self.beta2), f(1 - self.beta1 ** t), f(1 - self.beta2 ** t), f(self.eps))
        return tuple(a.reshape(p.shape) for a in out)


def _one_float_dtype(*arrays) -> bool:
    """Whether every array has the same dtype, float32 or float64 (what ``adam_kernel`` takes)."""
    dt = arrays[0].dtype
    return dt in (np.float32, np.float64) and all(a.dtype == dt for a in arrays)


def global_norm(grads: dict) -> float:
    """``sqrt(sum_k |grads[k]|^2)`` over every array of the dict."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))


def clip_by_global_norm(grads: dict, max_norm: float) -> dict:
    """Scale all gradients by ``min(1, max_norm / global_norm)`` (Pascanu et al. 2013)."""
    max_norm = val.check_float(max_norm, "max_norm", positive=True)
    norm = global_norm(grads)
    if norm <= max_norm:
        return dict(grads)
    return {k: g * (max_norm / norm) for k, g in grads.items()}
