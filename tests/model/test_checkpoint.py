import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import (FORMAT_VERSION, load_checkpoint, load_official_mononphm, official_state_dicts,
                              save_checkpoint)
from model.config import preset
from model.errors import InputError
from model.head import HeadLayer
from tests.model.test_head import TINY, codes, make_layer


class NotATensor:
    pass


def test_round_trip(tmp_path):
    layer = make_layer()
    z_id, z_ex, z_app = codes()
    path = save_checkpoint(tmp_path / "sub" / "head.pt", layer, {"z_id": z_id[None], "z_ex": z_ex[None]},
                           {"step": 12, "note": "t", "losses": [0.5, 0.25], "nested": {"a": None}})
    assert os.listdir(tmp_path / "sub") == ["head.pt"]  # the temporary file was renamed away
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["config"] == TINY.to_dict()
    loaded, c, meta = load_checkpoint(path)
    assert loaded.cfg == TINY and meta["step"] == 12 and meta["losses"] == [0.5, 0.25]
    assert torch.equal(c["z_id"], z_id[None])
    x = torch.rand(20, 3) - 0.5
    a, b = layer(x, z_id, z_ex, z_app), loaded(x, z_id, z_ex, z_app)
    assert torch.equal(a.sdf, b.sdf) and torch.equal(a.rgb, b.rgb)
    assert torch.equal(loaded.anchor_mean, layer.anchor_mean)


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "nphm-track.head", "format_version": FORMAT_VERSION, "meta": NotATensor()}, path)
    with pytest.raises(InputError, match="evil.pt.*arbitrary"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="meta.x"):
        save_checkpoint(tmp_path / "a.pt", make_layer(), None, {"x": NotATensor()})


