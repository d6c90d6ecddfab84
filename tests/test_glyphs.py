"""The generated glyph family: pure in (seed, class, drawing), varied, neither trivial nor hopeless."""
import numpy as np
import pytest

from tinymeta.tasks import episodes, glyphs


def test_same_seed_same_glyphs_other_seed_other_glyphs():
    a, b = glyphs.classes(4, seed=3), glyphs.classes(4, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, glyphs.classes(4, seed=4).images)
    assert list(a.names) == [f"glyph-3-{c:06d}" for c in range(4)]


def test_class_and_drawing_depend_only_on_seed_class_and_drawing_index():
    many = glyphs.classes(9, n_drawings=20)
    np.testing.assert_array_equal(glyphs.classes(3, first=5, n_drawings=20).images, many.images[5:8])
    np.testing.assert_array_equal(glyphs.classes(9, n_drawings=4).images, many.images[:, :4])


def test_drawings_vary_within_a_class_and_classes_differ():
    data = glyphs.classes(30)
    flat = data.images.reshape(30, 20, -1).astype(float) / 255
    for c in range(30):  # no two drawings of a class are the same image
        assert len({d.tobytes() for d in data.images[c]}) == 20
    within = np.mean([np.abs(f[:, None] - f[None]).sum(-1).mean() for f in flat])
    between = np.abs(flat[:, None, 0] - flat[None, :, 0]).sum(-1)[~np.eye(30, dtype=bool)].mean()
    assert 0.3 * between < within < 0.9 * between  # coherent classes, real variation


def test_without_perturbation_every_drawing_is_the_class_prototype():
    still = glyphs.Style(jitter=0, stroke_shift=0, rotation=0, log_scale=0, shear=0, translation=0,
                         log_thickness=0)
    data = glyphs.classes(3, style=still)
    assert all((data.images[c] == data.images[c, 0]).all() for c in range(3))


def test_ink_is_drawn_and_stays_in_the_frame():
    data = glyphs.classes(50)
    ink = data.images.reshape(1000, -1).astype(float) / 255
    assert (ink.max(axis=1) > 0.5).all() and 0.03 < ink.mean() < 0.12  # Omniglot at 28x28: about 8 %
    border = np.ones((28, 28), bool)
    border[2:-2, 2:-2] = False
    assert data.images[:, :, border].mean() / 255 < 0.01


def test_one_nearest_neighbour_in_pixels_is_far_from_trivial_and_from_chance():
    """5-way 1-shot with 1-NN on raw pixels: chance is 0.2; Omniglot at 28x28 gives about 0.4."""
    data = glyphs.classes(200, first=10_000)
    batch = episodes.sample_episodes(data, np.random.default_rng(0), n_way=5, k_shot=1, n_query=5,
                                     n_episodes=200)
    dist = ((batch.X_query[:, :, None] - batch.X_support[:, None]) ** 2).sum(-1)
    accuracy = (np.take_along_axis(batch.y_support, dist.argmin(-1), 1) == batch.y_query).mean()
    assert 0.35 < accuracy < 0.7


def test_glyph_split_is_disjoint_and_sized_like_omniglot():
    split = glyphs.glyph_split(n_train=30, n_test=12, n_validation=5, n_drawings=3)
    assert (split.train.n_classes, split.validation.n_classes, split.test.n_classes) == (30, 5, 12)
    names = [*split.train.names, *split.validation.names, *split.test.names]
    assert len(set(names)) == 47 and split.train.images.shape == (30, 3, 28, 28)
    assert glyphs.glyph_split(n_train=30, n_test=12, n_drawings=3).validation is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_classes must be >= 1, got 0"):
        glyphs.classes(0)
    with pytest.raises(ValueError, match="jitter must be >= 0"):
        glyphs.Style(jitter=-0.1)
    with pytest.raises(TypeError, match="style must be a glyphs.Style"):
        glyphs.classes(2, style={"jitter": 0})
