"""tinymeta: autograd-free meta-learning on an analytic, Numba-compiled MLP.

>>> import numpy as np, tinymeta as tm
>>> net = tm.MLP([1, 40, 40, 1], activation="relu", loss="mse")
>>> theta = net.init(np.random.default_rng(0))
"""
from . import gradcheck
from .nn import MLP
from .tasks import TaskBatch

__version__ = "0.1.0"
__all__ = ["MLP", "TaskBatch", "gradcheck", "__version__"]
