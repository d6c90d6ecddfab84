"""Image tasks in the training loop: every image algorithm trains on glyphs, exact resume, streamed
evaluation, the image plots, protocol defaults, and Omniglot from the shared archives when present."""
import os
from pathlib import Path

import numpy as np
import pytest

from tinymeta import registry, runs
from tinymeta.config import TrainConfig
from tinymeta.evaluate import confusion_matrix, predicted_labels, task_scores
from tinymeta.tasks import families
from tinymeta.train import init_state, load_run, read_log, train

IMAGE_ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "reptile",
                    "protonet", "matching", "matching_fce", "siamese", "relation")
TINY = dict(task="glyphs", hidden=(16, 8), ways=3, shots=1, meta_batch=2, val_tasks=4, eval_tasks=6,
            eval_every=3, checkpoint_every=3, log_every=1)
SHARED = Path(os.environ.get("TINYMETA_OMNIGLOT") or "/work/shared/data/omniglot")
HAVE_OMNIGLOT = all((SHARED / name).is_file() for name in ("images_background.zip", "images_evaluation.zip"))


def _config(algo, **changes):
    extra = {"train_ways": 4} if algo == "protonet" else {}  # its protocol's 60 ways, scaled down
    return TrainConfig(**{**TINY, "algo": algo, "iterations": 3, **extra, **changes})


@pytest.mark.parametrize("algo", IMAGE_ALGORITHMS)
def test_every_image_algorithm_trains_and_is_evaluated_on_glyphs(tmp_path, algo):
    config = _config(algo)
    initial = init_state(config)[0]
    result = train(tmp_path, config, progress=False)
    assert result.status == "finished" and result.iteration == 3
    _, load_params, _, _ = load_run(tmp_path)
    assert set(load_params) == set(initial)
    assert all(np.isfinite(v).all() for v in load_params.values())
    assert not np.array_equal(load_params["theta"], initial["theta"])  # it learned something
    val = [r for r in read_log(tmp_path) if r["kind"] == "val"]
    assert [r["iteration"] for r in val] == [0, 3] and val[0]["metric"] == "accuracy"
    e = runs.evaluate_run(tmp_path)
    assert e["metric"] == "accuracy" and e["n_tasks"] == 6 and e["ways"] == 3
    assert len(e["mean"]) == config.eval_steps + 1 and all(0 <= m <= 1 for m in e["mean"])
    # the number in the JSON is the mean of the per-episode accuracies on the fixed test episodes
    fixed = config.task_family().fixed_tasks("test", 1, 6, config.eval_query, config.dtype).batch
    net, module = config.net(), registry.algorithm(algo).module
    scores = task_scores(net, module, load_params, config.algorithm_config(), fixed, config.eval_steps)
    assert np.allclose(e["mean"], scores.mean(axis=0), rtol=0, atol=1e-12)


def test_networks_follow_the_protocol():
    assert TrainConfig(algo="maml", task="glyphs", ways=20).net().sizes == (784, 256, 128, 64, 64, 20)
    for algo in ("protonet", "matching", "siamese", "relation", "matching_fce"):
        net = TrainConfig(algo=algo, task="glyphs").net()
        assert net.sizes == (784, 256, 128, 64, 64) and net.loss_name == "xent"


def test_protocol_defaults_and_explicit_settings_win():
    p = TrainConfig(algo="protonet", task="glyphs")
    assert (p.train_ways, p.query, p.meta_batch, p.schedule, p.lr_step_every) == (60, 5, 1, "step", 2000)
    assert (p.eval_steps, p.test_steps) == (0, 0)
    assert (TrainConfig(algo="relation", task="glyphs").meta_batch, TrainConfig(algo="siamese", task="glyphs").query) == (1, 5)
    assert TrainConfig(algo="protonet", task="glyphs", train_ways=30, query=2).train_ways == 30
    bn = TrainConfig(algo="maml", task="glyphs", batchnorm=True)  # the paper's network takes the paper's step
    assert bn.algorithm_config().inner_lr == 2.0 and bn.net().batchnorm
    assert TrainConfig(algo="protonet", task="glyphs", batchnorm=True).net().batchnorm  # the embedding keeps it
    m = TrainConfig(algo="maml", task="glyphs", shots=5)
    assert (m.meta_batch, m.query, m.eval_shots, m.eval_query, m.test_steps) == (32, 5, 5, 15, 3)
    assert m.algorithm_config().inner_lr == 0.4
    assert TrainConfig(algo="maml", task="glyphs", algo_options={"inner_lr": 0.1}).algorithm_config().inner_lr == 0.1
    r = TrainConfig(algo="reptile", task="glyphs")
    assert (r.optimizer, r.outer_lr, r.schedule) == ("sgd", 1.0, "linear")
    assert r.algorithm_config().inner_optimizer == "adam" and r.algorithm_config().outer_lr == 1.0
    assert TrainConfig(algo="maml", task="glyphs", shots=10).eval_query == 10  # 10 + 10 drawings of 20
    s = TrainConfig()  # the sinusoid protocol is untouched
    assert (s.meta_batch, s.shots, s.query, s.eval_shots, s.eval_query) == (25, 10, 10, 5, 100)
    assert TrainConfig.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("changes, error, match", [
    ({"algo": "maml", "task": "glyphs", "train_ways": 10}, ValueError, "train_ways must equal ways"),
    ({"algo": "protonet"}, ValueError, "metric learner"),
    ({"algo": "maml", "task": "glyphs", "shots": 15, "query": 6}, ValueError, "shots \\+ query must be <= 20"),
    ({"algo": "maml", "task": "glyphs", "ways": 1}, ValueError, "ways must be >= 2"),
    ({"algo": "maml", "task": "omniglot", "split": "lake"}, ValueError, "split must be one of"),
    ({"algo": "maml", "task": "glyphs", "eval_steps": 2, "test_steps": 3}, ValueError, "test_steps must be <="),
])
def test_bad_image_settings_are_refused(changes, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**changes)


