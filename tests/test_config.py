"""TrainConfig and the registry: validation with clear errors, algorithm defaults, JSON round trip."""
import dataclasses
import types

import pytest

from tinymeta import registry
from tinymeta.algorithms import maml
from tinymeta.config import TrainConfig


def test_defaults_are_the_sinusoid_protocol():
    c = TrainConfig()
    assert (c.algo, c.task, c.hidden, c.activation, c.init) == ("maml", "sinusoid", (40, 40), "relu", "maml")
    assert (c.iterations, c.meta_batch, c.shots, c.optimizer, c.outer_lr) == (70000, 25, 10, "adam", 1e-3)
    assert (c.eval_shots, c.eval_tasks, c.eval_steps) == (5, 600, 10)
    assert c.algorithm_config() == maml.Config(inner_lr=0.01, inner_steps=1, first_order=False)
    assert c.net().sizes == (1, 40, 40, 1)


def test_registry_overrides_make_fomaml_and_the_baseline():
    assert TrainConfig(algo="fomaml").algorithm_config().first_order is True
    assert TrainConfig(algo="pretrained").algorithm_config().inner_steps == 0
    assert TrainConfig(algo="fomaml", algo_options={"inner_lr": 0.02}).algorithm_config().inner_lr == 0.02


def test_an_algorithm_can_bring_its_own_outer_loop(monkeypatch):
    """Reptile's way: SGD at its epsilon, annealed linearly; explicit settings still win."""
    entry = registry.Algorithm(maml, outer={"optimizer": "sgd", "outer_lr": 0.1, "schedule": "linear"})
    monkeypatch.setitem(registry.ALGORITHMS, "sgdlike", entry)
    c = TrainConfig(algo="sgdlike")
    assert (c.optimizer, c.outer_lr, c.schedule) == ("sgd", 0.1, "linear")
    assert TrainConfig(algo="sgdlike", outer_lr=0.5).outer_lr == 0.5


def test_outer_settings_can_come_from_the_algorithm_config(monkeypatch):
    """The Config carries the outer step (Reptile's epsilon): options change it through the registry."""

    @dataclasses.dataclass(frozen=True)
    class Config(maml.Config):
        outer_lr: float = 0.1

    module = types.SimpleNamespace(**{**vars(maml), "Config": Config})
    entry = registry.Algorithm(module, outer=lambda c: {"optimizer": "sgd", "outer_lr": c.outer_lr})
    monkeypatch.setitem(registry.ALGORITHMS, "fromconfig", entry)
    assert TrainConfig(algo="fromconfig").outer_lr == 0.1
    assert TrainConfig(algo="fromconfig", algo_options={"outer_lr": 0.3}).outer_lr == 0.3


def test_an_algorithm_can_change_the_network(monkeypatch):
    """CAVIA's way: extra context inputs on the task's network."""
    entry = registry.Algorithm(maml, network=lambda net, c: net.replace(sizes=[net.sizes[0] + 3, *net.sizes[1:]]))
    monkeypatch.setitem(registry.ALGORITHMS, "widened", entry)
    assert TrainConfig(algo="widened").net().sizes == (4, 40, 40, 1)


def test_json_round_trip():
    c = TrainConfig(algo="fomaml", hidden=(8, 4), clip_norm=3.0, algo_options={"inner_lr": 0.05}, seed=4)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**c.to_dict(), "colour": "red"})


@pytest.mark.parametrize("changes, error, message", [
    ({"outer_lr": -1e-3}, ValueError, "outer_lr must be > 0"),
    ({"meta_batch": 0}, ValueError, "meta_batch must be >= 1"),
    ({"shots": 0}, ValueError, "shots must be >= 1"),
    ({"iterations": 0}, ValueError, "iterations must be >= 1"),
    ({"eval_tasks": 0}, ValueError, "eval_tasks must be >= 1"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer must be one of"),
    ({"schedule": "cosine"}, ValueError, "schedule must be one of"),
    ({"lr_step_factor": 2.0}, ValueError, r"lr_step_factor must be in \(0, 1\]"),
    ({"clip_norm": 0.0}, ValueError, "clip_norm must be > 0"),
    ({"algo": "nope"}, ValueError, "algo must be one of"),
    ({"task": "nope"}, ValueError, "task must be one of"),
    ({"algo_options": {"inner_lr": -0.01}}, ValueError, "inner_lr must be > 0"),
    ({"algo_options": {"lr": 0.1}}, ValueError, "algorithm options must be among"),
    ({"init": "zeros"}, ValueError, "init must be None or one of"),
    ({"hidden": (40, 0)}, ValueError, "hidden must be >= 1"),
    ({"seed": 1.5}, TypeError, "seed must be an integer"),
    ({"dtype": "float16"}, ValueError, "dtype must be one of"),
])
def test_bad_settings_raise_naming_the_field(changes, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**changes)


def test_more_points_than_a_task_holds_is_refused(monkeypatch):
    small = dataclasses.replace(registry.TASKS["sinusoid"], max_points=20)
    monkeypatch.setitem(registry.TASKS, "sinusoid", small)
    TrainConfig(shots=10, query=10)
    with pytest.raises(ValueError, match=r"shots \+ query must be <= 20"):
        TrainConfig(shots=15, query=10)
