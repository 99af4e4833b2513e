"""From a face crop to NPHM codes: the feed-forward prediction and the single-image fit.

:class:`Models` holds the four networks of the method (head model, the two geometric encoders E_n and E_p,
the Pix2NPHM regressor) and loads them from checkpoints (default: the weights shipped in
``model/weights/``). :func:`predict` runs the encoders and the regressor on a batch of crops;
:func:`fit_image` adds the test-time optimisation of :mod:`tracker.tto` for one crop.

Conventions: crops are RGB uint8 ``[H, W, 3]``; the networks see them resized to the encoders' input size
``S`` (square). Intrinsics ``K`` are in pixels of the image they belong to, pixel centres at integer
coordinates (``train.camera``); :func:`resize_intrinsics` moves them between sizes. When the camera of a
crop is unknown (a real photo), :func:`default_crop_intrinsics` assumes a focal length of
``DEFAULT_FOCAL_FACTOR`` crop sides, the median of the synthetic training renders (2.4 at 128 px: a
phone or webcam at arm's length, face filling the crop).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.checkpoint import default_weights, load_checkpoint
from model.codes import CodeStatistics
from model.errors import InputError
from model.arkit import ArkitRig, rig_for_head
from model.arkit_regressor import ArkitRegressor, default_arkit_regressor
from model.identity_prior import IdentityPrior, default_identity_prior
from model.forward_deformation import ForwardDeformation, forward_for_head
from model.head import HeadLayer
from model.landmarks import LandmarkAssets, load_landmark_assets
from model.regressor import Regressor, load_regressor
from model.topology import FixedTopology
from model.vit import GeometryEncoder, load_encoder
from tracker.bake import head_bbox, neutral_expression
from tracker.tto import TTOResult, TTOStage, TTOTargets, default_stages, init_pose_from_point_map, optimise

#: Names of the shipped weights (``model/weights/<name>.pt``).
WEIGHTS = {"head": "head_default", "normals": "encoder_normals", "points": "encoder_points",
           "regressor": "regressor_default"}
LANDMARKS = "landmarks_default"
"""The shipped landmark assets of the shipped head (``model/weights/landmarks_default.npz``)."""
DEFAULT_FOCAL_FACTOR = 2.4
"""Assumed focal length of a crop of unknown camera, in crop sides (module docstring)."""

PathLike = str | os.PathLike


@dataclass
class Models:
    """The networks of the method, in eval mode on one device."""

    layer: HeadLayer
    codes: dict[str, Tensor]
    """The head checkpoint's training code tables (``z_id``, ``z_ex``, ``is_neutral``; may be empty)."""
    head_meta: dict
    normal_encoder: Optional[GeometryEncoder]
    point_encoder: Optional[GeometryEncoder]
    regressor: Optional[Regressor]
    """The image path's networks; ``None`` when loaded without them (``Models.load(encoders=False)``: the
    landmark tracker does not use them)."""
    head_path: str = "default"
    landmarks: Optional[LandmarkAssets] = None
    """Landmark embedding and identity map of this head (:mod:`model.landmarks`); the landmark tracker needs
    them (``nphm-train landmarks`` builds them for another head)."""
    forward: Optional[ForwardDeformation] = None
    """This head's forward deformation (:mod:`model.forward_deformation`): it poses the landmarks, the baked
    mesh and the encoder path's TTO mesh; ``None``: they are posed by inverting the backward field."""
    arkit_rig: Optional[ArkitRig] = None
    """This head's ARKit rig asset (:mod:`model.arkit`): the personalised ARKit rig is decoded from it."""
    arkit_regressor: Optional[ArkitRegressor] = None
    """The landmark -> ARKit-52 regressor (:mod:`model.arkit_regressor`): the ARKit curves; ``None``: they are
    solved from the tracked expression (:class:`tracker.arkit.CurveSolver`)."""
    identity_prior: Optional[IdentityPrior] = None
    """The learned identity prior (:mod:`model.identity_prior`) of these landmark assets: where the landmark
    tracker's identity starts and shrinks to; ``None`` for other assets (the landmark map's origin)."""
    _code_stats: Optional[CodeStatistics] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.regressor is None and self.normal_encoder is None and self.point_encoder is None:
            return
        if self.regressor is None or self.normal_encoder is None or self.point_encoder is None:
            raise InputError("Models: give the two encoders and the regressor together, or none of them")
        rc = self.regressor.cfg
        hc = self.layer.cfg
        if rc.id_dim != hc.id_dim or rc.expr_dim != hc.expr_dim:
            raise InputError(f"regressor predicts z_id [{rc.id_dim}] and z_ex [{rc.expr_dim}] but the head model "
                             f"takes [{hc.id_dim}] and [{hc.expr_dim}]: they were not trained together")
        if self.normal_encoder.cfg.target != "normals" or self.point_encoder.cfg.target != "points":
            raise InputError("Models: normal_encoder must predict normals and point_encoder the point map")
        if self.normal_encoder.cfg.image_size != self.point_encoder.cfg.image_size:
            raise InputError("Models: the two encoders take different input sizes "
                             f"({self.normal_encoder.cfg.image_size} and {self.point_encoder.cfg.image_size})")

    @classmethod
    def load(cls, head: Optional[PathLike] = None, normal_encoder: Optional[PathLike] = None,
             point_encoder: Optional[PathLike] = None, regressor: Optional[PathLike] = None,
             device: str | torch.device = "cpu", landmarks: Optional[PathLike] = None,
             encoders: bool = True) -> "Models":
        """Load the four checkpoints and the landmark assets; ``None`` takes the shipped default of each
        (``WEIGHTS``, ``LANDMARKS``); with another head and no ``landmarks``, there are none.
        ``encoders=False`` leaves out the image path's encoders and regressor (0.1-0.2 s of loading)."""
        head_path = Path(head) if head is not None else default_weights(WEIGHTS["head"])
        layer, codes, meta = load_checkpoint(head_path)
        enc_n = enc_p = reg = None
        if encoders:
            enc_n, _ = load_encoder(normal_encoder if normal_encoder is not None
                                    else default_weights(WEIGHTS["normals"]))
            enc_p, _ = load_encoder(point_encoder if point_encoder is not None else default_weights(WEIGHTS["points"]))
            reg, _ = load_regressor(regressor if regressor is not None else default_weights(WEIGHTS["regressor"]))
        if landmarks is not None:
            assets = load_landmark_assets(landmarks)
        elif head is None:
            assets = load_landmark_assets(default_weights(LANDMARKS, ".npz"))
        else:
            assets = None
        models = cls(layer=layer, codes=codes, head_meta=meta, normal_encoder=enc_n, point_encoder=enc_p,
                     regressor=reg, head_path="default" if head is None else str(head), landmarks=assets,
                     forward=forward_for_head(head), arkit_rig=rig_for_head(head),
                     arkit_regressor=default_arkit_regressor())
        prior = default_identity_prior() if assets is not None else None
        if prior is not None and prior.fits(assets.landmark_map):
            models.identity_prior = prior
        return models.to(device)

    def to(self, device: str | torch.device) -> "Models":
        device = torch.device(device)
        for module in (self.layer, self.normal_encoder, self.point_encoder, self.regressor, self.forward):
            if module is None:
                continue
            module.to(device).eval()
            for p in module.parameters():
                p.requires_grad_(False)
        self.codes = {k: v.to(device) for k, v in self.codes.items()}
        self._code_stats = None  # recomputed on the new device when asked for
        return self

    @property
    def device(self) -> torch.device:
        return next(self.layer.parameters()).device

    @property
    def image_size(self) -> int:
        """Side ``S`` of the square network input, pixels."""
        if self.normal_encoder is None:
            raise InputError("these Models were loaded without the image encoders (Models.load(encoders=True))")
        return self.normal_encoder.cfg.image_size

    @property
    def bbox(self) -> tuple[list[float], list[float]]:
        """``(lo, hi)`` corners of the marching-cubes box, model units."""
        return head_bbox(self.head_meta)

    def neutral_expression(self) -> Tensor:
        """``[1, D_ex]``: mean training code of the neutral expressions (zeros when the tables are absent)."""
        return neutral_expression(self.codes, self.layer.cfg.expr_dim).to(self.device)[None]

    @property
    def code_statistics(self) -> Optional[CodeStatistics]:
        """Statistics of the head's training codes (:mod:`model.codes`), ``None`` without code tables
        (computed once per device)."""
        if self._code_stats is None:
            stats = CodeStatistics.maybe(self.codes)
            self._code_stats = stats.to(self.device) if stats is not None else None
        return self._code_stats


