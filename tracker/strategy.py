"""The policy of the video tracker that varies: keyframes, re-initialisation, smoothing.

:class:`TrackingStrategy` is a small object with hooks the pipeline (:mod:`tracker.pipeline`) calls at
fixed points; the optimisation itself is data (:class:`tracker.tto.TTOStage` lists in the strategy).
:class:`FixedLagSmoother` delays frames by ``lag`` and replaces each frame's expression and pose with a
Gaussian-weighted mean over the frames ``lag`` before and after it (a bounded-delay, non-causal smoother:
the output of frame ``t`` leaves once frame ``t + lag`` arrived).

Frame solutions carry the status of :class:`tracker.crop.CropResult` mapped to ``"tracked"`` (a detected
face), ``"held"`` (the crop was held over a missed detection, still optimised) and ``"gap"`` (no face:
the last solution is repeated, confidence 0). Smoothing never mixes frames across a gap.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from tracker.tto import TTOStage, axis_angle_to_matrix, matrix_to_axis_angle


@dataclass
class FrameSolution:
    """One frame's tracking result (codes and pose in the crop's camera)."""

    index: int
    time_s: float
    status: str  # "tracked" | "held" | "gap"
    z_ex: Tensor  # [D_ex]
    pose: Tensor  # [6] model -> camera, rotvec (radians) + t (model units)
    K: np.ndarray  # [3, 3] crop intrinsics in crop pixels
    crop_to_frame: np.ndarray  # [2, 3]
    confidence: float
    loss: float = math.nan
    steps: int = 0
    payload: Any = None  # carried along untouched (the pipeline keeps the frame image here for the preview)
    detections: Optional[np.ndarray] = None  # [L, 2] the detector's landmarks (frame pixels), when any


def repeat_as_gap(previous: FrameSolution, index: int, time_s: float, payload: Any = None) -> FrameSolution:
    """A frame without a face: ``previous``'s codes, pose and camera repeated, status ``"gap"``, confidence 0."""
    return FrameSolution(index, time_s, "gap", previous.z_ex, previous.pose, previous.K, previous.crop_to_frame,
                         0.0, payload=payload)


# --- the fixed-lag smoother ------------------------------------------------------------------------------

def mean_rotation(R: Tensor, w: Tensor) -> Tensor:
    """Weighted chordal mean of rotations ``[N, 3, 3]`` (weights ``[N]``): the SVD projection of
    ``sum w_i R_i`` onto SO(3)."""
    M = (w[:, None, None] * R).sum(0)
    U, _, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.det(U @ Vh))
    return U @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ Vh


def smooth_window(window: list[FrameSolution], centre: int, sigma: float) -> FrameSolution:
    """The solution of ``window[centre]`` with ``z_ex`` and pose replaced by Gaussian-weighted means over
    the window's non-gap frames of the same segment (no gap between them and the centre)."""
    sol = window[centre]
    if sol.status == "gap":
        return sol
    lo = centre
    while lo > 0 and window[lo - 1].status != "gap":
        lo -= 1
    hi = centre
    while hi < len(window) - 1 and window[hi + 1].status != "gap":
        hi += 1
    seg = window[lo:hi + 1]
    if len(seg) == 1:
        return sol
    offs = torch.tensor([s.index - sol.index for s in seg], dtype=torch.float64)
    w = torch.exp(-0.5 * (offs / sigma) ** 2)
    w = (w / w.sum()).to(sol.z_ex.dtype)
    z_ex = (w[:, None] * torch.stack([s.z_ex for s in seg])).sum(0)
    poses = torch.stack([s.pose for s in seg])  # [n, 6]
    R = mean_rotation(axis_angle_to_matrix(poses[:, :3]), w)
    t = (w[:, None] * poses[:, 3:]).sum(0)
    pose = torch.cat([matrix_to_axis_angle(R), t])
    return FrameSolution(sol.index, sol.time_s, sol.status, z_ex, pose, sol.K, sol.crop_to_frame, sol.confidence,
                         sol.loss, sol.steps, sol.payload, sol.detections)


class FixedLagSmoother:
    """Bounded-delay smoothing: :meth:`push` a frame, get back the frames that are ready (in order)."""

    def __init__(self, lag: int = 2, sigma: float = 1.0):
        if lag < 0 or sigma <= 0:
            raise ValueError(f"FixedLagSmoother needs lag >= 0 and sigma > 0, got {lag}, {sigma}")
        self.lag, self.sigma = lag, sigma
        self._buf: deque[FrameSolution] = deque()
        self._emitted = 0  # number of buffered frames already emitted (they stay as left context)

    def push(self, sol: FrameSolution) -> list[FrameSolution]:
        self._buf.append(sol)
        out = []
        while len(self._buf) - self._emitted > self.lag:
            out.append(self._emit())
        return out

    def flush(self) -> list[FrameSolution]:
        out = []
        while self._emitted < len(self._buf):
            out.append(self._emit())
        return out

    def _emit(self) -> FrameSolution:
        window = list(self._buf)
        res = smooth_window(window, self._emitted, self.sigma) if self.lag > 0 else window[self._emitted]
        self._emitted += 1
        while self._emitted > self.lag:  # keep ``lag`` emitted frames as left context
            self._buf.popleft()
            self._emitted -= 1
        return res


