r"""Image task families for the training loop: N-way K-shot episodes of Omniglot or glyphs.

The training loop asks every task family for two things (``sinusoid`` is
one such family as a module): ``sample(rng, n_tasks, n_support, n_query,
dtype)``, fresh training tasks, and ``fixed_tasks(split, n_support,
n_tasks, n_query, dtype)``, a fixed seeded set for validation or test. Both
return a record whose ``batch`` the algorithms consume.

An ``ImageFamily`` holds one ``ImageSplit`` (meta-training, validation and
test classes, disjoint) and the episode shape. Counts are per class:
``n_support = K`` and ``n_query = Q`` drawings of each of the ``N`` classes,
so a training episode has ``N K`` support and ``N Q`` query images.
Training episodes have ``train_ways`` classes (Prototypical Networks train
with more ways than they test, Snell et al. 2017, section 3.1); fixed
episodes have ``ways``.

Fixed sets are stored as indices (``episodes.EpisodeIndex``) and turned
into pixels ``EVAL_CHUNK`` episodes at a time: 600 float64 episodes of
20-way 5-shot with 15 queries per class would take 1.5 GB at once.

Splits (REPRODUCTION-NOTES, Omniglot):

* ``"maml"``: 1200 characters meta-train (with their rotations by 90, 180,
  270 degrees as extra classes), 423 test, unrotated (``omniglot.maml_split``);
  the last ``VALIDATION_CLASSES`` of the 1200 are held out, unrotated, as
  validation characters, as the MAML reference code does.
* ``"original"``: Lake et al.'s background (964) against evaluation (659)
  characters; ``VALIDATION_CLASSES`` background characters, ranked by hash as
  in the MAML split, are held out for validation and the rest are rotated.
* glyphs: 1200 generated classes meta-train, 100 validate, 423 test (no
  rotations: the family has as many classes as asked).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .. import validation as val
from . import episodes, glyphs, omniglot
from .images import ImageClasses, ImageSplit, with_rotations

SOURCES = ("omniglot", "glyphs")
SPLITS = ("maml", "original")
VALIDATION_CLASSES = 100  # the MAML reference code keeps 100 of its 1200 training characters for validation
EVAL_CHUNK = 50  # fixed episodes turned into pixels at a time
SPLIT_SEEDS = {"test": episodes.EVAL_SEED, "val": episodes.EVAL_SEED + 1}  # the fixed sets: never change


@lru_cache(maxsize=2)
def load_split(source: str, split: str = "maml", root: str | None = None, resize: str = "nearest") -> ImageSplit:
    """The classes of ``source`` split for meta-training (memoised: decoding or rendering takes seconds).

    ``source``: "omniglot" (the archives in ``root``, else ``$TINYMETA_OMNIGLOT``, else the cache
    folder; see ``omniglot.find_archive``) or "glyphs". ``split``: "maml" or "original"
    (Omniglot only). Every split has ``VALIDATION_CLASSES`` validation classes.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "glyphs":
        if split != "maml":
            raise ValueError(f"split must be 'maml' for glyphs (the 'original' split is Omniglot's "
                             f"background/evaluation), got {split!r}")
        return glyphs.glyph_split(n_validation=VALIDATION_CLASSES)
    if split == "maml":
        return omniglot.maml_split(root, resize, VALIDATION_CLASSES)
    background = omniglot.load("background", root, resize)
    evaluation = omniglot.load("evaluation", root, resize)
    rank = sorted(range(background.n_classes),
                  key=lambda c: hashlib.sha256(f"{omniglot.MAML_SPLIT_SEED}:{background.names[c]}".encode()).digest())
    held = sorted(rank[-VALIDATION_CLASSES:])
    kept = sorted(rank[:-VALIDATION_CLASSES])
    return ImageSplit(with_rotations(background.subset(kept)), evaluation, background.subset(held),
                      f"omniglot background/evaluation resize={resize} rotations=True "
                      f"n_validation={VALIDATION_CLASSES}")


