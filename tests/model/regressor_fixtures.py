"""Tiny head models with a real surface, shared by the regressor, renderer and regressor-training tests.

A randomly initialised :class:`model.head.HeadLayer` has no meaningful zero level set, so the tests fit a
tiny one for a few hundred steps to the SDF of a sphere-like head whose radius depends on the codes
(``0.3 + 0.5 * mean(z_id[:4])`` units, a bump of height ``z_ex[0]`` on the front), so codes matter.
"""

from __future__ import annotations

import functools

import pytest
import torch

from model.config import HeadConfig
from model.head import HeadLayer

RADIUS = 0.3


def tiny_head_config() -> HeadConfig:
    return HeadConfig(n_anchors=5, n_symmetric_pairs=2, k_nearest=3, blend_std_neighbour=3, anchor_hidden=8,
                      id_global_dim=8, id_local_dim=4, sdf_hidden=32, sdf_layers=2, expr_dim=4,
                      id_compressed_dim=4, deform_hidden=16, deform_layers=2, deform_skip=-1, n_hyper=1,
                      appearance=False, evaluation="knn")


def target_sdf(x: torch.Tensor, z_id: torch.Tensor, z_ex: torch.Tensor) -> torch.Tensor:
    """SDF-like target ``[B, N]`` for points ``[B, N, 3]`` and codes ``[B, D]`` (module docstring)."""
    r = RADIUS + 0.5 * z_id[:, None, :4].mean(-1)  # [B, 1]
    front = torch.exp(-((x[..., 0] ** 2 + x[..., 1] ** 2) / 0.02)) * (x[..., 2] > 0)  # [B, N]
    return x.norm(dim=-1) - r - z_ex[:, None, 0] * front


@functools.lru_cache(maxsize=2)
def fitted_tiny_head(steps: int = 150, seed: int = 0) -> tuple[HeadLayer, torch.Tensor, torch.Tensor]:
    """A tiny head layer fitted to :func:`target_sdf`, with its training codes ``z_id [8, D_id]``, ``z_ex [8, D_ex]``.

    Cached per process (about 4 s on one core); callers must not modify the returned objects."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = tiny_head_config()
    layer = HeadLayer(cfg)
    z_id = torch.randn(8, cfg.id_dim, generator=g) * 0.05
    z_ex = torch.randn(8, cfg.expr_dim, generator=g) * 0.05
    opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
    for _ in range(steps):
        x = (torch.rand(8, 256, 3, generator=g) * 2 - 1) * 0.6
        d = x / x.norm(dim=-1, keepdim=True)
        shell = d * (RADIUS + 0.05 * torch.randn(8, 256, 1, generator=g))
        pts = torch.cat([x, shell], 1)
        loss = (layer(pts, z_id, z_ex).sdf - target_sdf(pts, z_id, z_ex)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer, z_id, z_ex


@pytest.fixture(autouse=False)
def one_thread():
    """Run a test with one torch thread (the shared 2-core machine slows 10x under thread contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
