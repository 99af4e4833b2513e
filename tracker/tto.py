"""Single-image test-time optimisation (TTO, the Pix2NPHM paper's Eq. 10) on the fixed-topology mesh.

Given start codes (the regressor's prediction, also the regularisation target), a start pose and the
encoders' predictions for one image (camera-space normals and canonical point map over a face mask),
optimise the rigid pose, ``z_ex`` and ``z_id`` in stages (:class:`TTOStage`; stages are data).

Route (our choice, measured in ``tests/benchmarks/bench_tto.py``): the *fast* route on the fixed-topology
canonical mesh with forward deformation (:class:`model.topology.FixedTopology`). Each step

1. poses the canonical vertices for the current codes by inverting the backward deformation
   (implicit gradients w.r.t. ``z_ex`` and ``z_id``),
2. snaps them onto the current zero level set by one Newton step along the (detached) vertex normal,
   ``x <- x - sdf(x; z_id, z_ex) * n``; this is how ``z_id`` changes of the *canonical shape* reach the
   mesh: the canonical mesh is kept from the start identity (never rebuilt), and the identity acts
   through the deformation and through this snap (first order in the shape change),
3. applies the pose (model -> camera) and projects with ``K``,
4. compares per *vertex* ("vertex splatting", no renderer): visible vertices (front-facing and passing a
   point z-buffer test, both detached selections) sample the predicted maps bilinearly at their
   projections; normal term ``1 - cos(R n_vertex, N(uv))``; point-map term ``|v_canonical - P(uv)|_1``
   (model units) where ``v_canonical`` is the vertex's canonical position on the start mesh. The
   point-map term is differentiable through the sampling location ``uv`` (pose and deformation).
   The paper renders the SDF instead; splatting needs no renderer and is differentiable everywhere.
5. adds a pixel -> vertex reprojection term (:func:`pixel_correspondences`): each mask pixel is matched
   once to the canonical vertex nearest to its predicted canonical point, and that vertex's projection
   should land on the pixel (model units at the vertex depth). It constrains depth and scale, which the
   vertex -> pixel terms leave weak (they ignore vertices falling outside the mask).

The pose is optimised as a rotation increment on top of a per-stage base rotation (axis-angle near 180
degrees, the frontal camera, is a poor chart). The layer's parameters are never touched (gradients are
taken with ``torch.autograd.grad`` on the optimised tensors only).

Conventions: OpenCV camera (x right, y down, z forward), pixel centres at integer coordinates
(``train.camera``). Pose is model-to-camera, ``x_cam = R(rotvec) @ x_model + t``, as a ``[6]`` tensor
``(rotvec [3] axis-angle in radians, t [3] model units)``. Model units: 1 unit = 250 mm.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from model.errors import InputError
from model.topology import FixedTopology

PARAMS = ("pose", "z_id", "z_ex")
MM_PER_UNIT = 250.0


# --- configuration ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TTOStage:
    """One optimisation stage: what is optimised, for how long, and how the loss is weighted."""

    name: str
    """Label used in the history."""
    steps: int
    """Most Adam steps of this stage (early stopping may end it sooner)."""
    lr_pose: float = 5e-3
    """Adam learning rate of the pose vector (radians and model units per step, roughly)."""
    lr_z_ex: float = 1e-3
    """Adam learning rate of ``z_ex`` (training codes have a per-dimension std of ~0.015)."""
    lr_z_id: float = 3e-4
    """Adam learning rate of ``z_id`` (per-dimension std ~0.013; 512 dims, so slower than ``z_ex``)."""
    params: tuple[str, ...] = ("pose",)
    """Optimised parameters, a non-empty subset of ``("pose", "z_id", "z_ex")``."""
    w_normal: float = 1.0
    """Weight of the normal term (mean ``1 - cos`` over visible vertices, unitless)."""
    w_point: float = 10.0
    """Weight of the point-map term (mean L1 over visible vertices, model units)."""
    w_reproj: float = 10.0
    """Weight of the pixel-to-vertex reprojection term (mean over mask pixels, model units; see
    :func:`pixel_correspondences`)."""
    w_code: float = 1.0
    """Weight of ``|z_id - z_id0|^2 + |z_ex - z_ex0|^2`` (squared L2 to the start codes)."""
    w_pose: float = 0.0
    """Weight of ``|R - R0|_F^2 + |t - t0|^2`` (model units) towards the start pose."""
    w_prior: float = 0.0
    """Weight of ``|z_ex - z_ex_prior|^2`` when a second expression target is given (see :func:`optimise`)."""
    patience: int = 15
    """Stop after this many steps without a relative loss improvement of at least ``tolerance``."""
    tolerance: float = 1e-3
    """Relative improvement of the best loss that resets the patience counter."""

    def __post_init__(self) -> None:
        if not self.params or any(p not in PARAMS for p in self.params) or len(set(self.params)) != len(self.params):
            raise InputError(f"TTOStage {self.name!r}: params must be a non-empty subset of {PARAMS}, got {self.params}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise InputError(f"TTOStage {self.name!r}: steps must be an integer >= 0, got {self.steps}")
        for name in ("lr_pose", "lr_z_ex", "lr_z_id"):
            if not getattr(self, name) > 0:
                raise InputError(f"TTOStage {self.name!r}: {name} must be > 0, got {getattr(self, name)}")
        for name in ("w_normal", "w_point", "w_reproj", "w_code", "w_pose", "w_prior", "tolerance"):
            if not getattr(self, name) >= 0:
                raise InputError(f"TTOStage {self.name!r}: {name} must be >= 0, got {getattr(self, name)}")
        if int(self.patience) != self.patience or self.patience < 1:
            raise InputError(f"TTOStage {self.name!r}: patience must be an integer >= 1, got {self.patience}")


def default_stages(total_steps: int = 100) -> list[TTOStage]:
    """Rigid pose first (30%), then pose, ``z_ex`` and ``z_id`` jointly (70%); ``total_steps`` in all.

    Learning rates picked on the synthetic case of ``tests/tracker/test_tto.py`` (64 px image, mesh at
    48^3): a faster ``z_ex`` (1e-2) matters most, since a wrong expression biases the rigid depth.
    """
    if total_steps < 2:
        raise InputError(f"total_steps must be >= 2, got {total_steps}")
    rigid = max(1, round(0.3 * total_steps))
    return [
        TTOStage("rigid", rigid, params=("pose",), lr_pose=1e-2),
        TTOStage("joint", total_steps - rigid, params=("pose", "z_ex", "z_id"), lr_pose=5e-3, lr_z_ex=1e-2,
                 lr_z_id=1e-4),
    ]


# --- inputs and outputs ----------------------------------------------------------------------------------

@dataclass
class TTOTargets:
    """Per-image targets (from the encoders in the product; from ground truth in tests)."""

    normals: Tensor  # [H, W, 3] unit normals in camera space (OpenCV)
    point_map: Tensor  # [H, W, 3] canonical point seen at each pixel, model units
    mask: Tensor  # [H, W] face mask, bool or float in [0, 1]
    K: Tensor  # [3, 3] intrinsics in pixels

    def __post_init__(self) -> None:
        h, w = self.mask.shape[-2:] if self.mask.dim() == 2 else (-1, -1)
        for name in ("normals", "point_map"):
            if getattr(self, name).shape != (h, w, 3):
                raise InputError(f"TTOTargets.{name}: expected [H, W, 3] = [{h}, {w}, 3] matching mask [H, W], "
                                 f"got {tuple(getattr(self, name).shape)} (mask {tuple(self.mask.shape)})")
        if self.K.shape != (3, 3):
            raise InputError(f"TTOTargets.K: expected [3, 3], got {tuple(self.K.shape)}")


@dataclass
class TTOResult:
    """Optimised codes and pose (the best-loss iterate of the last stage) and the history."""

    z_id: Tensor  # [1, D_id]
    z_ex: Tensor  # [K, D_ex] (K = 1 for one image)
    pose: Tensor  # [6] (one image) or [K, 6]: rotvec (radians) + translation (model units), model -> camera
    history: dict[str, list[float]]  # stage name -> total loss per step run
    seconds: float
    steps_run: int
    loss: float = math.nan  # best total loss of the last stage
    x_warm: Tensor | None = None  # [K, V, 3] last vertex inversion, a warm start for the next call


@dataclass
class LossTerms:
    """Loss terms of one evaluation (scalars with grad)."""

    total: Tensor
    normal: Tensor  # mean 1 - cos over visible vertices
    point: Tensor  # mean L1 over visible vertices, model units
    reproj: Tensor  # mean pixel-to-vertex reprojection distance, model units at the vertex depth
    n_visible: int


# --- geometry --------------------------------------------------------------------------------------------

def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues: ``[..., 3]`` axis-angle (radians, right-handed) -> ``[..., 3, 3]``; smooth at zero."""
    if rotvec.shape[-1:] != (3,):
        raise InputError(f"rotvec must be [..., 3], got {tuple(rotvec.shape)}")
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    theta = torch.sqrt(theta2 + 1e-12)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    kx = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                      torch.stack([-y, x, zero], -1)], -2)  # [..., 3, 3]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(kx)
    return eye + a * kx + b * (kx @ kx)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """``[3, 3]`` rotation -> ``[3]`` axis-angle (radians, angle in [0, pi]); via a unit quaternion
    (Shepperd's branch on the largest component), so 180-degree rotations are handled."""
    if R.shape != (3, 3):
        raise InputError(f"R must be [3, 3], got {tuple(R.shape)}")
    tr = R.diagonal().sum()
    cands = torch.stack([tr, R[0, 0], R[1, 1], R[2, 2]])
    k = int(torch.argmax(cands))
    if k == 0:
        w = torch.sqrt((1 + tr).clamp_min(0)) / 2
        q = torch.stack([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])
    else:
        i, j, l = k - 1, k % 3, (k + 1) % 3
        qi = torch.sqrt((1 + R[i, i] - R[j, j] - R[l, l]).clamp_min(0)) / 2
        q = torch.zeros(4, dtype=R.dtype, device=R.device)
        q[0] = (R[l, j] - R[j, l]) / (4 * qi)
        q[1 + i], q[1 + j], q[1 + l] = qi, (R[j, i] + R[i, j]) / (4 * qi), (R[l, i] + R[i, l]) / (4 * qi)
    q = q if q[0] >= 0 else -q
    vec_norm = q[1:].norm()
    angle = 2 * torch.atan2(vec_norm, q[0])
    return q[1:] * (angle / vec_norm if vec_norm > 1e-12 else 2.0)


