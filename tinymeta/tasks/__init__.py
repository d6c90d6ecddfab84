"""Tasks: meta-batches of few-shot problems. Imports nothing from the rest of tinymeta
but ``validation``."""
from .batch import TaskBatch

__all__ = ["TaskBatch"]
