"""Math and networks of the neural parametric head model (no loops, no file I/O beyond checkpoints)."""

from model.errors import InputError, MissingDependencyError

__all__ = ["InputError", "MissingDependencyError"]