class EpisodeStream:
    """The episodes of a fixed ``EpisodeIndex`` as ``TaskBatch``es of at most ``chunk`` episodes.

    Iterable any number of times (each pass rebuilds the pixels); ``n_tasks``
    is the number of episodes, as for a ``TaskBatch``.
    """

    def __init__(self, data: ImageClasses, index: episodes.EpisodeIndex, dtype="float64", chunk=EVAL_CHUNK):
        self.data, self.index, self.dtype = data, index, dtype
        self.chunk = val.check_int(chunk, "chunk", minimum=1)

    @property
    def n_tasks(self) -> int:
        return self.index.n_episodes

    def __iter__(self):
        return episodes.batches(self.data, self.index, self.chunk, self.dtype)

    def task(self, i: int) -> tuple:
        """``(X_support, y_support, X_query, y_query)`` of episode ``i``."""
        one = episodes.EpisodeIndex(self.index.classes[i:i + 1], self.index.drawings[i:i + 1], self.index.k_shot)
        return episodes.to_batch(self.data, one, self.dtype).task(0)


class ImageEpisodes(NamedTuple):
    """Episodes and where their pixels come from.

    Attributes
    ----------
    batch : TaskBatch (sampled episodes) or EpisodeStream (fixed episodes)
    data : ImageClasses the episodes are drawn from
    index : EpisodeIndex, which classes and drawings make each episode
    """

    batch: object
    data: ImageClasses
    index: episodes.EpisodeIndex


def _counts(n_tasks, n_support, n_query, data: ImageClasses) -> tuple:
    """The counts checked under the names the caller used (the sampler calls them n_episodes, k_shot)."""
    n_tasks, n_support, n_query = (val.check_int(v, name, minimum=1) for v, name in
                                   ((n_tasks, "n_tasks"), (n_support, "n_support"), (n_query, "n_query")))
    if n_support + n_query > data.n_drawings:
        raise ValueError(f"n_support + n_query must be <= the {data.n_drawings} drawings per class, "
                         f"got {n_support} + {n_query} = {n_support + n_query}")
    return n_tasks, n_support, n_query


class ImageFamily:
    """N-way K-shot classification episodes of one image split.

    Parameters
    ----------
    split : ImageSplit (with validation classes)
    ways : int, ``N`` of the fixed (validation and test) episodes
    train_ways : int, ``N`` of the training episodes (default ``ways``)
    """

    def __init__(self, split: ImageSplit, ways: int, train_ways: int | None = None):
        if not isinstance(split, ImageSplit):
            raise TypeError(f"split must be a tinymeta.tasks.ImageSplit, got {type(split).__name__}")
        if split.validation is None:
            raise ValueError("split must have validation classes (split.validation is None)")
        self.split = split
        self.ways = val.check_int(ways, "ways", minimum=2)
        self.train_ways = self.ways if train_ways is None else val.check_int(train_ways, "train_ways", minimum=2)
        for name, data, n in (("train", split.train, self.train_ways), ("validation", split.validation, self.ways),
                              ("test", split.test, self.ways)):
            if n > data.n_classes:
                raise ValueError(f"{'train_ways' if name == 'train' else 'ways'} must be <= the "
                                 f"{data.n_classes} {name} classes of {split.description}, got {n}")

    @property
    def n_drawings(self) -> int:
        return self.split.train.n_drawings

    def sample(self, rng, n_tasks, n_support, n_query, dtype="float64") -> ImageEpisodes:
        """``n_tasks`` fresh ``train_ways``-way training episodes, ``n_support`` + ``n_query`` drawings per class."""
        n_tasks, n_support, n_query = _counts(n_tasks, n_support, n_query, self.split.train)
        index = episodes.sample_index(self.split.train, rng, self.train_ways, n_support, n_query, n_tasks)
        return ImageEpisodes(episodes.to_batch(self.split.train, index, dtype), self.split.train, index)

    def fixed_tasks(self, split="test", n_support=1, n_tasks=episodes.EVAL_EPISODES, n_query=15,
                    dtype="float64") -> ImageEpisodes:
        """The fixed, seeded ``ways``-way episodes of ``split`` ("test" or "val"), streamed.

        The same split, shape and count give the same episodes for every
        algorithm and run; ``batch`` is an ``EpisodeStream``.
        """
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
        data = self.split.test if split == "test" else self.split.validation
        n_tasks, n_support, n_query = _counts(n_tasks, n_support, n_query, data)
        episodes.check_dtype(dtype)  # now, not when the stream is first read
        index = episodes.evaluation_index(data, self.ways, n_support, n_query, n_tasks, SPLIT_SEEDS[split])
        return ImageEpisodes(EpisodeStream(data, index, dtype), data, index)

