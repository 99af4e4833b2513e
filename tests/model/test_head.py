import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model.anchors import mirror_anchor_layout, mirror_points, swap_pair_codes
from model.config import HeadConfig, preset
from model.errors import InputError
from model.head import HeadLayer, HeadModel

TINY = HeadConfig(n_anchors=7, n_symmetric_pairs=2, k_nearest=4, blend_std_neighbour=3, anchor_hidden=6,
                  id_global_dim=4, id_local_dim=3, sdf_hidden=8, sdf_layers=2, expr_dim=5, id_compressed_dim=3,
                  deform_hidden=8, deform_layers=3, deform_skip=1, n_hyper=2, appearance=True, app_global_dim=3,
                  app_local_dim=2, app_hidden=6, app_layers=2, app_bottleneck=4)


def make_layer(cfg=TINY, seed=0, dtype=torch.float32):
    """A layer with every parameter random (so that all weights matter), anchors spread over a head."""
    torch.manual_seed(seed)
    layer = HeadLayer(cfg).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.4)
        layer.anchor_offsets[-1].weight.mul_(0.1)
        layer.anchor_offsets[-1].bias.mul_(0.1)
    return layer


def codes(cfg=TINY, batch=(), dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = lambda d: (torch.randn(*batch, d, generator=g) * 0.5).to(dtype)  # noqa: E731
    return z(cfg.id_dim), z(cfg.expr_dim), z(cfg.app_dim)


def reference_canonical(layer, x, hyper, z_id, z_app, anchors):
    """Slow twin: one point and one neighbour at a time, straight from the MonoNPHM description."""
    cfg = layer.cfg
    ens, app = layer.sdf_ensemble, layer.app_ensemble
    g, l_ = cfg.id_global_dim, cfg.id_local_dim
    sdf, rgb = [], []
    for n in range(x.shape[0]):
        d = (x[n] - anchors).norm(dim=-1)
        nbr = d.argsort()[:cfg.k_nearest].tolist()
        dist = d[nbr]
        std = dist[cfg.blend_std_neighbour - 1] / cfg.blend_std_divisor
        w = torch.exp(-0.5 * (torch.cat([dist, dist.new_tensor([cfg.global_distance])]) / std) ** 2)
        w = w / (w.sum() + 1e-8)
        s, c = 0.0, 0.0
        for j, a in enumerate(nbr + [cfg.n_anchors]):
            if a == cfg.n_anchors:
                t, delta = cfg.n_members - 1, x[n].clone()
            else:
                delta = x[n] - anchors[a]
                if a < 2 * cfg.n_symmetric_pairs:
                    t = a // 2
                    if a % 2 == 1:
                        delta = delta * delta.new_tensor([-1.0, 1.0, 1.0])
                else:
                    t = cfg.n_symmetric_pairs + a - 2 * cfg.n_symmetric_pairs
            h = torch.cat([z_id[:g], z_id[g + a * l_:g + (a + 1) * l_], delta, hyper[n]])
            for i in range(cfg.sdf_layers + 1):
                h = F.linear(h, ens.weight[i][t], ens.bias[i][t])
                if i == cfg.sdf_layers - 1:
                    feat = h
                if i < cfg.sdf_layers:
                    h = F.softplus(h, beta=cfg.softplus_beta)
            s = s + w[j] * h[0]
            if z_app is not None:
                ga, la = cfg.app_global_dim, cfg.app_local_dim
                comm = layer.app_bottleneck(feat)
                h = torch.cat([z_app[:ga], z_app[ga + a * la:ga + (a + 1) * la], comm])
                for i in range(cfg.app_layers + 1):
                    h = F.linear(h, app.weight[i][t], app.bias[i][t])
                    if i < cfg.app_layers:
                        h = F.relu(h)
                c = c + w[j] * h
        sdf.append(s)
        rgb.append(c)
    return torch.stack(sdf), (torch.stack(rgb) if z_app is not None else None)


@pytest.mark.parametrize("change", [dict(evaluation="knn"), dict(evaluation="dense"), dict(n_symmetric_pairs=0),
                                    dict(k_nearest=7, blend_std_neighbour=7, n_hyper=0)])
def test_canonical_fields_match_slow_reference(change):
    cfg = dataclasses.replace(TINY, **change)
    layer = make_layer(cfg, dtype=torch.float64)
    z_id, _, z_app = codes(cfg, dtype=torch.float64)
    torch.manual_seed(3)
    x = torch.rand(40, 3, dtype=torch.float64) - 0.5
    hyper = torch.randn(40, cfg.n_hyper, dtype=torch.float64) * 0.1
    sdf, rgb = layer.canonical_fields(x, hyper, z_id, z_app)
    ref_sdf, ref_rgb = reference_canonical(layer, x, hyper, z_id, z_app, layer.anchors(z_id))
    assert torch.allclose(sdf, ref_sdf, atol=1e-10)
    assert torch.allclose(rgb, ref_rgb, atol=1e-10)


def test_forward_is_deform_then_canonical():
    layer = make_layer()
    z_id, z_ex, z_app = codes()
    x = torch.rand(30, 3) - 0.5
    out = layer(x, z_id, z_ex, z_app)
    d = layer.deform(x, z_id, z_ex)
    assert torch.allclose(out.canonical, x + d.offsets) and torch.allclose(out.hyper, d.hyper)
    assert d.offsets.abs().max() > 1e-3  # the deformation is not trivially zero here
    sdf, rgb = layer.canonical_fields(out.canonical, out.hyper, z_id, z_app)
    assert torch.allclose(out.sdf, sdf, atol=1e-6) and torch.allclose(out.rgb, rgb, atol=1e-6)
    assert layer(x, z_id, z_ex).rgb is None


@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_shapes_over_batch_dims(batch):
    layer = make_layer()
    cfg = layer.cfg
    z_id, z_ex, z_app = codes(batch=batch)
    x = torch.rand(*batch, 11, 3) - 0.5
    out = layer(x, z_id, z_ex, z_app)
    assert out.sdf.shape == (*batch, 11) and out.canonical.shape == (*batch, 11, 3)
    assert out.hyper.shape == (*batch, 11, cfg.n_hyper) and out.rgb.shape == (*batch, 11, 3)
    assert layer.anchors(z_id).shape == (*batch, cfg.n_anchors, 3)
    d = layer.deform(x, z_id, z_ex)
    assert d.offsets.shape == (*batch, 11, 3) and d.hyper.shape == (*batch, 11, cfg.n_hyper)
    assert layer.canonical_sdf(x, out.hyper, z_id).shape == (*batch, 11)
    # batched evaluation equals evaluating each head on its own
    flat = out.sdf.reshape(-1, 11)
    for i, (xi, zi, ei) in enumerate(zip(x.reshape(-1, 11, 3), z_id.reshape(-1, cfg.id_dim),
                                         z_ex.reshape(-1, cfg.expr_dim))):
        assert torch.allclose(layer(xi, zi, ei).sdf, flat[i], atol=1e-5)


def test_empty_point_sets():
    layer = make_layer()
    z_id, z_ex, z_app = codes(batch=(2,))
    out = layer(torch.rand(2, 0, 3), z_id, z_ex, z_app)
    assert out.sdf.shape == (2, 0) and out.rgb.shape == (2, 0, 3)
    assert layer.deform_with_jacobian(torch.rand(0, 3), z_id[0], z_ex[0])[1].shape == (0, 3, 3)


def test_points_broadcast_against_code_batch():
    layer = make_layer()
    z_id, z_ex, _ = codes(batch=(2,))
    x = torch.rand(9, 3) - 0.5
    out = layer(x, z_id, z_ex)
    assert out.sdf.shape == (2, 9)
    assert torch.allclose(out.sdf[1], layer(x, z_id[1], z_ex[1]).sdf, atol=1e-6)


def test_gradcheck_sdf_and_deformation_float64():
    layer = make_layer(dtype=torch.float64)
    z_id, z_ex, _ = codes(dtype=torch.float64)
    torch.manual_seed(5)
    x = (torch.rand(4, 3, dtype=torch.float64) - 0.5).requires_grad_()
    hyper = (torch.randn(4, 2, dtype=torch.float64) * 0.1).requires_grad_()
    z_id.requires_grad_()
    z_ex.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: layer.canonical_sdf(a, b, c), (x, hyper, z_id), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b, c: layer.deform(a, b, c).offsets, (x, z_id, z_ex), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b, c: layer(a, b, c).sdf, (x, z_id, z_ex), fast_mode=True)


