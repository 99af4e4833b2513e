"""ARKit-52 curves straight from the detector's landmarks: a small MLP trained on the synthetic head world.

Input: MediaPipe Face Mesh's 478 landmarks (frame pixels) of one face, similarity-normalised
(:func:`model.landmark_regressor.normalise_landmarks`: centroid 0, RMS radius 1, the eye corners level).
Output: the 52 ARKit weights in [0, 1] (Apple's order, :data:`model.arkit.ARKIT_NAMES`; tongueOut is always 0).

Trained by ``nphm-train arkit-regressor`` on ICT-FaceKit renders of random identities, expressions and head
poses, each run through the real detector (:mod:`train.arkit_regressor`), so it learns the detector's own
habits (lids that under-close, lips that part early) rather than the head model's. The head pose is left to
the network: the training renders turn the head as the tracked videos do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from model.arkit import ARKIT_NAMES, NOT_MODELLED
from model.landmark_regressor import landmark_features, landmark_mlp

FORMAT = "nphm-track.arkit-regressor"
FORMAT_VERSION = 1
DEFAULT_NAME = "arkit_regressor_default"


@dataclass(frozen=True)
class ArkitRegressorConfig:
    """Sizes of :class:`ArkitRegressor`."""

    n_landmarks: int = 478
    hidden: int = 512
    layers: int = 3
    """Hidden layers (each ``hidden`` units, LayerNorm + GELU)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ArkitRegressor(nn.Module):
    """Landmarks ``[..., L, 2]`` (pixels) -> ARKit weights ``[..., 52]`` in [0, 1]."""

    def __init__(self, cfg: ArkitRegressorConfig = ArkitRegressorConfig()):
        super().__init__()
        self.cfg = cfg
        self.body = landmark_mlp(cfg.n_landmarks, cfg.hidden, cfg.layers)
        self.out = nn.Linear(cfg.hidden, len(ARKIT_NAMES))
        self.register_buffer("modelled", torch.tensor([n not in NOT_MODELLED for n in ARKIT_NAMES]),
                             persistent=False)

    def forward(self, landmarks: Tensor) -> Tensor:
        x = landmark_features(landmarks, self.cfg.n_landmarks)
        return torch.sigmoid(self.out(self.body(x))) * self.modelled


def save_arkit_regressor(path: str | Path, module: ArkitRegressor, meta: Optional[dict] = None) -> Path:
    from model.checkpoint import save_module_checkpoint

    return save_module_checkpoint(path, module, module.cfg.to_dict(), FORMAT, FORMAT_VERSION, meta)


def load_arkit_regressor(path: str | Path) -> tuple[ArkitRegressor, dict]:
    """The module (eval mode, float32) and the checkpoint's meta; :class:`InputError` for another file."""
    from model.checkpoint import load_module_checkpoint

    return load_module_checkpoint(path, FORMAT, FORMAT_VERSION, ArkitRegressorConfig, ArkitRegressor,
                                  "ARKit regressor")


def default_arkit_regressor() -> Optional[ArkitRegressor]:
    """The shipped regressor (``model/weights/arkit_regressor_default.pt``), or ``None`` if absent."""
    from model.checkpoint import WEIGHTS_DIR

    path = WEIGHTS_DIR / f"{DEFAULT_NAME}.pt"
    return load_arkit_regressor(path)[0] if path.is_file() else None
