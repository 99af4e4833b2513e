"""Pinhole camera and head pose of the synthetic head world: conventions, projection and samplers.

Conventions (used by every render, video and ground-truth file of the project):

- **Camera: OpenCV pinhole.** Camera space has x right, y down, z forward (into the scene); a point in
  front of the camera has z > 0. Extrinsics are **world-to-camera**: ``x_cam = R @ x_world + t``.
  Intrinsics ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels. Pixel centres sit at integer
  coordinates: pixel (row i, column j) has its centre at ``(u, v) = (j, i)``, so the image centre of a
  ``W x H`` image is ``((W - 1) / 2, (H - 1) / 2)``.
- **World = the posed head's space**, in model units (``train.frame.UNITS_PER_CM`` = 0.04 per cm).
- **Head pose** maps the canonical head (model units, +Y up, face toward +Z, +X to the head's left) into
  the world: ``x_world = R_head @ x_canonical + t_head`` with
  ``R_head = R_y(yaw) @ R_x(pitch) @ R_z(roll)`` (angles in degrees; roll is applied first, then pitch,
  then yaw, each about the canonical axis). Signs: yaw > 0 turns the face toward the head's own left (+X),
  pitch > 0 tips the face down (chin toward the chest), roll > 0 lifts the head's left side (tilts the
  head toward its right shoulder).
- The standard front camera looks at the face from +Z: ``R = diag(1, -1, -1)``, ``t = (0, 0, d)``, so the
  head's left appears on the image's right (as when you look at a person) and the canonical origin sits at
  depth ``d``.

:func:`project` and :func:`euler_to_matrix` accept numpy arrays or torch tensors (they only use
operations both provide), so the tracker can project with gradients through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FRONT_CAMERA_ROTATION = np.diag([1.0, -1.0, -1.0])  # world-to-camera rotation of the front camera


def _xp(x: Any):
    """The array module of ``x``: torch for tensors, numpy otherwise."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def euler_to_matrix(yaw, pitch, roll):
    """Rotation matrices ``R_y(yaw) @ R_x(pitch) @ R_z(roll)`` from angles in degrees.

    Args:
        yaw, pitch, roll: arrays (numpy or torch) of the same shape ``[...]``, degrees.
    Returns:
        ``[..., 3, 3]`` rotations (same library as the inputs); see the module docstring for signs.
    """
    xp = _xp(yaw)
    deg = np.pi / 180.0
    y, p, r = yaw * deg, pitch * deg, roll * deg
    cy, sy, cp, sp, cr, sr = xp.cos(y), xp.sin(y), xp.cos(p), xp.sin(p), xp.cos(r), xp.sin(r)
    # Product R_y @ R_x @ R_z written out entry by entry.
    rows = [
        [cy * cr + sy * sp * sr, -cy * sr + sy * sp * cr, sy * cp],
        [cp * sr, cp * cr, -sp],
        [-sy * cr + cy * sp * sr, sy * sr + cy * sp * cr, cy * cp],
    ]
    return xp.stack([xp.stack(row, -1) for row in rows], -2)


