"""Differentiable normal rendering of a signed distance field on sampled pixels (math only).

Camera convention (as :mod:`train.camera`): OpenCV pinhole, camera space x right, y down, z forward;
intrinsics ``K [3, 3]`` in pixels with pixel centres at integer coordinates (pixel row ``i``, column ``j`` has
``(u, v) = (j, i)``); the SDF lives in the head's model space (model units) and ``R [3, 3]``, ``t [3]`` map it
to the camera: ``x_cam = R @ x_model + t``. The SDF is negative inside.

Method, per sampled pixel (memory grows with the number of sampled rays, not with the image):

1. :func:`pixel_rays`: the ray of the pixel in model space (origin = camera centre ``-R^T t``, unit
   direction ``R^T K^-1 [u, v, 1]``), clipped to an axis-aligned box (:func:`ray_box`).
2. :func:`sphere_trace` (no gradients): step ``t += step_scale * sdf`` from the box entry; a ray hits when
   ``|sdf| < eps``; a ray that steps across the surface (the SDF turns negative, which a learnt SDF that
   over-estimates distances can cause) is refined by bisection between its last outside and first inside
   positions. Rays that leave the box or run out of steps miss.
3. :func:`render_normals`, the differentiable step. At the hit points ``x*`` (no graph), the SDF is
   evaluated once more with a graph to the field's parameters (the codes) and ``grad_x sdf`` is taken with
   ``create_graph=True``: the normal ``n = grad / |grad|`` is then differentiable with respect to the codes
   (a loss on it back-propagates through the double derivative). This is the choice made here; the
   dependence of the normal on the *motion* of the hit point along the ray when the codes change (a
   Hessian term) is left out, as in the usual implicit-surface renderers, because the normal loss mostly
   needs the orientation term. The returned hit points carry the standard first-order implicit
   correction ``x = x* - d (sdf(x*) - sdf(x*).detach()) / <grad, d>.detach()``, which has the value ``x*``
   and the exact first-order derivative of the ray-surface intersection with respect to the codes (for
   depth or silhouette losses; the normal loss does not use it).

Normals are returned in camera space (``R @ n_model``); for a visible surface they face the camera
(negative z), like the renders' ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.errors import InputError

SdfFn = Callable[[Tensor], Tensor]  # points [B, N, 3] (model units) -> sdf [B, N]


@dataclass(frozen=True)
class TraceConfig:
    """Sphere-tracing settings (model units; 1 unit = 25 cm for the head model)."""

    max_steps: int = 48
    """Most sphere-tracing steps per ray."""
    step_scale: float = 0.9
    """Fraction of the SDF value stepped each time (< 1 is safer for learnt SDFs that over-estimate)."""
    max_step: float = 0.1
    """Largest single step: learnt SDFs are only trained to be distances near the surface."""
    eps: float = 1e-3
    """A ray hits where ``|sdf| < eps`` (0.25 mm for the head model)."""
    bisection_steps: int = 8
    """Bisection refinements of rays that stepped across the surface."""

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.bisection_steps < 0 or not 0 < self.step_scale <= 1 or self.eps <= 0 \
                or self.max_step <= 0:
            raise InputError("TraceConfig: need max_steps >= 1, bisection_steps >= 0, 0 < step_scale <= 1, "
                             "eps > 0 and max_step > 0")


@dataclass
class NormalRender:
    """What :func:`render_normals` returns for ``B`` cameras with ``R`` sampled pixels each."""

    hit: Tensor  # [B, R] bool, the ray hits the surface inside the box
    points: Tensor  # [B, R, 3] model-space hit points (first-order differentiable w.r.t. the field); ray end on a miss
    normals: Tensor  # [B, R, 3] camera-space unit normals (differentiable w.r.t. the field); zero on a miss
    depth: Tensor  # [B, R] distance from the camera centre along the unit ray (model units), no gradient


def _check_camera(K: Tensor, R: Tensor, t: Tensor, pixels: Tensor) -> None:
    if not all(isinstance(x, Tensor) for x in (K, R, t, pixels)):
        raise InputError("K, R, t and pixels must be tensors")
    B = pixels.shape[0] if pixels.ndim == 3 else -1
    if pixels.ndim != 3 or pixels.shape[-1] != 2:
        raise InputError(f"pixels: expected shape [B, R, 2] (u, v), got {tuple(pixels.shape)}")
    for name, x, shape in (("K", K, (B, 3, 3)), ("R", R, (B, 3, 3)), ("t", t, (B, 3))):
        if tuple(x.shape) != shape:
            raise InputError(f"{name}: expected shape {list(shape)}, got {list(x.shape)}")


def pixel_rays(K: Tensor, R: Tensor, t: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Model-space rays through pixels.

    Args:
        K: ``[B, 3, 3]`` intrinsics (pixels); R, t: ``[B, 3, 3]``, ``[B, 3]`` model-to-camera.
        pixels: ``[B, R, 2]`` pixel coordinates ``(u, v)``, pixel centres at integers.
    Returns:
        ``origins [B, R, 3]`` (the camera centre ``-R^T t``) and unit ``dirs [B, R, 3]``, model space.
    """
    _check_camera(K, R, t, pixels)
    u, v = pixels[..., 0], pixels[..., 1]
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    d_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)  # [B, R, 3]
    d_cam = d_cam / d_cam.norm(dim=-1, keepdim=True)
    dirs = d_cam @ R  # rows: R^T d  -> [B, R, 3]
    centre = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # [B, 3]
    return centre[:, None].expand_as(dirs), dirs


