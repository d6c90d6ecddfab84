"""A trained run directory: evaluation on the fixed test tasks, the baseline's tuned step, plots, table."""
import numpy as np
import pytest

from tinymeta import registry, runs
from tinymeta.config import TrainConfig
from tinymeta.train import train

TINY = dict(hidden=(8,), meta_batch=3, shots=4, query=5, eval_steps=3, val_tasks=6, eval_tasks=12,
            log_every=2, eval_every=2, checkpoint_every=4, iterations=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    for algo in ("maml", "pretrained"):
        train(base / algo, TrainConfig(algo=algo, **TINY), progress=False)
    return base


def test_evaluation_is_written_with_its_provenance(trained):
    e = runs.evaluate_run(trained / "maml", shots=7)
    assert (trained / "maml" / "eval_7shot.json").exists()
    assert runs.read_evaluation(trained / "maml", 7) == e
    assert (e["algo"], e["shots"], e["steps"], e["n_tasks"], e["iteration"]) == ("maml", 7, 3, 12, 4)
    assert len(e["mean"]) == len(e["ci95"]) == len(e["diverged"]) == 4
    assert e["train_seconds"] > 0 and e["tuned"] is None
    assert e["algorithm_config"] == {"inner_lr": 0.01, "inner_steps": 1, "first_order": False, "adapt_bn_offsets": True}


def test_the_baseline_step_is_the_best_on_validation_tasks(trained):
    e = runs.evaluate_run(trained / "pretrained")
    tuned = e["tuned"]
    grid = registry.ALGORITHMS["pretrained"].tune[1]
    assert tuned["field"] == "inner_lr" and tuned["value"] in grid
    scores = {float(k): (np.inf if v is None else v) for k, v in tuned["candidates"].items()}
    assert set(scores) == set(grid) and scores[tuned["value"]] == min(scores.values())
    assert e["algorithm_config"]["inner_lr"] == tuned["value"]


def test_plots_are_written_as_png(trained):
    e = runs.evaluate_run(trained / "pretrained")
    paths = runs.plot_run(trained / "pretrained", e)
    assert [p.name for p in paths] == ["training_curve.png", "adaptation.png", "error_vs_steps_5shot.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_table_has_a_row_per_evaluation(trained):
    table = runs.format_table([runs.evaluate_run(trained / a) for a in ("maml", "pretrained")]).splitlines()
    assert table[0].split()[:3] == ["algo", "seed", "shots"] and len(table) == 4
    assert table[2].startswith("maml") and table[3].startswith("pretrained") and "±" in table[2]
