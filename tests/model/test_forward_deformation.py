import pytest
import torch

from model.errors import InputError
from model.forward_deformation import (ForwardDeformation, ForwardDeformationConfig, forward_for_head,
                                       load_forward_deformation, posed_start, resolve_posing,
                                       save_forward_deformation)


def tiny() -> ForwardDeformation:
    torch.manual_seed(0)
    return ForwardDeformation(ForwardDeformationConfig(cond_dim=5, hidden=8, layers=2, n_frequencies=2))


def test_starts_as_identity_and_shapes():
    m = tiny()
    x, c = torch.randn(2, 7, 3), torch.randn(2, 5)
    out = m(x, c)
    assert out.shape == (2, 7, 3)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer


def test_bad_shapes_are_refused():
    m = tiny()
    with pytest.raises(InputError, match=r"\[B, N, 3\]"):
        m(torch.randn(7, 3), torch.randn(1, 5))
    with pytest.raises(InputError, match="cond"):
        m(torch.randn(1, 7, 3), torch.randn(1, 4))
    with pytest.raises(InputError):
        ForwardDeformationConfig(hidden=0)


def test_gradcheck_float64():
    m = tiny().double()
    torch.nn.init.normal_(m.out.weight, std=0.1)
    x = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: m(a, b), (x, c))


def test_round_trip(tmp_path):
    m = tiny()
    torch.nn.init.normal_(m.out.weight, std=0.1)
    path = save_forward_deformation(tmp_path / "f.pt", m, {"note": "test"})
    back, meta = load_forward_deformation(path)
    x, c = torch.randn(1, 4, 3), torch.randn(1, 5)
    assert torch.allclose(back(x, c), m(x, c))
    assert meta["note"] == "test"


def test_load_refuses_another_file(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else", "format_version": 1, "config": {}}, bad)
    with pytest.raises(InputError, match="bad.pt"):
        load_forward_deformation(bad)


def test_posed_start_without_forward_is_the_canonical_points():
    x = torch.randn(1, 4, 3)
    out = posed_start(None, None, x, torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.equal(out, x) and out is not x


def test_shipped_head_has_its_forward_model(tmp_path):
    assert isinstance(forward_for_head(None), ForwardDeformation)
    assert forward_for_head(tmp_path / "other_head.pt") is None  # no <stem>.forward.pt beside it


def test_resolve_posing():
    m = tiny()
    assert resolve_posing(None, m) == "forward" and resolve_posing(None, None) == "inverse"
    assert resolve_posing("inverse", m) == "inverse"
    for bad, fwd in (("forward", None), ("sideways", m)):
        with pytest.raises(InputError, match="posing"):
            resolve_posing(bad, fwd)


def random_tiny(dtype=torch.float64) -> ForwardDeformation:
    """The tiny network with a non-zero output layer (a fresh one is the identity map)."""
    m = tiny().to(dtype)
    torch.nn.init.normal_(m.out.weight, std=0.3)
    return m


def concatenated_forward(m: ForwardDeformation, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Reference twin: the network on the concatenated input ``[x, sin, cos, cond]``, one pass."""
    a = (x[..., None] * m.freqs).flatten(-2)
    h = torch.cat([x, torch.sin(a), torch.cos(a), cond[:, None].expand(-1, x.shape[1], -1)], -1)
    for layer in m.layers:
        h = torch.relu(layer(h))
    return m.out(h) * m.cfg.output_scale


def test_point_features_then_offsets_at_is_forward_in_any_chunks():
    m = random_tiny(torch.float32)
    x, c = torch.randn(2, 11, 3), torch.randn(2, 5)
    ref = m(x, c)
    assert torch.allclose(ref, concatenated_forward(m, x, c), atol=1e-6)
    for chunk in (1, 4, 11, 100):
        assert torch.allclose(m.offsets_at(m.point_features(x), c, chunk=chunk), ref, atol=1e-7)
    shared = m.point_features(x[0])  # [N, hidden] shared by a batch of codes
    assert torch.allclose(m.offsets_at(shared, c), m(x[:1].expand(2, -1, -1), c), atol=1e-7)
    with pytest.raises(InputError, match="cond"):
        m.offsets_at(shared, torch.randn(5))


def test_jacobians_match_autodiff_float64():
    """The reverse-accumulated Jacobians equal torch.func.jacfwd of the forward pass, per point."""
    m = random_tiny()
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    off, d_x, d_cond = m.jacobians(x, c)
    assert off.shape == (6, 3) and d_x.shape == (6, 3, 3) and d_cond.shape == (6, 3, 5)
    assert torch.allclose(off, m(x[None], c[None])[0])
    for n in range(len(x)):
        ref_x = torch.func.jacfwd(lambda p: m(p[None, None], c[None])[0, 0])(x[n])
        ref_c = torch.func.jacfwd(lambda q: m(x[None, n:n + 1], q[None])[0, 0])(c)
        assert torch.allclose(d_x[n], ref_x, atol=1e-12) and torch.allclose(d_cond[n], ref_c, atol=1e-12)
    with pytest.raises(InputError, match="jacobians"):
        m.jacobians(x[None], c)


def test_forward_with_tangents_match_directional_derivatives():
    """Tangents along point and conditioning directions, each alone and together, against torch.func.jvp."""
    m = random_tiny()
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    x_dirs = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    c_dirs = torch.randn(4, 5, generator=g, dtype=torch.float64)
    f = lambda p, q: m(p[None], q[None])[0]  # noqa: E731
    for xd, cd in ((x_dirs, c_dirs), (x_dirs, None), (None, c_dirs)):
        off, t = m.forward_with_tangents(x, c, xd, cd)
        assert t.shape == (4, 5, 3)
        for k in range(4):
            _, ref = torch.func.jvp(f, (x, c), (xd[k] if xd is not None else torch.zeros_like(x),
                                                cd[k] if cd is not None else torch.zeros_like(c)))
            assert torch.allclose(t[k], ref, atol=1e-12)
    with pytest.raises(InputError, match="x_dirs or cond_dirs"):
        m.forward_with_tangents(x, c, None, None)
