"""What ``tinymeta train`` can train: algorithms and tasks, by name.

Each algorithm entry is one line: the module that follows the training-loop
protocol (``tinymeta/algorithms/__init__.py``), overrides of its ``Config``,
the outer-loop settings it needs when they differ from the trainer's
defaults (Adam, 1e-3, constant), and, if it needs one, a change of the
task's network. Adding an algorithm is adding a line.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import ModuleType

from .algorithms import anil, cavia, imaml, maml, metasgd, reptile
from .tasks import sinusoid

# Step sizes tried for the pretrained baseline's fine-tuning, chosen on the validation tasks
# ("fine-tuning with gradient descent ... using an automatically tuned step size",
# Finn et al. 2017, section 5.1).
BASELINE_STEP_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class Algorithm:
    """A trainable algorithm: its protocol module, ``Config`` overrides, outer-loop defaults.

    ``outer``: trainer settings (``optimizer``, ``outer_lr``, ``schedule``,
    ``lr_step_every``, ``lr_step_factor``) as a dict, or a function of the
    algorithm's ``Config`` returning one (for settings the Config carries).
    ``network``: ``f(net, config) -> net``, the network the algorithm needs
    from the task's (CAVIA's extra context inputs); None keeps the task's.
    ``tune``: ``(field, values)`` of a ``Config`` field chosen on the
    validation tasks before testing (the pretrained baseline's step size).
    """

    module: ModuleType
    overrides: dict = field(default_factory=dict)
    outer: dict | Callable = field(default_factory=dict)
    network: Callable | None = None
    doc: str = ""
    tune: tuple = ()

    def outer_settings(self, config) -> dict:
        """The outer-loop settings this algorithm asks for, given its ``Config``."""
        return dict(self.outer(config) if callable(self.outer) else self.outer)

    def config(self, **options):
        """The algorithm's ``Config`` with the registry overrides, then ``options``."""
        names = [f.name for f in fields(self.module.Config)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"algorithm options must be among {names} (fields of "
                             f"{self.module.__name__}.Config), got {unknown}")
        return self.module.Config(**{**self.overrides, **options})


ALGORITHMS = {
    "maml": Algorithm(maml, doc="MAML, exact second-order meta-gradient (Finn et al. 2017)"),
    "fomaml": Algorithm(maml, {"first_order": True}, doc="first-order MAML (Finn et al. 2017, section 5.2)"),
    "metasgd": Algorithm(metasgd, doc="Meta-SGD: learned per-parameter steps (Li et al. 2017)"),
    "anil": Algorithm(anil, doc="ANIL: adapt the head only (Raghu et al. 2020)"),
    "cavia": Algorithm(cavia, network=lambda net, c: cavia.widen_input(net, c.n_context),
                       doc="CAVIA: adapt context inputs only (Zintgraf et al. 2019)"),
    # iMAML's inner problem must be smooth for its Newton-CG solve and for the implicit gradient
    # (I + H/lambda)^-1 to exist; on ReLU the solve stalls at a kink. Softplus is the smooth ReLU.
    "imaml": Algorithm(imaml, network=lambda net, c: net.replace(activation="softplus"),
                       doc="iMAML: implicit gradients by conjugate gradient (Rajeswaran et al. 2019); "
                           "softplus hidden units"),
    "reptile": Algorithm(reptile, outer=lambda c: {"optimizer": c.outer_optimizer, "outer_lr": c.outer_lr,
                                                   "schedule": "linear" if c.anneal else "constant"},
                         doc="Reptile (Nichol et al. 2018)"),
    "pretrained": Algorithm(maml, {"inner_steps": 0}, tune=("inner_lr", BASELINE_STEP_GRID),
                            doc="baseline: one network regressed on all tasks, fine-tuned at test "
                                "time with a step size tuned on validation tasks (Finn et al. 2017, 5.1)"),
}


@dataclass(frozen=True)
class Task:
    """A task family: a module with ``sample(rng, n_tasks, n_support, n_query, dtype)`` and
    ``fixed_tasks(split, n_support, n_tasks, n_query, dtype)``, its network and loss.

    ``init``: the scheme of ``MLP.init`` that draws ``theta`` by default.
    ``max_points``: how many points a task holds (support + query), ``None`` if unlimited.
    """

    module: ModuleType
    d_in: int
    d_out: int
    loss: str
    hidden: tuple
    init: str = "he"
    max_points: int | None = None
    doc: str = ""


TASKS = {
    # init "maml": the truncated normal (std 0.01) of Finn et al.'s reference code; He's init makes
    # alpha = 0.01 diverge on some tasks at the start.
    "sinusoid": Task(sinusoid, 1, 1, "mse", sinusoid.SIZES[1:-1], init="maml",
                     doc="sine regression, A in [0.1, 5], phase in [0, pi] (Finn et al. 2017, 5.1)"),
}


def algorithm(name: str) -> Algorithm:
    """The registry entry of algorithm ``name``, or a ValueError listing the names."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name]


def task(name: str) -> Task:
    """The registry entry of task ``name``, or a ValueError listing the names."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]
