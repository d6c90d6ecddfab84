"""Plots: each function writes a non-blank PNG from plain arrays."""
import numpy as np
from matplotlib.image import imread

from tinymeta import plots


def _check_png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_training_curve(tmp_path):
    records = [{"kind": "train", "iteration": i, "meta_loss": 4.0 / i} for i in range(1, 50)]
    records += [{"kind": "val", "iteration": i, "metric": "mse", "mean": [4.0, 3.0 / (1 + i)],
                 "ci95": [0.2, 0.1], "diverged": [0, 0]} for i in range(0, 50, 10)]
    plots.training_curve(tmp_path / "c.png", records, val_step=1)
    _check_png(tmp_path / "c.png")


def test_adaptation(tmp_path):
    x = np.linspace(-5, 5, 50)
    panel = {"title": "t", "x": x, "y_true": np.sin(x), "X_support": x[:5], "y_support": np.sin(x[:5]),
             "predictions": np.stack([np.sin(x) * k / 10 for k in range(11)])}
    plots.adaptation(tmp_path / "a.png", [panel, panel])
    _check_png(tmp_path / "a.png")


def test_error_vs_steps_with_seeds_and_published_markers(tmp_path):
    mean = np.linspace(3, 0.4, 11)
    curves = [{"label": "a", "mean": mean, "ci95": 0.1 * mean, "seeds": [mean * 0.9, mean * 1.1]},
              {"label": "b", "mean": mean * 2, "ci95": 0.1 * mean}]
    published = [{"label": "p", "steps": [1, 5, 10], "values": [0.67, 0.38, 0.35], "curve": 0}]
    plots.error_vs_steps(tmp_path / "e.png", curves, title="t", published=published)
    _check_png(tmp_path / "e.png")