def test_refuses_wrong_version_missing_keys_and_junk(tmp_path):
    layer = make_layer()
    path = save_checkpoint(tmp_path / "h.pt", layer)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "format_version": 99}, tmp_path / "v.pt")
    with pytest.raises(InputError, match="format_version 99"):
        load_checkpoint(tmp_path / "v.pt")
    sd = dict(raw["state_dict"])
    sd.pop("deformation.compressor.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({**raw, "state_dict": sd}, tmp_path / "k.pt")
    with pytest.raises(InputError, match="missing keys: deformation.compressor.bias.*unknown keys: extra.weight"):
        load_checkpoint(tmp_path / "k.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="no such"):
        load_checkpoint(tmp_path / "absent.pt")


# --- MonoNPHM's released layout ---------------------------------------------------------------------------
# Key names and shapes as produced by github.com/SimonGiebenhain/MonoNPHM: NPHM in
# src/mononphm/models/canonical_space.py (EnsembleDeepSDF -> MLPDeepSDF Linear layers at even indices of
# `layers`, `communcation_bottleneck{1,2}`, `aggr_app`, `mlp_pos`), DeformationNetwork in
# src/mononphm/models/deformations.py (`compressor.0`, DeepSDF `lin{i}`), LatentCodes in models/base.py,
# sizes from scripts/configs/mononphm.yaml, checkpoint dict from Trainer.save_checkpoint in models/training.py.
OFFICIAL_SHAPES = {
    "id_decoder": {
        "deepSDFensemble.layers.0.layers.0.weight": (200, 101),  # [glob 64, local 32, x 3, hyper 2]
        "deepSDFensemble.layers.35.layers.6.bias": (200,),
        "deepSDFensemble.layers.17.layers.8.weight": (1, 200),
        "communcation_bottleneck1.weight": (16, 200),
        "communcation_bottleneck2.weight": (16, 16),
        "aggr_app.layers.0.layers.0.weight": (200, 112),  # [glob app 64, local app 32, bottleneck 16]
        "aggr_app.layers.35.layers.8.weight": (3, 200),
        "mlp_pos.0.weight": (64, 64),
        "mlp_pos.4.weight": (195, 64),
    },
    "ex_decoder": {
        "compressor.0.weight": (16, 2371),  # [z_geo 2176, anchors 65*3]
        "defDeepSDF.lin0.weight": (400, 119),  # [x 3, compressed 16, z_ex 100]
        "defDeepSDF.lin3.weight": (400, 519),  # skip: [h 400, x 3, cond 116]
        "defDeepSDF.lin6.weight": (5, 400),  # offsets 3 + hyper 2
    },
}
N_ID_KEYS = 2 * (36 * 5 + 2 + 36 * 5 + 3)  # both ensembles, bottleneck, mlp_pos (weights and biases)


def official_reference(id_sd, ex_sd, anchor_mean, z_geo, z_app, z_ex, x):
    """MonoNPHM's forward pass written directly on its state dicts (one point, one neighbour at a time)."""
    lin = lambda h, sd, k: F.linear(h, sd[k + ".weight"], sd[k + ".bias"])  # noqa: E731
    sp = lambda h: F.softplus(h, beta=100)  # noqa: E731
    h = F.relu(lin(z_geo[:64], id_sd, "mlp_pos.0"))
    h = F.relu(lin(h, id_sd, "mlp_pos.2"))
    anchors = anchor_mean + lin(h, id_sd, "mlp_pos.4").view(65, 3)
    cond = torch.cat([lin(torch.cat([z_geo, anchors.reshape(-1)]), ex_sd, "compressor.0"), z_ex])
    inp = torch.cat([x, cond.expand(x.shape[0], -1)], -1)
    h = inp
    for i in range(7):
        if i == 3:
            h = torch.cat([h, inp], -1) / np.sqrt(2)
        h = lin(h, ex_sd, f"defDeepSDF.lin{i}")
        h = sp(h) if i < 6 else h
    q = torch.cat([x + h[:, :3], h[:, 3:]], -1)  # canonical point with its hyper-coordinates
    anchor_type = [i // 2 for i in range(60)] + list(range(30, 36))
    sdf, rgb = [], []
    for n in range(x.shape[0]):
        d = (q[n, :3] - anchors).norm(dim=-1)
        nbr = d.sort().indices[:12].tolist() + [65]
        dist = torch.cat([d[nbr[:12]], d.new_tensor([0.75])])
        std = dist[:8].max() / 3.75
        w = torch.exp(-(dist / std) ** 2 / 2)
        w = w / (w.sum() + 1e-8)
        s, c = 0.0, 0.0
        for j, a in enumerate(nbr):
            pos = torch.cat([anchors[a], anchors.new_zeros(2)]) if a < 65 else anchors.new_zeros(5)
            delta = q[n] - pos
            if a < 60 and a % 2 == 1:
                delta = delta * delta.new_tensor([-1, 1, 1, 1, 1])
            t = anchor_type[a]
            h = torch.cat([z_geo[:64], z_geo[64 + 32 * a:96 + 32 * a], delta])
            for i in range(5):
                h = lin(h, id_sd, f"deepSDFensemble.layers.{t}.layers.{2 * i}")
                if i == 3:
                    feat = h
                h = sp(h) if i < 4 else h
            comm = lin(F.relu(lin(feat, id_sd, "communcation_bottleneck1")), id_sd, "communcation_bottleneck2")
            hc = torch.cat([z_app[:64], z_app[64 + 32 * a:96 + 32 * a], comm])
            for i in range(5):
                hc = lin(hc, id_sd, f"aggr_app.layers.{t}.layers.{2 * i}")
                hc = F.relu(hc) if i < 4 else hc
            s, c = s + w[j] * h[0], c + w[j] * hc
        sdf.append(s)
        rgb.append(c)
    return torch.stack(sdf), torch.stack(rgb)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    torch.manual_seed(0)
    layer = HeadLayer(preset("mononphm"))
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(1.5)  # torch-default init scaled up: outputs far from trivial
        layer.anchor_offsets[-1].weight.normal_(0, 0.01)
    id_sd, ex_sd = official_state_dicts(layer)
    g = torch.Generator().manual_seed(1)
    latent = {"codebook.geo.embedding.weight": torch.randn(2, 2176, generator=g) * 0.02,
              "codebook.exp.embedding.weight": torch.randn(3, 100, generator=g) * 0.05,
              "codebook.app.embedding.weight": torch.randn(2, 2176, generator=g) * 0.02}
    latent["codebook.exp.embedding.weight"][2] *= 100  # a row beyond max_norm 1
    folder = tmp_path_factory.mktemp("official")
    anchors = folder / "anchors_65.npy"
    np.save(anchors, (torch.randn(65, 3, generator=g) * 0.3).double().numpy())
    path = folder / "checkpoint_epoch_2500.tar"
    torch.save({"epoch": 2500, "id_decoder": id_sd, "ex_decoder": ex_sd, "latent_codes": latent,
                "latent_codes_val": {k: v[:1] for k, v in latent.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
                "optimizer_lat": ({"state": {}, "param_groups": []},)}, path)
    return path, anchors, id_sd, ex_sd, latent


def test_official_key_layout(official_file):
    _, _, id_sd, ex_sd, _ = official_file
    for name, sd in (("id_decoder", id_sd), ("ex_decoder", ex_sd)):
        for key, shape in OFFICIAL_SHAPES[name].items():
            assert tuple(sd[key].shape) == shape, key
    assert len(id_sd) == N_ID_KEYS and len(ex_sd) == 2 * (1 + 7)


def test_official_checkpoint_loads_and_matches_reference(official_file):
    path, anchors, id_sd, ex_sd, latent = official_file
    layer, c = load_official_mononphm(path, anchors)
    assert layer.cfg == preset("mononphm")
    assert c["z_id"].shape == (2, 2176) and c["z_ex"].shape == (3, 100) and c["z_app_val"].shape == (1, 2176)
    assert torch.allclose(c["z_ex"][2].norm(), torch.tensor(1.0))  # nn.Embedding(max_norm=1) renorm
    assert torch.equal(c["z_ex"][0], latent["codebook.exp.embedding.weight"][0])
    assert torch.equal(layer.anchor_mean, torch.from_numpy(np.load(anchors)).float())  # not symmetrised
    found, _ = load_official_mononphm(path)  # anchors_65.npy found next to the checkpoint
    assert torch.equal(found.anchor_mean, layer.anchor_mean)
    torch.manual_seed(4)
    x = (torch.rand(4, 3) - 0.5) * 0.8
    z_geo, z_app, z_ex = c["z_id"][1], c["z_app"][1], c["z_ex"][1]
    out = layer(x, z_geo, z_ex, z_app)
    ref_sdf, ref_rgb = official_reference(id_sd, ex_sd, layer.anchor_mean, z_geo, z_app, z_ex, x)
    assert out.sdf.abs().max() > 1e-3 and out.rgb.abs().max() > 1e-3
    assert torch.allclose(out.sdf, ref_sdf, atol=1e-5, rtol=1e-4)
    assert torch.allclose(out.rgb, ref_rgb, atol=1e-5, rtol=1e-4)


def test_official_key_mismatch_lists_keys(official_file, tmp_path):
    path, anchors, id_sd, ex_sd, latent = official_file
    bad_id = {**id_sd, "deepSDFensemble.layers.36.layers.0.weight": torch.zeros(1)}
    bad_ex = {k: v for k, v in ex_sd.items() if k != "defDeepSDF.lin3.bias"}
    torch.save({"id_decoder": bad_id, "ex_decoder": ex_sd}, tmp_path / "extra.tar")
    with pytest.raises(InputError, match=r"id_decoder.*unknown keys: deepSDFensemble\.layers\.36\.layers\.0\.weight"):
        load_official_mononphm(tmp_path / "extra.tar", anchors)
    torch.save({"id_decoder": id_sd, "ex_decoder": bad_ex}, tmp_path / "missing.tar")
    with pytest.raises(InputError, match=r"ex_decoder.*missing keys: defDeepSDF\.lin3\.bias"):
        load_official_mononphm(tmp_path / "missing.tar", anchors)
    with pytest.raises(InputError, match="anchors_65.npy"):
        load_official_mononphm(tmp_path / "extra.tar")  # no anchor layout next to it
    torch.save({"id_decoder": id_sd}, tmp_path / "noex.tar")
    with pytest.raises(InputError, match="missing entries: ex_decoder"):
        load_official_mononphm(tmp_path / "noex.tar", anchors)


def test_half_precision_copy_halves_the_file_and_loads_as_float32(tmp_path):
    from model.checkpoint import half_precision_copy
    from model.vit import NormalEncoder, encoder_preset, load_encoder, save_encoder

    torch.manual_seed(0)
    enc = NormalEncoder(encoder_preset("tiny", "normals"))
    full = save_encoder(tmp_path / "full.pt", enc)
    half = half_precision_copy(full, tmp_path / "half.pt")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, meta = load_encoder(half)
    assert meta["stored_dtype"] == "float16"
    for (name, a), b in zip(enc.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-3)
    with pytest.raises(InputError, match="not an nphm-track checkpoint"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        half_precision_copy(tmp_path / "other.pt", tmp_path / "o2.pt")