def test_deformation_jacobian_matches_autograd():
    layer = make_layer(dtype=torch.float64)
    z_id, z_ex, _ = codes(dtype=torch.float64)
    x = torch.rand(6, 3, dtype=torch.float64) - 0.5
    d, jac = layer.deform_with_jacobian(x, z_id, z_ex)
    assert torch.allclose(d.offsets, layer.deform(x, z_id, z_ex).offsets)
    full = torch.autograd.functional.jacobian(lambda p: layer.deform(p, z_id, z_ex).offsets, x)  # [6,3,6,3]
    ref = torch.stack([full[i, :, i, :] for i in range(6)])
    assert jac.shape == (6, 3, 3) and jac.abs().max() > 1e-3
    assert torch.allclose(jac, ref, atol=1e-9)


def test_deformation_cond_tangents_match_autograd():
    """Directional derivatives along conditioning directions (the landmark tracker's Jacobian route)."""
    layer = make_layer(dtype=torch.float64)
    z_id, z_ex, _ = codes(dtype=torch.float64)
    net = layer.deformation
    cond = net.condition(z_id[None], z_ex[None], layer.anchors(z_id[None]))  # [1, C]
    x = torch.rand(1, 5, 3, dtype=torch.float64) - 0.5
    dirs = torch.randn(4, cond.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out, jac = net.forward_with_cond_tangents(x, cond, dirs)
    assert torch.allclose(out, net(x, cond))
    full = torch.autograd.functional.jacobian(lambda c: net(x, c), cond)  # [1, 5, O, 1, C]
    ref = torch.einsum("bnoc,tc->bnot", full[:, :, :, 0], dirs)
    assert jac.shape == (1, 5, out.shape[-1], 4) and jac.abs().max() > 1e-3
    assert torch.allclose(jac, ref, atol=1e-9)


def test_mirrored_codes_give_mirrored_sdf():
    """Mirror pairs share one MLP with mirrored x: swapping the local codes of each pair and mirroring the
    anchors mirrors the SDF. The middle and global MLPs are not mirror-symmetric functions, so the test
    makes them constant (last layer zero) to isolate the pair contributions."""
    layer = make_layer(dtype=torch.float64)
    cfg = layer.cfg
    with torch.no_grad():
        layer.sdf_ensemble.weight[-1][cfg.n_symmetric_pairs:].zero_()
    z_id, _, _ = codes(dtype=torch.float64)
    anchors = layer.anchors(z_id)
    g = cfg.id_global_dim
    local = z_id[g:].view(cfg.n_anchors + 1, cfg.id_local_dim)
    z_mirror = torch.cat([z_id[:g], swap_pair_codes(local, cfg.n_symmetric_pairs).reshape(-1)])
    torch.manual_seed(7)
    x = torch.rand(50, 3, dtype=torch.float64) - 0.5
    hyper = torch.randn(50, 2, dtype=torch.float64) * 0.1
    sdf = layer.canonical_sdf(x, hyper, z_id, anchors=anchors)
    sdf_m = layer.canonical_sdf(mirror_points(x), hyper, z_mirror,
                                anchors=mirror_anchor_layout(anchors, cfg.n_symmetric_pairs))
    assert torch.allclose(sdf, sdf_m, atol=1e-12)
    assert not torch.allclose(sdf, layer.canonical_sdf(mirror_points(x), hyper, z_id, anchors=anchors), atol=1e-4)


def test_set_anchor_mean_symmetrizes():
    layer = make_layer()
    torch.manual_seed(2)
    p = torch.randn(7, 3) * 0.3
    layer.set_anchor_mean(p)
    m = layer.anchor_mean
    assert torch.allclose(m[1], mirror_points(m[0])) and m[4:, 0].abs().max() == 0
    layer.set_anchor_mean(p, symmetrize=False)
    assert torch.equal(layer.anchor_mean, p)
    with pytest.raises(InputError, match=r"\[7, 3\]"):
        layer.set_anchor_mean(torch.zeros(6, 3))


def test_bad_inputs_raise_input_error():
    layer = make_layer()
    z_id, z_ex, z_app = codes()
    x = torch.rand(5, 3)
    with pytest.raises(InputError, match=rf"z_id: expected shape \[\.\.\., {TINY.id_dim}\]"):
        layer(x, z_id[:-1], z_ex)
    with pytest.raises(InputError, match=rf"z_ex: expected shape \[\.\.\., {TINY.expr_dim}\]"):
        layer.deform(x, z_id, torch.zeros(3))
    with pytest.raises(InputError, match="x_posed"):
        layer(torch.rand(5, 2), z_id, z_ex)
    bad = z_ex.clone()
    bad[0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        layer(x, z_id, bad)
    with pytest.raises(InputError, match="broadcast"):
        layer(torch.rand(3, 5, 3), codes(batch=(2,))[0], codes(batch=(2,))[1])
    no_app = HeadLayer(dataclasses.replace(TINY, appearance=False))
    with pytest.raises(InputError, match="appearance"):
        no_app(x, z_id, z_ex, z_app)


def test_holder_owns_codes_and_gets_gradients():
    layer = make_layer()
    z_id, z_ex, z_app = codes()
    model = HeadModel(layer, z_id=z_id, z_ex=z_ex, z_app=z_app)
    assert model.z_id.shape == (1, TINY.id_dim) and model.z_app.shape == (1, TINY.app_dim)
    x = torch.rand(8, 3) - 0.5
    out = model(x, with_rgb=True)
    ref = layer(x, z_id, z_ex, z_app)
    assert out.sdf.shape == (1, 8) and torch.allclose(out.sdf[0], ref.sdf) and torch.allclose(out.rgb[0], ref.rgb)
    out.sdf.sum().backward()
    assert model.z_id.grad.abs().sum() > 0 and model.z_ex.grad.abs().sum() > 0
    assert HeadModel(layer).z_ex.abs().sum() == 0
    with pytest.raises(InputError):
        HeadModel(layer, z_id=torch.zeros(2, TINY.id_dim))


def test_presets_build_and_run():
    for name in ("default", "mononphm"):
        layer = HeadLayer(preset(name))
        cfg = layer.cfg
        out = layer(torch.rand(16, 3) - 0.5, torch.zeros(cfg.id_dim), torch.zeros(cfg.expr_dim))
        assert out.sdf.shape == (16,) and torch.isfinite(out.sdf).all()
