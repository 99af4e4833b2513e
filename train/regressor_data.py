"""Training data for the Pix2NPHM regressor, from a renders folder (``nphm-train data renders``).

Per render (all kept in memory as tensors, :class:`RegressorSet`):

- ``rgb``: the image, area-downscaled to the encoders' input side (``[3, S, S]`` uint8);
- the camera of the render at full resolution: ``K`` (pixels) and the model-to-camera ``R``, ``t``
  (``x_cam = R x_model + t``, OpenCV; model units, :mod:`train.camera`);
- a pool of ``n_pixels`` face pixels (``face_mask``) at full resolution, as ``(u, v)`` pixel centres with
  their ground-truth camera-space unit normals; drawn once per render from ``SeedSequence([seed, index])``
  (with repeats when the face has fewer pixels; ``pixel_valid`` is False for all when it has none);
- ``n_near`` near-surface points of the ground-truth head with their exact signed distance: our ground
  truth is the ICT head of the render (its ``w_id``, ``w_ex``), not NPHM codes, so the 3D loss compares
  the predicted head's SDF with the SDF of the ICT outer surface (:mod:`train.geometry`: outer surface,
  surface samples plus Gaussian offsets of ``near_sigmas``, winding-number sign), what ideal NPHM codes
  would encode. These take about a second per head to compute, so they are cached, one npz per render,
  in ``cache_dir`` (keyed by the render's file name and the sampling settings).

Model units throughout (1 cm = 0.04 units, :mod:`train.frame`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.errors import InputError
from train import frame
from train.geometry import outer_surface, sample_surface, signed_distance, surface_topology
from train.ict import IctFaceKit
from train.renders_data import read_manifest


@dataclass(frozen=True)
class RegressorDataConfig:
    """What is precomputed per render."""

    image_size: int = 128
    """Side S of the images given to the encoders (their ``EncoderConfig.image_size``)."""
    n_pixels: int = 1024
    """Face pixels (with target normals) kept per render; each step samples from them."""
    n_near: int = 4096
    """Near-surface SDF points per render (cached); each step samples from them."""
    near_sigmas: tuple[float, ...] = (0.01, 0.002)
    """Std of the offsets of the near-surface points from the surface, model units (2.5 mm, 0.5 mm)."""
    seed: int = 0
    """Seed of the pixel pools and near-surface points (render ``i`` uses ``SeedSequence([seed, i])``)."""


@dataclass
class RegressorBatch:
    """A batch of ``B`` renders (float32 tensors)."""

    rgb: Tensor  # [B, 3, S, S] in [0, 1]
    K: Tensor  # [B, 3, 3] pixels, full-resolution render
    R: Tensor  # [B, 3, 3] model-to-camera rotation
    t: Tensor  # [B, 3] model-to-camera translation, model units
    pixels: Tensor  # [B, P, 2] (u, v) face pixel centres
    normals: Tensor  # [B, P, 3] target unit normals, camera space
    pixel_valid: Tensor  # [B, P] bool
    near: Tensor  # [B, N, 3] near-surface points, model units
    near_sdf: Tensor  # [B, N] ground-truth SDF there (negative inside)
    index: Optional[Tensor] = None  # [B] int64 indices of the renders in their RegressorSet


@dataclass
class RegressorSet:
    """Every render of a split in memory (module docstring); index ``i`` is ``files[i]``."""

    rgb: Tensor  # [M, 3, S, S] uint8
    K: Tensor  # [M, 3, 3]
    R: Tensor  # [M, 3, 3]
    t: Tensor  # [M, 3]
    pixels: Tensor  # [M, P, 2]
    normals: Tensor  # [M, P, 3]
    pixel_valid: Tensor  # [M, P] bool
    near: Tensor  # [M, N, 3]
    near_sdf: Tensor  # [M, N]
    files: list[str]

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def batch(self, index: Tensor, generator: torch.Generator, n_pixels: int, n_near: int) -> RegressorBatch:
        """Renders ``index [B]`` with ``n_pixels`` pool pixels and ``n_near`` near points drawn per render."""
        B = index.shape[0]
        pix = torch.randint(0, self.pixels.shape[1], (B, n_pixels), generator=generator)
        near = torch.randint(0, self.near.shape[1], (B, n_near), generator=generator)
        i = index[:, None]
        return RegressorBatch(rgb=self.rgb[index].float() / 255.0, K=self.K[index], R=self.R[index],
                              t=self.t[index], pixels=self.pixels[i, pix], normals=self.normals[i, pix],
                              pixel_valid=self.pixel_valid[i, pix], near=self.near[i, near],
                              near_sdf=self.near_sdf[i, near], index=index)


def near_surface_sdf(kit: IctFaceKit, topology, w_id: np.ndarray, w_ex: np.ndarray, rng: np.random.Generator,
                     n: int, sigmas: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points near the outer surface of the ICT head ``(w_id, w_ex)`` and their SDF (model units).

    Returns ``points [n, 3]`` and ``sdf [n]`` (float32); ``topology`` from :func:`train.geometry.surface_topology`.
    """
    vertices = frame.ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))  # [V, 3]
    surface = outer_surface(vertices, topology)
    base = sample_surface(surface, rng, n).points
    sigma = np.asarray(sigmas, float)[np.arange(n) % len(sigmas)]  # [n]
    pts = base + rng.normal(size=base.shape) * sigma[:, None]
    return pts.astype(np.float32), signed_distance(surface, pts).astype(np.float32)


