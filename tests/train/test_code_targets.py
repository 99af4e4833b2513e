import numpy as np
import pytest
import torch

from model.errors import InputError
from tests.model.regressor_fixtures import RADIUS, fitted_tiny_head, one_thread  # noqa: F401 (fixture)
from train import code_targets as ct
from model.codes import CodeStatistics
from train.code_targets import CodeFitConfig, code_targets, fit_codes

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(layer, z_id, z_ex, n=512, seed=1):
    """Near-surface points ``[B, n, 3]`` of the heads ``(z_id, z_ex)`` with their SDF under ``layer``."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(len(z_id), n, 3, generator=g)
    x = d / d.norm(dim=-1, keepdim=True) * (RADIUS + 0.03 * torch.randn(len(z_id), n, 1, generator=g))
    with torch.no_grad():
        return x, layer(x, z_id, z_ex).sdf


def _codes():
    layer, z_id, z_ex = fitted_tiny_head()
    return layer, {"z_id": z_id, "z_ex": z_ex, "is_neutral": torch.arange(len(z_ex)) < 2}


def test_fitting_recovers_the_sdf_of_known_codes_and_restores_the_flags():
    layer, codes = _codes()
    stats = CodeStatistics.of(codes)
    # targets: training heads pushed further out than any training code
    z_id = codes["z_id"][[1, 5]] * 2.0
    z_ex = codes["z_ex"][[3, 6]] * 2.0
    near, sdf = _samples(layer, z_id, z_ex)
    with torch.no_grad():
        start = (layer(near, stats.id_mean.expand(2, -1), stats.ex_start.expand(2, -1)).sdf - sdf).abs().mean(-1)
    flags = [p.requires_grad for p in layer.parameters()]
    fi, fe, err = fit_codes(layer, near, sdf, stats, CodeFitConfig(steps=80, lr=1e-2, points_per_step=128))
    assert fi.shape == z_id.shape and fe.shape == z_ex.shape and err.shape == (2,)
    assert (err < 0.3 * start).all(), (err, start)
    assert [p.requires_grad for p in layer.parameters()] == flags
    with pytest.raises(InputError, match=r"\[B, N, 3\]"):
        fit_codes(layer, near[0], sdf[0], stats, CodeFitConfig(steps=1))


def test_statistics_need_code_tables_and_start_from_the_neutral_mean():
    _, codes = _codes()
    stats = CodeStatistics.of(codes)
    assert torch.allclose(stats.ex_start, codes["z_ex"][:2].mean(0))
    assert torch.allclose(stats.id_mean, codes["z_id"].mean(0))
    assert float(stats.whitened_square(codes["z_id"], codes["z_ex"]).mean()) == pytest.approx(2.0, rel=1e-4)
    with pytest.raises(InputError, match="code tables"):
        CodeStatistics.of({"z_id": codes["z_id"]})


def test_targets_are_cached_per_chunk_and_resumed(tmp_path, monkeypatch):
    layer, codes = _codes()
    near, sdf = _samples(layer, codes["z_id"][:3], codes["z_ex"][:3], n=128)
    cfg = CodeFitConfig(steps=5, chunk=2, points_per_step=64)
    cache = tmp_path / "targets.npz"
    first = code_targets(layer, codes, near, sdf, cache, cfg, tag="a", progress=False)
    assert first.z_id.shape == (3, codes["z_id"].shape[1]) and cache.is_file()
    assert not list(tmp_path.glob("*.tmp*"))

    def refit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(ct, "fit_codes", refit)
    again = code_targets(layer, codes, near, sdf, cache, cfg, tag="a", progress=False)
    assert torch.equal(again.z_id, first.z_id) and torch.equal(again.z_ex, first.z_ex)
    with pytest.raises(AssertionError, match="fitted again"):  # another head / data tag is not reused
        code_targets(layer, codes, near, sdf, cache, cfg, tag="b", progress=False)
    # an interrupted run: only the first chunk done -> only the second is fitted
    with np.load(cache) as c:
        saved = {k: c[k] for k in c.files}
    saved["done"][2:] = False
    np.savez(cache, **saved)
    calls = []
    monkeypatch.setattr(ct, "fit_codes", lambda layer, near, *a: calls.append(len(near)) or (
        torch.zeros(len(near), first.z_id.shape[1]), torch.zeros(len(near), first.z_ex.shape[1]),
        torch.zeros(len(near))))
    resumed = code_targets(layer, codes, near, sdf, cache, cfg, tag="a", progress=False)
    assert calls == [1] and torch.equal(resumed.z_id[:2], first.z_id[:2]) and (resumed.z_id[2] == 0).all()
