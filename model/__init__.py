"""Math and networks of the neural parametric head model (no loops, no file I/O beyond checkpoints)."""

from model.errors import InputError, MissingDependencyError
from model.config import HeadConfig, preset
from model.head import DeformOutput, HeadLayer, HeadModel, HeadOutput
from model.checkpoint import load_checkpoint, load_official_mononphm, save_checkpoint

__all__ = ["InputError", "MissingDependencyError",
           "HeadConfig", "preset", "DeformOutput", "HeadLayer", "HeadModel", "HeadOutput",
           "load_checkpoint", "load_official_mononphm", "save_checkpoint"]
