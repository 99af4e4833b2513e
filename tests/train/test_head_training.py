"""Tests for train/head_data.py, train/head_training.py and train/registration.py on a tiny dataset."""


import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.config import preset
from model.errors import InputError
from train import frame
from train.head_data import anchor_vertices, load_training_heads
from train.head_training import HeadTrainConfig, build_trainer, train_head
from train.heads_data import HeadsDataConfig, generate_heads_dataset
from train.registration import RegisterConfig, norm_outliers, register_points

TINY = HeadsDataConfig(n_surface=256, n_near=256, n_space=64)


@pytest.fixture(scope="module")
def heads_dir(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    generate_heads_dataset(out, 3, 3, seed=3, kit=kit, config=TINY, progress=False)
    return out


def _cfg(heads_dir, out, **kw) -> HeadTrainConfig:
    base = dict(data_dir=str(heads_dir), out_dir=str(out), steps=2, heads_per_step=2, n_surface=64,
                n_grad_surface=16, n_near=64, n_space=16, n_corresp=32, checkpoint_every=1)
    base.update(kw)
    return HeadTrainConfig(**base)


def test_anchor_vertices_are_symmetric_and_deterministic(kit):
    cfg = preset("default")
    idx = anchor_vertices(kit, cfg.n_symmetric_pairs, cfg.n_middle)
    assert idx.shape == (cfg.n_anchors,) and len(np.unique(idx)) == cfg.n_anchors
    assert np.array_equal(idx, anchor_vertices(kit, cfg.n_symmetric_pairs, cfg.n_middle))
    v = frame.ict_to_model(kit.neutral.astype(np.float64))[idx]
    p = cfg.n_symmetric_pairs
    even, odd = v[0:2 * p:2], v[1:2 * p:2]
    assert (even[:, 0] > 0).all() and (odd[:, 0] < 0).all()
    assert np.abs(even * [-1, 1, 1] - odd).max() < 0.004  # mirror partners within 1 mm
    assert np.abs(v[2 * p:, 0]).max() < 0.004


def test_training_heads_have_correspondences_and_anchors(kit, heads_dir):
    cfg = preset("default")
    idx = anchor_vertices(kit, cfg.n_symmetric_pairs, cfg.n_middle)
    data = load_training_heads(heads_dir, kit, idx)
    assert data.n_identities == 2  # 3 identities, the last held out
    assert data.anchors.shape == (2, cfg.n_anchors, 3)
    # the neutral head of each identity: posed == neutral correspondences
    neutral = data.is_neutral
    assert neutral.sum() == 2
    assert torch.allclose(data.corr_posed[neutral], data.corr_neutral[neutral])
    assert not torch.allclose(data.corr_posed[~neutral], data.corr_neutral[~neutral])
    with pytest.raises(InputError, match="no heads with split"):
        load_training_heads(heads_dir, kit, idx, split="nonexistent")


def test_steps_on_a_fixed_batch_lower_the_loss(kit, heads_dir, tmp_path):
    torch.manual_seed(0)
    trainer = build_trainer(_cfg(heads_dir, tmp_path), kit)
    heads = torch.tensor([0, 1])
    state = trainer.rng.get_state()

    def loss() -> float:
        trainer.rng.set_state(state)
        return float(trainer.weighted(trainer.losses(heads)).detach())

    before = loss()
    for _ in range(15):
        trainer.rng.set_state(state)
        total = trainer.weighted(trainer.losses(heads))
        trainer.opt_net.zero_grad()
        trainer.opt_codes.zero_grad()
        total.backward()
        trainer.opt_net.step()
        trainer.opt_codes.step()
    assert loss() < 0.7 * before


def test_train_resume_and_checkpoint(kit, heads_dir, tmp_path):
    r = train_head(_cfg(heads_dir, tmp_path, steps=2), kit, progress=False)
    assert r.steps == 2 and np.isfinite(r.final_losses["total"])
    r2 = train_head(_cfg(heads_dir, tmp_path, steps=3), kit, progress=False)  # extends the same run
    assert r2.steps == 3
    layer, codes, meta = load_checkpoint(r2.checkpoint)
    assert meta["step"] == 3 and codes["z_id"].shape == (2, layer.cfg.id_dim)
    with pytest.raises(InputError, match="another configuration"):
        train_head(_cfg(heads_dir, tmp_path, steps=4, seed=5), kit, progress=False)


def test_registration_lowers_surface_sdf(kit, heads_dir, tmp_path):
    trainer = build_trainer(_cfg(heads_dir, tmp_path), kit)
    layer = trainer.layer
    pts = trainer.data.surface[0]
    z0 = trainer.z_id.detach().mean(0)
    with torch.no_grad():
        before = float(layer(pts[None], z0[None], torch.zeros(1, layer.cfg.expr_dim)).sdf.abs().mean())
    reg = register_points(layer, pts, RegisterConfig(steps=30, lr=2e-2, points_per_step=128), z0)
    assert reg.final_sdf_l1 < before
    assert all(p.requires_grad for p in layer.parameters())  # the caller's layer is left as it was
    assert reg.z_id.shape == (layer.cfg.id_dim,) and reg.z_ex.shape == (layer.cfg.expr_dim,)
    with pytest.raises(InputError):
        register_points(layer, pts[:, :2], RegisterConfig(steps=1), z0)
    z_ex = torch.randn(layer.cfg.expr_dim) * 0.1  # an identity's best code at a given expression
    held = register_points(layer, pts, RegisterConfig(steps=30, lr=2e-2, points_per_step=128, fit_expression=False),
                           z0, z_ex)
    torch.testing.assert_close(held.z_ex, z_ex, rtol=0, atol=0)
    assert not torch.equal(held.z_id, z0)
    with pytest.raises(InputError, match="nothing to fit"):
        register_points(layer, pts, RegisterConfig(steps=1, fit_identity=False, fit_expression=False), z0)


def test_norm_outliers_flags_the_far_code():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(50, 64))  # norms concentrate: no natural outliers
    codes[7] *= 20
    flags = norm_outliers(codes)
    assert flags[7] and flags.sum() == 1
    assert not norm_outliers(np.ones((5, 3))).any()
