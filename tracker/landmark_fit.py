"""Test-time optimisation against dense 2D landmarks: the tracker's default evidence.

The head model's landmarks (:mod:`model.landmarks`) are posed by inverting the backward deformation at
their canonical positions (MonoNPHM's landmark loss, tied to canonical space), rotated and translated into
the camera and projected; a Levenberg-Marquardt (damped Gauss-Newton) solver fits them to the detector's
landmarks. About a thousand residuals and a few dozen parameters make each iteration one analytic Jacobian
(the networks' exact Jacobians by the chain rule, :func:`posed_tangents`), a few milliseconds on a CPU; a frame
needs 3-5 iterations.

Parameters (all optimised as increments or whitened coordinates):

- ``pose``: a rotation increment ``delta`` (axis-angle, radians) on a base rotation, ``R = exp(delta) R0``,
  and the translation ``t`` (model units), model -> camera (OpenCV: x right, y down, z forward);
- ``z_ex``: whitened coordinates ``beta`` in the principal subspace of the head model's training expression
  codes (``z_ex = mean + (beta * scale) @ basis``; ``expression_dims`` of them);
- ``z_id``: whitened coordinates ``alpha`` of :class:`model.landmarks.LandmarkMap` (shared by all frames);
- ``focal``: ``phi = log(f / f0)`` (shared), the focal length relative to the start value ``f0``.

Residuals of one frame, in units of the face size ``s`` (the RMS distance of the detections from their
centroid, pixels), each landmark weighted by its region and its embedding spread:

- ``landmarks``: ``(projected - detected) / s`` for the 478 points, with Huber weights (IRLS) of scale
  ``huber`` (a bad detection point cannot dominate);
- ``lids``: ``(upper - lower)_fitted - g * (upper - lower)_detected`` for vertically paired eyelid points,
  ``/ s``; ``g = min(1, ratio / closed_ratio)`` shrinks the detected opening when it is already small
  (``ratio`` = opening / eye width): MediaPipe under-closes blinks;
- priors: ``beta`` and ``alpha`` (whitened, so a training code has ``|.|^2 ~ dims``), ``phi``;
- temporal: ``beta - beta_prev``, the rotation between this and the previous frame (radians) and the
  translation change (centimetres: model units x 25).

Stages are data (:class:`LandmarkStage`); each runs at most ``iterations`` LM steps and stops early when the
cost falls by less than ``tolerance`` (relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from model.errors import InputError
from model.forward_deformation import PointEncoding, forward_posed, head_condition, posed_start, resolve_posing
from model.landmarks import LandmarkMap, linearised_posed
from tracker.tto import axis_angle_to_matrix, matrix_to_axis_angle

PARAMS = ("pose", "z_ex", "z_id", "focal")
CM_PER_UNIT = 25.0


@dataclass(frozen=True)
class LandmarkStage:
    """One Levenberg-Marquardt stage: what is optimised, for how long, and the loss weights."""

    name: str
    iterations: int
    """Most LM iterations (early stopping may end it sooner)."""
    params: tuple[str, ...] = ("pose", "z_ex")
    """A non-empty subset of ``("pose", "z_ex", "z_id", "focal")``."""
    w_landmarks: float = 1.0
    w_lids: float = 2.0
    w_ex_prior: float = 2e-3
    """Per whitened expression coordinate."""
    w_id_prior: float = 2e-3
    """Per whitened identity coordinate."""
    w_focal_prior: float = 1e-3
    """On ``phi = log(f / f0)``."""
    w_temporal_ex: float = 0.0
    """Per whitened expression coordinate, towards the previous frame."""
    w_temporal_rot: float = 0.0
    """On the rotation change (radians) from the previous frame."""
    w_temporal_t: float = 0.0
    """On the translation change (cm) from the previous frame."""
    huber: float = 0.03
    """Huber scale of the landmark residuals, in face sizes."""
    damping: float = 1e-3
    """Initial LM damping (relative to the diagonal of J^T J)."""
    tolerance: float = 1e-4
    """Stop when an accepted step lowers the cost by less than this fraction."""

    def __post_init__(self) -> None:
        if not self.params or any(p not in PARAMS for p in self.params) or len(set(self.params)) != len(self.params):
            raise InputError(f"LandmarkStage {self.name!r}: params must be a non-empty subset of {PARAMS}, got "
                             f"{self.params}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise InputError(f"LandmarkStage {self.name!r}: iterations must be an integer >= 0")
        for name in ("w_landmarks", "w_lids", "w_ex_prior", "w_id_prior", "w_focal_prior", "w_temporal_ex",
                     "w_temporal_rot", "w_temporal_t", "huber", "damping", "tolerance"):
            if not getattr(self, name) >= 0:
                raise InputError(f"LandmarkStage {self.name!r}: {name} must be >= 0, got {getattr(self, name)}")


EXPRESSION_HUBER = 0.1
"""Huber scale (face sizes) of the expression stages. The landmarks an expression moves are the ones far
from a neutral start, so a small scale (0.03, the default) down-weights exactly them: from exact
``browInnerUp`` targets the fit recovered 0.27-0.28 of the inner brow's motion at 0.03 and 0.54-0.65 at 0.1
(``tests/benchmarks/bench_expression_capacity.py --huber``); 0.1 face sizes still bounds a gross detector
outlier."""


def frame_stages() -> list[LandmarkStage]:
    """The per-frame fit: pose and expression, pulled towards the previous frame."""
    return [LandmarkStage("frame", 3, ("pose", "z_ex"), w_temporal_ex=2e-4, w_temporal_rot=2e-3,
                          w_temporal_t=5e-5, huber=EXPRESSION_HUBER)]


def start_stages() -> list[LandmarkStage]:
    """A frame without a previous solution: rigid first, then pose and expression."""
    return [LandmarkStage("rigid", 5, ("pose",)),
            LandmarkStage("expression", 10, ("pose", "z_ex"), tolerance=1e-6, huber=EXPRESSION_HUBER)]


def identity_stages() -> list[LandmarkStage]:
    """The joint keyframe fit: rigid and focal, then everything. The identity prior is 25x the per-frame
    default: with a weak one (2e-3) the fitted identities matched the landmarks but their neutral surface
    was farther from the truth than the mean head's (held-out synthetic videos, README "Measured")."""
    return [LandmarkStage("id-rigid", 6, ("pose", "focal")),
            LandmarkStage("id-joint", 15, ("pose", "z_ex", "z_id", "focal"), w_id_prior=5e-2)]


