"""Anchor layout math: mirror pairs, nearest-anchor search and MonoNPHM's Gaussian blending weights.

Conventions (shared with the MonoNPHM release): anchors ``2i`` and ``2i+1`` (``i < n_pairs``) form a
mirror pair across the plane x = 0; the shared MLP of a pair sees the offset of the odd member mirrored in
x. Anchors ``2*n_pairs ..`` lie on the mid-plane. Positions are in model units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.errors import InputError

_MIRROR = (-1.0, 1.0, 1.0)


def mirror_signs(n_anchors: int, n_pairs: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-anchor sign applied to the point offset ``x - anchor``: -1 in x for odd pair members.

    Returns: ``[A, 3]`` of +-1.
    """
    signs = torch.ones(n_anchors, 3, dtype=dtype)
    signs[1:2 * n_pairs:2, 0] = -1.0
    return signs


def mirror_points(x: Tensor) -> Tensor:
    """Mirror points ``[..., 3]`` across the plane x = 0."""
    return x * x.new_tensor(_MIRROR)


def mirror_anchor_layout(anchors: Tensor, n_pairs: int) -> Tensor:
    """The mirror image of an anchor layout ``[..., A, 3]``: x negated and the members of each pair swapped,
    so that anchor ``2i`` of the result is the mirror of anchor ``2i+1`` of the input."""
    out = mirror_points(anchors)
    swap = torch.arange(anchors.shape[-2], device=anchors.device)
    swap[:2 * n_pairs] = swap[:2 * n_pairs].view(-1, 2).flip(-1).reshape(-1)
    return out.index_select(-2, swap)


def swap_pair_codes(local: Tensor, n_pairs: int) -> Tensor:
    """Swap the local codes ``[..., A+1, L]`` of the two members of every pair (the code of a mirrored head)."""
    swap = torch.arange(local.shape[-2], device=local.device)
    swap[:2 * n_pairs] = swap[:2 * n_pairs].view(-1, 2).flip(-1).reshape(-1)
    return local.index_select(-2, swap)


def symmetrize_layout(points: Tensor, n_pairs: int) -> Tensor:
    """Make a layout ``[A, 3]`` exactly mirror-symmetric: each pair becomes the average of its even member
    and the mirror of its odd member (and that average's mirror); middle anchors get x = 0."""
    out = points.clone()
    even, odd = points[0:2 * n_pairs:2], points[1:2 * n_pairs:2]
    avg = 0.5 * (even + mirror_points(odd))
    out[0:2 * n_pairs:2] = avg
    out[1:2 * n_pairs:2] = mirror_points(avg)
    out[2 * n_pairs:, 0] = 0.0
    return out


def default_layout(n_anchors: int, n_pairs: int) -> Tensor:
    """A deterministic, mirror-symmetric starting layout ``[A, 3]`` inside a head-sized ellipsoid.

    Used until training sets the mean layout from data (``HeadLayer.set_anchor_mean``). Pairs lie on a
    golden-angle spiral over the x > 0 half of the ellipsoid (radii 0.3, 0.4, 0.35); middle anchors are
    spread along the mid-plane from chin to crown.
    """
    pts = torch.zeros(n_anchors, 3, dtype=torch.float64)
    radii = torch.tensor([0.3, 0.4, 0.35], dtype=torch.float64)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    for i in range(n_pairs):
        y = 1.0 - 2.0 * (i + 0.5) / n_pairs  # [-1, 1]
        r = math.sqrt(max(0.0, 1.0 - y * y))
        phi = golden * i
        p = torch.tensor([0.15 + 0.85 * r * abs(math.cos(phi)), y, r * math.sin(phi)], dtype=torch.float64)
        p = p / p.norm() * radii
        pts[2 * i] = p
        pts[2 * i + 1] = p * torch.tensor(_MIRROR, dtype=torch.float64)
    n_mid = n_anchors - 2 * n_pairs
    for j in range(n_mid):
        t = math.pi * (j + 0.5) / max(n_mid, 1) - 0.5 * math.pi  # front-bottom to back-top sweep
        pts[2 * n_pairs + j] = torch.tensor([0.0, 0.4 * math.sin(t), 0.35 * math.cos(t)], dtype=torch.float64)
    return pts.float()


def nearest_anchors(x: Tensor, anchors: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` nearest anchors of each point, nearest first.

    Args:
        x: ``[B, N, 3]`` points.
        anchors: ``[B, A, 3]`` anchor positions.
    Returns:
        ``[B, N, k]`` int64 indices into the anchors (selection only, not differentiable).
    """
    with torch.no_grad():
        d2 = torch.cdist(x, anchors)  # [B, N, A]; matrix-product form, exact enough for ranking
        return d2.topk(k, dim=-1, largest=False, sorted=True).indices


def blend_weights(dist: Tensor, std_neighbour: int, std_divisor: float, global_distance: float
                  ) -> tuple[Tensor, Tensor]:
    """MonoNPHM's normalised Gaussian blending weights of the K nearest anchors and the global member.

    The std at a point is its distance to the ``std_neighbour``-th nearest anchor divided by
    ``std_divisor``; each anchor gets ``exp(-(d/std)^2 / 2)``, the global member the same at the fixed
    ``global_distance``; weights are divided by their sum plus 1e-8.

    Args:
        dist: ``[..., K]`` distances to the K nearest anchors, sorted ascending (model units).
    Returns:
        ``(w_local [..., K], w_global [...])``, summing to 1 (up to the 1e-8).
    """
    if dist.shape[-1] < std_neighbour:
        raise InputError(f"blend_weights: need at least {std_neighbour} distances per point, got {dist.shape[-1]}")
    std = dist[..., std_neighbour - 1:std_neighbour] / std_divisor  # [..., 1]
    w = torch.exp(-0.5 * (dist / std).square())  # [..., K]
    wg = torch.exp(-0.5 * (global_distance / std).square())  # [..., 1]
    total = w.sum(-1, keepdim=True) + wg + 1e-8
    return w / total, (wg / total).squeeze(-1)
