"""Training data of the geometric encoders: render folders loaded into memory at the model resolution, and
batched augmentations that keep the geometric targets consistent with the image.

Source: a folder written by ``nphm-train data renders`` (:mod:`train.renders_data`; ``manifest.json`` lists
every sample with its split). :func:`load_render_set` reads one split, downsizes each sample to the model
resolution and keeps it as compact tensors (:class:`RenderSet`). Downsizing: RGB by area averaging; normals
and canonical points by **mask-weighted** area averaging (background pixels do not bleed into the
silhouette), normals renormalised; masks are "more than half of the source pixels".

Augmentations (:func:`augment_batch`, all batched torch ops driven by one ``torch.Generator``):

- colour jitter (brightness, contrast, saturation, per-channel gain) on the image only;
- a small zoom and shift about the image centre, applied alike to image (bilinear) and targets (nearest).
  This is a change of the intrinsics (focal length, principal point), so camera-space normals and
  canonical points keep their values;
- a horizontal flip (:func:`flip_batch`): ``u -> W - 1 - u``. With the principal point at the image centre
  (as in every render) this is the mirror image ``x -> -x`` of the scene in camera space, so camera normals
  get ``n_x -> -n_x``; the mirrored head is the mirror identity, whose canonical points are the mirror of
  the original ones across the canonical symmetry plane ``x = 0`` (``train.frame``): ``x -> -x`` as well.
  Head yaw and roll change sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.errors import InputError
from train.renders_data import read_manifest

TARGET_KEYS = {"normals": "normals", "points": "canonical"}
"""Encoder target -> key of the render npz holding it."""


@dataclass
class RenderSet:
    """One split of a renders folder at one resolution, in memory. ``N`` samples, side ``S``."""

    target: str
    """``"normals"`` (camera-space unit normals) or ``"points"`` (canonical points, model units)."""
    rgb: Tensor
    """``[N, 3, S, S]`` uint8 sRGB."""
    maps: Tensor
    """``[N, 3, S, S]`` float16 target maps (0 off the head)."""
    mask: Tensor
    """``[N, S, S]`` bool, head seen."""
    face_mask: Tensor
    """``[N, S, S]`` bool, face region seen."""
    yaw: Tensor
    """``[N]`` float32 head yaw in degrees (``pose_angles[0]`` of the render)."""
    files: list[str]
    """Sample files relative to the renders folder."""

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def batch(self, index: Tensor) -> "EncoderBatch":
        """Gather samples ``index [B]`` as float tensors (no augmentation)."""
        return EncoderBatch(rgb=self.rgb[index].float() / 255.0, target=self.maps[index].float(),
                            mask=self.mask[index], face_mask=self.face_mask[index], yaw=self.yaw[index])


@dataclass
class EncoderBatch:
    """A batch for the encoders: ``B`` images of side ``S``."""

    rgb: Tensor  # [B, 3, S, S] float in [0, 1]
    target: Tensor  # [B, 3, S, S] float, normals (unit, camera) or canonical points (model units)
    mask: Tensor  # [B, S, S] bool
    face_mask: Tensor  # [B, S, S] bool
    yaw: Tensor  # [B] degrees

    def __post_init__(self) -> None:
        B, _, H, W = self.rgb.shape
        for name, t, shape in (("target", self.target, (B, 3, H, W)), ("mask", self.mask, (B, H, W)),
                               ("face_mask", self.face_mask, (B, H, W)), ("yaw", self.yaw, (B,))):
            if tuple(t.shape) != shape:
                raise InputError(f"EncoderBatch.{name}: expected shape {list(shape)}, got {list(t.shape)}")


# ------------------------------------------------------------------------------------------ loading

def downscale_sample(rgb: np.ndarray, maps: np.ndarray, mask: np.ndarray, face_mask: np.ndarray,
                     size: int, normalize: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One render ``[H, W, ...]`` at side ``size`` (module docstring for the rules).

    Args:
        rgb: ``[H, W, 3]`` uint8; maps: ``[H, W, 3]`` float; mask, face_mask: ``[H, W]`` bool.
        normalize: renormalise the averaged map to unit length (normals).
    Returns:
        ``rgb [3, S, S]`` uint8, ``maps [3, S, S]`` float16, ``mask [S, S]`` bool, ``face_mask [S, S]`` bool.
    """
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None]  # [1, 3, H, W]
    maps_t = torch.from_numpy(np.asarray(maps, dtype=np.float32)).permute(2, 0, 1)[None]  # [1, 3, H, W]
    m = torch.from_numpy(np.asarray(mask)).float()[None, None]  # [1, 1, H, W]
    fm = torch.from_numpy(np.asarray(face_mask)).float()[None, None]
    if rgb_t.shape[-1] != size or rgb_t.shape[-2] != size:
        rgb_t = F.adaptive_avg_pool2d(rgb_t, size)
        cover = F.adaptive_avg_pool2d(m, size)  # [1, 1, S, S] share of head pixels
        maps_t = F.adaptive_avg_pool2d(maps_t * m, size) / cover.clamp_min(1e-6)
        m = (cover > 0.5).float()
        fm = (F.adaptive_avg_pool2d(fm, size) > 0.5).float() * m
        if normalize:
            maps_t = F.normalize(maps_t, dim=1)
        maps_t = maps_t * m
    return (rgb_t[0].round().clamp(0, 255).to(torch.uint8), maps_t[0].to(torch.float16), m[0, 0].bool(),
            fm[0, 0].bool())