# --- the strategy ----------------------------------------------------------------------------------------

@dataclass
class TrackingStrategy:
    """Hooks of the video tracker (the defaults are what ``nphm-track VIDEO`` runs).

    Attributes:
        identity_frames: face frames whose feed-forward identities are aggregated (coordinate-wise median)
            into the video's one identity.
        identity_wait: at most this many frames (from the first face) are buffered for the identity; fewer
            faces than ``identity_frames`` by then are used as they are.
        keyframes: frames of the identity window refined jointly (shared ``z_id``) by ``identity_stages``.
        identity_stages: the joint keyframe TTO (rigid, then pose + ``z_ex`` + ``z_id``).
        frame_stages: the per-frame TTO (pose + ``z_ex``; ``w_code`` and ``w_pose`` pull towards the
            previous frame's solution, the temporal terms; ``w_prior`` towards this frame's feed-forward code).
            The point-map term is off per frame (``w_point=0``): the shipped point-map encoder is coarse
            (36 mm held-out L1, see its weights card) and, tried on a held-out synthetic video, pulling every
            frame towards its maps made the tracked expression motion worse; the point map still sets the
            pose at (re-)initialisation (with the pixel-to-vertex reprojection term) and drives the identity
            keyframes.
        reinit_after: a face back after more than this many gap frames restarts from the feed-forward
            prediction and a fresh pose instead of the previous frame's solution.
        reinit_loss_ratio: a frame whose TTO loss exceeds this multiple of the keyframes' loss is re-run once
            from the feed-forward prediction (the warm start drifted); the better of the two is kept.
        lag, sigma: the fixed-lag smoother's delay (frames) and Gaussian width (frames); ``lag=0`` is off.
    """

    identity_frames: int = 8
    identity_wait: int = 50
    keyframes: int = 3
    identity_stages: list[TTOStage] = field(default_factory=lambda: [
        TTOStage("id-rigid", 15, params=("pose",), lr_pose=1e-2),
        TTOStage("id-joint", 30, params=("pose", "z_ex", "z_id"), lr_pose=5e-3, lr_z_ex=1e-2, lr_z_id=1e-4),
    ])
    frame_stages: list[TTOStage] = field(default_factory=lambda: [
        TTOStage("frame", 6, params=("pose", "z_ex"), lr_pose=3e-3, lr_z_ex=5e-3, w_point=0.0, w_code=2.0,
                 w_pose=1.0, w_prior=1.0, patience=2),
    ])
    reinit_after: int = 5
    reinit_loss_ratio: float = 3.0
    lag: int = 2
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.identity_frames < 1 or self.keyframes < 1 or self.identity_wait < 1:
            raise ValueError("TrackingStrategy needs identity_frames, identity_wait and keyframes >= 1")

    def identity(self, z_ids: Tensor) -> Tensor:
        """The identity code ``[1, D_id]`` from per-frame feed-forward codes ``[N, D_id]``: the
        coordinate-wise median (robust to a few bad frames)."""
        return z_ids.median(0).values[None]

    def select_keyframes(self, z_ex: Tensor, confidence: Tensor) -> list[int]:
        """Indices (into the identity window) of the keyframes: the most confident frame, then greedily the
        frames whose feed-forward expressions are farthest from those chosen (varied expressions separate
        identity from expression)."""
        n = len(z_ex)
        chosen = [int(torch.argmax(confidence))]
        while len(chosen) < min(self.keyframes, n):
            d = torch.cdist(z_ex, z_ex[chosen]).min(1).values
            d[chosen] = -1.0
            chosen.append(int(torch.argmax(d)))
        return sorted(chosen)

    def reinitialise(self, previous: Optional[FrameSolution], gap_frames: int) -> bool:
        """Start this frame from the feed-forward prediction (True) or from the previous solution (False)."""
        return previous is None or gap_frames > self.reinit_after

    def retry(self, loss: float, reference_loss: float) -> bool:
        """Re-run the frame from the feed-forward prediction after a warm-started TTO ended at ``loss``."""
        return math.isfinite(reference_loss) and loss > self.reinit_loss_ratio * reference_loss

    def smoother(self) -> FixedLagSmoother:
        return FixedLagSmoother(self.lag, self.sigma)
