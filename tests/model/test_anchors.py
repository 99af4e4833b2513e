import torch

from model.anchors import (blend_weights, default_layout, mirror_anchor_layout, mirror_points, mirror_signs,
                           nearest_anchors, swap_pair_codes, symmetrize_layout)


def test_mirror_signs_mark_odd_pair_members():
    s = mirror_signs(7, 2)
    assert s[:, 1:].eq(1).all()
    assert s[:, 0].tolist() == [1, -1, 1, -1, 1, 1, 1]


def test_default_layout_is_symmetric_and_distinct():
    p = default_layout(29, 12)
    assert torch.allclose(p[1:24:2], mirror_points(p[0:24:2]))
    assert p[24:, 0].abs().max() == 0
    assert torch.cdist(p, p).add(torch.eye(29)).min() > 0.02


def test_symmetrize_and_mirror_layout():
    torch.manual_seed(0)
    p = torch.randn(7, 3)
    s = symmetrize_layout(p, 2)
    assert torch.allclose(mirror_anchor_layout(s, 2), s)  # a symmetric layout is its own mirror image
    assert torch.allclose(s[0], 0.5 * (p[0] + mirror_points(p[1])))
    m = mirror_anchor_layout(p, 2)
    assert torch.allclose(m[0], mirror_points(p[1])) and torch.allclose(m[5], mirror_points(p[5]))
    codes = torch.arange(8.0).view(8, 1)
    assert swap_pair_codes(codes, 2).view(-1).tolist() == [1, 0, 3, 2, 4, 5, 6, 7]


def test_nearest_anchors_sorted():
    torch.manual_seed(1)
    x, a = torch.randn(1, 50, 3), torch.randn(1, 9, 3)
    idx = nearest_anchors(x, a, 4)
    d = (x.unsqueeze(-2) - a.unsqueeze(-3)).norm(dim=-1)
    ref = d.sort(-1).indices[..., :4]
    assert torch.equal(idx, ref)


def test_blend_weights_formula():
    d = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    w, wg = blend_weights(d, 3, 3.75, 0.75)
    std = 0.3 / 3.75
    raw = torch.exp(-0.5 * (d / std) ** 2)
    rg = torch.exp(torch.tensor(-0.5 * (0.75 / std) ** 2))
    assert torch.allclose(w, raw / (raw.sum() + rg + 1e-8))
    assert torch.allclose(w.sum(-1) + wg, torch.ones(1), atol=1e-6)
