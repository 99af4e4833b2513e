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
