"""``TrainConfig``: everything that defines a meta-training run, frozen and validated.

Defaults are the sinusoid protocol of Finn et al. 2017 (section 5.1 and
their reference code); ``None`` fields are filled from the registry: the
task's hidden widths, and the algorithm's outer-loop settings (Reptile's SGD
with linear annealing, say). The resolved config is what a run saves.

A ``None`` field takes, in this order, the value the task's protocol sets
for the algorithm (``Task.algorithm_defaults``), the algorithm's outer-loop
choice (``Algorithm.outer``), the task's default (``Task.defaults``), then
``BASE_DEFAULTS`` (the sinusoid protocol). Image tasks count ``shots``,
``query``, ``eval_shots`` and ``eval_query`` per class.
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
SPLITS = ("maml", "original")
RESIZES = ("nearest", "lanczos")
# Fields a task or algorithm may set; these are the sinusoid protocol's values (Finn et al. 2017).
BASE_DEFAULTS = {"optimizer": "adam", "outer_lr": 1e-3, "schedule": "constant", "lr_step_every": 2000,
                 "lr_step_factor": 0.5, "iterations": 70_000, "meta_batch": 25, "shots": 10, "query": 10,
                 "eval_shots": 5, "eval_steps": 10, "eval_query": 100, "test_steps": 1, "train_ways": None}


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
    iterations: int | None = None  # sinusoid: 70000, Finn et al. reference code (--metatrain_iterations=70000)
    meta_batch: int | None = None  # tasks per meta-batch; sinusoid: 25 (Finn et al. 2017, section 5.1)
    shots: int | None = None  # K support points per training task (per class on images); sinusoid: K = 10
    #                           (REPRODUCTION-NOTES, Table 2's model)
    query: int | None = None  # query points per training task (per class on images); sinusoid: K as well
    optimizer: str | None = None  # None: the algorithm's choice, else "adam" (Finn et al. 2017, 5.1)
    outer_lr: float | None = None  # None: the algorithm's choice, else 1e-3 (Finn et al. reference code)
    schedule: str | None = None  # None: the algorithm's choice, else "constant"
    lr_step_every: int | None = None  # schedule "step": every 2000 iterations (Snell et al. 2017)
    lr_step_factor: float | None = None  # schedule "step": times 0.5 (Snell et al. 2017)
    clip_norm: float | None = None  # clip the meta-gradient's global norm; None: no clipping
    eval_shots: int | None = None  # sinusoid: 5 (Finn et al. 2017, Table 2: the K = 10 model is tested 5-shot);
    #                                images: shots
    eval_steps: int | None = None  # report after 0..eval_steps steps (Table 2: 1, 5, 10)
    eval_query: int | None = None  # query points of a fixed task (images: per class); sinusoid: 100
    test_steps: int | None = None  # the steps of the headline number (MAML on Omniglot: 3); <= eval_steps
    ways: int = 5  # classification: N of the test episodes (and of the classifier's head)
    train_ways: int | None = None  # N of the training episodes (ProtoNet: 60); None: ways
    split: str = "maml"  # omniglot: "maml" (1200/423 characters) or "original" (background/evaluation)
    data_root: str | None = None  # omniglot: folder of the archives; None: $TINYMETA_OMNIGLOT, else the cache
    resize: str = "nearest"  # omniglot: 105 -> 28 pixels, "nearest" (the reference's) or "lanczos"
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
        if algo.kind == "metric" and not task.classification:
            raise ValueError(f"algo {self.algo!r} is a metric learner for classification episodes; task must be "
                             f"one of {sorted(n for n, t in registry.TASKS.items() if t.classification)}, "
                             f"got {self.task!r}")
        names = {f.name for f in fields(self)}
        protocol = {k: v for k, v in task.algorithm_defaults.get(self.algo, {}).items() if k in names}
        layers = (protocol, algo.outer_settings(self.algorithm_config()), task.defaults, BASE_DEFAULTS)
        defaulted = [name for name in BASE_DEFAULTS if getattr(self, name) is None]
        for name in defaulted:
            value = next((layer[name] for layer in layers if name in layer), None)
            if isinstance(value, registry.SameAs):
                value = getattr(self, value.field)
            if isinstance(value, registry.WithBatchnorm):
                value = value.value(self.batchnorm)
            if name == "train_ways" and value is None:
                value = self.ways
            object.__setattr__(self, name, value)
        if "eval_query" in defaulted and task.max_points is not None and isinstance(self.eval_shots, int):
            object.__setattr__(self, "eval_query", max(1, min(self.eval_query, task.max_points - self.eval_shots)))
        if "test_steps" in defaulted and isinstance(self.eval_steps, int):
            object.__setattr__(self, "test_steps", min(self.test_steps, self.eval_steps))
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
        for name in ("iterations", "meta_batch", "shots", "query", "eval_shots", "eval_query", "eval_tasks",
                     "val_tasks", "checkpoint_every", "log_every", "lr_step_every"):
            val.check_int(getattr(self, name), name, minimum=1)
        for name in ("eval_steps", "eval_every", "test_steps"):
            val.check_int(getattr(self, name), name, minimum=0)
        if self.test_steps > self.eval_steps:
            raise ValueError(f"test_steps must be <= eval_steps = {self.eval_steps}, got {self.test_steps}")
        if task.max_points is not None:
            per = " per class" if task.classification else ""
            for a, b in (("shots", "query"), ("eval_shots", "eval_query")):
                if getattr(self, a) + getattr(self, b) > task.max_points:
                    raise ValueError(f"{a} + {b} must be <= {task.max_points} (points{per} of {self.task!r}), "
                                     f"got {getattr(self, a)} + {getattr(self, b)}")
        self._check_classification(algo, task)
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

    def _check_classification(self, algo, task):
        for name in ("ways", "train_ways"):
            val.check_int(getattr(self, name), name, minimum=2)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise TypeError(f"data_root must be None or a folder path as a str, got {type(self.data_root).__name__}")
        if task.classification and algo.kind == "gradient" and self.train_ways != self.ways:
            raise ValueError(f"train_ways must equal ways = {self.ways} for {self.algo!r} (its network has one "
                             f"output per class), got {self.train_ways}")

    def algorithm_config(self):
        """The algorithm's frozen ``Config``: registry overrides, the task's protocol, then ``algo_options``."""
        algo = registry.algorithm(self.algo)
        names = {f.name for f in fields(algo.module.Config)}
        protocol = registry.task(self.task).algorithm_defaults.get(self.algo, {})
        protocol = {k: v.value(self.batchnorm) if isinstance(v, registry.WithBatchnorm) else v
                    for k, v in protocol.items() if k in names}
        return algo.config(**{**protocol, **self.algo_options})

    def task_family(self):
        """What draws the training and fixed tasks (the sinusoid module; an ``ImageFamily``)."""
        return registry.task(self.task).tasks(self)

    def net(self) -> MLP:
        """The network: the task's input and output widths around ``hidden``, as the algorithm needs it.

        Classification tasks have ``ways`` outputs; the metric learners drop them (their embedding).
        """
        task, algo = registry.task(self.task), registry.algorithm(self.algo)
        d_out = self.ways if task.d_out is None else task.d_out
        net = MLP([task.d_in, *self.hidden, d_out], activation=self.activation, loss=task.loss,
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