# --- the model side ------------------------------------------------------------------------------------

@dataclass
class LandmarkRig:
    """What the fit needs of the head model and the landmarks.

    Attributes:
        layer: the head layer (``model.head.HeadLayer``), frozen.
        landmark_map: canonical landmarks of ``z_id`` (the first ``n_fit`` are fitted, MediaPipe's 478).
        ex_mean, ex_basis, ex_scale: the expression subspace, ``[D_ex]``, ``[k, D_ex]`` orthonormal rows,
            ``[k]`` (std of the training codes along each row).
        ex_start: ``[k]`` the start expression (the mean neutral training code) in those coordinates.
        weights: ``[n_fit]`` per-landmark weights (region x embedding spread).
        lid_pairs: ``[P, 2]`` (upper, lower) landmark ids; lid_width: ``[P, 2]`` the eye's corner ids per pair.
        forward: the head's forward deformation (:mod:`model.forward_deformation`); ``None``: inversions
            start from the canonical points or the previous frame's solution (the mouth stays nearly shut,
            see that module).
        posing: how canonical landmarks are posed: ``"forward"`` (default with a forward model: one pass of
            it, :func:`model.forward_deformation.forward_posed`; a single answer where lips and lids meet)
            or ``"inverse"`` (the backward field inverted by Newton, from the forward prediction when there
            is one; MonoNPHM's way, with several roots at the lips and lids).
    """

    layer: Any
    landmark_map: LandmarkMap
    ex_mean: Tensor
    ex_basis: Tensor
    ex_scale: Tensor
    ex_start: Tensor
    weights: Tensor
    lid_pairs: Tensor
    lid_corners: Tensor
    n_fit: int = 478
    forward: Any = None
    posing: str = "inverse"
    _canonical_cache: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    @property
    def forward_posing(self) -> bool:
        return self.posing == "forward" and self.forward is not None

    @classmethod
    def build(cls, layer: Any, codes: dict[str, Tensor], landmark_map: LandmarkMap, weights: np.ndarray,
              lid_pairs: np.ndarray, lid_corners: np.ndarray, expression_dims: int = 32, forward: Any = None,
              posing: Optional[str] = None) -> "LandmarkRig":
        """From a head model with training code tables (``z_ex``, ``is_neutral``)."""
        if "z_ex" not in codes:
            raise InputError("the landmark tracker needs the head model's training expression codes (a head "
                             "trained by nphm-train head)")
        z = codes["z_ex"].detach().double().cpu()
        mean = z.mean(0)
        _, S, Vt = torch.linalg.svd(z - mean, full_matrices=False)
        k = min(expression_dims, len(S))
        basis, scale = Vt[:k], (S[:k] / math.sqrt(max(len(z) - 1, 1))).clamp_min(1e-8)
        neutral = codes.get("is_neutral")
        start = z[neutral.bool().cpu()].mean(0) if neutral is not None and bool(neutral.any()) else mean
        f = torch.float32
        return cls(layer=layer, landmark_map=landmark_map, ex_mean=mean.to(f), ex_basis=basis.to(f),
                   ex_scale=scale.to(f), ex_start=(((start - mean) @ basis.T) / scale).to(f),
                   weights=torch.as_tensor(weights, dtype=f), lid_pairs=torch.as_tensor(lid_pairs).long(),
                   lid_corners=torch.as_tensor(lid_corners).long(), n_fit=len(weights), forward=forward,
                   posing=resolve_posing(posing, forward))

    @property
    def expression_dims(self) -> int:
        return len(self.ex_basis)

    def z_ex(self, beta: Tensor) -> Tensor:
        """Expression codes ``[..., D_ex]`` of whitened coordinates ``[..., k]``."""
        return self.ex_mean + (beta * self.ex_scale) @ self.ex_basis

    def beta(self, z_ex: Tensor) -> Tensor:
        """Whitened coordinates ``[..., k]`` of expression codes ``[..., D_ex]`` (the subspace part)."""
        return ((z_ex - self.ex_mean) @ self.ex_basis.T) / self.ex_scale

    def z_id(self, alpha: Tensor) -> Tensor:
        return self.landmark_map.code_of(alpha)

    def canonical(self, alpha: Tensor) -> tuple[Tensor, Optional[PointEncoding]]:
        """The fitted landmarks' canonical points ``[n_fit, 3]`` at identity coordinates ``alpha`` and, with
        forward posing, their :class:`~model.forward_deformation.PointEncoding`. The last ``alpha``'s are kept
        (a video's frame fits hold the identity fixed), for a plain ``alpha``: not one that autograd or
        ``torch.func`` differentiates."""
        plain = _plain(alpha)
        cached = self._canonical_cache
        if plain and cached is not None and cached[0].shape == alpha.shape and torch.equal(cached[0], alpha):
            return cached[1], cached[2]
        can = self.landmark_map.from_coordinates(alpha)[:self.n_fit]
        encoding = self.forward.point_encoding(can) if self.forward_posing else None
        if plain:
            self._canonical_cache = (alpha.clone(), can, encoding)
        return can, encoding


