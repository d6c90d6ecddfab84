"""What ``tinymeta train`` can train: algorithms and tasks, by name.

Each algorithm entry is one line: the module that follows the training-loop
protocol (``tinymeta/algorithms/__init__.py``), overrides of its ``Config``,
the outer-loop settings it needs when they differ from the trainer's
defaults (Adam, 1e-3, constant), and, if it needs one, a change of the
task's network. Adding an algorithm is adding a line.

Each task entry names its family (what draws training and fixed tasks),
its network, its defaults of ``TrainConfig`` fields and, per algorithm,
the settings its protocol asks for (MAML's inner step on Omniglot, say).
Image tasks share one network, 784-256-128-64-64-N (Finn et al. 2017,
section 5.2, the non-convolutional model); the metric learners use it
without its N-way head as their 784-256-128-64-64 embedding.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import ModuleType

from .algorithms import anil, cavia, imaml, maml, matching, matching_fce, metasgd, protonet, relation, reptile, siamese
from .tasks import episodes, families, omniglot, sinusoid

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
    ``kind``: "gradient" (adapts the task's network by gradient steps; any task) or
    "metric" (an embedding compared across the episode; classification tasks only).
    ``outer`` may also set ``TrainConfig``'s ``meta_batch``, ``query`` and ``train_ways``
    (ProtoNet's 60-way training episodes with 5 queries per class).
    """

    module: ModuleType
    overrides: dict = field(default_factory=dict)
    outer: dict | Callable = field(default_factory=dict)
    network: Callable | None = None
    doc: str = ""
    tune: tuple = ()
    kind: str = "gradient"

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
    "protonet": Algorithm(protonet, kind="metric", network=lambda net, c: embedding_net(net),
                          outer=lambda c: {"train_ways": c.train_ways, "query": c.train_queries, "meta_batch": 1,
                                           "schedule": "step", "lr_step_every": 2000, "lr_step_factor": 0.5},
                          doc="Prototypical Networks (Snell et al. 2017): 60-way training episodes, one per "
                              "update, Adam 1e-3 halved every 2000 (section 3.1)"),
    "matching": Algorithm(matching, kind="metric", network=lambda net, c: embedding_net(net),
                          doc="Matching Networks, cosine attention (Vinyals et al. 2016)"),
    "matching_fce": Algorithm(matching_fce, kind="metric", network=lambda net, c: embedding_net(net),
                              doc="Matching Networks with full context embeddings (Vinyals et al. 2016, app. A)"),
    "siamese": Algorithm(siamese, kind="metric", network=lambda net, c: embedding_net(net),
                         doc="Siamese verification network, nearest match at test (Koch et al. 2015)"),
    "relation": Algorithm(relation, kind="metric", network=lambda net, c: embedding_net(net),
                          doc="Relation Network: a learned comparison module (Sung et al. 2018)"),
}


def embedding_net(net):
    """The metric learners' embedding: the task's classifier network without its output layer."""
    if len(net.sizes) < 3:
        raise ValueError(f"the metric learners embed with the task's network minus its output layer; "
                         f"it needs at least one hidden layer, got sizes {net.sizes}")
    return net.replace(sizes=net.sizes[:-1])


@dataclass(frozen=True)
class SameAs:
    """A default that copies another ``TrainConfig`` field, e.g. ``SameAs("shots")``."""

    field: str


@dataclass(frozen=True)
class WithBatchnorm:
    """A protocol value that depends on ``TrainConfig.batchnorm``: ``on`` with it, ``off`` without."""

    on: object
    off: object

    def value(self, batchnorm: bool):
        return self.on if batchnorm else self.off


@dataclass(frozen=True)
class Task:
    """A task family: a module with ``sample(rng, n_tasks, n_support, n_query, dtype)`` and
    ``fixed_tasks(split, n_support, n_tasks, n_query, dtype)``, its network and loss.

    ``init``: the scheme of ``MLP.init`` that draws ``theta`` by default.
    ``max_points``: how many points a task holds (support + query), ``None`` if unlimited
    (classification: drawings per class).
    ``d_out``: None for classification, where it is the number of ways ``N``.
    ``family``: ``f(config)`` giving the object that has ``sample`` and ``fixed_tasks``;
    None: ``module`` has them.
    ``defaults``: ``TrainConfig`` fields left None take these values on this task.
    ``algorithm_defaults``: per algorithm, ``TrainConfig`` fields and fields of its
    ``Config`` that this task's protocol sets (explicit settings still win).
    """

    module: ModuleType
    d_in: int
    d_out: int | None
    loss: str
    hidden: tuple
    init: str = "he"
    max_points: int | None = None
    doc: str = ""
    family: Callable | None = None
    defaults: dict = field(default_factory=dict)
    algorithm_defaults: dict = field(default_factory=dict)

    @property
    def classification(self) -> bool:
        return self.loss == "xent"

    def tasks(self, config):
        """What draws this task's training and fixed tasks under ``config``."""
        return self.module if self.family is None else self.family(config)


