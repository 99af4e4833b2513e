"""The landmark -> ARKit-52 regressor (model/arkit_regressor.py): shapes, invariance, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from model.arkit import ARKIT_NAMES
from model.arkit_regressor import ArkitRegressor, ArkitRegressorConfig, load_arkit_regressor, save_arkit_regressor
from model.errors import InputError


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ArkitRegressor(ArkitRegressorConfig(hidden=32, layers=2)).eval()


@pytest.mark.parametrize("batch", [(), (2,), (1, 3)])
def test_shapes_and_range(net, batch):
    w = net(torch.rand(*batch, 478, 2) * 300)
    assert w.shape == (*batch, 52) and w.min() >= 0 and w.max() <= 1
    assert (w[..., ARKIT_NAMES.index("tongueOut")] == 0).all()  # the head model has no tongue


def test_similarity_invariance(net):
    p = torch.rand(478, 2) * 200 + 50
    a = torch.tensor(0.3)
    R = torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
    q = 1.7 * p @ R.T + torch.tensor([13.0, -4.0])
    torch.testing.assert_close(net(q), net(p), atol=1e-5, rtol=0)


def test_round_trip_and_bad_input(net, tmp_path):
    path = save_arkit_regressor(tmp_path / "r.pt", net, {"report": {"x": 1}})
    back, meta = load_arkit_regressor(path)
    p = torch.rand(478, 2) * 100
    torch.testing.assert_close(back(p), net(p))
    assert meta["report"] == {"x": 1}
    with pytest.raises(InputError, match=r"\[\.\.\., 478, 2\]"):
        net(torch.zeros(68, 2))
    (tmp_path / "bad.pt").write_bytes(b"no")
    with pytest.raises(InputError, match="bad.pt"):
        load_arkit_regressor(tmp_path / "bad.pt")
