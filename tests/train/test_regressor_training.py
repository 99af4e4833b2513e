import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from model.checkpoint import save_checkpoint
from model.errors import InputError
from model.regressor import load_regressor
from model.render import TraceConfig
from model.vit import build_encoder, encoder_preset, save_encoder
from tests.model.regressor_fixtures import fitted_tiny_head, one_thread  # noqa: F401 (fixture)
from train.code_targets import CodeFitConfig
from train.regressor_data import RegressorDataConfig, load_regressor_set
from train.regressor_training import (RegressorLossWeights, RegressorTrainConfig, build_regressor_trainer,
                                      train_regressor)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory, kit):
    """Four 32 px renders, a fitted tiny head and two tiny random encoders, all made here."""
    from train.ict import default_ict_path
    from train.renders_data import RendersConfig, generate_renders

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("regressor_world")
    generate_renders(root / "renders", 4, 32, seed=3, ict_path=default_ict_path(),
                     cfg=RendersConfig(heldout_fraction=0.0), progress=False)
    layer, z_id, z_ex = fitted_tiny_head()
    save_checkpoint(root / "head.pt", layer, {"z_id": z_id, "z_ex": z_ex})
    torch.manual_seed(0)
    for target in ("normals", "points"):
        save_encoder(root / f"{target}.pt", build_encoder(encoder_preset("tiny", target)))
    torch.set_num_threads(before)
    return root


def _cfg(world, out, **kw) -> RegressorTrainConfig:
    base = dict(renders_dir=str(world / "renders"), head=str(world / "head.pt"),
                normal_encoder=str(world / "normals.pt"), point_encoder=str(world / "points.pt"), out_dir=str(out),
                preset="tiny", steps=2, batch_size=2, n_points=64, n_pixels=24, checkpoint_every=1,
                data=RegressorDataConfig(n_pixels=48, n_near=256), trace=TraceConfig(max_steps=24),
                code_fit=CodeFitConfig(steps=20, points_per_step=64))
    base.update(kw)
    return RegressorTrainConfig(**base)