@pytest.mark.parametrize("algo", ["maml", "protonet", "siamese"])
def test_resume_is_bit_identical(tmp_path, algo):
    config = _config(algo, iterations=6, eval_every=2, checkpoint_every=2)
    straight = train(tmp_path / "straight", config, progress=False)
    first = train(tmp_path / "resumed", config, until=3, progress=False)
    assert first.status == "paused" and first.iteration == 3
    resumed = train(tmp_path / "resumed", resume=True, progress=False)
    assert resumed.iteration == 6
    for key in straight.params:
        assert np.array_equal(straight.params[key], resumed.params[key])
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(tmp_path / "straight")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(tmp_path / "resumed")]


def test_fixed_episodes_are_seeded_streamed_and_split_apart():
    family = TrainConfig(algo="maml", task="glyphs", ways=5).task_family()
    test = family.fixed_tasks("test", 1, 7, 3)
    again = family.fixed_tasks("test", 1, 7, 3)
    val = family.fixed_tasks("val", 1, 7, 3)
    assert np.array_equal(test.index.classes, again.index.classes)
    assert set(test.data.names).isdisjoint(val.data.names)
    assert set(test.data.names).isdisjoint(family.split.train.names)
    chunks = list(families.EpisodeStream(test.data, test.index, chunk=3))
    assert [c.n_tasks for c in chunks] == [3, 3, 1]
    whole = families.EpisodeStream(test.data, test.index, chunk=7)
    one = next(iter(whole))
    assert np.array_equal(np.concatenate([c.X_query for c in chunks]), one.X_query)
    assert np.array_equal(test.batch.task(4)[0], one.X_support[4])
    assert one.X_support.shape == (7, 5, 784) and one.X_query.shape == (7, 15, 784)


def test_predicted_labels_agree_with_the_accuracy(rng):
    config = TrainConfig(algo="maml", task="glyphs", ways=4, hidden=(16,), eval_steps=2)
    net, module = config.net(), registry.algorithm("maml").module
    params = {"theta": net.init(rng)}
    fixed = config.task_family().fixed_tasks("test", 1, 5, 4).batch
    scores = task_scores(net, module, params, config.algorithm_config(), fixed, 2)
    labels = predicted_labels(net, module, params, config.algorithm_config(), fixed, 2)
    truth = np.concatenate([b.y_query for b in fixed])
    assert np.array_equal((labels == truth).mean(axis=1), scores[:, 2])
    C = confusion_matrix(truth, labels, 4)
    assert C.sum() == truth.size and np.trace(C) == (labels == truth).sum()


def test_training_lifts_protonet_above_chance(tmp_path):
    config = TrainConfig(algo="protonet", task="glyphs", hidden=(64, 32), ways=5, train_ways=20, iterations=40,
                         eval_every=40, val_tasks=40, eval_tasks=10, log_every=10, checkpoint_every=40)
    train(tmp_path, config, progress=False)
    val = [r for r in read_log(tmp_path) if r["kind"] == "val"]
    assert val[-1]["mean"][0] > val[0]["mean"][0] + 0.05


def test_plots_of_an_image_run(tmp_path):
    config = _config("maml", eval_steps=2)
    train(tmp_path, config, progress=False)
    paths = runs.plot_run(tmp_path, runs.evaluate_run(tmp_path))
    assert sorted(p.name for p in paths) == ["confusion_1shot.png", "episode_1shot.png",
                                             "error_vs_steps_1shot.png", "training_curve.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


@pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"Omniglot archives not in {SHARED}")
@pytest.mark.parametrize("split, n_train, n_test", [("maml", 4 * 1100, 423), ("original", 4 * 864, 659)])
def test_omniglot_from_the_shared_archives(tmp_path, split, n_train, n_test):
    config = TrainConfig(algo="protonet", task="omniglot", split=split, data_root=str(SHARED), hidden=(16, 8),
                         train_ways=5, iterations=2, val_tasks=3, eval_tasks=3, eval_every=2, log_every=1)
    family = config.task_family()
    assert (family.split.train.n_classes, family.split.validation.n_classes) == (n_train, 100)
    assert family.split.test.n_classes == n_test
    assert train(tmp_path, config, progress=False).status == "finished"
    assert runs.evaluate_run(tmp_path)["n_tasks"] == 3


def test_metric_learners_default_to_images_and_glyphs_without_archives(monkeypatch, tmp_path):
    from tinymeta import cli_images

    monkeypatch.delenv("TINYMETA_OMNIGLOT", raising=False)
    monkeypatch.setenv("TINYMETA_CACHE", str(tmp_path))  # an empty cache: no archives anywhere
    assert cli_images.default_task("protonet") == "glyphs" and cli_images.default_task("maml") == "sinusoid"
    if HAVE_OMNIGLOT:
        monkeypatch.setenv("TINYMETA_OMNIGLOT", str(SHARED))
        assert cli_images.default_task("relation") == "omniglot"


def test_maml_with_batchnorm_trains_on_glyphs(tmp_path):
    config = _config("maml", batchnorm=True, shots=2)  # batch statistics need >= 2 rows: 3-way 2-shot is 6
    result = train(tmp_path, config, progress=False)
    assert result.status == "finished" and load_run(tmp_path)[0].net().batchnorm
    assert 0 <= runs.evaluate_run(tmp_path)["mean"][config.test_steps] <= 1