# --- images and cameras ----------------------------------------------------------------------------------

def to_network_images(crops: np.ndarray | Sequence[np.ndarray], size: int,
                      device: str | torch.device = "cpu") -> Tensor:
    """RGB uint8 crops ``[H, W, 3]`` or ``[B, H, W, 3]`` -> ``[B, 3, size, size]`` float in [0, 1]
    (antialiased bilinear resize)."""
    arr = np.stack(list(crops)) if not isinstance(crops, np.ndarray) else crops
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"crops: expected [B, H, W, 3] or [H, W, 3] RGB, got {tuple(arr.shape)}")
    x = torch.from_numpy(np.array(arr, copy=True)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def resize_intrinsics(K: np.ndarray | Tensor, from_size: float, to_size: float) -> np.ndarray:
    """Intrinsics of an image of side ``from_size`` for the same image resized to ``to_size``
    (pixel centres at integers: ``u' = (u + 0.5) * s - 0.5``)."""
    K = np.asarray(K, dtype=np.float64).copy()
    s = float(to_size) / float(from_size)
    K[:2, :2] *= s
    K[:2, 2] = (K[:2, 2] + 0.5) * s - 0.5
    return K


def default_crop_intrinsics(size: int, focal_factor: float = DEFAULT_FOCAL_FACTOR) -> np.ndarray:
    """``[3, 3]`` intrinsics of a square crop of side ``size`` whose camera is unknown: focal
    ``focal_factor * size`` pixels, principal point at the crop centre."""
    f = focal_factor * size
    c = (size - 1) / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


# --- feed-forward ----------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """Feed-forward output for a batch of ``B`` crops at the network size ``S``."""

    z_id: Tensor  # [B, D_id]
    z_ex: Tensor  # [B, D_ex]
    normals: Tensor  # [B, S, S, 3] camera-space unit normals (OpenCV)
    point_map: Tensor  # [B, S, S, 3] canonical points, model units
    mask: Tensor  # [B, S, S] probability that the head is seen (mean of both encoders)
    seconds: float

    def targets(self, i: int, K: np.ndarray | Tensor, threshold: float = 0.5) -> TTOTargets:
        """TTO targets of crop ``i`` with intrinsics ``K`` ``[3, 3]`` in network pixels."""
        K = torch.as_tensor(np.asarray(K), dtype=self.normals.dtype, device=self.normals.device)
        return TTOTargets(normals=self.normals[i], point_map=self.point_map[i], mask=self.mask[i] > threshold, K=K)


@torch.no_grad()
def predict(models: Models, crops: np.ndarray | Sequence[np.ndarray], plausible: bool = True) -> Prediction:
    """Encoders + regressor on RGB uint8 crops ``[B, H, W, 3]`` (or one ``[H, W, 3]``).

    With ``plausible`` (default) the regressor's codes are shrunk onto the largest radius of the head
    model's training codes (:meth:`model.codes.CodeStatistics.project`; no-op for a head without code
    tables): a code beyond them decodes to stray surfaces. Measured with the shipped regressor, whose
    codes lie 37 (identity) and 15 (expression) whitened radii out: single-view posed Chamfer 2.70 ->
    2.39 mm (README "Measured").
    """
    start = time.perf_counter()
    x = to_network_images(crops, models.image_size, models.device)  # [B, 3, S, S]
    out_n = models.normal_encoder(x)
    out_p = models.point_encoder(x)
    codes = models.regressor(out_n.tokens, out_p.tokens)
    z_id, z_ex = codes.z_id, codes.z_ex  # [B, D_id], [B, D_ex]
    stats = models.code_statistics if plausible else None
    if stats is not None:
        z_id, z_ex = stats.project(z_id, z_ex)
    mask = 0.5 * (torch.sigmoid(out_n.mask_logits) + torch.sigmoid(out_p.mask_logits))  # [B, S, S]
    return Prediction(z_id=z_id, z_ex=z_ex, normals=out_n.normals.permute(0, 2, 3, 1),
                      point_map=out_p.points.permute(0, 2, 3, 1), mask=mask, seconds=time.perf_counter() - start)


# --- single-image fit ------------------------------------------------------------------------------------

@dataclass
class ImageFit:
    """Codes and pose of one crop: feed-forward, then (optionally) after test-time optimisation."""

    ff_z_id: Tensor  # [1, D_id] regressor output
    ff_z_ex: Tensor  # [1, D_ex]
    z_id: Tensor  # [1, D_id] after TTO (== ff_z_id without TTO)
    z_ex: Tensor  # [1, D_ex]
    pose: Tensor  # [6] model -> camera (rotvec radians, t model units), network-size camera
    K: np.ndarray  # [3, 3] intrinsics in network pixels
    prediction: Prediction  # the encoders' maps for this crop (batch of 1)
    seconds_ff: float
    seconds_tto: float
    steps: int  # TTO steps run (0 without TTO)
    tto: Optional[TTOResult] = None


def start_topology(models: Models, z_id: Tensor, resolution: int) -> FixedTopology:
    """The canonical mesh of identity ``z_id [1, D_id]`` at the neutral expression (marching cubes)."""
    lo, hi = models.bbox
    with torch.no_grad():
        return FixedTopology.extract(models.layer, z_id, models.neutral_expression(), lo, hi, resolution)


def fit_image(models: Models, crop: np.ndarray, K: Optional[np.ndarray] = None, tto: bool = True,
              steps: int = 100, mesh_resolution: int = 64, stages: Optional[list[TTOStage]] = None,
              prediction: Optional[Prediction] = None) -> ImageFit:
    """Feed-forward codes of one RGB uint8 crop ``[H, W, 3]``, refined by TTO when ``tto``.

    Args:
        K: ``[3, 3]`` intrinsics of the crop in its own pixels; ``None``: :func:`default_crop_intrinsics`.
        steps: TTO steps in all (:func:`tracker.tto.default_stages`), ignored when ``stages`` is given.
        mesh_resolution: marching-cubes resolution of the canonical mesh the TTO optimises.
        prediction: a precomputed :func:`predict` output for this crop (batch of 1).
    Without TTO the pose is still estimated, from the predicted point map alone.
    """
    if crop.ndim != 3 or crop.shape[-1] != 3:
        raise InputError(f"crop: expected [H, W, 3] RGB, got {tuple(crop.shape)}")
    size = models.image_size
    K_net = resize_intrinsics(default_crop_intrinsics(crop.shape[1]) if K is None else K, crop.shape[1], size)
    pred = prediction if prediction is not None else predict(models, crop)
    targets = pred.targets(0, K_net)
    z_id0, z_ex0 = pred.z_id[:1], pred.z_ex[:1]
    start = time.perf_counter()
    pose0 = init_pose_from_point_map(targets) if int(targets.mask.sum()) >= 6 else None
    if pose0 is None:
        raise InputError("the encoders see no head in this crop (empty predicted mask)")
    if not tto:
        return ImageFit(z_id0, z_ex0, z_id0, z_ex0, pose0, K_net, pred, pred.seconds,
                        time.perf_counter() - start, 0)
    topology = start_topology(models, z_id0, mesh_resolution)
    result = optimise(models.layer, topology, targets, z_id0, z_ex0, pose0,
                      stages if stages is not None else default_stages(steps), forward=models.forward)
    return ImageFit(z_id0, z_ex0, result.z_id, result.z_ex, result.pose, K_net, pred, pred.seconds,
                    time.perf_counter() - start, result.steps_run, result)