def _plain(t: Tensor) -> bool:
    """``t`` is neither tracked by autograd nor wrapped by ``torch.func`` (whose tangents a cache would drop;
    without the check torch offers, no tensor counts as plain)."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and not t.requires_grad and not wrapped(t)


# --- per-frame data and state ----------------------------------------------------------------------------

@dataclass
class Observation:
    """One frame's detections: ``points [n_fit, 2]`` frame pixels (centres at integers)."""

    points: Tensor
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        if self.points.dim() != 2 or self.points.shape[1] != 2:
            raise InputError(f"Observation.points must be [L, 2], got {tuple(self.points.shape)}")
        c = self.points.mean(0)
        self.scale = float((self.points - c).square().sum(1).mean().sqrt().clamp_min(1.0))


@dataclass
class FrameState:
    """One frame's fitted parameters and the inversion's current solution."""

    R: Tensor  # [3, 3] model -> camera rotation
    t: Tensor  # [3] model units
    beta: Tensor  # [k] whitened expression coordinates
    x: Optional[Tensor] = None  # [L, 3] posed landmarks (head frame), the Newton iterate
    inv_jac: Optional[Tensor] = None  # [L, 3, 3]

    def copy(self) -> "FrameState":
        return FrameState(self.R.clone(), self.t.clone(), self.beta.clone(),
                          None if self.x is None else self.x.clone(),
                          None if self.inv_jac is None else self.inv_jac.clone())

    @property
    def pose(self) -> Tensor:
        """``[6]`` (rotvec, t), model -> camera."""
        return torch.cat([matrix_to_axis_angle(self.R.double()).float(), self.t])


@dataclass
class Shared:
    """Parameters shared by the frames of a video: the identity and the camera."""

    alpha: Tensor  # [r] whitened identity coordinates
    phi: Tensor  # [] log(f / f0)
    K0: Tensor  # [3, 3] start intrinsics (frame pixels)

    def K(self) -> Tensor:
        return _scaled_K(self.K0, self.phi)

    def copy(self) -> "Shared":
        return Shared(self.alpha.clone(), self.phi.clone(), self.K0.clone())


@dataclass
class FitReport:
    cost: float
    iterations: int
    history: dict[str, list[float]]


def _scaled_K(K0: Tensor, phi: Tensor) -> Tensor:
    s = torch.exp(phi)
    return torch.stack([torch.stack([K0[0, 0] * s, K0[0, 1], K0[0, 2]]),
                        torch.stack([K0[1, 0], K0[1, 1] * s, K0[1, 2]]), K0[2]])


def project(cam: Tensor, K: Tensor) -> Tensor:
    """Camera points ``[N, 3]`` -> pixels ``[N, 2]``."""
    z = cam[:, 2:3].clamp_min(1e-4)
    return cam[:, :2] / z * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


# --- posing and projection -------------------------------------------------------------------------------

MAX_NEWTON_STEP = 0.02
"""Longest Newton step of one landmark in the inversion, model units (5 mm): near a fold of the backward
field (the lips or lids meeting) a full step can jump to another root far away."""


NEWTON_TOL = 1e-5
"""Residual (model units, 2.5 micrometres) at which :func:`newton_refine` stops early."""
FORWARD_NEWTON_STEPS = 8
"""Most Newton steps from the forward model's start (it stops early once every landmark converged)."""


