"""Finite-difference checks of gradients, VJPs, JVPs and Hessian-vector products.

Library code, used by the tests, the notebooks and ``tinymeta gradcheck``.
Every numerical derivative is a *central* difference, whose error is
``O(eps^2)`` (plus rounding ``O(machine_eps / eps)``); work in float64.

.. math::
    \\partial_i f(x) \\approx \\frac{f(x + \\epsilon e_i) - f(x - \\epsilon e_i)}{2\\epsilon},\\qquad
    H v \\approx \\frac{\\nabla f(x + \\epsilon v) - \\nabla f(x - \\epsilon v)}{2\\epsilon}

``rel_error`` compares whole vectors:
``||a - b|| / max(||a||, ||b||)``. It does not blow up on the entries that
are zero in both (dead ReLUs), unlike an element-wise ratio.
"""
from __future__ import annotations

import itertools
from typing import Callable, NamedTuple

import numpy as np

EPS = 1e-5  # central-difference step for float64: truncation ~1e-10, rounding ~1e-11
FD_TOL = 1e-6  # analytic vs finite differences, relative
EXACT_TOL = 1e-12  # identities that hold to rounding: symmetry, linearity, backend pins
FLOAT32_TOL = 1e-5  # float32 against float64 (float32 epsilon is 1.2e-7)


