import pytest
import torch

from model.config import preset
from model.errors import InputError
from model.regressor import (Regressor, RegressorConfig, RegressorOutput, load_regressor, regressor_preset,
                             regressor_preset_names, save_regressor)
from model.vit import encoder_preset
from tests.model.regressor_fixtures import one_thread, tiny_head_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw) -> RegressorConfig:
    return regressor_preset("tiny", tiny_head_config(), encoder_preset("tiny", "normals"),
                            encoder_preset("tiny", "points"), **kw)


def _tokens(cfg: RegressorConfig, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, cfg.normal_tokens, cfg.normal_dim, generator=g),
            torch.randn(b, cfg.point_tokens, cfg.point_dim, generator=g))


def test_presets_match_head_and_encoders():
    hc = preset("default")
    cfg = regressor_preset("default", hc, encoder_preset("default", "normals"), encoder_preset("default", "points"))
    assert cfg.id_dim == hc.id_dim == 512 and cfg.n_class_tokens == 2 + 30 and cfg.expr_dim == 64
    assert (cfg.normal_tokens, cfg.normal_dim, cfg.point_tokens) == (256, 192, 256)
    paper = regressor_preset("paper", hc, encoder_preset("default", "normals"), encoder_preset("default", "points"))
    assert (paper.width, paper.depth, paper.heads) == (1024, 8, 8)
    assert regressor_preset_names() == ["default", "paper", "tiny"]
    with pytest.raises(InputError, match="unknown regressor preset"):
        regressor_preset("huge", hc, encoder_preset("tiny"), encoder_preset("tiny", "points"))
    with pytest.raises(InputError, match="divisible"):
        _tiny(width=30, heads=4)


@pytest.mark.parametrize("b", [1, 3])
def test_output_shapes_over_batch(b):
    cfg = _tiny()
    out = Regressor(cfg)(*_tokens(cfg, b))
    assert isinstance(out, RegressorOutput)
    assert out.z_id.shape == (b, cfg.id_dim) and out.z_ex.shape == (b, cfg.expr_dim)
    assert torch.isfinite(out.z_id).all() and torch.isfinite(out.z_ex).all()


def test_batch_items_are_independent():
    cfg = _tiny()
    reg = Regressor(cfg).eval()
    n, p = _tokens(cfg, 3)
    full = reg(n, p)
    one = reg(n[1:2], p[1:2])
    assert torch.allclose(full.z_id[1:2], one.z_id, atol=1e-5) and torch.allclose(full.z_ex[1:2], one.z_ex, atol=1e-5)


def test_bad_shapes_raise():
    cfg = _tiny()
    reg = Regressor(cfg)
    n, p = _tokens(cfg, 2)
    with pytest.raises(InputError, match=rf"normal_tokens: expected shape \[B, {cfg.normal_tokens}, {cfg.normal_dim}\]"):
        reg(n[:, :-1], p)
    with pytest.raises(InputError, match="point_tokens: expected shape"):
        reg(n, p[..., :-1])
    with pytest.raises(InputError, match="batch"):
        reg(n, p[:1])
    with pytest.raises(InputError, match="training codes"):
        reg.set_code_statistics(torch.zeros(4, cfg.id_dim + 1), torch.zeros(4, cfg.expr_dim))


def test_code_layout_each_part_from_its_own_token():
    cfg = _tiny()
    reg = Regressor(cfg).eval()
    g, L = cfg.id_global_dim, cfg.id_local_dim
    tokens = torch.randn(2, cfg.n_class_tokens, cfg.width)
    base = reg.decode(tokens)
    for k in range(cfg.n_class_tokens):
        pert = tokens.clone()
        pert[:, k] += 1.0
        out = reg.decode(pert)
        d_id = (out.z_id - base.z_id).abs().amax(0) > 0  # [D_id]
        d_ex = (out.z_ex - base.z_ex).abs().amax(0) > 0
        expect_id = torch.zeros(cfg.id_dim, dtype=torch.bool)
        if k == 1:
            expect_id[:g] = True
        elif k >= 2:
            expect_id[g + (k - 2) * L: g + (k - 1) * L] = True
        assert torch.equal(d_id, expect_id), f"token {k}"
        assert bool(d_ex.all()) == (k == 0) and bool(d_ex.any()) == (k == 0)


def test_code_statistics_make_the_untrained_regressor_predict_near_the_mean():
    cfg = _tiny()
    reg = Regressor(cfg)
    g = torch.Generator().manual_seed(1)
    z_id = 0.3 + 0.02 * torch.randn(50, cfg.id_dim, generator=g)
    z_ex = -0.1 + 0.03 * torch.randn(60, cfg.expr_dim, generator=g)
    reg.set_code_statistics(z_id, z_ex)
    out = reg(*_tokens(cfg, 4))
    assert (out.z_id - z_id.mean(0)).abs().max() < 0.02  # well within one std of the training codes
    assert (out.z_ex - z_ex.mean(0)).abs().max() < 0.03
    assert out.z_id.std(0).mean() > 0  # still depends on the input


def test_gradients_reach_every_parameter():
    cfg = _tiny()
    reg = Regressor(cfg)
    out = reg(*_tokens(cfg, 2))
    (out.z_id.square().sum() + out.z_ex.square().sum()).backward()
    missing = [n for n, p in reg.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_checkpoint_round_trip(tmp_path):
    cfg = _tiny()
    reg = Regressor(cfg).eval()
    reg.set_code_statistics(torch.randn(5, cfg.id_dim), torch.randn(5, cfg.expr_dim))
    path = save_regressor(tmp_path / "r.pt", reg, {"note": "test"})
    back, meta = load_regressor(path)
    assert meta == {"note": "test"} and back.cfg == cfg
    n, p = _tokens(cfg, 2)
    a, b = reg(n, p), back(n, p)
    assert torch.equal(a.z_id, b.z_id) and torch.equal(a.z_ex, b.z_ex)
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(InputError, match="not an nphm-track.regressor checkpoint"):
        load_regressor(tmp_path / "x.pt")
