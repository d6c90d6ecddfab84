"""The record shared by the image sources, and the rotation augmentation."""
import numpy as np
import pytest

from tinymeta.tasks import ImageClasses, with_rotations


def test_rotations_are_four_classes_per_class_counter_clockwise(rng):
    data = ImageClasses(rng.integers(0, 256, (2, 3, 28, 28), dtype=np.uint8), np.array(["a", "b"]))
    rotated = with_rotations(data)
    assert rotated.images.shape == (8, 3, 28, 28)
    assert list(rotated.names) == ["a/rot000", "a/rot090", "a/rot180", "a/rot270",
                                   "b/rot000", "b/rot090", "b/rot180", "b/rot270"]
    np.testing.assert_array_equal(rotated.images[0], data.images[0])
    np.testing.assert_array_equal(rotated.images[5, 1], np.rot90(data.images[1, 1]))
    assert rotated.images[1, 0, 0, 0] == data.images[0, 0, 0, -1]  # top-right corner goes to the top-left


def test_checked_names_what_is_wrong():
    good = np.zeros((2, 3, 28, 28), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        ImageClasses(good.astype(float), np.array(["a", "b"])).checked()
    with pytest.raises(ValueError, match=r"\(n_classes, n_drawings, 28, 28\).*got \(2, 3, 27, 28\)"):
        ImageClasses(good[:, :, 1:], np.array(["a", "b"])).checked()
    with pytest.raises(ValueError, match=r"names must have shape \(2,\)"):
        ImageClasses(good, np.array(["a"])).checked()
