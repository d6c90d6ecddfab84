"""N-way K-shot episodes: deterministic given the generator, right labels and pixels, clear errors;
one sampler for every image source."""
import numpy as np
import pytest

import tinymeta as tm
from tinymeta.tasks import ImageClasses, episodes, glyphs, omniglot


@pytest.fixture
def data(rng):
    """12 classes of 20 drawings: pixel (0, 0) of drawing d of class c is c, pixel (0, 1) is d."""
    images = rng.integers(0, 256, (12, 20, 28, 28), dtype=np.uint8)
    images[:, :, 0, 0] = np.arange(12)[:, None]
    images[:, :, 0, 1] = np.arange(20)[None, :]
    return ImageClasses(images, np.array([f"class{c}" for c in range(12)]))


def test_same_seed_same_episodes_other_seed_other_episodes(data):
    a, b, c = (episodes.sample_episodes(data, np.random.default_rng(seed), 5, 2, 3, n_episodes=4)
               for seed in (7, 7, 8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.X_support, c.X_support)


def test_shapes_labels_and_pixels(data, rng):
    N, K, Q, T = 5, 2, 3, 6
    index = episodes.sample_index(data, rng, N, K, Q, T)
    batch = episodes.to_batch(data, index, dtype="float32")
    assert batch.X_support.shape == (T, N * K, 784) and batch.X_query.shape == (T, N * Q, 784)
    assert batch.X_support.dtype == np.float32 and batch.y_support.dtype == np.int64
    np.testing.assert_array_equal(batch.y_support, np.tile(np.repeat(np.arange(N), K), (T, 1)))
    np.testing.assert_array_equal(batch.y_query, np.tile(np.repeat(np.arange(N), Q), (T, 1)))
    assert batch.checked(784, N, labels=True).n_tasks == T  # what every algorithm consumes
    cls_s = np.rint(batch.X_support[..., 0] * 255).astype(int)  # pixel (0, 0) names the class
    cls_q = np.rint(batch.X_query[..., 0] * 255).astype(int)
    np.testing.assert_array_equal(cls_s, np.repeat(index.classes, K, axis=1))
    np.testing.assert_array_equal(cls_q, np.repeat(index.classes, Q, axis=1))
    for t in range(T):
        assert len(set(index.classes[t])) == N  # distinct classes
        for n in range(N):  # distinct drawings, support and query disjoint
            assert len(set(index.drawings[t, n])) == K + Q
    t, n, k = 2, 3, 1  # ink = 1: X = stored ink intensity / 255, flattened row by row
    np.testing.assert_allclose(batch.X_support[t, n * K + k].reshape(28, 28),
                               data.images[index.classes[t, n], index.drawings[t, n, k]] / 255, rtol=1e-6)
    assert batch.X_support.min() >= 0 and batch.X_support.max() <= 1


def test_labels_are_assigned_to_classes_in_random_order(data, rng):
    index = episodes.sample_index(data, rng, 5, 1, 1, n_episodes=400)
    assert not (np.diff(index.classes, axis=1) > 0).all(axis=1).all()  # not sorted
    assert np.bincount(index.classes[:, 0], minlength=12).min() > 10  # label 0 goes to every class
    assert np.bincount(index.drawings[:, :, 0].ravel(), minlength=20).min() > 50  # every drawing used


def test_fixed_evaluation_episodes_and_batches(data):
    index = episodes.evaluation_index(data, 5, 1, 4)
    again = episodes.evaluation_index(data, 5, 1, 4)
    assert index.n_episodes == 600
    np.testing.assert_array_equal(index.classes, again.classes)
    np.testing.assert_array_equal(index.drawings, again.drawings)
    parts = list(episodes.batches(data, index, batch_size=250))
    assert [p.n_tasks for p in parts] == [250, 250, 100]
    whole = episodes.to_batch(data, index)
    np.testing.assert_array_equal(np.concatenate([p.X_query for p in parts]), whole.X_query)
    other = episodes.evaluation_index(data, 5, 1, 4, seed=1)
    assert not np.array_equal(other.classes, index.classes)


@pytest.mark.parametrize("args, message", [
    ((13, 1, 1), "n_way must be <= the 12 classes available, got 13"),
    ((5, 15, 6), r"k_shot \+ n_query must be <= the 20 drawings per class, got 15 \+ 6 = 21"),
    ((0, 1, 1), "n_way must be >= 1, got 0"),
    ((5, 0, 1), "k_shot must be >= 1, got 0"),
    ((5, 1, -2), "n_query must be >= 1, got -2"),
])
def test_impossible_episodes_are_refused(data, rng, args, message):
    with pytest.raises(ValueError, match=message):
        episodes.sample_episodes(data, rng, *args)


def test_bad_generator_and_data_are_refused(data):
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        episodes.sample_episodes(data, 0, 5, 1, 1)
    with pytest.raises(ValueError, match="n_episodes must be >= 1"):
        episodes.sample_episodes(data, np.random.default_rng(0), 5, 1, 1, n_episodes=0)
    with pytest.raises(TypeError, match="dtype must be a floating-point type"):
        episodes.sample_episodes(data, np.random.default_rng(0), 5, 1, 1, dtype="int64")
    with pytest.raises(TypeError, match="uint8"):
        episodes.sample_episodes(data._replace(images=data.images / 255), np.random.default_rng(0), 5, 1, 1)


def test_the_sampler_does_not_care_about_the_source(rng):
    glyph_batch = episodes.sample_episodes(glyphs.classes(8), rng, 5, 1, 2)
    assert glyph_batch.X_support.shape == (1, 5, 784)


def test_auto_source_is_glyphs_without_archives_and_omniglot_when_pointed_to_them(tmp_path, monkeypatch):
    monkeypatch.setenv(omniglot.ENV_CACHE, str(tmp_path / "empty-cache"))
    monkeypatch.delenv(omniglot.ENV_ROOT, raising=False)
    chosen = []
    monkeypatch.setattr(glyphs, "glyph_split", lambda **kw: chosen.append("glyphs"))
    monkeypatch.setattr(omniglot, "maml_split", lambda root, resize, n_val: chosen.append(("omniglot", root)))
    episodes.image_split()
    episodes.image_split(root=tmp_path)
    monkeypatch.setenv(omniglot.ENV_ROOT, str(tmp_path))
    episodes.image_split()
    assert chosen == ["glyphs", ("omniglot", tmp_path), ("omniglot", None)]
    with pytest.raises(ValueError, match="source must be one of"):
        episodes.image_split("mnist")


def test_auto_source_never_falls_back_from_a_wrong_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(omniglot.ENV_CACHE, str(tmp_path / "empty-cache"))
    monkeypatch.setenv(omniglot.ENV_ROOT, str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="not found in .*typo"):
        episodes.image_split()


def test_exported_from_the_package():
    assert tm.tasks.sample_episodes is episodes.sample_episodes and tm.tasks.ImageClasses is ImageClasses