def ray_box(origins: Tensor, dirs: Tensor, box_min: Tensor, box_max: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab intersection of rays ``[..., 3]`` with a box ``[3]``: ``(t_near, t_far, valid)``, each ``[...]``;
    ``t_near >= 0`` (a camera inside the box starts at its centre)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (box_min - origins) * inv, (box_max - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


@torch.no_grad()
def sphere_trace(sdf_fn: SdfFn, origins: Tensor, dirs: Tensor, t_near: Tensor, t_far: Tensor,
                 cfg: TraceConfig = TraceConfig()) -> tuple[Tensor, Tensor]:
    """First surface crossing along rays ``[B, R, 3]`` between ``t_near`` and ``t_far`` ``[B, R]``.

    Returns ``(t [B, R], hit [B, R] bool)``; ``sdf_fn`` is called on ``[B, R, 3]`` points without gradients.
    """
    t = t_near.clone()
    t_out = t_near.clone()  # last position seen outside
    hit = torch.zeros_like(t, dtype=torch.bool)
    crossed = torch.zeros_like(hit)
    done = t_near >= t_far
    for _ in range(cfg.max_steps):
        s = sdf_fn(origins + t[..., None] * dirs)  # [B, R]
        newly_crossed = ~done & (s < -cfg.eps)
        newly_hit = ~done & (s.abs() <= cfg.eps)
        crossed |= newly_crossed
        hit |= newly_hit
        done |= newly_crossed | newly_hit
        t_out = torch.where(done, t_out, t)
        t = torch.where(done, t, t + (cfg.step_scale * s).clamp(max=cfg.max_step))
        done |= t > t_far
        if bool(done.all()):
            break
    if crossed.any():  # bisection between the last outside and the first inside position
        lo, hi = t_out.clone(), t.clone()
        for _ in range(cfg.bisection_steps):
            mid = 0.5 * (lo + hi)
            inside = sdf_fn(origins + mid[..., None] * dirs) < 0
            hi = torch.where(crossed & inside, mid, hi)
            lo = torch.where(crossed & ~inside, mid, lo)
        t = torch.where(crossed, 0.5 * (lo + hi), t)
    hit = (hit | crossed) & (t <= t_far)
    return t, hit


def render_normals(sdf_fn: SdfFn, K: Tensor, R: Tensor, t: Tensor, pixels: Tensor,
                   box_min: Sequence[float] | Tensor, box_max: Sequence[float] | Tensor,
                   cfg: TraceConfig = TraceConfig()) -> NormalRender:
    """Render camera-space normals of the SDF at sampled pixels (module docstring for the method).

    Args:
        sdf_fn: model-space points ``[B, N, 3]`` -> SDF ``[B, N]``, differentiable in the field's parameters
            and in the points (e.g. ``lambda x: head(x, z_id, z_ex).sdf``).
        K, R, t: ``[B, 3, 3]``, ``[B, 3, 3]``, ``[B, 3]``: intrinsics (pixels) and model-to-camera extrinsics.
        pixels: ``[B, R, 2]`` pixel coordinates ``(u, v)`` (centres at integers).
        box_min, box_max: the model-space box (3 values each) the surface lies in; rays are traced inside it.
        cfg: sphere-tracing settings.
    """
    origins, dirs = pixel_rays(K, R, t, pixels)  # [B, R, 3] each
    lo = torch.as_tensor(box_min, dtype=dirs.dtype, device=dirs.device)
    hi = torch.as_tensor(box_max, dtype=dirs.dtype, device=dirs.device)
    if lo.shape != (3,) or hi.shape != (3,) or not bool((lo < hi).all()):
        raise InputError(f"box_min, box_max: expected 3 values each with box_min < box_max, got {lo.tolist()}, "
                         f"{hi.tolist()}")
    origins, dirs = origins.detach(), dirs.detach()
    t_near, t_far, valid = ray_box(origins, dirs, lo, hi)
    t_hit, hit = sphere_trace(sdf_fn, origins, dirs, t_near, torch.where(valid, t_far, t_near), cfg)
    x_star = (origins + t_hit[..., None] * dirs).detach().requires_grad_(True)  # [B, R, 3]
    with torch.enable_grad():
        s = sdf_fn(x_star)  # [B, R], graph to the field's parameters
        grad = torch.autograd.grad(s.sum(), x_star, create_graph=True)[0]  # [B, R, 3]
    n_model = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    along = (grad * dirs).sum(-1).detach()  # [B, R]
    along = torch.where(along.abs() < 1e-6, torch.full_like(along, -1e-6), along)
    points = x_star.detach() - dirs * ((s - s.detach()) / along)[..., None]
    normals = n_model @ R.transpose(1, 2).to(n_model)  # rows: R n  -> [B, R, 3]
    normals = torch.where(hit[..., None], normals, torch.zeros_like(normals))
    return NormalRender(hit=hit, points=points, normals=normals, depth=t_hit.detach())
