"""model/landmarks.py: the embedding, the identity -> canonical landmark map, the assets file, posing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import default_weights, load_checkpoint
from model.errors import InputError
from model.landmarks import (LandmarkEmbedding, LandmarkMap, fit_linear_map, linearised_posed,
                             load_landmark_assets, posed_landmarks, save_landmark_assets, vertex_embedding)


def test_embedding_points_numpy_and_torch_agree_over_batch_dims():
    rng = np.random.default_rng(0)
    emb = LandmarkEmbedding(vertex_ids=rng.integers(0, 10, (4, 3)), bary=rng.dirichlet(np.ones(3), 4),
                            spread_mm=np.ones(4), weight=np.ones(4))
    v = rng.normal(size=(2, 3, 10, 3))
    p = emb.points(v)
    assert p.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(emb.points(torch.from_numpy(v)).numpy(), p, atol=1e-12)
    np.testing.assert_allclose(p[1, 2, 0], (v[1, 2, emb.vertex_ids[0]] * emb.bary[0][:, None]).sum(0))
    with pytest.raises(InputError, match=r"\[\.\.\., V, 3\]"):
        emb.points(np.zeros((10, 2)))
    with pytest.raises(InputError, match="vertex_ids and bary"):
        LandmarkEmbedding(np.zeros((4, 2), int), np.zeros((4, 3)), np.ones(4), np.ones(4))


def test_vertex_embedding_picks_the_vertices():
    emb = vertex_embedding(np.array([3, 1]))
    v = np.arange(15.0).reshape(5, 3)
    np.testing.assert_array_equal(emb.points(v), v[[3, 1]])


def test_linear_map_recovers_a_linear_relation_and_round_trips_coordinates():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 12, generator=g, dtype=torch.float64)
    W = torch.randn(12, 5 * 3, generator=g, dtype=torch.float64)
    y = (z @ W + 0.3).reshape(40, 5, 3)
    m = LandmarkMap.fit(z, y, ridge=1e-9)
    assert m.rank == 12 and m.n_landmarks == 5
    torch.testing.assert_close(m(z.float()), y.float(), atol=1e-4, rtol=1e-4)
    alpha = m.coordinates(z[:3].float())
    torch.testing.assert_close(m.code_of(alpha), z[:3].float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.from_coordinates(alpha), y[:3].float(), atol=1e-4, rtol=1e-4)
    # a smaller rank keeps the leading principal directions only
    assert LandmarkMap.fit(z, y, 1e-9, rank=4).rank == 4
    with pytest.raises(InputError, match="N >= 2"):
        fit_linear_map(z[:1], y[:1].reshape(1, -1), 1.0)


def test_assets_file_round_trip_and_bad_file(tmp_path):
    assets = load_landmark_assets(default_weights("landmarks_default", ".npz"))
    out = save_landmark_assets(tmp_path / "a.npz", assets)
    back = load_landmark_assets(out)
    np.testing.assert_array_equal(back.mediapipe.vertex_ids, assets.mediapipe.vertex_ids)
    np.testing.assert_array_equal(back.lid_pairs, assets.lid_pairs)
    torch.testing.assert_close(back.landmark_map.B, assets.landmark_map.B)
    assert len(back.mediapipe) == 478 and len(back.ibug68) == 68 and back.landmark_map.n_landmarks == 546
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(InputError, match="bad.npz"):
        load_landmark_assets(bad)


def test_shipped_map_gives_the_training_identities_landmarks_near_their_surface():
    """The map's landmarks of a training identity lie on (near) that identity's neutral surface."""
    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    assets = load_landmark_assets(default_weights("landmarks_default", ".npz"))
    z = codes["z_id"][:2]
    canonical = assets.landmark_map(z)[:, :478]  # [2, 478, 3]
    neutral = codes["z_ex"][codes["is_neutral"].bool()].mean(0, keepdim=True).expand(2, -1)
    with torch.no_grad():
        x = posed_landmarks(layer, canonical, z, neutral, max_iter=50).x
        sdf = layer(x, z, neutral).sdf.abs()
    assert float(sdf.median()) * 250 < 2.0  # mm


def test_posed_landmarks_invert_the_deformation_and_linearised_step_is_exact_at_the_solution():
    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    z_id, z_ex = codes["z_id"][:1], codes["z_ex"][3:4]
    canonical = torch.randn(1, 20, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        inv = posed_landmarks(layer, canonical, z_id, z_ex, max_iter=50)
        assert bool(inv.converged.all())
        back = inv.x + layer.deform(inv.x, z_id, z_ex).offsets
        torch.testing.assert_close(back, canonical, atol=1e-4, rtol=0)
        x = linearised_posed(layer, inv.x, inv.inv_jacobian, canonical, z_id, z_ex)
        torch.testing.assert_close(x, inv.x, atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="canonical"):
        posed_landmarks(layer, canonical[0], z_id, z_ex)


def test_posed_landmarks_gradient_matches_finite_differences():
    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    layer = layer.double()
    z_id = codes["z_id"][:1].double()
    z_ex = codes["z_ex"][5:6].double().requires_grad_(True)
    canonical = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.1
    direction = torch.randn_like(z_ex)
    x = posed_landmarks(layer, canonical, z_id, z_ex, max_iter=60, tol=1e-12).x
    (g,) = torch.autograd.grad(x.sum(), z_ex)
    eps = 1e-5
    with torch.no_grad():
        plus = posed_landmarks(layer, canonical, z_id, z_ex + eps * direction, max_iter=60, tol=1e-12).x.sum()
        minus = posed_landmarks(layer, canonical, z_id, z_ex - eps * direction, max_iter=60, tol=1e-12).x.sum()
    assert abs(float((g * direction).sum()) - float(plus - minus) / (2 * eps)) < 1e-6


def test_recentred_map_moves_only_the_origin():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20, 10, generator=g, dtype=torch.float64)
    y = (z @ torch.randn(10, 12, generator=g, dtype=torch.float64)).reshape(20, 4, 3)
    m = LandmarkMap.fit(z, y, ridge=1e-3, rank=6)
    c, a = torch.randn(6, generator=g).float(), torch.randn(2, 6, generator=g).float()
    r = m.recentred(c)
    torch.testing.assert_close(r.code_of(a), m.code_of(c + a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.from_coordinates(a), m.from_coordinates(c + a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.coordinates(m.code_of(c + a)), a, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match=r"alpha \[6\]"):
        m.recentred(torch.zeros(5))
