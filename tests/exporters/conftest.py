"""Tiny animations the exporter tests make themselves (no data files needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import trimesh

MODEL_UNITS_PER_METRE = 4.0  # NPHM: 1 cm = 0.04 units


@dataclass
class TinyAnim:
    faces: np.ndarray  # [F, 3] int, counter-clockwise seen from outside
    frames: np.ndarray  # [N, V, 3] float32, model units
    colors: np.ndarray  # [V, 3] float32 in [0, 1]
    transforms: np.ndarray  # [N, 4, 4] float64, model units
    fps: float = 25.0

    @property
    def metres(self) -> np.ndarray:
        """Frames in metres, float32 (what a default export must contain)."""
        return (self.frames / MODEL_UNITS_PER_METRE).astype(np.float32)


def make_anim(n_frames: int = 6, subdivisions: int = 1, seed: int = 0) -> TinyAnim:
    """An icosphere (radius 0.5 units) deformed smoothly and differently in every frame."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    rest = np.asarray(sphere.vertices, np.float64)  # [V, 3]
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(4, *rest.shape)) * 0.02  # [4, V, 3]
    t = np.arange(n_frames)[:, None]
    w = np.sin(0.7 * t * np.arange(1, 5)[None] + rng.uniform(0, 6, 4))  # [N, 4]
    frames = (rest[None] + np.einsum("nk,kvc->nvc", w, modes)).astype(np.float32)
    colors = rng.uniform(size=rest.shape).astype(np.float32)
    transforms = np.repeat(np.eye(4)[None], n_frames, axis=0)
    for i in range(n_frames):
        a = 0.1 * i
        transforms[i, :3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        transforms[i, :3, 3] = [0.1 * i, 0.02 * i, -0.05 * i]
    return TinyAnim(np.asarray(sphere.faces, np.int64), frames, colors, transforms)


def apply_transforms(points: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """``T @ [p, 1]`` per frame: points [N, V, 3], transforms [N, 4, 4] -> [N, V, 3]."""
    return np.einsum("nij,nvj->nvi", transforms[:, :3, :3], points) + transforms[:, None, :3, 3]


@pytest.fixture
def anim() -> TinyAnim:
    return make_anim()
