import pytest
import torch

from model.codes import CodeStatistics, shrink_to_radius, whitened_radius
from model.errors import InputError


def _tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    z_id = torch.randn(20, 12, generator=g) * torch.linspace(0.1, 2.0, 12) + 3.0
    z_ex = torch.randn(30, 5, generator=g) * 0.2
    return {"z_id": z_id, "z_ex": z_ex, "is_neutral": torch.arange(30) % 10 == 0}


def test_training_codes_are_kept_and_far_codes_land_on_the_largest_radius():
    codes = _tables()
    stats = CodeStatistics.of(codes)
    r_id = whitened_radius(codes["z_id"], stats.id_mean, stats.id_std)
    assert stats.id_max_radius == pytest.approx(float(r_id.max()))
    assert 0.5 < float(r_id.mean()) < 1.2  # whitened: about 1 for a training code
    z_id, z_ex = stats.project(codes["z_id"], codes["z_ex"][:20])
    assert torch.allclose(z_id, codes["z_id"]) and torch.allclose(z_ex, codes["z_ex"][:20])
    far = stats.id_mean + 40 * stats.id_std * torch.tensor([1.0, -1.0] * 6)  # radius 40
    p_id, p_ex = stats.project(far[None], (stats.ex_mean + 9 * stats.ex_std)[None])
    assert float(whitened_radius(p_id, stats.id_mean, stats.id_std)) == pytest.approx(stats.id_max_radius, rel=1e-5)
    assert float(whitened_radius(p_ex, stats.ex_mean, stats.ex_std)) == pytest.approx(stats.ex_max_radius, rel=1e-5)
    # the direction from the mean is kept
    d0, d1 = far - stats.id_mean, p_id[0] - stats.id_mean
    assert float(torch.nn.functional.cosine_similarity(d0, d1, dim=0)) == pytest.approx(1.0, abs=1e-6)


def test_shrink_is_the_identity_inside_and_handles_the_mean_itself():
    mean, std = torch.zeros(4), torch.ones(4)
    z = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 4.0, 4.0]])
    out = shrink_to_radius(z, mean, std, 2.0)
    assert torch.equal(out[:2], z[:2]) and torch.allclose(out[2], torch.full((4,), 2.0))


def test_statistics_need_code_tables():
    codes = _tables()
    stats = CodeStatistics.of(codes)
    assert torch.allclose(stats.ex_start, codes["z_ex"][codes["is_neutral"]].mean(0))
    assert CodeStatistics.maybe({}) is None
    with pytest.raises(InputError, match="code tables"):
        CodeStatistics.of({"z_id": codes["z_id"]})
    with pytest.raises(InputError, match="N, M >= 2"):
        CodeStatistics.of({"z_id": codes["z_id"][:1], "z_ex": codes["z_ex"]})
    # the squared whitened norm has a gradient at the mean (no sqrt there)
    z_id = stats.id_mean.clone().requires_grad_(True)
    stats.whitened_square(z_id, stats.ex_mean).backward()
    assert torch.isfinite(z_id.grad).all()
