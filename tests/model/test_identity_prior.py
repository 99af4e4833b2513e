"""The learned identity prior (model/identity_prior.py): shapes, pooling, the map it belongs to, round trip."""

from __future__ import annotations

import pytest
import torch

from model.errors import InputError
from model.identity_prior import (IdentityPrior, IdentityPriorConfig, load_identity_prior, map_check_of,
                                  save_identity_prior)
from model.landmarks import LandmarkMap


@pytest.fixture
def lmap():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(30, 16, generator=g, dtype=torch.float64)
    y = (z @ torch.randn(16, 478 * 3, generator=g, dtype=torch.float64)).reshape(30, 478, 3)
    return LandmarkMap.fit(z, y, ridge=1e-6, rank=8)


@pytest.fixture
def prior(lmap):
    torch.manual_seed(0)
    net = IdentityPrior(IdentityPriorConfig(n_ict=6, rank=8, hidden=32, layers=2)).eval()
    net.centre.copy_(torch.randn(8))
    net.ict_to_alpha.copy_(torch.randn(6, 8))
    net.map_check.copy_(map_check_of(lmap))
    return net


@pytest.mark.parametrize("batch", [(), (2,), (1, 3)])
def test_shapes(prior, batch):
    w = prior(torch.rand(*batch, 478, 2) * 300)
    assert w.shape == (*batch, 6)
    assert prior.alpha_of(w).shape == (*batch, 8)


def test_alpha_of_is_the_centre_at_the_mean_head_and_linear(prior):
    torch.testing.assert_close(prior.alpha_of(torch.zeros(6)), prior.centre)
    w = torch.randn(6)
    torch.testing.assert_close(prior.alpha_of(2 * w) - prior.centre, 2 * (prior.alpha_of(w) - prior.centre))


def test_pooled_is_the_mapped_mean_prediction_and_similarity_invariant(prior):
    p = torch.rand(5, 478, 2) * 200 + 50
    with torch.no_grad():
        expected = prior.alpha_of(prior(p).mean(0))
    torch.testing.assert_close(prior.pooled(p), expected)
    torch.testing.assert_close(prior.pooled(1.5 * p + 7.0), expected, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="T >= 1"):
        prior.pooled(torch.zeros(0, 478, 2))


def test_fits_only_its_own_map(prior, lmap):
    assert prior.fits(lmap)
    other = LandmarkMap(lmap.z0 + 1.0, lmap.basis, lmap.scale, lmap.y0, lmap.B)
    assert not prior.fits(other)


def test_round_trip_and_bad_input(prior, tmp_path):
    path = save_identity_prior(tmp_path / "p.pt", prior, {"report": {"x": 1}})
    back, meta = load_identity_prior(path)
    p = torch.rand(478, 2) * 100
    torch.testing.assert_close(back(p), prior(p))
    torch.testing.assert_close(back.centre, prior.centre)
    assert meta["report"] == {"x": 1}
    with pytest.raises(InputError, match=r"\[\.\.\., 478, 2\]"):
        prior(torch.zeros(68, 2))
    with pytest.raises(InputError, match=r"\[\.\.\., 6\]"):
        prior.alpha_of(torch.zeros(5))
    (tmp_path / "bad.pt").write_bytes(b"no")
    with pytest.raises(InputError, match="bad.pt"):
        load_identity_prior(tmp_path / "bad.pt")