def rel_error(a, b) -> float:
    """Relative error ``||a - b||_2 / max(||a||_2, ||b||_2)`` (0 when both are 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def _perturbed(f, x, direction, eps):
    x = np.asarray(x, dtype=np.float64)
    plus, minus = x + eps * direction, x - eps * direction
    return f(plus), f(minus)


def numerical_gradient(f: Callable, x, eps: float = EPS, indices=None) -> np.ndarray:
    """Central-difference gradient of a scalar function ``f`` at ``x`` (1-D).

    ``indices`` restricts the check to some coordinates (large nets); the
    result then has one entry per index.
    """
    x = np.array(x, dtype=np.float64)
    idx = np.arange(x.size) if indices is None else np.asarray(indices)
    out = np.empty(idx.size)
    for k, i in enumerate(idx):
        old = x[i]
        x[i] = old + eps
        f_plus = f(x)
        x[i] = old - eps
        f_minus = f(x)
        x[i] = old
        out[k] = (f_plus - f_minus) / (2 * eps)
    return out


def numerical_directional_derivative(f: Callable, x, v, eps: float = EPS):
    """``(f(x + eps v) - f(x - eps v)) / 2 eps``: ``v . grad f`` for scalar ``f``,
    ``J v`` for array-valued ``f``. One pair of evaluations, any size of net."""
    f_plus, f_minus = _perturbed(f, x, v, eps)
    return (np.asarray(f_plus, dtype=np.float64) - np.asarray(f_minus, dtype=np.float64)) / (2 * eps)


numerical_jvp = numerical_directional_derivative


def numerical_vjp(f: Callable, x, dout, eps: float = EPS, indices=None) -> np.ndarray:
    """``J^T dout`` by central differences of the scalar ``<f(x), dout>``."""
    dout = np.asarray(dout, dtype=np.float64)
    return numerical_gradient(lambda z: float(np.sum(np.asarray(f(z), dtype=np.float64) * dout)),
                              x, eps, indices)


def numerical_hvp(grad: Callable, x, v, eps: float = EPS) -> np.ndarray:
    """``H v`` from two gradients: ``(grad(x + eps v) - grad(x - eps v)) / 2 eps``."""
    return numerical_directional_derivative(grad, x, v, eps)


def explicit_hessian(hvp: Callable, n: int) -> np.ndarray:
    """The full ``(n, n)`` Hessian built column by column, ``H[:, i] = hvp(e_i)``.

    Only for tiny nets: ``n`` Hessian-vector products.
    """
    H = np.empty((n, n))
    e = np.zeros(n)
    for i in range(n):
        e[i] = 1.0
        H[:, i] = hvp(e)
        e[i] = 0.0
    return H


class CheckResult(NamedTuple):
    """One derivative check: what, how far apart, the tolerance, the verdict."""

    name: str
    rel_error: float
    tol: float
    passed: bool


def compare(name: str, analytic, numerical, tol: float = FD_TOL) -> CheckResult:
    """Compare two vectors with ``rel_error`` against ``tol``."""
    err = rel_error(analytic, numerical)
    return CheckResult(name, err, tol, bool(err <= tol))


def relu_margin(net, theta, X) -> float:
    """Smallest ``|Z|`` over the hidden pre-activations: a finite difference with
    step ``eps`` cannot cross a ReLU kink if parameters move ``Z`` by less than this."""
    from .nn.reference import forward_pass

    Z = forward_pass(net, np.asarray(theta, np.float64), np.asarray(X, np.float64))[1][1]
    hidden = Z[:-1]
    return min(float(np.abs(z).min()) for z in hidden) if hidden else np.inf


def check_mlp(net, theta, X, y, rng, eps: float = EPS, tol: float = FD_TOL, full: bool = True):
    """Every derivative of the engine at one point, against finite differences.

    ``full=True`` checks every coordinate (small nets); ``full=False`` checks
    random directions (any size). The net must be float64.

    Returns
    -------
    list of CheckResult: gradient, vjp (theta and X), jvp, hvp, and the
    identities ``u.Hv = v.Hu`` and ``H(a u + b v) = a Hu + b Hv``.
    """
    if net.dtype != "float64":
        raise ValueError(f"finite-difference checks need a float64 net, got dtype {net.dtype!r}")
    P = net.n_params
    loss = lambda t: net.loss(t, X, y)  # noqa: E731
    value, g = net.loss_and_grad(theta, X, y)
    u, v = rng.standard_normal(P), rng.standard_normal(P)
    dout = rng.standard_normal((X.shape[0], net.sizes[-1]))
    dtheta, dX = net.vjp(theta, X, dout, input_grad=True)
    out = lambda t: net.forward(t, X)  # noqa: E731
    hv = net.hvp(theta, X, y, v)
    results = []
    if full:
        results.append(compare("gradient", g, numerical_gradient(loss, theta, eps), tol))
        results.append(compare("vjp (theta)", dtheta, numerical_vjp(out, theta, dout, eps), tol))
        results.append(compare("vjp (X)", dX.ravel(), numerical_vjp(
            lambda x: net.forward(theta, x.reshape(X.shape)), X.ravel(), dout, eps), tol))
    else:
        results.append(compare("gradient . v", [g @ v], [numerical_directional_derivative(loss, theta, v, eps)], tol))
        results.append(compare("vjp (theta) . v", [dtheta @ v], [np.sum(numerical_jvp(out, theta, v, eps) * dout)], tol))
        dx_dir = rng.standard_normal(X.shape)
        results.append(compare("vjp (X) . v", [np.sum(dX * dx_dir)], [np.sum(numerical_jvp(
            lambda x: net.forward(theta, x), X, dx_dir, eps) * dout)], tol))
    results.append(compare("jvp", net.jvp(theta, X, v), numerical_jvp(out, theta, v, eps), tol))
    grad = lambda t: net.loss_and_grad(t, X, y)[1]  # noqa: E731
    results.append(compare("hvp", hv, numerical_hvp(grad, theta, v, eps), tol))
    # The Hessian over (theta, X) jointly, in direction (v, X_dot): used by context methods.
    X_dot = rng.standard_normal(X.shape)
    joint = np.concatenate([theta, X.ravel()])

    def joint_grad(w):
        _, g_theta, g_X = net.loss_and_grad(w[:P], w[P:].reshape(X.shape), y, input_grad=True)
        return np.concatenate([g_theta, g_X.ravel()])

    hv_joint, hX = net.hvp(theta, X, y, v, X_dot=X_dot, input_grad=True)
    results.append(compare("hvp over (theta, X)", np.concatenate([hv_joint, hX.ravel()]),
                           numerical_hvp(joint_grad, joint, np.concatenate([v, X_dot.ravel()]), eps), tol))
    hu = net.hvp(theta, X, y, u)
    results.append(compare("hvp symmetry u.Hv = v.Hu", [u @ hv], [v @ hu], EXACT_TOL))
    a, b = 0.7, -1.3
    results.append(compare("hvp linearity", net.hvp(theta, X, y, a * u + b * v), a * hu + b * hv, EXACT_TOL))
    return results


class ReportRow(NamedTuple):
    """One line of ``tinymeta gradcheck``."""

    quantity: str
    activation: str
    loss: str
    dtype: str
    backend: str
    rel_error: float
    tol: float
    passed: bool
    batchnorm: bool = False


def engine_report(sizes=(3, 8, 6, 4), seed: int = 0, tol: float = FD_TOL, n: int = 7,
                  activations=("relu", "tanh"), losses=("mse", "xent"), backends=("numba", "numpy"),
                  batchnorms=(False, True)):
    """Run every derivative check of the engine on small random nets.

    For each activation, loss, batch normalisation setting and backend
    (float64): ``check_mlp`` against finite differences; then the Numba
    backend against the NumPy reference, and float32 against float64. ReLU
    points are drawn away from the kinks.

    Returns
    -------
    list of ReportRow
    """
    from .nn import MLP

    rows = []
    rng = np.random.default_rng(seed)
    for bn, activation, loss in itertools.product(batchnorms, activations, losses):
        out_size = max(sizes[-1], 2) if loss == "xent" else sizes[-1]
        layer_sizes = tuple(sizes[:-1]) + (out_size,)
        nets = {b: MLP(layer_sizes, activation=activation, loss=loss, backend=b, batchnorm=bn) for b in backends}
        theta, X, y = random_problem(next(iter(nets.values())), rng, n)

        def row(r, dtype, backend):
            return ReportRow(r.name, activation, loss, dtype, backend, r.rel_error, r.tol, r.passed, bn)

        for backend, net in nets.items():
            rows += [row(r, "float64", backend) for r in check_mlp(net, theta, X, y, rng, tol=tol)]
        v = rng.standard_normal(theta.size)
        for backend, net in nets.items():
            if backend != "numpy":
                ref = net.replace(backend="numpy")
                r = compare(f"{backend} = numpy reference (hvp)", net.hvp(theta, X, y, v),
                            ref.hvp(theta, X, y, v), EXACT_TOL)
                rows.append(row(r, "float64", backend))
            net32 = net.replace(dtype="float32")
            y32 = y if loss == "xent" else y.astype(np.float32)
            r = compare("float32 = float64 (hvp)", net32.hvp(theta.astype(np.float32), X.astype(np.float32),
                                                             y32, v.astype(np.float32)),
                        net.hvp(theta, X, y, v), FLOAT32_TOL)
            rows.append(row(r, "float32", backend))
    return rows


def random_problem(net, rng, n: int = 7, margin: float = 1e-4, jitter: float = 0.1):
    """A random point ``(theta, X, y)`` for ``net`` where finite differences are valid.

    ``theta`` is ``net.init(rng)`` plus ``jitter`` times standard normal noise
    (so biases are not all zero); ``X`` is standard normal. For ReLU nets the
    point is redrawn until every hidden pre-activation is at least ``margin``
    away from the kink (a central difference with step 1e-5 then never
    straddles it). ``y``: standard normal targets (mse) or random labels (xent).
    """
    for _ in range(100):
        theta = net.init(rng)
        theta += (jitter * rng.standard_normal(net.n_params)).astype(net.dtype)
        X = rng.standard_normal((n, net.sizes[0])).astype(net.dtype)
        if net.activation != "relu" or relu_margin(net, theta, X) > margin:
            break
    else:
        raise RuntimeError(f"no point with ReLU margin {margin} found in 100 draws; lower the margin")
    y = (rng.integers(0, net.sizes[-1], n) if net.loss_name == "xent"
         else rng.standard_normal((n, net.sizes[-1])).astype(net.dtype))
    return theta, X, y