def matrix_to_euler(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix` for ``|pitch| < 90``: ``[..., 3, 3] -> [..., 3]`` (yaw, pitch, roll) deg."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"matrix_to_euler: expected rotations [..., 3, 3], got {R.shape}")
    pitch = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    roll = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], -1))


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``K`` [3, 3] (float64) from focal lengths and principal point in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def transform(points, R, t):
    """``R @ p + t`` for points ``[..., N, 3]``, rotations ``[..., 3, 3]`` and translations ``[..., 3]``."""
    return (R[..., None, :, :] @ points[..., :, :, None])[..., 0] + t[..., None, :]


def project(points, K, R, t):
    """Project world points to pixels with an OpenCV pinhole camera (numpy or torch, differentiable).

    Args:
        points: ``[..., N, 3]`` world points.
        K: ``[..., 3, 3]`` intrinsics in pixels.
        R, t: ``[..., 3, 3]`` and ``[..., 3]`` world-to-camera extrinsics.
    Returns:
        ``(uv, z)``: ``[..., N, 2]`` pixel coordinates (pixel centres at integers) and ``[..., N]`` camera
        depth (z in camera space, same units as ``t``). Points behind the camera (z <= 0) get meaningless
        ``uv``; check ``z``.
    """
    if points.shape[-1] != 3 or K.shape[-2:] != (3, 3) or R.shape[-2:] != (3, 3) or t.shape[-1] != 3:
        raise ValueError(
            f"project: expected points [..., N, 3], K [..., 3, 3], R [..., 3, 3], t [..., 3]; got "
            f"{tuple(points.shape)}, {tuple(K.shape)}, {tuple(R.shape)}, {tuple(t.shape)}")
    cam = transform(points, R, t)  # [..., N, 3]
    z = cam[..., 2]
    uvw = (K[..., None, :, :] @ cam[..., :, :, None])[..., 0]  # [..., N, 3]
    return uvw[..., :2] / uvw[..., 2:3], z


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit ray directions in camera space through every pixel centre: ``[H, W, 3]`` float64."""
    K = np.asarray(K, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


@dataclass
class Camera:
    """An OpenCV pinhole camera: intrinsics in pixels, world-to-camera extrinsics, image size.

    ``K`` [3, 3] float64; ``R`` [3, 3] and ``t`` [3] map world (model units) to camera space.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.R = np.asarray(self.R, dtype=np.float64)
        self.t = np.asarray(self.t, dtype=np.float64)
        if self.K.shape != (3, 3) or self.R.shape != (3, 3) or self.t.shape != (3,):
            raise ValueError(f"Camera: expected K [3, 3], R [3, 3], t [3]; got {self.K.shape}, "
                             f"{self.R.shape}, {self.t.shape}")

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points ``[N, 3]`` -> pixels ``[N, 2]`` and depth ``[N]``."""
        return project(np.asarray(points, dtype=np.float64), self.K, self.R, self.t)


@dataclass
class HeadPose:
    """Rigid pose of the canonical head in the world: ``x_world = R @ x_canonical + translation``.

    Angles in degrees (see the module docstring for order and signs); translation in model units.
    """

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.translation = np.asarray(self.translation, dtype=np.float64)
        if self.translation.shape != (3,):
            raise ValueError(f"HeadPose: expected translation [3], got {self.translation.shape}")

    @property
    def R(self) -> np.ndarray:
        """``[3, 3]`` rotation canonical -> world."""
        return euler_to_matrix(np.float64(self.yaw), np.float64(self.pitch), np.float64(self.roll))

    @property
    def angles(self) -> np.ndarray:
        """``[3]`` (yaw, pitch, roll) in degrees."""
        return np.array([self.yaw, self.pitch, self.roll], dtype=np.float64)


def model_to_camera(camera: Camera, pose: HeadPose) -> tuple[np.ndarray, np.ndarray]:
    """Compose head pose and extrinsics: ``x_cam = R @ x_canonical + t``; returns ``R`` [3, 3], ``t`` [3]."""
    R_head = pose.R
    return camera.R @ R_head, camera.R @ pose.translation + camera.t


@dataclass
class View:
    """A camera and the head's pose in its world (what :func:`sample_view` draws)."""

    camera: Camera
    pose: HeadPose

    def model_to_camera(self) -> tuple[np.ndarray, np.ndarray]:
        """``R`` [3, 3], ``t`` [3] with ``x_cam = R @ x_canonical + t``."""
        return model_to_camera(self.camera, self.pose)


@dataclass
class ViewSamplerConfig:
    """Ranges of the random views of :func:`sample_view` (uniform in each range)."""

    yaw_deg: float = 75.0
    """Head yaw in [-yaw_deg, yaw_deg] degrees (at least 60 per the spec; profiles included)."""
    pitch_deg: float = 30.0
    """Head pitch in [-pitch_deg, pitch_deg] degrees."""
    roll_deg: float = 25.0
    """Head roll in [-roll_deg, roll_deg] degrees."""
    distance: tuple[float, float] = (1.5, 6.0)
    """Camera distance to the canonical origin in model units (1.5..6 = 37.5..150 cm)."""
    fill: tuple[float, float] = (0.45, 0.85)
    """Fraction of the image size (largest side of the head's 2D bounding box / image side)."""
    center_jitter: float = 0.6
    """How far the head's 2D box centre may move from the image centre, as a share of the free margin."""
    margin_px: float = 1.0
    """Every framing point stays at least this many pixels inside the image."""
    aspect_jitter: float = 0.02
    """fy = fx * (1 + U(-aspect_jitter, aspect_jitter)): slightly non-square pixels."""


def frame_head(points_world: np.ndarray, R_cam: np.ndarray, distance: float, width: int, height: int,
               fill: float, center: tuple[float, float] = (0.5, 0.5), aspect: float = 1.0,
               margin_px: float = 1.0, max_iter: int = 20) -> tuple[Camera, np.ndarray]:
    """Choose a focal length and a sideways shift so that ``points_world`` fill and sit in the image.

    The camera sits at ``distance`` along its optical axis from the world origin (``t = (0, 0, distance)``
    before the shift). The returned shift (world units, camera x/y axes expressed in the world) is applied
    by the caller to the head translation; the returned camera keeps the principal point at the image centre.

    Args:
        points_world: ``[N, 3]`` points to keep in frame (posed head, model units).
        R_cam: ``[3, 3]`` world-to-camera rotation.
        fill: wanted share of ``min(width, height)`` covered by the larger side of the points' 2D box.
        center: wanted box centre as a fraction of (width, height).
    Returns:
        ``(camera, shift_world)`` with ``shift_world`` [3]: translate the head by it to centre the box.
    Raises:
        ValueError: points behind the camera, or no fit found in ``max_iter`` steps.
    """
    pts = np.asarray(points_world, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"frame_head: expected points [N, 3], got {pts.shape}")
    t = np.array([0.0, 0.0, distance])
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    shift_cam = np.zeros(3)
    f = 1.0
    for _ in range(max_iter):
        cam = pts @ R_cam.T + t + shift_cam
        if np.any(cam[:, 2] <= 1e-3):
            raise ValueError("frame_head: points reach behind the camera; increase the distance")
        xn, yn = cam[:, 0] / cam[:, 2], cam[:, 1] / cam[:, 2]
        ext = max(np.ptp(xn), np.ptp(yn) * aspect)
        f = fill * min(width, height) / ext
        u, v = f * xn + cx, f * aspect * yn + cy
        # Move the head sideways (at its mean depth) so the box centre lands on the wanted spot.
        du = center[0] * (width - 1) - 0.5 * (u.min() + u.max())
        dv = center[1] * (height - 1) - 0.5 * (v.min() + v.max())
        zm = float(np.mean(cam[:, 2]))
        shift_cam = shift_cam + np.array([du * zm / f, dv * zm / (f * aspect), 0.0])
        inside = (u.min() >= margin_px and v.min() >= margin_px and u.max() <= width - 1 - margin_px
                  and v.max() <= height - 1 - margin_px)
        if abs(du) < 0.25 and abs(dv) < 0.25 and inside:
            break
        if abs(du) < 0.25 and abs(dv) < 0.25:
            fill *= 0.95  # centred but still touching the border: zoom out a little
    else:
        raise ValueError(f"frame_head: could not fit the points in a {width}x{height} image in {max_iter} steps")
    K = intrinsics_matrix(f, f * aspect, cx, cy)
    return Camera(K=K, R=R_cam, t=t, width=width, height=height), R_cam.T @ shift_cam


def sample_view(rng: np.random.Generator, cfg: ViewSamplerConfig, head_points: np.ndarray,
                width: int, height: int) -> tuple[Camera, HeadPose]:
    """Sample a random camera and head pose with the head fully in frame.

    Args:
        rng: numpy random generator (the only source of randomness).
        head_points: ``[N, 3]`` canonical points (model units) that must stay inside the image
            (e.g. the skin above the neck).
    Returns:
        a :class:`View`: a front camera (see module docstring) with a sampled distance and focal length,
        and a head pose with sampled yaw/pitch/roll and a translation that places the head in frame.
    """
    yaw = rng.uniform(-cfg.yaw_deg, cfg.yaw_deg)
    pitch = rng.uniform(-cfg.pitch_deg, cfg.pitch_deg)
    roll = rng.uniform(-cfg.roll_deg, cfg.roll_deg)
    distance = rng.uniform(*cfg.distance)
    fill = rng.uniform(*cfg.fill)
    free = (1.0 - fill) / 2.0
    center = (0.5 + cfg.center_jitter * free * rng.uniform(-1, 1),
              0.5 + cfg.center_jitter * free * rng.uniform(-1, 1))
    aspect = 1.0 + rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter)
    pose = HeadPose(yaw=yaw, pitch=pitch, roll=roll)
    posed = np.asarray(head_points, dtype=np.float64) @ pose.R.T
    camera, shift = frame_head(posed, FRONT_CAMERA_ROTATION, distance, width, height, fill, center, aspect,
                               cfg.margin_px)
    pose.translation = shift
    return View(camera=camera, pose=pose)
