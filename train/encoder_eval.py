"""Held-out evaluation of the geometric encoders: normal angular error (degrees) and point-map L1 (mm) over
the face, overall and by |head yaw|.

Definitions (per image, over the ground-truth face mask ``face_mask``; images without face pixels are
skipped; a bin's figure is the mean over its images, so every image counts once):

- normals: mean over face pixels of ``acos(clamp(<n_pred, n_gt>, -1, 1))`` in degrees (``n_pred``
  renormalised);
- points: mean over face pixels and the 3 coordinates of ``|p_pred - p_gt|`` in mm (model units x 250,
  ``train.frame.UNITS_PER_CM``), i.e. ``torch.nn.functional.l1_loss`` restricted to the face;
- mask IoU of the predicted head mask (logit > 0) against the ground-truth head mask.

Yaw bins (``YAW_BINS``) are over ``|yaw|`` in degrees: 0-15, 15-30, 30-45, 45-60, 60+ (lower edge
inclusive).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.errors import InputError
from model.vit import GeometryEncoder
from train.encoder_data import RenderSet
from train.frame import UNITS_PER_CM

MM_PER_UNIT = 10.0 / UNITS_PER_CM  # 250 mm per model unit
YAW_BINS = ((0.0, 15.0), (15.0, 30.0), (30.0, 45.0), (45.0, 60.0), (60.0, math.inf))


def yaw_bin_name(lo: float, hi: float) -> str:
    return f"{lo:.0f}+" if math.isinf(hi) else f"{lo:.0f}-{hi:.0f}"


def _check_maps(pred: Tensor, gt: Tensor, mask: Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != gt.shape:
        raise InputError(f"expected pred and gt maps [B, 3, H, W] alike, got {list(pred.shape)} and {list(gt.shape)}")
    if tuple(mask.shape) != (pred.shape[0], *pred.shape[2:]):
        raise InputError(f"expected mask [B, H, W] = {[pred.shape[0], *pred.shape[2:]]}, got {list(mask.shape)}")


def angular_error_deg(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Per-image mean angle (degrees) between normals ``pred, gt [B, 3, H, W]`` over ``mask [B, H, W]``;
    NaN for images with an empty mask. Computed in float64."""
    _check_maps(pred, gt, mask)
    cos = (F.normalize(pred.double(), dim=1) * F.normalize(gt.double(), dim=1)).sum(1).clamp(-1.0, 1.0)
    ang = torch.rad2deg(torch.acos(cos))  # [B, H, W]
    m = mask.double()
    return (ang * m).sum((1, 2)) / m.sum((1, 2))


def point_l1_mm(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Per-image mean absolute coordinate error (mm) between point maps ``[B, 3, H, W]`` in model units over
    ``mask [B, H, W]``; NaN for images with an empty mask."""
    _check_maps(pred, gt, mask)
    err = (pred.double() - gt.double()).abs().mean(1) * MM_PER_UNIT  # [B, H, W]
    m = mask.double()
    return (err * m).sum((1, 2)) / m.sum((1, 2))


def mask_iou(mask_logits: Tensor, mask: Tensor) -> Tensor:
    """Per-image IoU of ``mask_logits > 0`` against ``mask``, both ``[B, H, W]``."""
    pred = mask_logits > 0
    inter = (pred & mask).sum((1, 2)).double()
    union = (pred | mask).sum((1, 2)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@dataclass
class BinMetrics:
    """Figures of one yaw bin (or of all images)."""

    n_images: int
    error: float
    """Mean angular error (deg) for normals, mean point-map L1 (mm) for points; NaN when no image."""
    mask_iou: float


@dataclass
class EncoderMetrics:
    """Held-out figures of one encoder."""

    target: str
    error_name: str
    """``"angular_error_deg"`` or ``"point_l1_mm"``."""
    overall: BinMetrics
    by_yaw: dict[str, BinMetrics]
    resolution: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line per bin, for terminals."""
        unit = "deg" if self.target == "normals" else "mm"
        rows = [f"{self.target} @ {self.resolution}px: {self.error_name} {self.overall.error:.2f} {unit}, "
                f"mask IoU {self.overall.mask_iou:.3f} ({self.overall.n_images} images)"]
        for name, b in self.by_yaw.items():
            rows.append(f"  |yaw| {name:>6}: {b.error:7.2f} {unit}  IoU {b.mask_iou:.3f}  ({b.n_images} images)")
        return "\n".join(rows)


def per_image_errors(encoder: GeometryEncoder, data: RenderSet, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """``(error [N], mask IoU [N])`` of ``encoder`` on every image of ``data`` (errors as in the module
    docstring, NaN where the face is not seen)."""
    if encoder.cfg.target != data.target:
        raise InputError(f"encoder predicts {encoder.cfg.target!r} but the data holds {data.target!r}")
    errs, ious = [], []
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.batch(torch.arange(start, min(start + batch_size, len(data))))
            out = encoder(batch.rgb)
            fn = angular_error_deg if data.target == "normals" else point_l1_mm
            errs.append(fn(out.prediction, batch.target, batch.face_mask))
            ious.append(mask_iou(out.mask_logits, batch.mask))
    encoder.train(was_training)
    return torch.cat(errs), torch.cat(ious)


def summarize(errors: Tensor, ious: Tensor, yaw: Tensor, target: str, resolution: int) -> EncoderMetrics:
    """Bin per-image ``errors [N]`` and ``ious [N]`` by ``|yaw| [N]`` (degrees) into :class:`EncoderMetrics`."""

    def stats(sel: Tensor) -> BinMetrics:
        ok = sel & ~torch.isnan(errors)
        n = int(ok.sum())
        return BinMetrics(n_images=n, error=float(errors[ok].mean()) if n else math.nan,
                          mask_iou=float(ious[ok].mean()) if n else math.nan)

    a = yaw.abs()
    bins = {yaw_bin_name(lo, hi): stats((a >= lo) & (a < hi)) for lo, hi in YAW_BINS}
    name = "angular_error_deg" if target == "normals" else "point_l1_mm"
    return EncoderMetrics(target=target, error_name=name, overall=stats(torch.ones_like(a, dtype=torch.bool)),
                          by_yaw=bins, resolution=resolution)


def evaluate_encoder(encoder: GeometryEncoder, data: RenderSet, batch_size: int = 16) -> EncoderMetrics:
    """Held-out figures of ``encoder`` on ``data`` (module docstring), at the data's resolution."""
    errors, ious = per_image_errors(encoder, data, batch_size)
    return summarize(errors, ious, data.yaw, data.target, int(data.rgb.shape[-1]))


def evaluate_checkpoint(checkpoint: str, data_dir: str, split: str = "heldout", max_images: int | None = None,
                        batch_size: int = 16) -> EncoderMetrics:
    """Load an encoder checkpoint (:func:`model.vit.load_encoder`) and evaluate it on ``split`` of a renders
    folder, at the encoder's training resolution."""
    from model.vit import load_encoder
    from train.encoder_data import load_render_set

    encoder, _ = load_encoder(checkpoint)
    data = load_render_set(data_dir, encoder.cfg.target, encoder.cfg.image_size, split, max_images)
    return evaluate_encoder(encoder, data, batch_size)