def newton_refine(rig: LandmarkRig, canonical: Tensor, z_id: Tensor, z_ex: Tensor, x: Optional[Tensor],
                  steps: int = 2) -> tuple[Tensor, Tensor]:
    """Posed landmarks ``[L, 3]`` for canonical ``[L, 3]`` and codes ``[D]`` by at most ``steps`` Newton steps
    of the inversion from ``x`` (default: the canonical points), with the exact inverse Jacobian
    ``[L, 3, 3]``; it stops early when every residual is below :data:`NEWTON_TOL`. With the rig's forward
    deformation, forward posing returns its pass (and no Jacobian); inverse posing ignores the warm start
    ``x`` (a previous solution can sit on a wrong root) and starts from the forward prediction with at least
    :data:`FORWARD_NEWTON_STEPS` steps.

    :func:`model.topology.invert_deformation` (``method="newton"``) solves the same equation to a tolerance;
    this fixed-step variant is the per-frame hot path: its Jacobians come in the same forward pass
    (``deform_with_jacobian``, forward mode) instead of three backward passes, and the LM needs the exact
    inverse Jacobian at the returned point, not at the one before the last step."""
    with torch.no_grad():
        zi, ze = z_id[None], z_ex[None]
        if rig.forward_posing:  # no inversion: the forward pass is the posing (inverse Jacobian unused)
            return forward_posed(rig.forward, rig.layer, canonical[None], zi, ze)[0], None
        if rig.forward is not None:
            x, steps = None, max(steps, FORWARD_NEWTON_STEPS)
        x = posed_start(rig.forward, rig.layer, canonical[None], zi, ze)[0] if x is None else x.clone()
        out, jac = rig.layer.deform_with_jacobian(x[None], zi, ze)
        r = x + out.offsets[0] - canonical
        for _ in range(steps):
            if float(r.norm(dim=-1).max()) < NEWTON_TOL:
                break
            step = -(torch.linalg.inv(torch.eye(3, dtype=x.dtype) + jac[0]) @ r.unsqueeze(-1)).squeeze(-1)
            length = step.norm(dim=-1, keepdim=True)
            step = step * (MAX_NEWTON_STEP / length.clamp_min(MAX_NEWTON_STEP))  # trust radius
            for attempt in range(4):  # backtracking: a point whose residual grows takes half the step
                out_new, jac_new = rig.layer.deform_with_jacobian((x + step)[None], zi, ze)
                r_new = x + step + out_new.offsets[0] - canonical
                worse = r_new.norm(dim=-1) > r.norm(dim=-1)
                if attempt == 3 or not bool(worse.any()):
                    break  # r_new and jac_new belong to x + step
                step = torch.where(worse[:, None], 0.5 * step, step)
            x, r, jac = x + step, r_new, jac_new
        return x, torch.linalg.inv(torch.eye(3, dtype=x.dtype) + jac[0])


def pose_landmarks(rig: LandmarkRig, shared: Shared, state: FrameState, steps: int = 3,
                   canonical: Optional[Tensor] = None) -> Tensor:
    """Posed landmarks ``[L, 3]`` (head frame) of a state, all the map's landmarks unless ``canonical``."""
    canonical = rig.landmark_map.from_coordinates(shared.alpha) if canonical is None else canonical
    x, _ = newton_refine(rig, canonical, rig.z_id(shared.alpha), rig.z_ex(state.beta), None, steps)
    return x


def projected(shared: Shared, state: FrameState, x: Tensor) -> Tensor:
    """Pixels ``[L, 2]`` of head-frame points ``[L, 3]`` under a frame's pose and the shared camera."""
    return project(x @ state.R.T + state.t, shared.K())


# --- the solver ------------------------------------------------------------------------------------------

def lid_targets(rig: LandmarkRig, det: Tensor, closed_ratio: float = 0.2) -> Tensor:
    """``[P, 2]`` target (upper - lower) vectors: the detected ones, shrunk when the eye is nearly closed."""
    up, lo = det[rig.lid_pairs[:, 0]], det[rig.lid_pairs[:, 1]]
    width = (det[rig.lid_corners[:, 0]] - det[rig.lid_corners[:, 1]]).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    v = up - lo
    ratio = v.norm(dim=-1, keepdim=True) / width
    return v * (ratio / closed_ratio).clamp(max=1.0)


class _Layout:
    """Slices of the flat parameter vector of one frame's block: shared free params first, then own."""

    def __init__(self, stage: LandmarkStage, r: int, k: int):
        self.shared: list[tuple[str, int]] = []
        self.own: list[tuple[str, int]] = []
        if "z_id" in stage.params:
            self.shared.append(("alpha", r))
        if "focal" in stage.params:
            self.shared.append(("phi", 1))
        if "pose" in stage.params:
            self.own += [("delta", 3), ("t", 3)]
        if "z_ex" in stage.params:
            self.own.append(("beta", k))
        self.n_shared = sum(n for _, n in self.shared)
        self.n_own = sum(n for _, n in self.own)

    def split(self, p: Tensor, entries: list[tuple[str, int]]) -> dict[str, Tensor]:
        out, i = {}, 0
        for name, n in entries:
            out[name] = p[i:i + n]
            i += n
        return out


def relu_mlp_jacobian(mlp: torch.nn.Sequential, x: Tensor) -> Tensor:
    """``[out, in]`` Jacobian at ``x [in]`` of a sequence of ``Linear`` and ``ReLU`` layers (reverse accumulation;
    a ReLU's derivative at 0 is taken as 0, as autograd does)."""
    masks, weights, h = [], [], x
    for module in mlp:
        if isinstance(module, torch.nn.Linear):
            weights.append(module.weight)
            masks.append(None)
        elif isinstance(module, torch.nn.ReLU):
            masks[-1] = (h > 0).to(h.dtype)
        else:
            raise InputError(f"relu_mlp_jacobian: only Linear and ReLU layers, got {type(module).__name__}")
        h = module(h)
    J = None
    for W, m in zip(reversed(weights), reversed(masks)):
        if m is not None:
            J = J * m if J is not None else torch.diag(m)
        J = W if J is None else J @ W
    return J


