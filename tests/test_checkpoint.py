"""Checkpoints: atomic, pickle-free files that restore every array, the generator and the config exactly."""
import os

import numpy as np
import pytest

from tinymeta import checkpoint, optim


def _state(rng):
    params = {"theta": rng.standard_normal(17), "alpha": rng.uniform(size=17)}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    opt = optim.Adam(1e-3)
    params, opt_state = opt.update(params, grads, opt.init(params))
    return params, opt_state


def test_round_trip_restores_params_optimizer_generator_config_and_scalars(tmp_path, rng):
    params, opt_state = _state(rng)
    data_rng = np.random.default_rng(42)
    data_rng.standard_normal(5)  # a generator part-way through its stream
    config = {"algo": "maml", "hidden": [40, 40], "clip_norm": None, "algo_options": {"inner_lr": 0.01}}
    scalars = {"iteration": 7, "seconds": 1.5, "loss_sum": 0.25, "loss_count": 3}
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, params, opt_state, data_rng, config, scalars)
    loaded = checkpoint.load(path)
    assert loaded["params"].keys() == params.keys() and loaded["opt_state"].keys() == opt_state.keys()
    for k in params:
        assert np.array_equal(loaded["params"][k], params[k]) and loaded["params"][k].dtype == params[k].dtype
    for k in opt_state:
        assert np.array_equal(loaded["opt_state"][k], opt_state[k])
    assert loaded["config"] == config and loaded["scalars"] == scalars
    assert np.array_equal(loaded["rng"].standard_normal(100), data_rng.standard_normal(100))
    np.load(path, allow_pickle=False).close()  # readable without pickle


def test_rng_state_survives_json_for_every_allowed_bit_generator():
    for name, cls in checkpoint.BIT_GENERATORS.items():
        g = np.random.Generator(cls(3))
        g.integers(0, 10, 3)
        restored = checkpoint.rng_from_json(checkpoint.rng_to_json(g))
        assert np.array_equal(restored.uniform(size=20), g.uniform(size=20)), name


def test_unknown_bit_generator_is_refused():
    with pytest.raises(ValueError, match="rng state must name one of"):
        checkpoint.rng_from_json('{"bit_generator": "os.system", "state": {}}')


def test_a_file_without_checkpoint_fields_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a tinymeta checkpoint"):
        checkpoint.load(path)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    checkpoint.write_json(path, {"a": 1})
    checkpoint.write_json(path, {"a": 2})
    assert checkpoint.read_json(path) == {"a": 2}
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.npz"
    params, opt_state = _state(np.random.default_rng(0))
    checkpoint.save(path, params, opt_state, np.random.default_rng(0), {}, {"iteration": 1})
    with pytest.raises(TypeError):  # an object that JSON cannot encode fails before anything is renamed
        checkpoint.save(path, params, opt_state, np.random.default_rng(0), {"bad": object()}, {"iteration": 2})
    assert checkpoint.load(path)["scalars"] == {"iteration": 1}
    assert os.listdir(tmp_path) == ["f.npz"]