TASKS = {
    # init "maml": the truncated normal (std 0.01) of Finn et al.'s reference code; He's init makes
    # alpha = 0.01 diverge on some tasks at the start.
    "sinusoid": Task(sinusoid, 1, 1, "mse", sinusoid.SIZES[1:-1], init="maml",
                     doc="sine regression, A in [0.1, 5], phase in [0, pi] (Finn et al. 2017, 5.1)"),
}

# The non-convolutional Omniglot network of Finn et al. 2017 (section 5.2): 784-256-128-64-64-N.
IMAGE_HIDDEN = (256, 128, 64, 64)
# Per algorithm, what the image protocols set (Finn et al. 2017 and reference code; Nichol et al. 2018).
IMAGE_ALGORITHM_DEFAULTS = {
    # The reference inner step is 0.4 on a loss summed over the support set and divided by K, i.e.
    # N times the mean (REPRODUCTION-NOTES): 0.4 x 5 = 2.0 on our mean loss (20-way: 0.1 x 20 = 2.0), the
    # step with batch norm (the paper's network). Without batch norm, 2.0 collapses to chance after more
    # than one step (glyphs, 5-way 1-shot, 100 iterations: 33 % after 1 step, 21 % after 3) where 0.4
    # gives 47 % / 46 %: 0.4 on the mean without batch norm is ours.
    "maml": {"inner_lr": WithBatchnorm(on=2.0, off=0.4), "test_steps": 3},
    "fomaml": {"inner_lr": WithBatchnorm(on=2.0, off=0.4), "test_steps": 3},
    "anil": {"inner_lr": WithBatchnorm(on=2.0, off=0.4), "test_steps": 3},
    "metasgd": {"test_steps": 1},  # a one-step method (REPRODUCTION-NOTES)
    # Nichol et al. 2018, Omniglot: inner Adam (beta1 = 0) at 1e-3, 5 steps of 10 images at training,
    # outer SGD at 1.0 annealed to 0, 5 tasks per meta-batch, 50 steps at test.
    "reptile": {"inner_optimizer": "adam", "inner_lr": 1e-3, "inner_steps": 5, "outer_lr": 1.0, "meta_batch": 5,
                "eval_steps": 50, "test_steps": 50},
}
for _metric in ("protonet", "matching", "matching_fce", "siamese", "relation"):
    IMAGE_ALGORITHM_DEFAULTS[_metric] = {"eval_steps": 0, "test_steps": 0}  # they do not adapt
for _metric in ("matching", "matching_fce", "siamese", "relation"):
    # one episode per update with 5 queries per class, as ProtoNet's protocol (Snell et al. 2017, 3.1) and
    # Relation Nets' one episode per iteration (Sung et al. 2018); ours for Matching and Siamese
    IMAGE_ALGORITHM_DEFAULTS[_metric].update(meta_batch=1, query=5)
IMAGE_DEFAULTS = {
    "iterations": 60_000,  # Finn et al. reference code, Omniglot: --metatrain_iterations=60000
    "meta_batch": 32,  # Finn et al. 2017, section 5.2: 32 tasks for 5-way (16 for 20-way)
    "shots": 1,
    "query": SameAs("shots"),  # Finn et al. reference code: K query drawings per class at meta-training
    "eval_shots": SameAs("shots"),  # tested with the shots it was trained with
    "eval_query": 15,  # query drawings per class of the fixed episodes (ours; at most 20 - K)
}


def _image_family(source):
    """``f(config)``: the ``ImageFamily`` of ``source`` ("omniglot" or "glyphs") that ``config`` asks for."""
    def make(config):
        root = config.data_root
        if source == "omniglot" and root is None:  # resolved here: load_split memoises by its arguments
            root = os.environ.get(omniglot.ENV_ROOT) or None
        split = families.load_split(source, config.split if source == "omniglot" else "maml", root, config.resize)
        return families.ImageFamily(split, config.ways, config.train_ways)
    return make


for _name, _doc in (("omniglot", "Omniglot characters, N-way K-shot, 28x28 (MAML split: 1200 characters with "
                                 "rotations to meta-train, 423 to test; --split original: background/evaluation)"),
                    ("glyphs", "generated Omniglot-like glyphs, N-way K-shot, 28x28 (no download)")):
    _doc += ("; defaults: 784-256-128-64-64-N net, 60000 iterations, meta-batch 32, 1 shot, query = shots, "
             "15 query per class at test, the protocol's settings per algorithm (registry.IMAGE_ALGORITHM_DEFAULTS)")
    TASKS[_name] = Task(episodes, episodes.D_IN, None, "xent", IMAGE_HIDDEN, init="he", max_points=20, doc=_doc,
                        family=_image_family(_name), defaults=IMAGE_DEFAULTS,
                        algorithm_defaults=IMAGE_ALGORITHM_DEFAULTS)


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
