"""Registration of the ARKit rig asset (train/arkit_rig.py)."""

from __future__ import annotations

import torch

from model.arkit import ARKIT_NAMES, load_arkit_rig
from model.checkpoint import default_weights
from train.arkit_rig import ArkitRigConfig, build_arkit_rig, regression_codes


def test_regression_recovers_a_linear_code_table():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(200, 5, generator=g)
    c0, W = torch.randn(8, generator=g), torch.randn(5, 8, generator=g)
    c0_hat, W_hat = regression_codes(c0 + w @ W, w, ridge=1e-9)
    torch.testing.assert_close(c0_hat, c0, atol=1e-4, rtol=0)
    torch.testing.assert_close(W_hat, W, atol=1e-4, rtol=0)


def test_a_short_registration_writes_a_loadable_rig(tmp_path, ict_path):
    out = tmp_path / "rig.pt"
    cfg = ArkitRigConfig(head_path=str(default_weights("head_default")), out_path=str(out), identities=1,
                         eval_identities=1, steps=2, points=64, ict_path=str(ict_path))
    build_arkit_rig(cfg, log=lambda *_: None)
    rig = load_arkit_rig(out)
    assert rig.codes.shape == (52, rig.expr_dim) and not bool(rig.modelled[ARKIT_NAMES.index("tongueOut")])
    shapes = rig.meta["shapes"]
    assert len(shapes) == 51 and shapes["jawOpen"]["eval"]["motion_mm"] > 5.0  # the jaw moves the skin
    assert torch.equal(rig.codes[ARKIT_NAMES.index("tongueOut")], rig.neutral)
