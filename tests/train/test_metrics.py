"""Tests for train/metrics.py: Chamfer distances and normal consistency."""

import numpy as np
import pytest

from train.metrics import MM_PER_UNIT, chamfer, sample_on_mesh


def _grid(n: int = 20, z: float = 0.0, size: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """A flat square [-size/2, size/2]^2 at height z, triangulated, normals +z."""
    t = np.linspace(-size / 2, size / 2, n)
    xx, yy = np.meshgrid(t, t, indexing="ij")
    v = np.stack([xx.ravel(), yy.ravel(), np.full(n * n, z)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return v, f


def test_zero_against_itself():
    v, f = _grid()
    r = chamfer(v, f, v, f, n_samples=5000)
    assert r.chamfer_l1_mm == pytest.approx(0.0, abs=1e-9)
    assert r.chamfer_l2_mm2 == pytest.approx(0.0, abs=1e-12)
    assert r.normal_consistency == pytest.approx(1.0)


def test_exact_on_known_offset():
    v, f = _grid()
    d = 0.004  # model units = 1 mm
    r = chamfer(v + [0, 0, d], f, v, f, n_samples=5000)
    assert r.chamfer_l1_mm == pytest.approx(d * MM_PER_UNIT, rel=1e-6)
    assert r.chamfer_l2_mm2 == pytest.approx((d * MM_PER_UNIT) ** 2, rel=1e-6)
    assert r.accuracy_mm == pytest.approx(r.completeness_mm, rel=1e-6)


def test_region_restricts_both_directions():
    # ground truth: two planes far apart; only the first is the region; the reconstruction has only it
    v1, f1 = _grid(z=0.0)
    v2, f2 = _grid(z=0.5)
    gt_v = np.concatenate([v1, v2])
    gt_f = np.concatenate([f1, f2 + len(v1)])
    region = np.arange(len(gt_f)) < len(f1)
    r = chamfer(v1, f1, gt_v, gt_f, gt_region=region, n_samples=4000)
    assert r.chamfer_l1_mm == pytest.approx(0.0, abs=1e-9)
    r_all = chamfer(v1, f1, gt_v, gt_f, n_samples=4000)  # without the region the far plane counts
    assert r_all.completeness_mm > 50


def test_sampling_is_uniform_by_area_and_respects_mask():
    v, f = _grid(n=3)
    rng = np.random.default_rng(0)
    mask = np.zeros(len(f), bool)
    mask[0] = True
    pts, normals, tri = sample_on_mesh(v, f, 500, rng, mask)
    assert (tri == 0).all()
    assert np.allclose(np.abs(normals[:, 2]), 1.0)
    with pytest.raises(ValueError):
        sample_on_mesh(v, f, 10, rng, np.zeros(len(f), bool))