def load_render_set(data_dir: str | Path, target: str, resolution: int, split: str = "train",
                    max_items: Optional[int] = None) -> RenderSet:
    """Load ``split`` (``"train"``, ``"heldout"`` or ``"all"``) of a renders folder at ``resolution``.

    Args:
        data_dir: folder written by ``nphm-train data renders`` (with ``manifest.json``).
        target: ``"normals"`` or ``"points"``: which map to keep.
        max_items: keep at most this many samples of the split (the first ones in manifest order).
    """
    if target not in TARGET_KEYS:
        raise InputError(f"--kind: expected one of {tuple(TARGET_KEYS)}, got {target!r}")
    data_dir = Path(data_dir)
    _, entries = read_manifest(data_dir, split, max_items)
    files = [f for _, f in entries]
    rgb, maps, mask, face, yaw = [], [], [], [], []
    for f in files:
        with np.load(data_dir / f) as z:
            r, mp, m, fm = downscale_sample(z["rgb"], z[TARGET_KEYS[target]], z["mask"], z["face_mask"],
                                            resolution, normalize=target == "normals")
            yaw.append(float(z["pose_angles"][0]))
        rgb.append(r), maps.append(mp), mask.append(m), face.append(fm)
    return RenderSet(target=target, rgb=torch.stack(rgb), maps=torch.stack(maps), mask=torch.stack(mask),
                     face_mask=torch.stack(face), yaw=torch.tensor(yaw, dtype=torch.float32), files=files)


# ------------------------------------------------------------------------------------ augmentation

@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentations (uniform in each range; 0 disables a term)."""

    brightness: float = 0.25
    """Image x U(1 - b, 1 + b)."""
    contrast: float = 0.25
    """Blend with the image's mean grey by U(1 - c, 1 + c)."""
    saturation: float = 0.25
    """Blend with the per-pixel grey by U(1 - s, 1 + s)."""
    channel_gain: float = 0.05
    """Per-channel gain U(1 - g, 1 + g) (white balance)."""
    scale: float = 0.1
    """Zoom about the image centre by U(1 - s, 1 + s)."""
    shift: float = 0.05
    """Shift by U(-t, t) of the image side, per axis."""
    flip: float = 0.5
    """Probability of the horizontal flip (with mirrored targets)."""


def flip_batch(batch: EncoderBatch, which: Optional[Tensor] = None) -> EncoderBatch:
    """Horizontal flip of the samples selected by ``which [B]`` bool (all when None), mirroring the targets:
    ``x -> -x`` of camera normals and of canonical points alike (module docstring); yaw -> -yaw.
    An involution: flipping twice gives the batch back exactly."""
    B = batch.rgb.shape[0]
    which = torch.ones(B, dtype=torch.bool) if which is None else which
    sign = torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    w4, w3 = which.view(B, 1, 1, 1), which.view(B, 1, 1)
    return EncoderBatch(
        rgb=torch.where(w4, batch.rgb.flip(-1), batch.rgb),
        target=torch.where(w4, batch.target.flip(-1) * sign, batch.target),
        mask=torch.where(w3, batch.mask.flip(-1), batch.mask),
        face_mask=torch.where(w3, batch.face_mask.flip(-1), batch.face_mask),
        yaw=torch.where(which, -batch.yaw, batch.yaw))


def color_jitter(rgb: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """Random brightness, contrast, saturation and channel gains of ``rgb [B, 3, H, W]`` in [0, 1]."""
    B = rgb.shape[0]

    def u(width: float, *shape: int) -> Tensor:
        return 1.0 + width * (2.0 * torch.rand(B, *shape, generator=g) - 1.0)

    grey_w = rgb.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = rgb * u(cfg.brightness, 1, 1, 1) * u(cfg.channel_gain, 3, 1, 1)
    mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # [B, 1, 1, 1]
    x = mean + (x - mean) * u(cfg.contrast, 1, 1, 1)
    grey = (x * grey_w).sum(1, keepdim=True)  # [B, 1, H, W]
    x = grey + (x - grey) * u(cfg.saturation, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def zoom_shift(batch: EncoderBatch, scale: Tensor, shift: Tensor) -> EncoderBatch:
    """Zoom by ``scale [B]`` (> 1 enlarges the head) about the image centre and shift by ``shift [B, 2]``
    (share of the image side, +x right, +y down); image bilinear (border padding), targets and masks
    nearest (zero padding)."""
    B = scale.shape[0]
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = -2.0 * shift / scale[:, None]  # output pixel p samples input (p - shift) / scale
    grid = F.affine_grid(theta, list(batch.rgb.shape), align_corners=False)
    rgb = F.grid_sample(batch.rgb, grid, mode="bilinear", padding_mode="border", align_corners=False)
    rest = torch.cat([batch.target, batch.mask[:, None].float(), batch.face_mask[:, None].float()], 1)
    rest = F.grid_sample(rest, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return EncoderBatch(rgb=rgb, target=rest[:, :3], mask=rest[:, 3] > 0.5, face_mask=rest[:, 4] > 0.5,
                        yaw=batch.yaw)


def augment_batch(batch: EncoderBatch, cfg: AugmentConfig, g: torch.Generator) -> EncoderBatch:
    """All augmentations of :class:`AugmentConfig`, drawn from ``g`` (a fixed number of draws per call)."""
    B = batch.rgb.shape[0]
    scale = 1.0 + cfg.scale * (2.0 * torch.rand(B, generator=g) - 1.0)
    shift = cfg.shift * (2.0 * torch.rand(B, 2, generator=g) - 1.0)
    flip = torch.rand(B, generator=g) < cfg.flip
    rgb = color_jitter(batch.rgb, cfg, g)
    out = EncoderBatch(rgb=rgb, target=batch.target, mask=batch.mask, face_mask=batch.face_mask, yaw=batch.yaw)
    if cfg.scale > 0 or cfg.shift > 0:
        out = zoom_shift(out, scale, shift)
    return flip_batch(out, flip)
