"""Tasks: meta-batches of few-shot problems. Imports nothing from the rest of tinymeta
but ``validation``.

Image classification: ``omniglot`` (the official archives) and ``glyphs`` (a
generated family, no download) both give ``ImageClasses``; ``episodes`` turns
them into N-way K-shot ``TaskBatch``es.
"""
from . import episodes, glyphs, omniglot
from .batch import TaskBatch
from .episodes import EpisodeIndex, evaluation_index, image_split, sample_episodes
from .images import ImageClasses, ImageSplit, with_rotations

__all__ = ["TaskBatch", "ImageClasses", "ImageSplit", "EpisodeIndex", "episodes", "glyphs", "omniglot",
           "image_split", "sample_episodes", "evaluation_index", "with_rotations"]
