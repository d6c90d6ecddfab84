"""``MLP``: the frozen network spec and its validated public methods.

A network is a spec plus a flat parameter vector ``theta`` (DESIGN.md
section 1). Layer ``l`` owns, in order, its weight matrix ``W[l]`` of shape
``(sizes[l], sizes[l+1])`` in row-major order, then its bias ``b[l]`` of
shape ``(sizes[l+1],)``; ``unflatten`` returns views. Every method takes
``theta`` first, validates its inputs, and hands them to the backend chosen
by ``backend``: ``"numpy"`` (``reference.py``, for reading and debugging) or
``"numba"`` (``numba_backend.py``, the compiled kernels). Both follow one
contract and the tests pin them together. ``batchnorm=True`` normalises
the hidden layers (``batchnorm.py``) and leaves this layout unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import validation as val
from . import numba_backend, reference
from .activations import get_activation
from .losses import get_loss

BACKENDS = {"numpy": reference, "numba": numba_backend}
DTYPES = ("float64", "float32")
INIT_SCHEMES = ("he", "glorot", "maml")
MIN_BATCHNORM_ROWS = 2  # batch statistics of a single row are degenerate (variance 0)
MAML_INIT_STD = 0.01  # Finn et al. 2017 reference code: truncated normal, std 0.01


@dataclass(frozen=True, init=False)
class MLP:
    """A multilayer perceptron spec: ``z = h W + b``, ``h = act(z)``, last layer linear.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``(d_in, hidden..., d_out)``, at least two entries.
    activation : {"relu", "tanh", "sigmoid", "softplus"}
        Hidden-layer activation (``tinymeta.nn.activations``).
    loss : {"mse", "xent"}
        ``"mse"``: mean over samples of the squared error summed over
        outputs, ``y`` of shape ``(n, d_out)``. ``"xent"``: mean softmax
        cross-entropy, ``y`` integer labels ``(n,)`` in ``0..d_out-1``.
    dtype : {"float64", "float32"}
        Floating type of parameters and computations (float64 by default,
        so that derivative checks agree to ~1e-10).
    backend : {"numba", "numpy"}
        Compiled kernels, or the readable NumPy reference.
    batchnorm : bool
        Normalise every hidden layer over the rows of the batch it is given,
        with that batch's own statistics (``tinymeta.nn.batchnorm``), as in
        the MAML paper's Omniglot MLP: hidden layer ``l`` computes
        ``Z = normalize(H W) + b`` (``b`` is batch norm's learned offset; no
        learned scale), the output layer stays ``Z = H W + b``. The layout of
        ``theta`` does not change. Inputs then need at least 2 rows.

    Examples
    --------
    >>> net = MLP([1, 40, 40, 1], activation="relu", loss="mse")
    >>> theta = net.init(np.random.default_rng(0))
    >>> theta.shape
    (1761,)
    """

    sizes: tuple
    activation: str
    loss_name: str  # the constructor's ``loss``; ``loss`` itself is the method L(theta)
    dtype: str
    backend: str
    batchnorm: bool

    def __init__(self, sizes, activation="relu", loss="mse", dtype="float64", backend="numba", batchnorm=False):
        for name, value in (("activation", activation), ("loss_name", loss),
                            ("dtype", dtype), ("backend", backend)):
            object.__setattr__(self, name, value)
        if not isinstance(batchnorm, (bool, np.bool_)):
            raise TypeError(f"batchnorm must be True or False, got {batchnorm!r}")
        object.__setattr__(self, "batchnorm", bool(batchnorm))
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
            raise TypeError(f"sizes must be a sequence of layer widths, got {sizes!r}")
        sizes = tuple(val.check_int(s, f"sizes[{i}]", minimum=1) for i, s in enumerate(sizes))
        if len(sizes) < 2:
            raise ValueError(f"sizes must hold at least an input and an output width, got {sizes}")
        object.__setattr__(self, "sizes", sizes)
        get_activation(self.activation)
        get_loss(self.loss_name)
        if self.loss_name == "xent" and sizes[-1] < 2:
            raise ValueError(f"loss 'xent' needs at least 2 outputs (classes), got sizes[-1] = {sizes[-1]}")
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError:
            dtype = None
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {self.backend!r}")

    def config(self) -> dict:
        """The constructor arguments as a JSON-ready dict: ``MLP(**net.config()) == net``."""
        return {"sizes": list(self.sizes), "activation": self.activation, "loss": self.loss_name,
                "dtype": self.dtype, "backend": self.backend, "batchnorm": self.batchnorm}

    def replace(self, **changes):
        """A copy with some constructor arguments changed, e.g. ``net.replace(dtype="float32")``."""
        return MLP(**{**self.config(), **changes})

    # ------------------------------------------------------------ layout
    @cached_property
    def n_params(self) -> int:
        """Length ``P`` of ``theta``."""
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def n_layers(self) -> int:
        """Number of affine layers ``L``."""
        return len(self.sizes) - 1

    @cached_property
    def layer_offsets(self) -> tuple:
        """Start of each layer's ``W`` in ``theta``, plus ``n_params`` at the end."""
        offsets = [0]
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            offsets.append(offsets[-1] + a * b + b)
        return tuple(offsets)

    def unflatten(self, theta):
        """Views ``[(W[0], b[0]), ...]`` into ``theta`` (or any vector laid out like it).

        ``W[l]`` has shape ``(sizes[l], sizes[l+1])`` and ``b[l]`` shape
        ``(sizes[l+1],)``; writing to a view writes to ``theta``.
        """
        if not isinstance(theta, np.ndarray) or theta.shape != (self.n_params,):
            got = theta.shape if isinstance(theta, np.ndarray) else type(theta).__name__
            raise ValueError(f"theta must be an array of shape ({self.n_params},), got {got}")
        layers = []
        for l, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            start = self.layer_offsets[l]
            layers.append((theta[start:start + a * b].reshape(a, b), theta[start + a * b:start + a * b + b]))
        return layers

    # -------------------------------------------------------------- init
    def init(self, rng, scheme=None):
        """A fresh parameter vector, biases zero.

        Schemes (``W[l]`` entries, ``fan_in = sizes[l]``):

        * ``"he"`` (default for relu, softplus): normal, std ``sqrt(2 / fan_in)`` (He et al. 2015);
        * ``"glorot"`` (default for tanh, sigmoid): uniform on
          ``±sqrt(6 / (fan_in + fan_out))`` (Glorot and Bengio 2010);
        * ``"maml"``: truncated normal, std 0.01, redrawn beyond 2 std, as in
          the MAML reference code (Finn et al. 2017).

        Parameters
        ----------
        rng : np.random.Generator
        scheme : str or None
        """
        val.check_rng(rng)
        if scheme is None:
            scheme = "glorot" if self.activation in ("tanh", "sigmoid") else "he"
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"scheme must be one of {INIT_SCHEMES} or None, got {scheme!r}")
        theta = np.zeros(self.n_params, dtype=self.dtype)
        for W, _ in self.unflatten(theta):
            fan_in, fan_out = W.shape
            if scheme == "he":
                W[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), W.shape)
            elif scheme == "glorot":
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                W[...] = rng.uniform(-limit, limit, W.shape)
            else:
                W[...] = _truncated_normal(rng, MAML_INIT_STD, W.shape)
        return theta

    # ---------------------------------------------------------- checking
    def _theta(self, theta, name="theta"):
        return val.as_float_array(theta, name, self.dtype, (self.n_params,))

    def _X(self, X):
        X = val.as_float_array(X, "X", self.dtype, (None, self.sizes[0]))
        if self.batchnorm and self.n_layers > 1 and X.shape[0] < MIN_BATCHNORM_ROWS:
            raise ValueError(f"X must have at least {MIN_BATCHNORM_ROWS} rows with batchnorm=True (each hidden layer "
                             f"is normalised over the rows; one row normalises to 0 and the output would not "
                             f"depend on X), got {X.shape[0]}")
        return X

    def _y(self, y, n):
        if self.loss_name == "xent":
            return val.as_labels(y, "y", n, self.sizes[-1])
        if isinstance(y, np.ndarray) and y.shape == (n,) and self.sizes[-1] == 1:
            raise ValueError(f"y must have shape ({n}, 1) for loss 'mse' (one column per output), "
                             f"got ({n},); use y.reshape(-1, 1)")
        return val.as_float_array(y, "y", self.dtype, (n, self.sizes[-1]))

    @property
    def _impl(self):
        return BACKENDS[self.backend]

    # ------------------------------------------------- the public contract
    def forward(self, theta, X):
        """Network output ``f(X; theta)``.

        Parameters
        ----------
        theta : (n_params,) ; X : (n, sizes[0])

        Returns
        -------
        (n, sizes[-1]) array
        """
        return self._impl.forward(self, self._theta(theta), self._X(X))

    def loss(self, theta, X, y):
        """Mean loss ``L(theta)`` on ``(X, y)`` as a float (the loss named at construction)."""
        theta, X = self._theta(theta), self._X(X)
        return self._impl.loss(self, theta, X, self._y(y, X.shape[0]))

    def loss_and_grad(self, theta, X, y, input_grad=False):
        """Mean loss and its gradient ``dL/dtheta`` (one forward, one backward pass).

        Parameters
        ----------
        input_grad : bool
            Also return ``dL/dX`` of shape ``(n, sizes[0])``.

        Returns
        -------
        ``(float, (n_params,) array)``, or ``(float, dtheta, dX)`` if ``input_grad``.
        """
        theta, X = self._theta(theta), self._X(X)
        return self._impl.loss_and_grad(self, theta, X, self._y(y, X.shape[0]), bool(input_grad))

    def vjp(self, theta, X, dout, input_grad=False):
        r"""Vector-Jacobian product :math:`J^\top dout`, for losses the engine does not own.

        Parameters
        ----------
        theta : (n_params,) ; X : (n, sizes[0]) ; dout : (n, sizes[-1])
            ``dout`` is the cotangent :math:`\partial \ell / \partial f(X)`.
        input_grad : bool
            Also return the input cotangent ``dX`` of shape ``(n, sizes[0])``.

        Returns
        -------
        (n_params,) array, or ``(dtheta, dX)`` if ``input_grad``.
        """
        theta, X = self._theta(theta), self._X(X)
        dout = val.as_float_array(dout, "dout", self.dtype, (X.shape[0], self.sizes[-1]))
        return self._impl.vjp(self, theta, X, dout, bool(input_grad))

    def forward_and_vjp(self, theta, X):
        r"""The output and its pullback, from one forward pass (the shape of ``jax.vjp``).

        For a loss computed on the output outside the engine (ProtoNet's
        distances to prototypes): ``out, pullback = net.forward_and_vjp(theta, X)``,
        then ``pullback(dout)`` is ``net.vjp(theta, X, dout)``, bit for bit,
        without running the forward pass a second time. ``theta`` and ``X``
        must not change in between (the pullback reads the kept pass).

        Returns
        -------
        out : (n, sizes[-1]) array
        pullback : ``pullback(dout, input_grad=False)`` -> (n_params,) array,
            or ``(dtheta, dX)`` if ``input_grad``; ``dout`` is (n, sizes[-1]).
        """
        theta, X = self._theta(theta), self._X(X)
        out, pullback = self._impl.forward_and_vjp(self, theta, X)

        def checked_pullback(dout, input_grad=False):
            dout = val.as_float_array(dout, "dout", self.dtype, (X.shape[0], self.sizes[-1]))
            return pullback(dout, bool(input_grad))
        return out, checked_pullback

    def jvp(self, theta, X, v, X_dot=None):
        r"""Jacobian-vector product :math:`J v` (the R-forward pass), shape ``(n, sizes[-1])``.

        ``X_dot`` (n, sizes[0]) optionally adds a tangent of the input:
        the result is then :math:`J_\theta v + J_X \dot X`.
        """
        theta, X = self._theta(theta), self._X(X)
        return self._impl.jvp(self, theta, X, self._theta(v, "v"), self._X_dot(X_dot, X))

    def hvp(self, theta, X, y, v, X_dot=None, input_grad=False):
        r"""Exact Hessian-vector product :math:`\nabla^2 L(\theta)\, v`.

        Pearlmutter's R-operator: one forward, one R-forward and one
        R-backward pass; the Hessian is never formed (DESIGN.md section 2).

        Parameters
        ----------
        theta, v : (n_params,) ; X : (n, sizes[0]) ; y : targets as in ``loss``
        X_dot : (n, sizes[0]), optional
            A tangent of the input. The product is then with the Hessian of
            ``L`` over ``(theta, X)`` jointly, in direction ``(v, X_dot)``
            (used by CAVIA, whose adapted context enters as inputs).
        input_grad : bool
            Also return the ``X`` block of that product,
            :math:`\mathcal R\{\partial L/\partial X\}`, shape ``(n, sizes[0])``.

        Returns
        -------
        (n_params,) array, or ``(hv, hX)`` if ``input_grad``.
        """
        theta, X = self._theta(theta), self._X(X)
        y = self._y(y, X.shape[0])
        return self._impl.hvp(self, theta, X, y, self._theta(v, "v"), self._X_dot(X_dot, X), bool(input_grad))

    def _X_dot(self, X_dot, X):
        if X_dot is None:
            return None
        return val.as_float_array(X_dot, "X_dot", self.dtype, X.shape)


def _truncated_normal(rng, std, shape):
    """Normal(0, std) samples redrawn until they lie within 2 std."""
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out