def condition_directions(rig: LandmarkRig, alpha: Tensor, with_alpha: bool, with_beta: bool) -> list[Tensor]:
    """Tangents of the deformation's conditioning vector ``[compressed id, z_ex]``: ``[r, C]`` along the
    identity coordinates ``alpha`` (through the compressor and the anchors) and ``[k, C]`` along the
    expression coordinates, in that order, for the blocks asked for."""
    layer = rig.layer
    deformation = layer.deformation
    n_comp, d_ex = deformation.compressor.out_features, rig.ex_basis.shape[1]
    dirs = []
    if with_alpha:  # compressed = W_z z + W_a anchors(z[:g]).flatten() + b, with z = code_of(alpha) affine
        lmap, g = rig.landmark_map, layer.cfg.id_global_dim
        dz = (lmap.scale[:, None] * lmap.basis).T  # [D_id, r]
        z = rig.z_id(alpha)
        d_anchors = relu_mlp_jacobian(layer.anchor_offsets, z[:g]) @ dz[:g]  # [3A, r]
        W = deformation.compressor.weight
        dcomp = W[:, :len(z)] @ dz + W[:, len(z):] @ d_anchors  # [n_comp, r]
        dirs.append(torch.cat([dcomp.T, torch.zeros(len(alpha), d_ex)], 1))
    if with_beta:
        dirs.append(torch.cat([torch.zeros(rig.expression_dims, n_comp), rig.ex_scale[:, None] * rig.ex_basis], 1))
    return dirs


def posed_tangents(rig: LandmarkRig, alpha: Tensor, state: FrameState, with_alpha: bool, with_beta: bool
                   ) -> tuple[Tensor, Tensor]:
    """The posed landmarks ``x0 [L, 3]`` at the current codes (one Newton step from ``state.x``) and their
    derivatives ``G [L, 3, T]`` with respect to ``alpha`` (first ``r`` columns, when ``with_alpha``) and
    ``beta`` (next ``k``, when ``with_beta``), by forward-mode tangents through the deformation network
    (:meth:`model.head.DeformationMLP.forward_with_cond_tangents`) and the implicit function theorem."""
    if rig.forward_posing:
        return forward_tangents(rig, alpha, state.beta, with_alpha, with_beta)
    layer, lmap = rig.layer, rig.landmark_map
    deformation = layer.deformation
    with torch.no_grad():
        z_id, z_ex = rig.z_id(alpha)[None], rig.z_ex(state.beta)[None]
        dirs = condition_directions(rig, alpha, with_alpha, with_beta)
        cond = deformation.condition(z_id, z_ex, layer.anchors(z_id))
        canonical = lmap.from_coordinates(alpha)[:rig.n_fit]
        if dirs:
            out, jac = deformation.forward_with_cond_tangents(state.x[None], cond, torch.cat(dirs))
            G = -(state.inv_jac @ jac[0, :, :3, :])  # [L, 3, T]
        else:
            out, G = deformation(state.x[None], cond), torch.zeros(rig.n_fit, 3, 0)
        x0 = state.x - (state.inv_jac @ (state.x + out[0, :, :3] - canonical).unsqueeze(-1)).squeeze(-1)
        if with_alpha:
            dc = (lmap.scale[:, None, None] * lmap.B[:, :rig.n_fit]).permute(1, 2, 0)  # [L, 3, r]
            G[..., :len(alpha)] += state.inv_jac @ dc
    return x0, G


def forward_tangents(rig: LandmarkRig, alpha: Tensor, beta: Tensor, with_alpha: bool, with_beta: bool
                     ) -> tuple[Tensor, Tensor]:
    """:func:`posed_tangents` for forward posing: ``x [L, 3]`` and ``G [L, 3, T]`` (``alpha`` columns, then
    ``beta``) of ``x = c(alpha) + forward(c(alpha), cond(alpha, beta))``, from the forward network's exact
    Jacobians in the point and the conditioning
    (:meth:`model.forward_deformation.ForwardDeformation.jacobians`) and the chain rule."""
    layer, lmap, fwd = rig.layer, rig.landmark_map, rig.forward
    deformation = layer.deformation
    with torch.no_grad():
        z_id, z_ex = rig.z_id(alpha)[None], rig.z_ex(beta)[None]
        cond = deformation.condition(z_id, z_ex, layer.anchors(z_id))[0]
        can, encoding = rig.canonical(alpha)
        if not (with_alpha or with_beta):
            return can + fwd(can[None], cond[None])[0], torch.zeros(rig.n_fit, 3, 0)
        off, d_x, d_cond = fwd.jacobians(can, cond, encoding)  # [L, 3], [L, 3, 3], [L, 3, C]
        dirs = condition_directions(rig, alpha, with_alpha, with_beta)
        cols = []
        if with_alpha:
            dc = (lmap.scale[:, None, None] * lmap.B[:, :rig.n_fit]).permute(1, 2, 0)  # [L, 3, r]
            cols.append(dc + d_x @ dc + d_cond @ dirs[0].T)
        if with_beta:
            cols.append(d_cond @ dirs[-1].T)
    return can + off, torch.cat(cols, -1)


