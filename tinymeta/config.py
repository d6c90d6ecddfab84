"""``TrainConfig``: everything that defines a meta-training run, frozen and validated.

Defaults are the sinusoid protocol of Finn et al. 2017 (section 5.1 and
their reference code); ``None`` fields are filled from the registry: the
task's hidden widths, and the algorithm's outer-loop settings (Reptile's SGD
with linear annealing, say). The resolved config is what a run saves.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from . import registry
from . import validation as val
from .nn import MLP
from .nn.mlp import INIT_SCHEMES

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "linear", "step")
INIT_CHOICES = ("algorithm", *INIT_SCHEMES)
OUTER_FIELDS = ("optimizer", "outer_lr", "schedule", "lr_step_every", "lr_step_factor")


@dataclass(frozen=True)
class TrainConfig:
    """A meta-training run. Raises ValueError/TypeError naming any bad field."""

    algo: str = "maml"
    task: str = "sinusoid"
    algo_options: dict = field(default_factory=dict)  # fields of the algorithm's Config, e.g. {"inner_lr": 0.01}
    hidden: tuple | None = None  # None: the task's network (sinusoid: 40, 40; Finn et al. 2017, 5.1)
    activation: str = "relu"  # Finn et al. 2017, section 5.1
    batchnorm: bool = False  # normalise hidden layers with the batch's statistics (Finn et al. 2017, Omniglot MLP)
    init: str | None = None  # scheme of MLP.init drawing theta; None: the task's ("maml" for sinusoid);
    #                          "algorithm": keep the draw of the algorithm's own init_params
    dtype: str = "float64"
    backend: str = "numba"
    seed: int = 0
    iterations: int = 70_000  # Finn et al. 2017 reference code, sinusoid: --metatrain_iterations=70000
    meta_batch: int = 25  # tasks per meta-batch: Finn et al. 2017, section 5.1 and reference code
    shots: int = 10  # K support points per training task: K = 10 (REPRODUCTION-NOTES, Table 2's model)
    query: int = 10  # query points per training task: K as well (Finn et al. reference code)
    optimizer: str | None = None  # None: the algorithm's choice, else "adam" (Finn et al. 2017, 5.1)
    outer_lr: float | None = None  # None: the algorithm's choice, else 1e-3 (Finn et al. reference code)
    schedule: str | None = None  # None: the algorithm's choice, else "constant"
    lr_step_every: int | None = None  # schedule "step": every 2000 iterations (Snell et al. 2017)
    lr_step_factor: float | None = None  # schedule "step": times 0.5 (Snell et al. 2017)
    clip_norm: float | None = None  # clip the meta-gradient's global norm; None: no clipping
    eval_shots: int = 5  # Finn et al. 2017, Table 2: the K = 10 model is tested 5-shot
    eval_steps: int = 10  # report after 0..10 steps (Table 2: 1, 5, 10)
    eval_tasks: int = 600  # fixed test tasks (REPRODUCTION-NOTES)
    val_tasks: int = 100  # fixed validation tasks, for monitoring and tuning
    eval_every: int = 1000  # validate every this many iterations (0: never)
    checkpoint_every: int = 1000
    log_every: int = 100

    def __post_init__(self):
        algo, task = registry.algorithm(self.algo), registry.task(self.task)
        if not isinstance(self.algo_options, dict):
            raise TypeError(f"algo_options must be a dict of Config fields, got {type(self.algo_options).__name__}")
        object.__setattr__(self, "algo_options", dict(self.algo_options))
        defaults = {"optimizer": "adam", "outer_lr": 1e-3, "schedule": "constant", "lr_step_every": 2000,
                    "lr_step_factor": 0.5, **algo.outer_settings(self.algorithm_config())}
        for name in OUTER_FIELDS:
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        hidden = task.hidden if self.hidden is None else self.hidden
        if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
            raise TypeError(f"hidden must be a sequence of layer widths, got {hidden!r}")
        object.__setattr__(self, "hidden", tuple(val.check_int(h, "hidden", minimum=1) for h in hidden))
        if self.init is None:
            object.__setattr__(self, "init", task.init)
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be None or one of {INIT_CHOICES}, got {self.init!r}")
        for name in ("seed",):
            val.check_int(getattr(self, name), name, minimum=0)
        for name in ("iterations", "meta_batch", "shots", "query", "eval_shots", "eval_tasks", "val_tasks",
                     "checkpoint_every", "log_every", "lr_step_every"):
            val.check_int(getattr(self, name), name, minimum=1)
        for name in ("eval_steps", "eval_every"):
            val.check_int(getattr(self, name), name, minimum=0)
        if task.max_points is not None and self.shots + self.query > task.max_points:
            raise ValueError(f"shots + query must be <= {task.max_points} (points per task of {self.task!r}), "
                             f"got {self.shots} + {self.query}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        val.check_float(self.outer_lr, "outer_lr", positive=True)
        factor = val.check_float(self.lr_step_factor, "lr_step_factor", positive=True)
        if factor > 1:
            raise ValueError(f"lr_step_factor must be in (0, 1], got {factor}")
        if self.clip_norm is not None:
            val.check_float(self.clip_norm, "clip_norm", positive=True)
        if self.batchnorm is True and self.algo == "cavia":
            raise ValueError("batchnorm must be False for cavia: the first layer's normalisation subtracts the "
                             "column means and so cancels the context inputs, which are the same in every row")
        self.net()  # validates activation, batchnorm, dtype, backend

    def algorithm_config(self):
        """The algorithm's frozen ``Config``: registry overrides, then ``algo_options``."""
        return registry.algorithm(self.algo).config(**self.algo_options)

    def net(self) -> MLP:
        """The network: the task's input and output widths around ``hidden``, as the algorithm needs it."""
        task, algo = registry.task(self.task), registry.algorithm(self.algo)
        net = MLP([task.d_in, *self.hidden, task.d_out], activation=self.activation, loss=task.loss,
                  dtype=self.dtype, backend=self.backend, batchnorm=self.batchnorm)
        return net if algo.network is None else algo.network(net, self.algorithm_config())

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``TrainConfig.from_dict(c.to_dict()) == c``."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config saved by ``to_dict`` (unknown keys raise ValueError)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config keys must be among {sorted(names)}, got unknown {unknown}")
        d = dict(d)
        if d.get("hidden") is not None:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)
