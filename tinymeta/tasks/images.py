"""The record every image source fills and the episode sampler reads.

Omniglot (``omniglot.py``) and the generated glyphs (``glyphs.py``) both give
an ``ImageClasses``: an array of shape ``(n_classes, n_drawings, 28, 28)``
plus one name per class. The sampler (``episodes.py``) sees nothing else, so
it never branches on the source.

Pixel convention (as in the MAML reference, which inverts Omniglot's white
background): stored ``uint8`` values are ink intensities, 0 = blank paper,
255 = full ink; episodes divide by 255, so ink = 1.0 and paper = 0.0.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

SIDE = 28  # images are SIDE x SIDE, as in Finn et al. 2017, section 5.2
INK = 255  # the stored value of full ink; paper is 0


class ImageClasses(NamedTuple):
    """Drawings of ``C`` classes, ``D`` drawings each.

    Attributes
    ----------
    images : (C, D, 28, 28) uint8
        Ink intensity, 0 = paper, 255 = ink. Row ``images[c, d]`` is drawing
        ``d`` of class ``c``; row 0 of each image is its top.
    names : (C,) str array
        A name per class, e.g. ``"Greek/character03"`` or ``"glyph-000017"``.
    """

    images: np.ndarray
    names: np.ndarray

    @property
    def n_classes(self) -> int:
        return self.images.shape[0]

    @property
    def n_drawings(self) -> int:
        return self.images.shape[1]

    def checked(self) -> "ImageClasses":
        """Validate shapes and dtypes; raise ``TypeError``/``ValueError`` naming what is wrong."""
        images, names = self.images, self.names
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise TypeError(f"images must be a uint8 array of ink intensities (0 paper, 255 ink), got {got}")
        if images.ndim != 4 or images.shape[2:] != (SIDE, SIDE) or 0 in images.shape[:2]:
            raise ValueError(f"images must have shape (n_classes, n_drawings, {SIDE}, {SIDE}) "
                             f"with n_classes, n_drawings >= 1, got {images.shape}")
        if np.shape(names) != images.shape[:1]:
            raise ValueError(f"names must have shape ({images.shape[0]},) (one per class), "
                             f"got {np.shape(names)}")
        return self

    def subset(self, classes) -> "ImageClasses":
        """The classes at the integer indices ``classes``, in that order."""
        classes = np.asarray(classes, dtype=np.int64)
        return ImageClasses(self.images[classes], np.asarray(self.names)[classes])


class ImageSplit(NamedTuple):
    """Disjoint meta-training and meta-testing classes (and optionally validation classes).

    Attributes
    ----------
    train, test : ImageClasses
    validation : ImageClasses or None
    description : str
        Where the classes come from and how they were split, e.g.
        ``"omniglot maml-split resize=nearest"`` or ``"glyphs seed=0"``.
    """

    train: ImageClasses
    test: ImageClasses
    validation: ImageClasses | None
    description: str


def with_rotations(data: ImageClasses) -> ImageClasses:
    """Each class and its rotations by 90, 180 and 270 degrees as four classes.

    Finn et al. 2017 (section 5.2), after Santoro et al. 2016, augment the
    meta-training characters this way. Rotation is
    counter-clockwise (``np.rot90``); the classes are ordered class-major:
    ``[c0, c0+90, c0+180, c0+270, c1, ...]``, named ``name/rot090`` etc.

    Returns an ``ImageClasses`` with ``4 * C`` classes.
    """
    data = data.checked()
    images = np.stack([np.rot90(data.images, k, axes=(2, 3)) for k in range(4)], axis=1)
    names = np.array([f"{n}/rot{90 * k:03d}" for n in data.names for k in range(4)])
    return ImageClasses(np.ascontiguousarray(images.reshape(-1, *data.images.shape[1:])), names)