def _frame_residual(rig: LandmarkRig, stage: LandmarkStage, obs: Observation, robust: Tensor, lids: Tensor,
                    shared: Shared, state: FrameState, prev: Optional[FrameState], layout: _Layout,
                    p_shared: Tensor, p_own: Tensor, posed: Optional[list] = None) -> Tensor:
    """All residuals of one frame (data, its own priors and temporal terms) as a flat vector, the landmarks
    posed by one Newton step of the inversion from the state's solution. :func:`_frame_system` gives the
    same residuals with their Jacobian. ``posed``: a list that receives the posed landmarks ``[L, 3]``."""
    sh, own = layout.split(p_shared, layout.shared), layout.split(p_own, layout.own)
    alpha = sh.get("alpha", shared.alpha)
    phi = sh["phi"][0] if "phi" in sh else shared.phi
    beta = own.get("beta", state.beta)
    delta = own.get("delta", torch.zeros(3, dtype=state.t.dtype))
    t = own.get("t", state.t)
    canonical, encoding = rig.canonical(alpha)
    if rig.forward_posing:  # forward_posed, with the points' part of the network kept per identity
        cond = head_condition(rig.layer, rig.z_id(alpha)[None], rig.z_ex(beta)[None])
        x = canonical + rig.forward.offsets_at(encoding.features[None], cond)[0]
    else:
        x = linearised_posed(rig.layer, state.x[None], state.inv_jac[None], canonical[None],
                             rig.z_id(alpha)[None], rig.z_ex(beta)[None])[0]
    if posed is not None:
        posed.append(x)
    R = axis_angle_to_matrix(delta) @ state.R
    uv = project(x @ R.T + t, _scaled_K(shared.K0, phi))  # [L, 2]
    s = obs.scale
    w = (rig.weights * robust).sqrt()[:, None]
    res = [math.sqrt(stage.w_landmarks) * w * (uv - obs.points) / s]
    if stage.w_lids > 0 and len(rig.lid_pairs):
        fit = uv[rig.lid_pairs[:, 0]] - uv[rig.lid_pairs[:, 1]]
        res.append(math.sqrt(stage.w_lids) * (fit - lids) / s)
    if "beta" in own:
        res.append(math.sqrt(stage.w_ex_prior) * beta)
        if prev is not None and stage.w_temporal_ex > 0:
            res.append(math.sqrt(stage.w_temporal_ex) * (beta - prev.beta))
    if "delta" in own and prev is not None:
        if stage.w_temporal_rot > 0:
            # rotation change ~ delta + log(R0 R_prev^T) for small angles (both in the camera frame)
            base = matrix_to_axis_angle((state.R @ prev.R.T).double()).to(delta.dtype)
            res.append(math.sqrt(stage.w_temporal_rot) * (delta + base))
        if stage.w_temporal_t > 0:
            res.append(math.sqrt(stage.w_temporal_t) * (t - prev.t) * CM_PER_UNIT)
    return torch.cat([r.reshape(-1) for r in res])


def _skew(v: Tensor) -> Tensor:
    """``[..., 3] -> [..., 3, 3]`` cross-product matrices, ``skew(a) @ b = a x b``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2)


def _frame_system(rig: LandmarkRig, stage: LandmarkStage, obs: Observation, robust: Tensor, lids: Tensor,
                  shared: Shared, state: FrameState, prev: Optional[FrameState], layout: _Layout
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The residuals of :func:`_frame_residual` at the current parameters with their analytic Jacobians
    ``J_shared [M, n_shared]`` and ``J_own [M, n_own]`` (columns in the layout's order)."""
    with_alpha, with_beta = "alpha" in dict(layout.shared), "beta" in dict(layout.own)
    x0, G = posed_tangents(rig, shared.alpha, state, with_alpha, with_beta)  # [L, 3], [L, 3, T]
    K = shared.K()
    X = x0 @ state.R.T  # [L, 3] rotated, before translation
    cam = X + state.t
    z = cam[:, 2].clamp_min(1e-4)
    fx, fy = K[0, 0], K[1, 1]
    uv = torch.stack([fx * cam[:, 0] / z + K[0, 2], fy * cam[:, 1] / z + K[1, 2]], -1)
    P = torch.zeros(len(cam), 2, 3)
    P[:, 0, 0], P[:, 1, 1] = fx / z, fy / z
    P[:, 0, 2], P[:, 1, 2] = -fx * cam[:, 0] / z ** 2, -fy * cam[:, 1] / z ** 2
    cols_s, cols_o = [], []  # d uv / d params, [L, 2, n]
    r = len(shared.alpha)
    RG = state.R @ G if G.shape[-1] else G  # [L, 3, T]
    for name, _ in layout.shared:
        if name == "alpha":
            cols_s.append(P @ RG[..., :r])
        else:  # phi: uv - c scales with the focal length
            cols_s.append((uv - torch.stack([K[0, 2], K[1, 2]]))[..., None])
    for name, _ in layout.own:
        if name == "delta":
            cols_o.append(P @ -_skew(X))
        elif name == "t":
            cols_o.append(P)
        else:
            cols_o.append(P @ RG[..., (r if with_alpha else 0):])
    Ju_s = torch.cat(cols_s, -1) if cols_s else torch.zeros(len(cam), 2, 0)
    Ju_o = torch.cat(cols_o, -1) if cols_o else torch.zeros(len(cam), 2, 0)
    s = obs.scale
    w = (rig.weights * robust).sqrt()[:, None]  # [L, 1]
    c = math.sqrt(stage.w_landmarks) / s
    res = [(c * w * (uv - obs.points)).reshape(-1)]
    n_pts = len(cam)
    js = [(c * w[..., None] * Ju_s).reshape(2 * n_pts, Ju_s.shape[-1])]
    jo = [(c * w[..., None] * Ju_o).reshape(2 * n_pts, Ju_o.shape[-1])]
    if stage.w_lids > 0 and len(rig.lid_pairs):
        up, lo = rig.lid_pairs[:, 0], rig.lid_pairs[:, 1]
        c = math.sqrt(stage.w_lids) / s
        res.append((c * (uv[up] - uv[lo] - lids)).reshape(-1))
        js.append((c * (Ju_s[up] - Ju_s[lo])).reshape(2 * len(up), Ju_s.shape[-1]))
        jo.append((c * (Ju_o[up] - Ju_o[lo])).reshape(2 * len(up), Ju_o.shape[-1]))

    def own_rows(name: str, value: Tensor, weight: float, gain: float = 1.0) -> None:
        """Rows ``sqrt(weight) * gain * value`` whose Jacobian is ``sqrt(weight) * gain * I`` on parameter
        block ``name``."""
        q = math.sqrt(weight) * gain
        J = torch.zeros(len(value), layout.n_own)
        i = 0
        for n_, size in layout.own:
            if n_ == name:
                J[:, i:i + size] = q * torch.eye(size)
            i += size
        res.append(q * value)
        js.append(torch.zeros(len(value), layout.n_shared))
        jo.append(J)

    if with_beta:
        own_rows("beta", state.beta, stage.w_ex_prior)
        if prev is not None and stage.w_temporal_ex > 0:
            own_rows("beta", state.beta - prev.beta, stage.w_temporal_ex)
    if "delta" in dict(layout.own) and prev is not None:
        if stage.w_temporal_rot > 0:
            own_rows("delta", matrix_to_axis_angle((state.R @ prev.R.T).double()).float(), stage.w_temporal_rot)
        if stage.w_temporal_t > 0:
            own_rows("t", state.t - prev.t, stage.w_temporal_t, CM_PER_UNIT)
    return torch.cat(res), torch.cat(js), torch.cat(jo)