def _cache_key(cfg: RegressorDataConfig) -> str:
    spec = json.dumps({"n": cfg.n_near, "sigmas": list(cfg.near_sigmas), "seed": cfg.seed})
    return hashlib.sha1(spec.encode()).hexdigest()[:10]


def _face_pixels(face_mask: np.ndarray, normals: np.ndarray, rng: np.random.Generator, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(face_mask)
    if len(rows) == 0:
        return np.zeros((n, 2), np.float32), np.tile(np.float32([0, 0, -1]), (n, 1)), np.zeros(n, bool)
    pick = rng.choice(len(rows), size=n, replace=len(rows) < n)
    uv = np.stack([cols[pick], rows[pick]], 1).astype(np.float32)
    nrm = normals[rows[pick], cols[pick]].astype(np.float32)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-6)
    return uv, nrm, np.ones(n, bool)


def load_regressor_set(data_dir: str | Path, kit: IctFaceKit, cfg: RegressorDataConfig, cache_dir: str | Path,
                       split: str = "train", max_items: Optional[int] = None, progress: bool = True) -> RegressorSet:
    """Load ``split`` (``"train"``, ``"heldout"`` or ``"all"``) of a renders folder (module docstring).

    Args:
        data_dir: folder written by ``nphm-train data renders``.
        kit: the ICT-FaceKit model the renders were made with (for the ground-truth SDF).
        cache_dir: where the near-surface SDF samples are cached (created).
        max_items: keep only the first N renders of the split.
    """
    from tqdm import tqdm

    data_dir = Path(data_dir)
    _, entries = read_manifest(data_dir, split, max_items)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(cfg)
    topology = None
    cols: dict[str, list] = {k: [] for k in ("rgb", "K", "R", "t", "pixels", "normals", "pixel_valid", "near",
                                             "near_sdf")}
    for index, f in tqdm(entries, desc="regressor data", disable=not progress, unit="img"):
        with np.load(data_dir / f) as z:
            s = {k: z[k] for k in ("rgb", "face_mask", "normals", "K", "model_to_camera_R", "model_to_camera_t",
                                   "w_id", "w_ex")}
        if tuple(s["w_id"].shape) != (kit.n_identity,) or tuple(s["w_ex"].shape) != (kit.n_expression,):
            raise InputError(f"{data_dir / f}: w_id / w_ex do not match the ICT model given "
                             f"({kit.n_identity} / {kit.n_expression} weights)")
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index]))
        uv, nrm, valid = _face_pixels(s["face_mask"], s["normals"], rng, cfg.n_pixels)
        cache = cache_dir / f"{Path(f).stem}_{key}.npz"
        if cache.is_file():
            with np.load(cache) as c:
                near, near_sdf = c["near_points"], c["near_sdf"]
        else:
            topology = topology or surface_topology(kit.triangles, kit.n_vertices)
            near, near_sdf = near_surface_sdf(kit, topology, s["w_id"], s["w_ex"], rng, cfg.n_near, cfg.near_sigmas)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, near_points=near, near_sdf=near_sdf)
            tmp.replace(cache)
        rgb = torch.from_numpy(np.ascontiguousarray(s["rgb"])).permute(2, 0, 1).float()[None]  # [1, 3, H, W]
        if rgb.shape[-1] != cfg.image_size or rgb.shape[-2] != cfg.image_size:
            rgb = F.interpolate(rgb, size=(cfg.image_size, cfg.image_size), mode="area") \
                if rgb.shape[-1] >= cfg.image_size else \
                F.interpolate(rgb, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
        cols["rgb"].append(rgb[0].round().clamp(0, 255).to(torch.uint8))
        cols["K"].append(torch.from_numpy(s["K"]).float())
        cols["R"].append(torch.from_numpy(s["model_to_camera_R"]).float())
        cols["t"].append(torch.from_numpy(s["model_to_camera_t"]).float())
        cols["pixels"].append(torch.from_numpy(uv))
        cols["normals"].append(torch.from_numpy(nrm))
        cols["pixel_valid"].append(torch.from_numpy(valid))
        cols["near"].append(torch.from_numpy(np.asarray(near, np.float32)))
        cols["near_sdf"].append(torch.from_numpy(np.asarray(near_sdf, np.float32)))
    return RegressorSet(files=[f for _, f in entries], **{k: torch.stack(v) for k, v in cols.items()})
