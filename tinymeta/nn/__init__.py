"""The engine: an MLP with analytic forward, backward, VJP, JVP and exact HVP.

``reference`` is the readable NumPy implementation, ``kernels`` and
``numba_backend`` the compiled one (``bn_kernels`` for batch-normalised
nets, ``batchnorm`` the normalisation's own derivatives); ``MLP`` validates
and dispatches.
"""
from .activations import ACTIVATIONS, get_activation
from .losses import LOSSES, get_loss
from .mlp import BACKENDS, DTYPES, INIT_SCHEMES, MLP

__all__ = ["MLP", "ACTIVATIONS", "LOSSES", "BACKENDS", "DTYPES", "INIT_SCHEMES",
           "get_activation", "get_loss"]
