"""The NumPy reference engine: read this file next to the equations.

Notation (DESIGN.md section 2). Layers ``l = 0 .. L-1``; ``H[0] = X``;

    Z[l]   = H[l] @ W[l] + b[l]            pre-activation, shape (n, d_{l+1})
    H[l+1] = act(Z[l])                     for l < L-1; the last layer is linear
    out    = Z[L-1]

Backward (``delta = dL/dZ[l]``)::

    gW[l] = H[l].T @ delta,    gb[l] = sum_rows delta
    delta <- (delta @ W[l].T) * act'(Z[l-1])

R-operator (Pearlmutter 1994) in a direction ``v`` laid out like ``theta``,
``(V[l], c[l]) = unflatten(v)``, with tangents ``Z_dot = R{Z}``::

    H_dot[0] = 0
    Z_dot[l]   = H_dot[l] @ W[l] + H[l] @ V[l] + c[l]
    H_dot[l+1] = act'(Z[l]) * Z_dot[l]
    delta_dot  = (d^2 L / d out^2) Z_dot[L-1]                 (losses.py)
    hW[l] = H_dot[l].T @ delta + H[l].T @ delta_dot,   hb[l] = sum_rows delta_dot
    delta_dot <- (delta_dot @ W[l].T + delta @ V[l].T) * act'(Z[l-1])
                 + (delta @ W[l].T) * act''(Z[l-1]) * Z_dot[l-1]

``hv = (hW, hb)`` flattened is exactly ``(d^2 L / d theta^2) v``.

Batch normalisation (``net.batchnorm``, hidden layers only; ``batchnorm.py``
holds the operator ``J`` of ``normalize`` and its R-backward rule)::

    A[l] = H[l] @ W[l],   (X_hat[l], sigma[l]) = normalize(A[l]),   Z[l] = X_hat[l] + b[l]
    backward:   gb[l] = sum_rows delta,   delta <- J delta   (now dL/dA[l]), then as above
    R-forward:  A_dot[l] = H_dot[l] @ W[l] + H[l] @ V[l],   Z_dot[l] = J A_dot[l] + c[l]
    R-backward: hb[l] = sum_rows delta_dot,
                (delta, delta_dot) <- (J delta, normalize_r_backward(..., A_dot[l], delta, delta_dot))

so a normalised layer is an ordinary layer whose ``delta`` passes through
``J`` between the bias and the weights.

Every public function here has a twin with the same signature in
``numba_backend.py``; ``tests/test_backends.py`` pins the two together.
Inputs are assumed validated (``MLP`` does that before calling).
"""
from __future__ import annotations

import numpy as np

from .activations import get_activation
from .batchnorm import normalize, normalize_apply, normalize_r_backward
from .losses import get_loss


# ----------------------------------------------------------------- passes
def forward_pass(net, theta, X):
    """Forward pass keeping what backward needs.

    Returns
    -------
    out : (n, d_out)
    cache : (H, Z, N), lists of the layer inputs ``H[l]`` (``H[0] = X``),
        pre-activations ``Z[l]``, and ``N[l] = (X_hat[l], sigma[l])`` for a
        normalised layer (None otherwise).
    """
    act = get_activation(net.activation)
    layers = net.unflatten(theta)
    H, Z, N = [X], [], []
    for l, (W, b) in enumerate(layers):
        hidden = l < len(layers) - 1
        if net.batchnorm and hidden:
            N.append(normalize(H[l] @ W))
            Z.append(N[l][0] + b)
        else:
            N.append(None)
            Z.append(H[l] @ W + b)
        if hidden:
            H.append(act.f(Z[l]))
    return Z[-1], (H, Z, N)


def backward_pass(net, theta, cache, dout, input_grad=False):
    """Backpropagate ``dout = dL/dout`` (n, d_out) to ``dL/dtheta`` (P,).

    With ``input_grad=True`` also returns ``dX = dL/dX`` (n, d_in).
    """
    act = get_activation(net.activation)
    H, Z, N = cache
    layers = net.unflatten(theta)
    grad = np.empty_like(theta)
    grads = net.unflatten(grad)
    delta = dout
    for l in reversed(range(len(layers))):
        W = layers[l][0]
        gW, gb = grads[l]
        gb[...] = delta.sum(axis=0)
        if N[l] is not None:
            delta = normalize_apply(*N[l], delta)  # dL/dA[l]
        gW[...] = H[l].T @ delta
        if l > 0:
            delta = (delta @ W.T) * act.d1(Z[l - 1])
    if input_grad:
        return grad, delta @ layers[0][0].T
    return grad


def r_forward_pass(net, theta, v, cache, X_dot=None):
    """Tangent (R-forward) pass in direction ``v``: ``out_dot = J v``.

    ``X_dot`` (n, d_in) is a tangent of the input (``R{X}``; zero if None),
    for methods whose adapted variables enter through the input (CAVIA).

    Returns
    -------
    out_dot : (n, d_out)
    tangents : (H_dot, Z_dot, A_dot), laid out like the cache; ``A_dot[l]``
        is ``R{H[l] @ W[l]}`` for a normalised layer (None otherwise).
    """
    act = get_activation(net.activation)
    H, Z, N = cache
    layers = net.unflatten(theta)
    directions = net.unflatten(v)
    H_dot, Z_dot, A_dot = [np.zeros_like(H[0]) if X_dot is None else X_dot], [], []
    for l, ((W, _), (V, c)) in enumerate(zip(layers, directions)):
        if N[l] is not None:
            A_dot.append(H_dot[l] @ W + H[l] @ V)
            Z_dot.append(normalize_apply(*N[l], A_dot[l]) + c)
        else:
            A_dot.append(None)
            Z_dot.append(H_dot[l] @ W + H[l] @ V + c)
        if l < len(layers) - 1:
            H_dot.append(act.d1(Z[l]) * Z_dot[l])
    return Z_dot[-1], (H_dot, Z_dot, A_dot)