def _shared_residual(stage: LandmarkStage, layout: _Layout, p_shared: Tensor) -> Tensor:
    sh = layout.split(p_shared, layout.shared)
    res = [torch.zeros(0, dtype=p_shared.dtype)]
    if "alpha" in sh:
        res.append(math.sqrt(stage.w_id_prior) * sh["alpha"])
    if "phi" in sh:
        res.append(math.sqrt(stage.w_focal_prior) * sh["phi"])
    return torch.cat(res)


def _shared_jacobian(stage: LandmarkStage, layout: _Layout) -> Tensor:
    """``[n_shared, n_shared]`` the (diagonal) Jacobian of :func:`_shared_residual`."""
    d = [torch.full((n,), math.sqrt(stage.w_id_prior if name == "alpha" else stage.w_focal_prior))
         for name, n in layout.shared]
    return torch.diag(torch.cat(d)) if d else torch.zeros(0, 0)


def _huber_weights(rig: LandmarkRig, obs: Observation, shared: Shared, state: FrameState, huber: float) -> Tensor:
    if huber <= 0:
        return torch.ones(rig.n_fit)
    uv = projected(shared, state, state.x[:rig.n_fit])
    e = (uv - obs.points).norm(dim=-1) / obs.scale
    return torch.where(e <= huber, torch.ones_like(e), huber / e.clamp_min(1e-12))


def _apply(layout: _Layout, shared: Shared, states: list[FrameState], p: Tensor) -> tuple[Shared, list[FrameState]]:
    sh = layout.split(p[:layout.n_shared], layout.shared)
    new_shared = Shared(sh["alpha"].clone() if "alpha" in sh else shared.alpha.clone(),
                        sh["phi"][0].clone() if "phi" in sh else shared.phi.clone(), shared.K0)
    out = []
    for i, st in enumerate(states):
        lo = layout.n_shared + i * layout.n_own
        own = layout.split(p[lo:lo + layout.n_own], layout.own)
        R = axis_angle_to_matrix(own["delta"]) @ st.R if "delta" in own else st.R.clone()
        out.append(FrameState(R, own["t"].clone() if "t" in own else st.t.clone(),
                              own["beta"].clone() if "beta" in own else st.beta.clone(), st.x, st.inv_jac))
    return new_shared, out


def _vector(layout: _Layout, shared: Shared, states: list[FrameState]) -> Tensor:
    parts = []
    for name, _ in layout.shared:
        parts.append(shared.alpha if name == "alpha" else shared.phi.reshape(1))
    for st in states:
        for name, _ in layout.own:
            parts.append(torch.zeros(3) if name == "delta" else st.t if name == "t" else st.beta)
    return torch.cat(parts) if parts else torch.zeros(0)


