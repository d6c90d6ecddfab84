"""N-way K-shot episodes from any ``ImageClasses`` (Omniglot or glyphs), as a ``TaskBatch``.

An episode (Vinyals et al. 2016; Finn et al. 2017, section 5.2) draws ``N``
distinct classes in random order -- class ``n`` of the episode gets label
``n`` -- then ``K + Q`` distinct drawings of each: the first ``K`` form the
support set, the other ``Q`` the query set.

Layout of one episode, class-major: support rows ``n*K .. n*K + K - 1`` are
class ``n`` (``y_support = [0]*K + [1]*K + ...``), query rows likewise with
``Q``. Images are flattened row by row to 784 floats with ink = 1.0 and
paper = 0.0 (the MAML reference's ``1 - pixel/255``; see ``images.py``).

Meta-training samples fresh episodes with an explicit ``rng``; evaluation
uses a fixed, seeded set of episodes (``evaluation_index``) so that every
method is scored on the same tasks.
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

import numpy as np

from .. import validation as val
from . import glyphs, omniglot
from .batch import TaskBatch
from .images import INK, SIDE, ImageClasses, ImageSplit

D_IN = SIDE * SIDE  # 784 inputs per image
EVAL_EPISODES = 600  # Finn et al. 2017 and Snell et al. 2017 average over 600 test episodes
EVAL_SEED = 0
SOURCES = ("auto", "omniglot", "omniglot-original", "glyphs")


class EpisodeIndex(NamedTuple):
    """Which drawings make each of ``T`` episodes; ``to_batch`` turns it into pixels.

    Attributes
    ----------
    classes : (T, N) int64
        Class indices into the ``ImageClasses``; ``classes[t, n]`` has label ``n``.
    drawings : (T, N, K + Q) int64
        Drawing indices of each class, distinct; the first ``K`` are the support set.
    k_shot : int
        ``K``.
    """

    classes: np.ndarray
    drawings: np.ndarray
    k_shot: int

    @property
    def n_episodes(self) -> int:
        return self.classes.shape[0]


def sample_index(data: ImageClasses, rng: np.random.Generator, n_way: int, k_shot: int, n_query: int,
                 n_episodes: int = 1) -> EpisodeIndex:
    """Draw the classes and drawings of ``n_episodes`` independent N-way K-shot episodes.

    Raises ``ValueError`` if ``n_way`` exceeds the classes available or
    ``k_shot + n_query`` the drawings per class, or if a count is not positive.
    """
    data = data.checked()
    rng = val.check_rng(rng)
    n_way, k_shot, n_query, n_episodes = (val.check_int(v, name, minimum=1) for v, name in (
        (n_way, "n_way"), (k_shot, "k_shot"), (n_query, "n_query"), (n_episodes, "n_episodes")))
    if n_way > data.n_classes:
        raise ValueError(f"n_way must be <= the {data.n_classes} classes available, got {n_way}")
    if k_shot + n_query > data.n_drawings:
        raise ValueError(f"k_shot + n_query must be <= the {data.n_drawings} drawings per class, "
                         f"got {k_shot} + {n_query} = {k_shot + n_query}")
    classes = np.stack([rng.choice(data.n_classes, n_way, replace=False) for _ in range(n_episodes)])
    order = np.broadcast_to(np.arange(data.n_drawings), (n_episodes, n_way, data.n_drawings))
    drawings = rng.permuted(order, axis=-1)[..., :k_shot + n_query]
    return EpisodeIndex(classes.astype(np.int64), np.ascontiguousarray(drawings, dtype=np.int64), k_shot)


def to_batch(data: ImageClasses, index: EpisodeIndex, dtype="float64") -> TaskBatch:
    """The pixels and labels of the episodes in ``index``.

    Returns
    -------
    TaskBatch with ``X_support (T, N*K, 784)``, ``y_support (T, N*K)`` int64,
    ``X_query (T, N*Q, 784)``, ``y_query (T, N*Q)`` int64; X in ``dtype``,
    ink = 1.0, paper = 0.0.
    """
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        kind = None
    if kind != "f":
        raise TypeError(f"dtype must be a floating-point type such as float64 or float32, got {dtype!r}")
    T, N, KQ = index.drawings.shape
    K, Q = index.k_shot, KQ - index.k_shot
    pixels = data.images[index.classes[:, :, None], index.drawings]  # (T, N, K + Q, 28, 28) uint8

    def flat(part):
        return np.ascontiguousarray(part.reshape(T, -1, D_IN), dtype=dtype) / INK

    labels = np.arange(N, dtype=np.int64)
    return TaskBatch(flat(pixels[:, :, :K]), np.tile(np.repeat(labels, K), (T, 1)),
                     flat(pixels[:, :, K:]), np.tile(np.repeat(labels, Q), (T, 1)))


def sample_episodes(data: ImageClasses, rng: np.random.Generator, n_way: int, k_shot: int, n_query: int,
                    n_episodes: int = 1, dtype="float64") -> TaskBatch:
    """``n_episodes`` fresh N-way K-shot episodes: ``to_batch(data, sample_index(...))``."""
    return to_batch(data, sample_index(data, rng, n_way, k_shot, n_query, n_episodes), dtype)


def evaluation_index(data: ImageClasses, n_way: int, k_shot: int, n_query: int,
                     n_episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED) -> EpisodeIndex:
    """A fixed set of evaluation episodes: the same ``seed`` and data give the same episodes.

    Stored as indices (a 20-way 5-shot set of 600 episodes would be 1.5 GB of
    float64 pixels); iterate over it with ``batches``.
    """
    seed = val.check_int(seed, "seed", minimum=0)
    return sample_index(data, np.random.default_rng(seed), n_way, k_shot, n_query, n_episodes)


def batches(data: ImageClasses, index: EpisodeIndex, batch_size: int, dtype="float64") -> Iterator[TaskBatch]:
    """The episodes of ``index`` in order, ``batch_size`` at a time (the last batch may be smaller)."""
    batch_size = val.check_int(batch_size, "batch_size", minimum=1)
    for i in range(0, index.n_episodes, batch_size):
        part = slice(i, i + batch_size)
        yield to_batch(data, EpisodeIndex(index.classes[part], index.drawings[part], index.k_shot), dtype)


def image_split(source: str = "auto", root=None, resize: str = "nearest",
                n_validation: int = 0) -> ImageSplit:
    """The meta-training / meta-testing classes of an image source.

    ``"omniglot"``: the MAML split (``omniglot.maml_split``); ``"omniglot-original"``:
    background vs evaluation (``omniglot.background_evaluation_split``);
    ``"glyphs"``: the generated family (``glyphs.glyph_split``). ``"auto"``:
    Omniglot if ``root`` or ``$TINYMETA_OMNIGLOT`` is given (a wrong folder is an
    error, not a fallback) or the archives are in the cache folder, else glyphs.
    The choice is in the split's ``description``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "auto":
        configured = root is not None or bool(os.environ.get(omniglot.ENV_ROOT))
        folder = omniglot.cache_dir() / "omniglot"
        in_cache = all((folder / spec[0]).is_file() for spec in omniglot.ARCHIVES.values())
        source = "omniglot" if configured or in_cache else "glyphs"
    if source == "glyphs":
        return glyphs.glyph_split(n_validation=n_validation)
    if source == "omniglot-original":
        if n_validation:
            raise ValueError(f"n_validation must be 0 for the background/evaluation split, "
                             f"got {n_validation}")
        return omniglot.background_evaluation_split(root, resize)
    return omniglot.maml_split(root, resize, n_validation)