def r_backward_pass(net, theta, v, cache, tangents, dout, dout_dot, input_grad=False):
    """R-backward pass: returns ``(grad, hv)``, the gradient and ``H v``.

    With ``input_grad=True`` returns ``(grad, hv, dX, dX_dot)``: also the
    input cotangent ``dX = delta[0] @ W[0].T`` and its tangent
    ``R{dX} = delta_dot[0] @ W[0].T + delta[0] @ V[0].T``.
    """
    act = get_activation(net.activation)
    H, Z, N = cache
    H_dot, Z_dot, A_dot = tangents
    layers = net.unflatten(theta)
    directions = net.unflatten(v)
    grad, hv = np.empty_like(theta), np.empty_like(theta)
    grads, hvs = net.unflatten(grad), net.unflatten(hv)
    delta, delta_dot = dout, dout_dot
    for l in reversed(range(len(layers))):
        W, V = layers[l][0], directions[l][0]
        gW, gb = grads[l]
        hW, hb = hvs[l]
        gb[...] = delta.sum(axis=0)
        hb[...] = delta_dot.sum(axis=0)
        if N[l] is not None:  # through the normalisation: dL/dA[l] and its tangent
            delta, delta_dot = (normalize_apply(*N[l], delta),
                                normalize_r_backward(*N[l], A_dot[l], delta, delta_dot))
        gW[...] = H[l].T @ delta
        hW[...] = H_dot[l].T @ delta + H[l].T @ delta_dot
        if l > 0:
            back = delta @ W.T
            delta_dot = ((delta_dot @ W.T + delta @ V.T) * act.d1(Z[l - 1])
                         + back * act.d2(Z[l - 1]) * Z_dot[l - 1])
            delta = back * act.d1(Z[l - 1])
    if input_grad:
        W, V = layers[0][0], directions[0][0]
        return grad, hv, delta @ W.T, delta_dot @ W.T + delta @ V.T
    return grad, hv


# ----------------------------------------------------- the public contract
def forward(net, theta, X):
    """``f(X; theta)``, shape (n, d_out)."""
    return forward_pass(net, theta, X)[0]


def loss(net, theta, X, y):
    """Mean loss ``L(theta)`` as a float."""
    out, _ = forward_pass(net, theta, X)
    return get_loss(net.loss_name).value_and_grad(out, y)[0]


def loss_and_grad(net, theta, X, y, input_grad=False):
    """``(L, dL/dtheta)``, one forward and one backward pass; with
    ``input_grad=True``, ``(L, dL/dtheta, dL/dX)``."""
    out, cache = forward_pass(net, theta, X)
    value, dout = get_loss(net.loss_name).value_and_grad(out, y)
    if input_grad:
        return (value, *backward_pass(net, theta, cache, dout, True))
    return value, backward_pass(net, theta, cache, dout)


def vjp(net, theta, X, dout, input_grad=False):
    """``J^T dout`` for a cotangent ``dout`` (n, d_out) on the output."""
    return forward_and_vjp(net, theta, X)[1](dout, input_grad)


def forward_and_vjp(net, theta, X):
    """``(f(X; theta), pullback)``: one forward pass, kept; ``pullback(dout, input_grad=False)``
    is ``vjp(net, theta, X, dout, input_grad)`` from the kept pass, with no second forward pass."""
    out, cache = forward_pass(net, theta, X)
    return out, lambda dout, input_grad=False: backward_pass(net, theta, cache, dout, input_grad)


def jvp(net, theta, X, v, X_dot=None):
    """``J v`` (plus ``J_X X_dot``): the change of the output (n, d_out) along ``v``."""
    _, cache = forward_pass(net, theta, X)
    return r_forward_pass(net, theta, v, cache, X_dot)[0]


def hvp(net, theta, X, y, v, X_dot=None, input_grad=False):
    """Exact ``(d^2 L / d theta^2) v``: forward, R-forward, R-backward.

    With an input tangent ``X_dot`` this is the Hessian of ``L`` over
    ``(theta, X)`` jointly, times ``(v, X_dot)``: the ``theta`` block is
    returned, and with ``input_grad=True`` also the ``X`` block ``R{dL/dX}``.
    """
    loss_fn = get_loss(net.loss_name)
    out, cache = forward_pass(net, theta, X)
    _, dout = loss_fn.value_and_grad(out, y)
    out_dot, tangents = r_forward_pass(net, theta, v, cache, X_dot)
    dout_dot = loss_fn.hvp(out, y, out_dot)
    result = r_backward_pass(net, theta, v, cache, tangents, dout, dout_dot, input_grad)
    return (result[1], result[3]) if input_grad else result[1]
