"""ARKit names, the ICT map, the rig asset file and the bounded curve solve (model/arkit.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.arkit import (ARKIT_NAMES, ArkitRig, arkit_from_ict, ict_columns, ict_of_arkit_shape, load_arkit_rig,
                         save_arkit_rig, solve_curves, swift_name)
from model.errors import InputError

ICT_NAMES = tuple(sorted({p for n in ARKIT_NAMES if n != "tongueOut"
                          for p in ({"browInnerUp": ("browInnerUp_L", "browInnerUp_R"),
                                     "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}.get(n, (n,)))}))


def test_names_are_arkits_52():
    assert len(ARKIT_NAMES) == 52 and len(set(ARKIT_NAMES)) == 52
    assert len(ICT_NAMES) == 53  # ICT: ARKit less tongueOut, two shapes split
    assert swift_name("eyeBlink_L") == "eyeBlinkLeft" and swift_name("jawOpen") == "jawOpen"


def test_ict_map_merges_split_pairs_and_leaves_tongue_at_zero():
    w = np.zeros((2, 53), np.float32)
    w[0, ICT_NAMES.index("browInnerUp_L")] = 0.8
    w[0, ICT_NAMES.index("browInnerUp_R")] = 0.4
    w[1, ICT_NAMES.index("jawOpen")] = 0.7
    a = arkit_from_ict(w, ICT_NAMES)
    assert a.shape == (2, 52)
    assert a[0, ARKIT_NAMES.index("browInnerUp")] == pytest.approx(0.6)
    assert a[1, ARKIT_NAMES.index("jawOpen")] == pytest.approx(0.7)
    assert a[:, ARKIT_NAMES.index("tongueOut")].tolist() == [0, 0]
    one = ict_of_arkit_shape(ARKIT_NAMES.index("cheekPuff"), ICT_NAMES)
    assert one.sum() == 2 and one[ICT_NAMES.index("cheekPuff_R")] == 1
    assert ict_columns(ICT_NAMES)[ARKIT_NAMES.index("tongueOut")] == ()


def test_ict_map_names_a_missing_shape():
    with pytest.raises(InputError, match="jawOpen"):
        ict_columns([n for n in ICT_NAMES if n != "jawOpen"])


def test_solve_recovers_weights_of_independent_shapes():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 200, 3))
    w_true = np.clip(rng.uniform(-0.3, 1.2, size=(5, 6)), 0, 1)
    d = np.einsum("tk,kpc->tpc", w_true, basis)
    w, res = solve_curves(basis, d, ridge=1e-9)
    np.testing.assert_allclose(w, w_true, atol=1e-4)
    assert res.max() < 1e-3


def test_solve_clamps_to_unit_range_and_reports_the_rest():
    basis = np.zeros((1, 10, 3))
    basis[0, :, 0] = 1.0
    d = np.zeros((2, 10, 3))
    d[0, :, 0] = 2.0  # twice the shape: w = 1, residual 1 per point
    d[1, :, 0] = -1.0  # against the shape: w = 0, residual 1
    w, res = solve_curves(basis, d, ridge=1e-9)
    np.testing.assert_allclose(w[:, 0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(res, [1.0, 1.0], atol=1e-5)


def test_solve_rejects_bad_shapes():
    with pytest.raises(InputError, match=r"\[T, 4, 3\]"):
        solve_curves(np.zeros((2, 4, 3)), np.zeros((1, 5, 3)))


def test_rig_asset_round_trip(tmp_path):
    rig = ArkitRig(torch.randn(52, 8), torch.zeros(8), torch.tensor([n != "tongueOut" for n in ARKIT_NAMES]),
                   {"summary": {"x": 1}})
    path = save_arkit_rig(tmp_path / "r.pt", rig)
    back = load_arkit_rig(path)
    assert torch.equal(back.codes, rig.codes) and back.meta == rig.meta and back.expr_dim == 8
    assert not bool(back.modelled[ARKIT_NAMES.index("tongueOut")])
    (tmp_path / "bad.pt").write_bytes(b"not a rig")
    with pytest.raises(InputError, match="bad.pt: not an ARKit rig"):
        load_arkit_rig(tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"codes must be \[52, D_ex\]"):
        ArkitRig(torch.zeros(51, 8), torch.zeros(8), torch.ones(52, dtype=torch.bool))
