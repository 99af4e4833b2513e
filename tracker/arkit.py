"""ARKit-52 curves of a track, and the personalised ARKit rig of its identity.

:class:`PersonalRig`: the tracked identity's neutral mesh and its 52 ARKit target shapes, in the export's
fixed topology: the head model decoded at the rig asset's codes (:class:`model.arkit.ArkitRig`) for that
identity, posed as the export poses (the forward deformation). ``tongueOut``'s target is the neutral mesh.

:class:`CurveSolver`: per frame, the displacement of a sample of the mesh's vertices (those the rig's targets
move) from the neutral shape, posed at the frame's expression code, is written as bounded least squares of
the 52 target displacements (:func:`model.arkit.solve_curves`), weights in [0, 1]. The solve's residual
(RMS per point, mm) says how much of the frame the linear rig cannot show.

:func:`track_curves` adds ``arkit``, ``arkit_names`` and ``arkit_residual_mm`` to a track.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from model.arkit import ARKIT_NAMES, ArkitRig, solve_curves
from model.errors import InputError
from model.forward_deformation import head_condition
from tracker.tto import MM_PER_UNIT

MOVES_MM = 0.5
"""A vertex is part of the solve when some target moves it by more than this (mm)."""
SOLVE_POINTS = 2000
"""Vertices the curve solve uses (an even subsample of the moving ones)."""
RIDGE = 0.01
"""Relative ridge of the solve (:func:`model.arkit.solve_curves`): a shape alone reads 0.99 of its weight."""
BATCH_POINTS = 16384
"""Point-code pairs per forward pass of :func:`_posed` (8 MB per hidden layer, near the CPU's caches: on two
threads the curve stage of the 75-frame example took 0.49 s against 0.91 s in passes of 32768 pairs that also
re-encoded each point per code)."""
FRAME_CHUNK = 256
"""Frames per pass of the curve solve and its residual: their [frames, points, 3] arrays (about 12 MB per 256
frames) would otherwise grow with the clip (3,000 frames took the tracker's peak from 0.76 to 2.55 GB)."""


def _posed(layer: Any, forward: Any, canonical: Tensor, z_id: Tensor, z_ex: Tensor) -> Tensor:
    """``[B, V, 3]`` canonical points ``[V, 3]`` posed at codes ``z_ex [B, D_ex]`` (no grad), in batches of
    about :data:`BATCH_POINTS` point-code pairs so that memory stays bounded whatever ``B`` and ``V`` are.
    Each point's part of the network (:meth:`~model.forward_deformation.ForwardDeformation.point_features`)
    is computed once for all codes."""
    out = []
    step = max(1, BATCH_POINTS // len(z_ex))  # points per batch
    with torch.no_grad():
        cond = head_condition(layer, z_id.expand(len(z_ex), -1), z_ex)  # [B, C]
        for s in range(0, len(canonical), step):
            c = canonical[s:s + step]  # [n, 3]
            out.append((c + forward.offsets_at(forward.point_features(c), cond, chunk=step)).cpu())
    return torch.cat(out, 1)


@dataclass
class PersonalRig:
    """One identity's ARKit rig in a fixed topology (model units, head frame).

    Attributes:
        neutral: ``[V, 3]`` the mesh at the rig's neutral code.
        targets: ``[52, V, 3]`` each ARKit shape at weight 1 (ARKit order, :data:`model.arkit.ARKIT_NAMES`).
    """

    neutral: np.ndarray
    targets: np.ndarray

    @classmethod
    def build(cls, layer: Any, forward: Any, z_id: Tensor, rig: ArkitRig, canonical: Tensor) -> "PersonalRig":
        """Decode ``rig`` for identity ``z_id [1, D_id]`` at canonical vertices ``[V, 3]``."""
        if forward is None:
            raise InputError("the ARKit rig needs the head's forward deformation (none belongs to this head)")
        if rig.expr_dim != layer.cfg.expr_dim:
            raise InputError(f"the ARKit rig has codes of {rig.expr_dim} dimensions, the head {layer.cfg.expr_dim}: "
                             "it belongs to another head model")
        codes = torch.cat([rig.neutral[None], rig.codes]).to(canonical.device)  # [53, D_ex]
        posed = _posed(layer, forward, canonical.float(), z_id.float(), codes).numpy().astype(np.float32)
        targets = posed[1:].copy()
        targets[~rig.modelled.numpy()] = posed[0]
        return cls(neutral=posed[0], targets=targets)

    @property
    def offsets(self) -> np.ndarray:
        """``[52, V, 3]`` target minus neutral."""
        return self.targets - self.neutral[None]

    def vertices(self, weights: np.ndarray) -> np.ndarray:
        """``[..., V, 3]`` the rig at ARKit weights ``[..., 52]``: neutral plus weighted offsets."""
        w = np.asarray(weights, np.float32)
        return self.neutral + np.tensordot(w, self.offsets, axes=(-1, 0))


@dataclass
class SolvePoints:
    """Where a :class:`CurveSolver` solves, and the identity's rig there (numpy only: it can cross processes).

    Attributes:
        index: ``[P]`` vertex ids of the solve (of the canonical vertices it was chosen from).
        basis_mm: ``[52, P, 3]`` each target's displacement from the neutral rig there (mm).
        neutral: ``[P, 3]`` the neutral rig there (model units).
    """

    index: np.ndarray
    basis_mm: np.ndarray
    neutral: np.ndarray

    @classmethod
    def choose(cls, layer: Any, forward: Any, z_id: Tensor, rig: ArkitRig, canonical: Tensor,
               n_points: int = SOLVE_POINTS, seed: int = 0) -> "SolvePoints":
        """Up to ``n_points`` vertices, drawn evenly from those the targets move by more than :data:`MOVES_MM`
        among ``4 * n_points`` candidates of ``canonical [V, 3]`` (the targets are decoded at the candidates
        only), for identity ``z_id [1, D_id]``."""
        rng = np.random.default_rng(seed)
        cand = np.arange(len(canonical))
        if len(cand) > 4 * n_points:
            cand = np.sort(rng.choice(cand, 4 * n_points, replace=False))
        sub = PersonalRig.build(layer, forward, z_id.detach().float(), rig,
                                canonical[torch.from_numpy(cand).to(canonical.device)])
        moved = np.linalg.norm(sub.offsets, axis=-1).max(0) * MM_PER_UNIT  # [C] mm
        keep = np.flatnonzero(moved > MOVES_MM)
        if len(keep) == 0:
            raise InputError("the ARKit rig's targets do not move this identity's mesh")
        if len(keep) > n_points:
            keep = np.sort(rng.choice(keep, n_points, replace=False))
        return cls(index=cand[keep], basis_mm=sub.offsets[:, keep] * MM_PER_UNIT, neutral=sub.neutral[keep])


class CurveSolver:
    """ARKit curves of expression codes for one identity (module docstring).

    Args:
        layer, forward: the head model and its forward deformation.
        z_id: ``[1, D_id]`` the identity.
        rig: the head's rig asset.
        canonical: ``[V, 3]`` canonical vertices of the identity's mesh (:class:`model.topology.FixedTopology`).
        n_points: vertices of the solve (:meth:`SolvePoints.choose`).
        points: the solve's vertices when they were chosen already (:meth:`SolvePoints.choose` of the same
            arguments: :mod:`tracker.background` does it in another process); ``None``: chosen here.
    """

    def __init__(self, layer: Any, forward: Any, z_id: Tensor, rig: ArkitRig, canonical: Tensor,
                 n_points: int = SOLVE_POINTS, ridge: float = RIDGE, seed: int = 0,
                 points: Optional[SolvePoints] = None) -> None:
        self.layer, self.forward, self.rig = layer, forward, rig
        self.z_id = z_id.detach().float()
        self.all_canonical = canonical
        if points is None:
            points = SolvePoints.choose(layer, forward, self.z_id, rig, canonical, n_points, seed)
        self.index = points.index  # [P] vertex ids of the solve
        self.canonical = canonical[torch.from_numpy(self.index).to(canonical.device)].float()  # [P, 3]
        self.basis_mm = points.basis_mm  # [52, P, 3]
        self.neutral = points.neutral  # [P, 3]
        self.ridge = float(ridge)
        self._personal: Optional[PersonalRig] = None

    @property
    def personal(self) -> PersonalRig:
        """The personalised rig at every vertex of ``canonical`` (decoded on first use)."""
        if self._personal is None:
            self._personal = PersonalRig.build(self.layer, self.forward, self.z_id, self.rig, self.all_canonical)
        return self._personal

    def displacement_mm(self, z_ex: Tensor) -> np.ndarray:
        """``[T, P, 3]`` the solve points' displacement (mm) from the neutral rig at codes ``z_ex [T, D_ex]``."""
        posed = _posed(self.layer, self.forward, self.canonical, self.z_id, z_ex.float().to(self.z_id.device))
        return (posed.numpy() - self.neutral[None]) * MM_PER_UNIT

    def residual(self, z_ex: Tensor, weights: np.ndarray) -> np.ndarray:
        """``[T]`` RMS distance (mm per point) of the rig at ``weights [T, 52]`` from the head at ``z_ex``
        (in chunks of :data:`FRAME_CHUNK` frames: memory does not grow with the clip)."""
        weights = np.asarray(weights, np.float64)
        out = []
        for s in range(0, len(z_ex), FRAME_CHUNK):
            rig = np.tensordot(weights[s:s + FRAME_CHUNK], self.basis_mm, 1)  # [t, P, 3]
            out.append(np.sqrt(np.square(rig - self.displacement_mm(z_ex[s:s + FRAME_CHUNK])).sum(-1).mean(-1)))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def solve(self, z_ex: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(weights [T, 52], residual_mm [T])`` of expression codes ``z_ex [T, D_ex]`` (in chunks of
        :data:`FRAME_CHUNK` frames)."""
        if z_ex.dim() != 2:
            raise InputError(f"z_ex must be [T, D_ex], got {list(z_ex.shape)}")
        parts = [solve_curves(self.basis_mm, self.displacement_mm(z_ex[s:s + FRAME_CHUNK]), self.ridge)
                 for s in range(0, len(z_ex), FRAME_CHUNK)]
        if not parts:
            return np.zeros((0, len(ARKIT_NAMES)), np.float32), np.zeros(0, np.float32)
        return np.concatenate([w for w, _ in parts]), np.concatenate([r for _, r in parts])


def track_curves(track: Any, solver: CurveSolver, regressor: Any = None) -> CurveSolver:
    """Give a :class:`~tracker.trackfile.Track` its curves (``arkit [T, 52]``, ``arkit_names``,
    ``arkit_residual_mm [T]``; gap rows hold the nearest earlier usable row's), with ``solver`` built for the
    track's identity. Returns the solver (its :attr:`CurveSolver.personal` is the personalised rig).

    With a ``regressor`` (:class:`model.arkit_regressor.ArkitRegressor`) and the track's detections, the curves
    are the regressor's reading of the detected landmarks (:func:`regressed_curves`) and the residual is the
    distance of the personalised rig at those weights from the tracked head; otherwise they are the bounded
    least squares of the tracked expression (:meth:`CurveSolver.solve`)."""
    from tracker.trackfile import hold_over_gaps

    z_ex = torch.from_numpy(hold_over_gaps(track.z_ex, track.usable))
    if regressor is not None and track.detections_px is not None:
        weights = regressed_curves(regressor, track.detections_px, track.usable)
        residual = solver.residual(z_ex, weights)
    else:
        weights, residual = solver.solve(z_ex)
    track.arkit, track.arkit_residual_mm = weights, residual
    track.arkit_names = np.array(ARKIT_NAMES)
    return solver


def regressed_curves(regressor: Any, detections: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """``[T, 52]`` the regressor's weights of detected landmarks ``[T, 478, 2]`` (frame pixels); rows that are
    not usable or lack detections hold the nearest earlier usable row's."""
    from tracker.trackfile import hold_over_gaps

    det = np.asarray(detections, np.float32)
    ok = np.asarray(usable, bool) & np.isfinite(det).all(axis=(1, 2))
    weights = np.zeros((len(det), len(ARKIT_NAMES)), np.float32)
    if ok.any():
        with torch.no_grad():
            weights[ok] = regressor(torch.from_numpy(det[ok])).numpy()
        weights = hold_over_gaps(weights, ok)
    return weights.clip(0.0, 1.0)


def head_rotations(track: Any) -> np.ndarray:
    """``[T, 3, 3]`` each frame's head rotation in the exporters' Y-up camera frame (identity = facing the
    camera upright); gap rows hold the last usable row's."""
    from tracker.bake import CV_TO_GL
    from tracker.trackfile import hold_over_gaps
    from tracker.tto import axis_angle_to_matrix

    poses = torch.from_numpy(hold_over_gaps(track.pose, track.usable)).double()
    R = torch.stack([axis_angle_to_matrix(p[:3]) for p in poses]).numpy()
    return CV_TO_GL[:3, :3] @ R


def write_arkit(out: Any, track: Any, personal: Optional[PersonalRig], faces: np.ndarray, *, with_pose: bool,
                fps: float, units: str = "m") -> Any:
    """Write a track's ARKit curves (it must hold them, :func:`track_curves`): a ``.csv`` is a Live Link Face
    take (head angles always filled); a rig format gets ``personal`` with the curves as its weights (and the
    head pose with ``with_pose``). Returns the :class:`~exporters.base.ExportResult`."""
    from pathlib import Path

    from exporters.livelink import head_angles, write_live_link_csv
    from exporters.rig import BlendShapeRig, write_rig
    from tracker.bake import Baker
    from tracker.trackfile import hold_over_gaps

    if track.arkit is None:
        raise InputError(f"{out}: the track holds no ARKit curves (its head has no ARKit rig asset)")
    names = [str(n) for n in track.arkit_names]
    if Path(out).suffix.lower() == ".csv":
        return write_live_link_csv(out, names, track.arkit, track.time_s, fps, head_angles(head_rotations(track)))
    transforms = None
    if with_pose:
        transforms = np.stack([Baker.transform(p) for p in hold_over_gaps(track.pose, track.usable)])
    rig = BlendShapeRig(personal.neutral, personal.offsets, names)
    return write_rig(out, faces, rig, track.arkit, fps, transforms=transforms, units=units,
                     extras={"arkit_residual_mm_median": float(np.median(track.arkit_residual_mm))})

