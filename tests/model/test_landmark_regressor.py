"""Tests of model/landmark_regressor.py (tiny configs, a synthetic linear face model; no head checkpoint)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.landmark_regressor import (LandmarkRegressor, LandmarkRegressorConfig, load_landmark_regressor,
                                      normalise_landmarks, save_landmark_regressor, spatial_groups)

TINY = LandmarkRegressorConfig(width=16, depth=1, heads=2, mlp_ratio=2.0, head_hidden=16, group_size=4,
                               alpha_dims=6, beta_dims=4)


def _face_world(seed: int = 0):
    """A linear 'face model': 478 landmarks = mean + alpha @ A + beta @ E (pixels, frontal, ~200 px wide)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(478, 2, generator=g) * 200.0
    mean[33], mean[263] = torch.tensor([40.0, 80.0]), torch.tensor([160.0, 80.0])  # level eye corners
    A = torch.randn(TINY.alpha_dims, 478, 2, generator=g) * 4.0
    E = torch.randn(TINY.beta_dims, 478, 2, generator=g) * 4.0
    A[:, [33, 263]] = 0.0
    E[:, [33, 263]] = 0.0

    def landmarks(alpha, beta, noise=0.0, gen=None):
        p = mean + torch.einsum("br,rlc->blc", alpha, A) + torch.einsum("bk,klc->blc", beta, E)
        return p + noise * torch.randn(p.shape, generator=gen) + 156.0

    return landmarks, g


def _batch(landmarks, g, n):
    alpha, beta = torch.randn(n, TINY.alpha_dims, generator=g), torch.randn(n, TINY.beta_dims, generator=g)
    return landmarks(alpha, beta, 0.5, g), alpha, beta


def _loss(model, points, alpha, beta):
    out = model(points)
    return (out.alpha - alpha).square().mean() + (out.beta - beta).square().mean()


def _similar(points: torch.Tensor, scale: float, angle: float, shift: tuple[float, float]) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    R = torch.tensor([[c, -s], [s, c]], dtype=points.dtype)
    return scale * points @ R.T + torch.tensor(shift, dtype=points.dtype)


@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(batch):
    model = LandmarkRegressor(TINY)
    out = model(torch.rand(batch, 478, 2) * 512)
    assert out.alpha.shape == (batch, TINY.alpha_dims) and out.beta.shape == (batch, TINY.beta_dims)
    assert torch.isfinite(out.alpha).all() and torch.isfinite(out.beta).all()


def test_bad_input_and_config():
    model = LandmarkRegressor(TINY)
    with pytest.raises(InputError, match=r"\[B, 478, 2\]"):
        model(torch.rand(2, 468, 2))
    with pytest.raises(InputError, match="divisible"):
        LandmarkRegressorConfig(width=18, heads=4)
    with pytest.raises(InputError):
        LandmarkRegressorConfig(group_size=0)


def test_normalisation_frame():
    p = torch.rand(2, 478, 2) * 300
    q = normalise_landmarks(p)
    assert torch.allclose(q.mean(1), torch.zeros(2, 2), atol=1e-5)
    assert torch.allclose(q.square().sum(-1).mean(-1), torch.ones(2), atol=1e-5)
    eye = q[:, 263] - q[:, 33]
    assert (eye[:, 0] > 0).all() and torch.allclose(eye[:, 1], torch.zeros(2), atol=1e-5)


def test_similarity_invariance():
    torch.manual_seed(0)
    model = LandmarkRegressor(TINY).eval()
    landmarks, g = _face_world()
    points, _, _ = _batch(landmarks, g, 4)
    points = points.double()
    moved = _similar(points, 2.7, 0.6, (-130.0, 410.0))
    model.double()
    with torch.no_grad():
        a, b = model(points), model(moved)
    assert torch.allclose(a.alpha, b.alpha, atol=1e-5) and torch.allclose(a.beta, b.beta, atol=1e-5)
    # not a constant: a non-similar change (stretching x) does change the codes
    stretched = points * torch.tensor([1.3, 1.0], dtype=points.dtype)
    with torch.no_grad():
        assert not torch.allclose(model(stretched).alpha, a.alpha, atol=1e-5)


def test_similarity_invariance_float32():
    model = LandmarkRegressor(TINY).eval()
    landmarks, g = _face_world()
    points, _, _ = _batch(landmarks, g, 2)
    with torch.no_grad():
        a, b = model(points), model(_similar(points, 0.4, -1.1, (20.0, -7.0)))
    assert torch.allclose(a.alpha, b.alpha, atol=1e-4) and torch.allclose(a.beta, b.beta, atol=1e-4)


def test_one_step_lowers_loss():
    torch.manual_seed(0)
    model = LandmarkRegressor(TINY)
    landmarks, g = _face_world()
    points, alpha, beta = _batch(landmarks, g, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = _loss(model, points, alpha, beta)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = _loss(model, points, alpha, beta)
    assert float(after) < float(before)


def test_output_depends_on_input():
    """Two different faces give codes farther apart than detection noise on one face does (the failure of the
    image-token regressor: one constant code for every input, which this check rejects)."""
    torch.manual_seed(0)
    model = LandmarkRegressor(TINY)
    landmarks, g = _face_world()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        points, alpha, beta = _batch(landmarks, g, 32)
        loss = _loss(model, points, alpha, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    alpha, beta = torch.randn(2, TINY.alpha_dims, generator=g), torch.randn(2, TINY.beta_dims, generator=g)
    with torch.no_grad():
        two = model(landmarks(alpha, beta))
        same = model(landmarks(alpha[:1].repeat(8, 1), beta[:1].repeat(8, 1), 0.5, g))
    apart = float((two.alpha[0] - two.alpha[1]).norm())
    noise = float((same.alpha - same.alpha.mean(0)).norm(dim=-1).max())
    assert apart > 3.0 * noise, (apart, noise)
    # and it is about right: closer to the truth than the mean code is
    assert float((two.alpha - alpha).norm(dim=-1).mean()) < 0.85 * float(alpha.norm(dim=-1).mean())


def test_spatial_groups():
    pts = np.random.default_rng(0).random((478, 2))
    order = spatial_groups(pts, 4)
    assert order.shape == (480,) and set(order.tolist()) == set(range(478))
    groups = pts[order].reshape(120, 4, 2)
    spread = np.linalg.norm(groups - groups.mean(1, keepdims=True), axis=-1).mean()
    assert spread < 0.5 * np.linalg.norm(pts - pts.mean(0), axis=-1).mean()


def test_checkpoint_round_trip(tmp_path):
    model = LandmarkRegressor(TINY, spatial_groups(np.random.default_rng(1).random((478, 2)), 4)).eval()
    model.set_target_statistics(torch.randn(10, TINY.alpha_dims), torch.randn(10, TINY.beta_dims))
    path = save_landmark_regressor(tmp_path / "lr.pt", model, {"note": "x"})
    loaded, meta = load_landmark_regressor(path)
    assert meta == {"note": "x"} and loaded.cfg == TINY
    p = torch.rand(2, 478, 2) * 512
    with torch.no_grad():
        assert torch.equal(model(p).alpha, loaded(p).alpha)
    with pytest.raises(InputError, match="not an"):
        torch.save({"format": "other"}, tmp_path / "x.pt")
        load_landmark_regressor(tmp_path / "x.pt")
