import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from model.errors import InputError
from model.vit import load_encoder
from train.encoder_data import AugmentConfig, load_render_set
from train.encoder_training import (STATE_FILE, EncoderTrainConfig, EncoderTrainer, lr_at, train_encoder)


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Six 32 x 32 ICT renders, half of them held out."""
    from train.ict import default_ict_path
    from train.renders_data import RendersConfig, generate_renders

    ict = default_ict_path()
    if not ict.exists():
        pytest.skip(f"ICT-FaceKit not found at {ict} (set NPHM_SHARED or NPHM_ICT)")
    out = tmp_path_factory.mktemp("enc_renders")
    generate_renders(out, 6, 32, seed=5, ict_path=ict, cfg=RendersConfig(heldout_fraction=0.5), progress=False)
    return out


def _cfg(renders, out, **kw) -> EncoderTrainConfig:
    base = dict(data_dir=str(renders), out_dir=str(out), target="normals", preset="tiny", steps=4, batch_size=3,
                lr=1e-3, warmup_steps=1, checkpoint_every=2, eval_every=2, eval_images=8)
    return EncoderTrainConfig(**{**base, **kw})


def test_load_render_set_splits(renders):
    train = load_render_set(renders, "points", 32, "train")
    held = load_render_set(renders, "points", 32, "heldout")
    assert len(train) + len(held) == 6 and len(train) > 0 and len(held) > 0
    assert train.rgb.dtype == torch.uint8 and train.rgb.shape[1:] == (3, 32, 32)
    assert train.maps.abs().max() < 1.0 and (train.maps[~train.mask[:, None].expand_as(train.maps)] == 0).all()
    assert (train.face_mask <= train.mask).all() and train.yaw.abs().max() <= 75
    small = load_render_set(renders, "normals", 16, "all")
    torch.testing.assert_close(small.maps.float().norm(dim=1)[small.mask], torch.ones(int(small.mask.sum())),
                               atol=2e-3, rtol=0)
    with pytest.raises(InputError, match="no manifest"):
        load_render_set(renders / "renders", "normals", 32)


@pytest.mark.parametrize("target", ["normals", "points"])
def test_one_step_lowers_the_loss_on_a_fixed_batch(renders, tmp_path, target):
    cfg = _cfg(renders, tmp_path, target=target, augment=AugmentConfig(flip=0, scale=0, shift=0))
    trainer = EncoderTrainer(cfg, load_render_set(renders, target, 32, "all"))
    batch = trainer.data.batch(torch.arange(len(trainer.data)))
    with torch.no_grad():
        before = {k: float(v) for k, v in trainer.losses(batch).items()}
    trainer.train_step(batch)
    with torch.no_grad():
        after = {k: float(v) for k, v in trainer.losses(batch).items()}
    assert trainer.weighted(after) < trainer.weighted(before)
    assert set(before) == ({"mask", "cosine", "normal_l1"} if target == "normals" else {"mask", "point_l1"})


def test_resume_gives_the_same_state(renders, tmp_path):
    cfg = _cfg(renders, tmp_path)
    data = load_render_set(renders, "normals", 32, "train")
    straight = EncoderTrainer(cfg, data)
    for _ in range(4):
        straight.train_step()
    first = EncoderTrainer(cfg, data)
    for _ in range(2):
        first.train_step()
    torch.save(first.state_dict(), tmp_path / STATE_FILE)
    resumed = EncoderTrainer(cfg, data)
    resumed.load_state_dict(torch.load(tmp_path / STATE_FILE, weights_only=True))
    for _ in range(2):
        resumed.train_step()
    for (k, a), b in zip(straight.encoder.state_dict().items(), resumed.encoder.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert resumed.step == 4 and torch.equal(straight.rng.get_state(), resumed.rng.get_state())


def test_lr_schedule():
    cfg = EncoderTrainConfig(data_dir="d", out_dir="o", steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(100, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_train_encoder_writes_outputs_and_resumes(renders, tmp_path):
    cfg = _cfg(renders, tmp_path / "run", target="points")
    result = train_encoder(cfg, progress=False)
    out = tmp_path / "run"
    assert result.steps == 4 and result.checkpoint == out / "encoder.pt"
    assert json.loads((out / "config.json").read_text())["train"]["target"] == "points"
    log = [json.loads(line) for line in (out / "eval_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [2, 4] and log[-1]["heldout"]["error_name"] == "point_l1_mm"
    assert result.metrics.overall.n_images > 0 and result.metrics.overall.error > 0
    encoder, meta = load_encoder(result.checkpoint)
    assert encoder.cfg.target == "points" and meta["step"] == 4
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 4
    again = train_encoder(cfg, progress=False)  # resumes at the end: nothing to do, same weights
    assert again.steps == 4
    enc2, _ = load_encoder(again.checkpoint)
    for a, b in zip(encoder.state_dict().values(), enc2.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="another configuration"):
        train_encoder(dataclasses.replace(cfg, lr=2e-3), progress=False)


def test_cli_train_and_evaluate(renders, tmp_path):
    from train.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["encoders", "--kind", "normals", "--data", str(renders), "--out", str(tmp_path),
                               "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--eval-every", "0"])
    assert res.exit_code == 0, res.output
    assert "angular_error_deg" in res.output
    ckpt = tmp_path / "encoder.pt"
    res = runner.invoke(main, ["eval-encoders", str(ckpt), "--data", str(renders), "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    figures = json.loads((tmp_path / "m.json").read_text())[str(ckpt)]
    assert figures["target"] == "normals" and 0 < figures["overall"]["error"] < 180
    assert set(figures["by_yaw"]) == {"0-15", "15-30", "30-45", "45-60", "60+"}
    res = runner.invoke(main, ["eval-encoders", str(tmp_path / "missing.pt"), "--data", str(renders)])
    assert res.exit_code == 2 and "no such checkpoint" in res.output