def apply_pose(points: Tensor, pose: Tensor) -> Tensor:
    """``R(rotvec) @ p + t`` for points ``[N, 3]`` and a pose ``[6]``."""
    if pose.shape != (6,):
        raise InputError(f"pose must be [6] (rotvec, t), got {tuple(pose.shape)}")
    return points @ axis_angle_to_matrix(pose[:3]).T + pose[3:]


def project_points(cam: Tensor, K: Tensor) -> Tensor:
    """Camera-space points ``[N, 3]`` -> pixels ``[N, 2]`` (OpenCV, pixel centres at integers)."""
    z = cam[:, 2:3].clamp_min(1e-6)
    return (cam[:, :2] / z) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` of a CCW-outward mesh (differentiable)."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # [F, 3], length = 2 * area
    vn = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(vn, dim=-1, eps=1e-12)


def sample_map(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of ``image [H, W, C]`` at pixels ``uv [N, 2]`` -> ``[N, C]`` (zeros outside)."""
    h, w = image.shape[:2]
    grid = torch.stack([2 * uv[:, 0] / (w - 1) - 1, 2 * uv[:, 1] / (h - 1) - 1], -1)  # [N, 2]
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                        padding_mode="zeros", align_corners=True)  # [1, C, 1, N]
    return out[0, :, 0].T


def visible_vertices(cam: Tensor, normals_cam: Tensor, uv: Tensor, mask: Tensor, depth_tol: float = 0.02,
                     min_facing: float = 0.2) -> Tensor:
    """Detached visibility ``[V]`` bool of camera-space vertices ``[V, 3]`` with normals ``[V, 3]``.

    Kept: facing the camera (cosine between the normal and the direction to the camera at least
    ``min_facing``; grazing vertices carry unreliable samples), projecting inside the mask, and within
    ``depth_tol`` (model units) of the nearest vertex depth splatted into the same pixel (a point z-buffer).
    """
    with torch.no_grad():
        h, w = mask.shape
        px = uv.round().long()
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h) & (cam[:, 2] > 0)
        idx = (px[:, 1].clamp(0, h - 1) * w + px[:, 0].clamp(0, w - 1))  # [V]
        front = -(normals_cam * F.normalize(cam, dim=-1)).sum(-1) >= min_facing  # facing the camera
        in_mask = mask.reshape(-1)[idx] > 0.5
        zbuf = torch.full((h * w,), float("inf"), dtype=cam.dtype, device=cam.device)
        keep = inside & front
        zbuf.scatter_reduce_(0, idx[keep], cam[keep, 2], reduce="amin")
        return keep & in_mask & (cam[:, 2] <= zbuf[idx] + depth_tol)


def posed_meshes(layer: Any, topology: FixedTopology, z_id: Tensor, z_ex: Tensor, snap: bool = True,
                 x_init: Tensor | None = None, forward: Any = None) -> tuple[Tensor, Tensor]:
    """Posed vertices ``[K, V, 3]`` (model units, head frame) for ``z_id [1 or K, D_id]`` and
    ``z_ex [K, D_ex]``, and their detached initial solve ``[K, V, 3]`` (a warm start for the next call).
    With ``forward`` (the head's :class:`model.forward_deformation.ForwardDeformation`) the canonical vertices
    are posed by it, as the tracker's export is (``snap`` does not apply: that is the exported surface);
    without, by inverting the backward field, and with ``snap`` one Newton step along the detached vertex
    normal moves each vertex onto the zero level set of the current codes (see module docstring)."""
    z_id = z_id.expand(len(z_ex), -1)
    if forward is not None:
        from model.forward_deformation import forward_posed

        can = topology.canonical_vertices.to(z_ex.dtype).expand(len(z_ex), -1, -1)
        x = forward_posed(forward, layer, can, z_id, z_ex)
        return x, x.detach()  # the export's geometry: no snap onto the backward field's level set
    inv = topology.posed_vertices(layer, z_id, z_ex, x_init=x_init)
    x = inv.x  # [K, V, 3]
    if snap:
        n = torch.stack([vertex_normals(xk, topology.faces) for xk in x.detach()])  # [K, V, 3]
        sdf = layer(x, z_id, z_ex).sdf  # [K, V]
        x = x - sdf[..., None] * n
    return x, inv.x.detach()


def posed_mesh(layer: Any, topology: FixedTopology, z_id: Tensor, z_ex: Tensor, snap: bool = True,
               x_init: Tensor | None = None, forward: Any = None) -> tuple[Tensor, Tensor]:
    """One image's :func:`posed_meshes`: codes ``[1, D]``, ``x_init [V, 3]``; returns ``[V, 3]`` twice."""
    x, warm = posed_meshes(layer, topology, z_id, z_ex, snap, None if x_init is None else x_init[None], forward)
    return x[0], warm[0]


@dataclass
class PixelCorrespondences:
    """Mask pixels and the mesh vertex whose canonical position is nearest to the point predicted there."""

    uv: Tensor  # [n, 2] pixel coordinates (u = column, v = row)
    vertex: Tensor  # [n] int64 vertex index


def pixel_correspondences(topology: FixedTopology, targets: TTOTargets, max_pixels: int = 2000,
                          max_distance: float = 0.03, chunk: int = 256) -> PixelCorrespondences:
    """Pixel -> vertex correspondences from the point map, fixed for the whole optimisation.

    The canonical vertices never change (the mesh belongs to the start identity), so the nearest canonical
    vertex of each predicted canonical point is found once. Pixels whose point is farther than
    ``max_distance`` (model units) from every vertex (regions the mesh lacks) are dropped; at most
    ``max_pixels`` pixels, evenly spaced in raster order.
    """
    rows, cols = torch.nonzero(targets.mask > 0.5, as_tuple=True)
    if len(rows) > max_pixels:
        pick = torch.linspace(0, len(rows) - 1, max_pixels).round().long()
        rows, cols = rows[pick], cols[pick]
    points = targets.point_map[rows, cols]  # [n, 3]
    verts = topology.canonical_vertices.to(points.dtype)
    dist, idx = [], []
    for part in points.split(chunk):
        d, i = torch.cdist(part, verts).min(1)
        dist.append(d)
        idx.append(i)
    dist, idx = torch.cat(dist), torch.cat(idx)
    keep = dist <= max_distance
    uv = torch.stack([cols, rows], -1).to(points.dtype)[keep]
    return PixelCorrespondences(uv=uv, vertex=idx[keep])


def tto_loss(x_posed: Tensor, R: Tensor, t: Tensor, topology: FixedTopology, targets: TTOTargets,
             stage: TTOStage, corr: PixelCorrespondences | None = None, depth_tol: float = 0.02) -> LossTerms:
    """Data terms of one step (no regularisers) for posed vertices ``[V, 3]`` (head frame) and the
    model-to-camera rotation ``R [3, 3]`` and translation ``t [3]`` (model units).

    Vertex -> pixel terms (normals, point map) over visible vertices, and, with ``corr``, the pixel ->
    vertex reprojection term: the distance between each mask pixel and the projection of its vertex,
    scaled to model units at the vertex depth (``|uv - pixel| * z / f``). The vertex -> pixel terms alone
    ignore vertices that fall outside the mask, which biases the depth towards the camera (measured:
    ~20 mm); the reprojection term has no such bias.
    """
    cam = x_posed @ R.T + t  # [V, 3]
    n_cam = vertex_normals(x_posed, topology.faces) @ R.T  # [V, 3]
    K = targets.K.to(cam.dtype)
    uv = project_points(cam, K)  # [V, 2]
    zero = (x_posed.sum() + R.sum() + t.sum()) * 0.0
    reproj = zero
    if corr is not None and len(corr.vertex):
        z = cam[corr.vertex, 2].clamp_min(1e-6)
        reproj = ((uv[corr.vertex] - corr.uv.to(cam.dtype)).norm(dim=-1) * z / (0.5 * (K[0, 0] + K[1, 1]))).mean()
    vis = visible_vertices(cam, n_cam, uv, targets.mask.to(cam.dtype), depth_tol)
    n_vis = int(vis.sum())
    if n_vis == 0:
        return LossTerms(total=stage.w_reproj * reproj, normal=zero, point=zero, reproj=reproj, n_visible=0)
    uv_v = uv[vis]
    # Mask-normalised bilinear sampling: background pixels never blend into the targets at the silhouette.
    mask = targets.mask.to(cam.dtype)[..., None]  # [H, W, 1]
    stacked = torch.cat([targets.normals.to(cam.dtype) * mask, targets.point_map.to(cam.dtype) * mask, mask], -1)
    samples = sample_map(stacked, uv_v)  # [n, 7]
    weight = samples[:, 6:7].clamp_min(1e-6)
    normal_t = F.normalize(samples[:, :3] / weight, dim=-1, eps=1e-12)
    point_t = samples[:, 3:6] / weight
    normal = (1.0 - (n_cam[vis] * normal_t).sum(-1)).mean()
    point = (topology.canonical_vertices.to(cam.dtype)[vis] - point_t).abs().sum(-1).mean()
    total = stage.w_normal * normal + stage.w_point * point + stage.w_reproj * reproj
    return LossTerms(total=total, normal=normal, point=point, reproj=reproj, n_visible=n_vis)


# --- pose initialisation ---------------------------------------------------------------------------------

def init_pose_from_point_map(targets: TTOTargets, iterations: int = 15, max_points: int = 2000) -> Tensor:
    """A model-to-camera pose ``[6]`` from the canonical point map alone (PnP by Levenberg-Marquardt).

    The masked pixels ``u_i`` see canonical points ``P_i``; depth is unknown. Start frontal (the camera
    looks at the face from +Z: ``R = diag(1, -1, -1)``) at the distance where the spread of the points
    matches the spread of their pixels (``d = f * std(P) / std(u)``), centred on the mask, then minimise
    the reprojection error ``sum |project(R P_i + t) - u_i|^2`` over the 6 pose parameters by damped
    Gauss-Newton with autograd Jacobians.
    """
    dtype = targets.point_map.dtype
    m = targets.mask > 0.5
    rows, cols = torch.nonzero(m, as_tuple=True)
    if len(rows) < 6:
        raise InputError(f"targets.mask has {len(rows)} pixels; the pose needs at least 6")
    if len(rows) > max_points:
        pick = torch.linspace(0, len(rows) - 1, max_points).round().long()
        rows, cols = rows[pick], cols[pick]
    P = targets.point_map[rows, cols].to(torch.float64)  # [N, 3]
    u = torch.stack([cols, rows], -1).to(torch.float64)  # [N, 2]
    K = targets.K.to(torch.float64)
    f = 0.5 * (K[0, 0] + K[1, 1])
    R0 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # frontal: 180 degrees about x
    d = float(f * P[:, :2].std(0).norm() / u.std(0).norm().clamp_min(1e-6))
    uc = u.mean(0)
    centre_cam = torch.stack([(uc[0] - K[0, 2]) / K[0, 0] * d, (uc[1] - K[1, 2]) / K[1, 1] * d, torch.tensor(d, dtype=torch.float64)])
    t0 = centre_cam - R0 @ P.mean(0)
    pose = torch.cat([torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64), t0])  # R0 = rotvec (pi, 0, 0)

    def residual(p: Tensor) -> Tensor:
        return ((project_points(apply_pose(P, p), K) - u) / f).reshape(-1)  # [2N], in focal units

    lam = 1e-3
    r = residual(pose)
    for _ in range(iterations):
        J = torch.func.jacfwd(residual)(pose)  # [2N, 6]
        A, g = J.T @ J, J.T @ r
        while True:
            step = torch.linalg.solve(A + lam * torch.diag(A.diagonal() + 1e-12), -g)
            r_new = residual(pose + step)
            if r_new.square().sum() < r.square().sum():
                pose, r, lam = pose + step, r_new, max(lam / 3, 1e-9)
                break
            lam *= 4
            if lam > 1e8:
                return pose.to(dtype)
    return pose.to(dtype)


# --- the optimisation ------------------------------------------------------------------------------------

def optimise(layer: Any, topology: FixedTopology, targets: TTOTargets, z_id0: Tensor, z_ex0: Tensor,
             pose0: Tensor, stages: list[TTOStage] | None = None, progress: bool = False,
             snap: bool = True, z_ex_prior: Tensor | None = None, x_warm: Tensor | None = None,
             forward: Any = None) -> TTOResult:
    """Single-image TTO: run the stages in order; each starts from the previous stage's best iterate.

    Args:
        layer: the head layer (``model.head.HeadLayer``); its parameters are not optimised.
        topology: the canonical mesh of the start identity (``FixedTopology.extract`` with ``z_id0``).
        targets: the image's predicted maps, mask and intrinsics.
        z_id0, z_ex0: ``[1, D_id]``, ``[1, D_ex]`` start codes and regularisation targets (``w_code``).
        pose0: ``[6]`` start pose (e.g. :func:`init_pose_from_point_map`), model -> camera; the target of
            ``w_pose``.
        stages: default :func:`default_stages` (100 steps).
        progress: print one line per stage.
        snap: move vertices onto the current zero level set (see :func:`posed_mesh`); not needed when
            ``z_id`` is not optimised.
        z_ex_prior: ``[1, D_ex]`` second expression target, weighted by ``TTOStage.w_prior`` (the tracker
            starts from the previous frame and uses this frame's feed-forward code here).
        x_warm: ``[1, V, 3]`` warm start of the vertex inversion (``TTOResult.x_warm`` of a previous call).
        forward: the head's forward deformation: vertices are posed by it instead of the inversion
            (:func:`posed_meshes`); ``Models.forward`` on the tracker's paths.
    Returns:
        :class:`TTOResult` with ``z_ex [1, D_ex]`` and ``pose [6]``.
    """
    if pose0.shape != (6,):
        raise InputError(f"pose0 must be [6] (rotvec, t), got {tuple(pose0.shape)}")
    res = optimise_views(layer, topology, [targets], z_id0, z_ex0, pose0[None], stages, progress, snap,
                         z_ex_prior, x_warm, forward)
    res.pose = res.pose[0]
    return res


def optimise_views(layer: Any, topology: FixedTopology, targets: list[TTOTargets], z_id0: Tensor, z_ex0: Tensor,
                   pose0: Tensor, stages: list[TTOStage] | None = None, progress: bool = False,
                   snap: bool = True, z_ex_prior: Tensor | None = None,
                   x_warm: Tensor | None = None, forward: Any = None) -> TTOResult:
    """Joint TTO over ``K`` images of one identity: one shared ``z_id``, one ``z_ex`` and pose per image.

    The loss is the sum of the per-image losses (:func:`tto_loss`) plus the regularisers; the tracker
    uses it for the identity keyframes, :func:`optimise` for one image (``K = 1``).

    Args:
        targets: ``K`` per-image targets.
        z_id0: ``[1, D_id]``; z_ex0: ``[K, D_ex]``; pose0: ``[K, 6]``; z_ex_prior: ``[K, D_ex]`` or None;
        x_warm: ``[K, V, 3]`` or None. Other arguments as in :func:`optimise`.
    """
    n = len(targets)
    if z_id0.dim() != 2 or len(z_id0) != 1 or z_ex0.dim() != 2 or len(z_ex0) != n:
        raise InputError(f"z_id0 must be [1, D_id] and z_ex0 [K={n}, D_ex], got {tuple(z_id0.shape)} and "
                         f"{tuple(z_ex0.shape)}")
    if pose0.shape != (n, 6):
        raise InputError(f"pose0 must be [K={n}, 6] (rotvec, t), got {tuple(pose0.shape)}")
    if z_ex_prior is not None and z_ex_prior.shape != z_ex0.shape:
        raise InputError(f"z_ex_prior must be {tuple(z_ex0.shape)}, got {tuple(z_ex_prior.shape)}")
    stages = default_stages() if stages is None else list(stages)
    start = time.perf_counter()
    z_id0, z_ex0 = z_id0.detach(), z_ex0.detach()
    R_ref, t_ref = axis_angle_to_matrix(pose0[:, :3].detach()), pose0[:, 3:].detach()  # [K, 3, 3], [K, 3]
    # The optimised pose is (delta [K, 3], t [K, 3]) with R = exp(delta) @ R_base, R_base fixed per stage:
    # axis-angle near 180 degrees (the frontal camera) would make Adam's per-coordinate steps very uneven.
    R_base = R_ref
    best = {"pose": torch.cat([torch.zeros_like(t_ref), t_ref], -1), "z_id": z_id0.clone(), "z_ex": z_ex0.clone()}
    history: dict[str, list[float]] = {}
    steps_run = 0
    best_loss = math.nan  # no stages: the start is returned as it is
    corr = [pixel_correspondences(topology, t) for t in targets]
    for stage in stages:
        R_base = axis_angle_to_matrix(best["pose"][:, :3]) @ R_base
        best["pose"] = torch.cat([torch.zeros_like(t_ref), best["pose"][:, 3:]], -1)
        current = {k: v.clone().requires_grad_(k in stage.params) for k, v in best.items()}
        groups = [{"params": [current[k]], "lr": getattr(stage, f"lr_{k}")} for k in stage.params]
        opt = torch.optim.Adam(groups)
        best_loss, since_best, losses = math.inf, 0, []
        for _ in range(stage.steps):
            opt.zero_grad(set_to_none=True)
            x, x_warm = posed_meshes(layer, topology, current["z_id"], current["z_ex"], snap=snap, x_init=x_warm,
                                     forward=forward)
            R = axis_angle_to_matrix(current["pose"][:, :3]) @ R_base  # [K, 3, 3]
            data = sum(tto_loss(x[k], R[k], current["pose"][k, 3:], topology, targets[k], stage, corr[k]).total
                       for k in range(n))
            reg = stage.w_code * ((current["z_id"] - z_id0).square().sum() + (current["z_ex"] - z_ex0).square().sum())
            reg = reg + stage.w_pose * ((R - R_ref).square().sum() + (current["pose"][:, 3:] - t_ref).square().sum())
            if z_ex_prior is not None and stage.w_prior > 0:
                reg = reg + stage.w_prior * (current["z_ex"] - z_ex_prior).square().sum()
            loss = data + reg
            value = float(loss.detach())
            losses.append(value)
            steps_run += 1
            if value < best_loss * (1.0 - stage.tolerance):
                since_best = 0
            else:
                since_best += 1
            if value < best_loss:
                best_loss = value
                best = {k: v.detach().clone() for k, v in current.items()}
            if since_best >= stage.patience:
                break
            params = [current[k] for k in stage.params]
            grads = torch.autograd.grad(loss, params, allow_unused=True)  # not into the layer's parameters
            for p, g in zip(params, grads):
                p.grad = torch.zeros_like(p) if g is None else g
            opt.step()
        history[stage.name] = losses
        if progress:
            print(f"tto {stage.name}: {len(losses)} steps, loss {losses[0] if losses else float('nan'):.4f} -> "
                  f"{best_loss:.4f}")
    R = axis_angle_to_matrix(best["pose"][:, :3]) @ R_base
    pose = torch.cat([torch.stack([matrix_to_axis_angle(r) for r in R]), best["pose"][:, 3:]], -1)
    return TTOResult(z_id=best["z_id"], z_ex=best["z_ex"], pose=pose, history=history,
                     seconds=time.perf_counter() - start, steps_run=steps_run, loss=best_loss, x_warm=x_warm)