def fit(rig: LandmarkRig, observations: Sequence[Observation], shared: Shared, states: list[FrameState],
        stages: Sequence[LandmarkStage], previous: Optional[FrameState] = None
        ) -> tuple[Shared, list[FrameState], FitReport]:
    """Fit ``K`` frames (one shared identity and camera) to their detections by LM, stage after stage.

    ``previous`` (one frame only) is the previous frame's solution for the temporal terms. Returns the new
    shared parameters, the frame states and a report (final cost, iterations, cost per stage)."""
    if len(observations) != len(states) or not states:
        raise InputError(f"fit: need one state per observation, got {len(states)} and {len(observations)}")
    if previous is not None and len(states) != 1:
        raise InputError("fit: temporal terms (previous) are for one frame at a time")
    shared = shared.copy()
    states = [s.copy() for s in states]
    history: dict[str, list[float]] = {}
    iterations = 0
    cost = math.nan
    z_id = rig.z_id(shared.alpha)
    canonical = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
    for st in states:
        st.x, st.inv_jac = newton_refine(rig, canonical, z_id, rig.z_ex(st.beta), st.x, steps=2 if st.x is None else 1)
    lids = [lid_targets(rig, o.points) for o in observations]  # depend on the detections only
    for stage in stages:
        layout = _Layout(stage, rig.landmark_map.rank, rig.expression_dims)
        lam = stage.damping
        costs: list[float] = []
        for _ in range(stage.iterations):
            robust = [_huber_weights(rig, o, shared, s, stage.huber) for o, s in zip(observations, states)]
            p0 = _vector(layout, shared, states)
            n = len(p0)
            blocks, rows = [], []

            for i in range(len(states)):
                r, Js, Jo = _frame_system(rig, stage, observations[i], robust[i], lids[i], shared, states[i],
                                          previous, layout)
                lo = layout.n_shared + i * layout.n_own
                J = torch.zeros(len(r), n)
                J[:, :layout.n_shared] = Js
                J[:, lo:lo + layout.n_own] = Jo
                blocks.append(J)
                rows.append(r)
            if layout.n_shared:
                ps = p0[:layout.n_shared]
                r = _shared_residual(stage, layout, ps)
                J = torch.zeros(len(r), n)
                J[:, :layout.n_shared] = _shared_jacobian(stage, layout)
                blocks.append(J)
                rows.append(r)
            J, r = torch.cat(blocks).double(), torch.cat(rows).double()
            cost = float(r.square().sum())
            if not costs:
                costs.append(cost)
            A, g = J.T @ J, J.T @ r
            diag = A.diagonal().clamp_min(1e-9)
            accepted = False
            for _ in range(8):
                step = torch.linalg.solve(A + lam * torch.diag(diag), -g).float()
                new_shared, new_states = _apply(layout, shared, states, p0 + step)
                posed: list[Tensor] = []
                new_cost = _cost(rig, stage, observations, robust, lids, new_shared, new_states, previous, layout,
                                 posed)
                if new_cost < cost:
                    accepted = True
                    break
                lam *= 10.0
            iterations += 1
            if not accepted:
                break
            lam = max(lam / 10.0, 1e-7)
            shared, states = new_shared, new_states
            if rig.forward_posing:  # the trial posed the landmarks at the accepted parameters already
                for st, x in zip(states, posed):
                    st.x, st.inv_jac = x, None
            else:
                z_id = rig.z_id(shared.alpha)
                canonical = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
                for st in states:
                    st.x, st.inv_jac = newton_refine(rig, canonical, z_id, rig.z_ex(st.beta), st.x, steps=1)
            costs.append(new_cost)
            if cost - new_cost < stage.tolerance * cost:
                break
        history[stage.name] = costs
        cost = costs[-1] if costs else cost
    return shared, states, FitReport(cost=cost, iterations=iterations, history=history)


def _cost(rig, stage, observations, robust, lids, shared, states, previous, layout, posed=None) -> float:
    """The total cost at the states' parameters; ``posed`` (a list) receives each frame's posed landmarks."""
    total = 0.0
    ps = _vector(layout, shared, states)[:layout.n_shared]
    for i, (o, st) in enumerate(zip(observations, states)):
        lo = layout.n_shared + i * layout.n_own
        # the states already hold the new parameters: evaluate with zero increments
        own = _vector(layout, shared, [st])[layout.n_shared:]
        r = _frame_residual(rig, stage, o, robust[i], lids[i], shared, st, previous, layout, ps, own, posed)
        total += float(r.double().square().sum())
    if layout.n_shared:
        total += float(_shared_residual(stage, layout, ps).double().square().sum())
    return total


# --- pose initialisation ---------------------------------------------------------------------------------

def pnp_pose(points_3d: np.ndarray, points_2d: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model -> camera pose ``(R [3, 3], t [3])`` of 3D points ``[N, 3]`` seen at pixels ``[N, 2]`` (OpenCV's
    SQPnP, then its Levenberg-Marquardt refinement)."""
    import cv2

    obj = np.ascontiguousarray(points_3d, dtype=np.float64)
    img = np.ascontiguousarray(points_2d, dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, np.asarray(K, np.float64), None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise InputError("PnP failed on the landmarks")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, np.asarray(K, np.float64), None, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    return R, tvec.reshape(3)


def start_state(rig: LandmarkRig, shared: Shared, obs: Observation) -> FrameState:
    """A frame state from PnP of the detections against the identity's neutral landmarks."""
    beta = rig.ex_start.clone()
    canonical = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
    x, inv = newton_refine(rig, canonical, rig.z_id(shared.alpha), rig.z_ex(beta), None, steps=3)
    R, t = pnp_pose(x.numpy(), obs.points.numpy(), shared.K().numpy())
    return FrameState(torch.as_tensor(R, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32), beta, x, inv)


def rotation_distance(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle (degrees) of ``Ra Rb^T``."""
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def select_keyframes(rotations: Sequence[np.ndarray], k: int) -> list[int]:
    """``k`` frames chosen for pose diversity: the most frontal-to-the-rest one (medoid of the rotations),
    then greedily the frame farthest (in rotation) from those chosen."""
    n = len(rotations)
    if n == 0:
        return []
    D = np.array([[rotation_distance(a, b) for b in rotations] for a in rotations])
    chosen = [int(np.argmin(D.sum(1)))]
    while len(chosen) < min(k, n):
        d = D[:, chosen].min(1)
        d[chosen] = -1.0
        chosen.append(int(np.argmax(d)))
    return sorted(chosen)