def test_data_pixels_normals_and_sdf_cache(world, kit, tmp_path):
    from train.renders_data import load_sample

    cfg = RegressorDataConfig(image_size=16, n_pixels=40, n_near=128)
    data = load_regressor_set(world / "renders", kit, cfg, tmp_path / "cache", progress=False)
    assert len(data) == 4 and data.rgb.shape == (4, 3, 16, 16) and data.rgb.dtype == torch.uint8
    s = load_sample(world / "renders" / data.files[1])
    u, v = data.pixels[1].long().T
    assert s["face_mask"][v.numpy(), u.numpy()].all()
    gt = torch.from_numpy(s["normals"].astype(np.float32))[v, u]
    assert torch.allclose(data.normals[1], gt / gt.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(data.K[1], torch.from_numpy(s["K"]).float())
    # near points lie within a few sigmas of the surface and about half are inside
    assert data.near_sdf.abs().max() < 0.06 and 0.2 < (data.near_sdf < 0).float().mean() < 0.8
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 4
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = load_regressor_set(world / "renders", kit, cfg, tmp_path / "cache", progress=False)
    assert torch.equal(again.near, data.near) and torch.equal(again.pixels, data.pixels)
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    with pytest.raises(InputError, match="no manifest.json"):
        load_regressor_set(tmp_path, kit, cfg, tmp_path / "cache", progress=False)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(world, kit, tmp_path):
    trainer = build_regressor_trainer(_cfg(world, tmp_path, lr=1e-3), kit, progress=False)
    batch = trainer.sample_batch()
    with torch.no_grad():
        before = trainer.losses(batch)
    assert before["hit_fraction"] > 0.2  # the 2D term is active
    assert before["sdf_3d"] > 0 and before["normal_2d"] > 0
    trainer.train_step(batch)
    with torch.no_grad():
        after = trainer.losses(batch)
    assert trainer.weighted(after) < trainer.weighted(before)
    # cached float16 tokens give the losses of encoding the batch's images afresh
    with torch.no_grad():
        fresh = trainer.losses(dataclasses.replace(batch, index=None))
    assert abs(float(fresh["sdf_3d"]) - float(after["sdf_3d"])) < 1e-3 * float(after["sdf_3d"])
    # the normal term alone also carries a gradient to the regressor
    trainer.regressor.zero_grad()
    trainer.losses(batch)["normal_2d"].backward()
    assert trainer.regressor.local_heads.w2.grad.abs().sum() > 0


def test_untrained_regressor_predicts_the_mean_head(world, kit, tmp_path):
    from model.checkpoint import load_checkpoint

    _, codes, _ = load_checkpoint(world / "head.pt")
    trainer = build_regressor_trainer(_cfg(world, tmp_path), kit, progress=False)
    out = trainer.predict(trainer.sample_batch().rgb)
    spread = codes["z_id"].std(0)
    assert ((out.z_id - codes["z_id"].mean(0)).abs() < spread + 1e-6).float().mean() > 0.95


def test_resume_matches_an_uninterrupted_run(world, kit, tmp_path):
    train_regressor(_cfg(world, tmp_path / "a", steps=1), kit, progress=False)
    res = train_regressor(_cfg(world, tmp_path / "a", steps=2), kit, progress=False)
    assert res.steps == 2
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["train"]["data"]["image_size"] == 32 and saved["regressor"]["width"] == 32  # resolved
    train_regressor(_cfg(world, tmp_path / "b", steps=2), kit, progress=False)
    ra, meta = load_regressor(tmp_path / "a" / "regressor.pt")
    rb, _ = load_regressor(tmp_path / "b" / "regressor.pt")
    assert meta["step"] == 2 and meta["kind"] == "regressor"
    for (k, a), (_, b) in zip(ra.state_dict().items(), rb.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k
    state = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    with pytest.raises(InputError, match="another configuration"):
        train_regressor(_cfg(world, tmp_path / "a", steps=3, lr=5e-4), kit, progress=False)


def test_encoders_must_have_the_right_targets(world, kit, tmp_path):
    with pytest.raises(InputError, match="normals encoder and a points encoder"):
        build_regressor_trainer(_cfg(world, tmp_path, normal_encoder=str(world / "points.pt")), kit,
                                progress=False)


def test_cli_smoke(world, tmp_path):
    from train.cli import main

    out = tmp_path / "cli"
    args = ["regressor", "--renders", str(world / "renders"), "--head", str(world / "head.pt"),
            "--normal-encoder", str(world / "normals.pt"), "--point-encoder", str(world / "points.pt"),
            "--out", str(out), "--steps", "1", "--preset", "tiny", "--batch-size", "2", "--max-items", "2",
            "--threads", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "1 steps" in res.output and (out / "regressor.pt").is_file()
    bad = CliRunner().invoke(main, args[:-2] + ["--head", str(tmp_path / "missing.pt")])
    assert bad.exit_code != 0


def test_face_pixel_pool_without_face_pixels_is_invalid():
    from train.regressor_data import _face_pixels

    rng = np.random.default_rng(0)
    uv, nrm, valid = _face_pixels(np.zeros((8, 8), bool), np.zeros((8, 8, 3), np.float16), rng, 5)
    assert uv.shape == (5, 2) and nrm.shape == (5, 3) and not valid.any()
    mask = np.zeros((8, 8), bool)
    mask[2, 5] = True
    normals = np.zeros((8, 8, 3), np.float16)
    normals[2, 5] = (0, 0, -2)
    uv, nrm, valid = _face_pixels(mask, normals, rng, 3)
    assert valid.all() and (uv == [[5, 2]] * 3).all() and np.allclose(nrm, [[0, 0, -1]] * 3)


def test_code_prior_is_about_one_in_distribution_and_grows_outside(world, kit, tmp_path):
    from model.checkpoint import load_checkpoint
    from train.regressor_training import code_prior

    _, codes, _ = load_checkpoint(world / "head.pt")
    trainer = build_regressor_trainer(_cfg(world, tmp_path), kit, progress=False)
    r = trainer.regressor
    z_id, z_ex = codes["z_id"], codes["z_ex"][:len(codes["z_id"])]
    inside = float(code_prior(r, z_id, z_ex))
    assert 0.5 < inside < 4.0  # the training codes themselves: about 1 per part
    far = float(code_prior(r, z_id + 20 * r.id_scale, z_ex + 20 * r.ex_scale))
    assert far > 100 * inside  # 20 standard deviations out, as the first shipped regressor drifted
    terms = trainer.losses(trainer.sample_batch())
    assert "prior" in terms and float(terms["prior"]) < 4.0  # the untrained regressor predicts about the mean


def test_code_term_pulls_the_prediction_to_each_renders_targets(world, kit, tmp_path):
    trainer = build_regressor_trainer(_cfg(world, tmp_path, lr=3e-3, weights=RegressorLossWeights(code=1.0)), kit,
                                      progress=False)
    targets = trainer.targets
    assert targets is not None and targets.z_id.shape[0] == len(trainer.data) == 4
    assert (tmp_path / "code_targets.npz").is_file()
    # the fitted targets explain each render's SDF samples better than the mean head does
    with torch.no_grad():
        fitted = (trainer.head(trainer.data.near, targets.z_id, targets.z_ex).sdf - trainer.data.near_sdf).abs()
        mean = trainer.head(trainer.data.near, trainer.regressor.id_mean.expand(4, -1),
                            trainer.regressor.ex_mean.expand(4, -1)).sdf
    assert float(fitted.mean()) < float((mean - trainer.data.near_sdf).abs().mean())
    batch = trainer.sample_batch()
    with torch.no_grad():
        before = float(trainer.losses(batch)["code"])
    assert before > 0
    for _ in range(3):
        trainer.train_step(batch)
    with torch.no_grad():
        assert float(trainer.losses(batch)["code"]) < before


def test_without_code_and_normal_terms_no_targets_and_no_rendering(world, kit, tmp_path):
    cfg = _cfg(world, tmp_path, weights=RegressorLossWeights(code=0.0, normal_2d=0.0))
    trainer = build_regressor_trainer(cfg, kit, progress=False)
    assert trainer.targets is None and not (tmp_path / "code_targets.npz").exists()
    terms = trainer.losses(trainer.sample_batch())
    assert float(terms["code"]) == 0.0 and float(terms["normal_2d"]) == 0.0
    assert np.isnan(float(terms["hit_fraction"]))  # nothing rendered
    assert float(terms["sdf_3d"]) > 0
