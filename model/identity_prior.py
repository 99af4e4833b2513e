"""A learned identity prior: where the tracker's identity starts and what it is pulled towards.

The landmark tracker fits whitened identity coordinates ``alpha`` of the head's
:class:`model.landmarks.LandmarkMap` (0: the mean of the codes the map was fitted to). That point is not the
population's average face. This module gives the fit a better centre, in two parts:

- ``centre [r]``: the coordinates of the head model's best code for ICT-FaceKit's mean neutral head
  (registered to its surface by ``nphm-train identity-prior``). With no regressor, or one photo, the identity
  starts and shrinks here.
- a regressor of the ICT identity weights ``w [100]`` from the detector's 478 landmarks of one frame
  (similarity-normalised, :func:`model.landmark_regressor.normalise_landmarks`), trained on ICT renders through
  the real detector, and a linear map ``alpha = centre + w @ ict_to_alpha`` fitted to the head model's
  training identities (their ICT weights and codes). :meth:`IdentityPrior.pooled` averages the per-frame
  predictions of a clip: the identity prior of that clip.

Trained on ICT heads (identity weights ~ N(0, 1)); the regression is the posterior mean of one frame, so it
already shrinks towards the centre where a frame says little.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from model.errors import InputError
from model.landmark_regressor import landmark_features, landmark_mlp

FORMAT = "nphm-track.identity-prior"
FORMAT_VERSION = 1
DEFAULT_NAME = "identity_prior_default"


@dataclass(frozen=True)
class IdentityPriorConfig:
    """Sizes of :class:`IdentityPrior`."""

    n_landmarks: int = 478
    n_ict: int = 100
    """ICT-FaceKit identity modes predicted."""
    rank: int = 96
    """Whitened identity coordinates of the landmark map it belongs to."""
    hidden: int = 512
    layers: int = 3
    """Hidden blocks of the reader; 0: a linear reader of the normalised landmarks (fitted in closed form by
    ridge regression, :func:`train.identity_prior.fit_linear_reader`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class IdentityPrior(nn.Module):
    """Landmarks ``[..., L, 2]`` (pixels) -> ICT identity weights ``[..., n_ict]``; :meth:`alpha_of` maps those
    to the landmark map's coordinates.

    Buffers: ``centre [r]``, ``ict_to_alpha [n_ict, r]``, ``map_check [2]`` (the sum of the landmark map's
    ``y0`` and ``z0`` it was made for: :meth:`fits` tells whether a map is that one).
    """

    def __init__(self, cfg: IdentityPriorConfig = IdentityPriorConfig()):
        super().__init__()
        self.cfg = cfg
        self.body = landmark_mlp(cfg.n_landmarks, cfg.hidden, cfg.layers)
        self.out = nn.Linear(cfg.hidden if cfg.layers else 2 * cfg.n_landmarks, cfg.n_ict)
        self.register_buffer("centre", torch.zeros(cfg.rank))
        self.register_buffer("ict_to_alpha", torch.zeros(cfg.n_ict, cfg.rank))
        self.register_buffer("map_check", torch.zeros(2))

    def forward(self, landmarks: Tensor) -> Tensor:
        return self.out(self.body(landmark_features(landmarks, self.cfg.n_landmarks)))

    def alpha_of(self, w: Tensor) -> Tensor:
        """Landmark-map coordinates ``[..., r]`` of ICT identity weights ``[..., n_ict]``."""
        if w.shape[-1] != self.cfg.n_ict:
            raise InputError(f"ICT identity weights must be [..., {self.cfg.n_ict}], got {tuple(w.shape)}")
        return self.centre + w.float() @ self.ict_to_alpha

    @torch.no_grad()
    def pooled(self, landmarks: Tensor) -> Tensor:
        """``[r]`` the identity prior of one face seen in frames ``[T, L, 2]``: the mean per-frame prediction,
        mapped to the landmark map's coordinates."""
        if landmarks.dim() != 3 or len(landmarks) == 0:
            raise InputError(f"pooled needs landmarks [T >= 1, L, 2], got {tuple(landmarks.shape)}")
        return self.alpha_of(self(landmarks).mean(0))

    def fits(self, landmark_map: Any, tol: float = 1e-3) -> bool:
        """Whether ``landmark_map`` (:class:`model.landmarks.LandmarkMap`) is the map this prior was made for."""
        return landmark_map.rank == self.cfg.rank and bool(
            torch.allclose(map_check_of(landmark_map), self.map_check, rtol=tol, atol=tol))


def map_check_of(landmark_map: Any) -> Tensor:
    """The ``map_check`` buffer for a landmark map (:meth:`IdentityPrior.fits`)."""
    return torch.stack([landmark_map.y0.double().sum(), landmark_map.z0.double().sum()]).float()


def save_identity_prior(path: str | Path, module: IdentityPrior, meta: Optional[dict] = None) -> Path:
    from model.checkpoint import save_module_checkpoint

    return save_module_checkpoint(path, module, module.cfg.to_dict(), FORMAT, FORMAT_VERSION, meta)


def load_identity_prior(path: str | Path) -> tuple[IdentityPrior, dict]:
    """The module (eval mode, float32) and the checkpoint's meta; :class:`InputError` for another file."""
    from model.checkpoint import load_module_checkpoint

    return load_module_checkpoint(path, FORMAT, FORMAT_VERSION, IdentityPriorConfig, IdentityPrior,
                                  "identity prior")


def default_identity_prior() -> Optional[IdentityPrior]:
    """The shipped prior (``model/weights/identity_prior_default.pt``), or ``None`` if absent."""
    from model.checkpoint import WEIGHTS_DIR

    path = WEIGHTS_DIR / f"{DEFAULT_NAME}.pt"
    return load_identity_prior(path)[0] if path.is_file() else None
