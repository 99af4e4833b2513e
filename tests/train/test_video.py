import json

import av
import numpy as np
import pytest
from click.testing import CliRunner

from model.errors import InputError
from train.camera import euler_to_matrix, project
from train.video import (Mp4Writer, VideoConfig, expression_trajectory, generate_videos, pose_trajectory,
                         smooth_keyframes, video_path)

NAMES = ["eyeBlink_L", "eyeBlink_R", "jawOpen", "mouthFunnel", "mouthPucker", "mouthLowerDown_L",
         "mouthLowerDown_R", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L", "browInnerUp_R"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, ict_path):
    out = tmp_path_factory.mktemp("videos")
    generate_videos(out, 1, frames=6, resolution=32, fps=10.0, seed=5, ict_path=ict_path, progress=False)
    return out


def test_decoded_video_has_frames_fps_size(clip):
    with av.open(str(video_path(clip, 0))) as c:
        s = c.streams.video[0]
        assert s.average_rate == 10 and s.codec_context.pix_fmt == "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
    assert np.ptp(np.stack(frames)) > 50  # not a blank video


def test_gt_is_consistent(clip, ict_path):
    from train.frame import ict_to_model
    from train.ict import load_ict

    gt = np.load(clip / "video_0000.gt.npz")
    F = 6
    assert gt["w_ex"].shape == (F, 53) and gt["w_id"].shape == (100,) and gt["landmarks2d"].shape == (F, 68, 2)
    assert float(gt["fps"]) == 10.0 and int(gt["width"]) == 32 and int(gt["height"]) == 32
    a = gt["pose_angles"]
    np.testing.assert_allclose(gt["pose_R"], euler_to_matrix(a[:, 0], a[:, 1], a[:, 2]), atol=1e-12)
    np.testing.assert_allclose(gt["model_to_camera_R"], gt["camera_R"] @ gt["pose_R"], atol=1e-12)
    kit = load_ict(ict_path)
    for f in (0, F - 1):
        v = ict_to_model(kit.vertices(gt["w_id"], gt["w_ex"][f]).astype(np.float64))[kit.landmarks68]
        uv, z = project(v, gt["K"], gt["model_to_camera_R"][f], gt["model_to_camera_t"][f])
        np.testing.assert_allclose(uv, gt["landmarks2d"][f], atol=1e-3)
        assert (uv >= 0).all() and (uv <= 31).all() and (z > 0).all()
    manifest = json.loads((clip / "manifest.json").read_text())
    assert manifest["videos"] == [{"video": "video_0000.mp4", "gt": "video_0000.gt.npz"}]


def test_same_seed_same_video_and_resume(clip, tmp_path, ict_path):
    generate_videos(tmp_path, 1, frames=6, resolution=32, fps=10.0, seed=5, ict_path=ict_path, progress=False)
    a, b = np.load(clip / "video_0000.gt.npz"), np.load(tmp_path / "video_0000.gt.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert video_path(clip, 0).read_bytes() == video_path(tmp_path, 0).read_bytes()
    before = video_path(tmp_path, 0).stat().st_mtime_ns
    generate_videos(tmp_path, 1, frames=6, resolution=32, fps=10.0, seed=5, ict_path=ict_path, progress=False)
    assert video_path(tmp_path, 0).stat().st_mtime_ns == before  # complete video skipped
    with pytest.raises(InputError, match="other settings"):
        generate_videos(tmp_path, 1, frames=6, resolution=32, fps=10.0, seed=6, ict_path=ict_path,
                        progress=False)


def test_trajectories_are_smooth_and_bounded():
    cfg = VideoConfig(frames=100, fps=25.0, speech_probability=1.0, blink_rate_hz=1.0)
    w = expression_trajectory(np.random.default_rng(0), cfg, NAMES)
    assert w.shape == (100, len(NAMES)) and w.min() >= 0 and w.max() <= 1
    step = np.abs(np.diff(w, axis=0)).max(0)  # [K] largest change between frames at 25 fps
    assert step[2:].max() < 0.3  # smooth, apart from blinks, which close in ~0.1 s
    assert step[:2].max() < 0.9
    assert w[:, NAMES.index("jawOpen")].max() > 0.1  # speech moved the jaw
    assert w[:, NAMES.index("eyeBlink_L")].max() > 0.8  # at least one blink (rate 1 Hz over 4 s)
    angles, trans = pose_trajectory(np.random.default_rng(0), cfg)
    assert angles.shape == (100, 3) and trans.shape == (100, 3)
    assert (np.abs(angles) <= [cfg.yaw_deg, cfg.pitch_deg, cfg.roll_deg]).all()
    assert np.abs(np.diff(angles, axis=0)).max() < 3.0 and np.ptp(angles[:, 0]) > 1.0


def test_still_preset_keeps_the_face_neutral_while_the_head_turns():
    from train.video import still_video_config

    cfg = still_video_config(VideoConfig(frames=100, fps=25.0))
    w = expression_trajectory(np.random.default_rng(3), cfg, NAMES)
    assert np.abs(w).max() == 0.0
    angles, _ = pose_trajectory(np.random.default_rng(3), cfg)
    assert np.ptp(angles[:, 0]) > 1.0


def test_smooth_keyframes_hit_keys_without_overshoot():
    times = np.array([0.0, 1.0, 2.0])
    vals = np.array([[0.0], [1.0], [0.0]])
    out = smooth_keyframes(times, vals, np.linspace(0, 2, 41))
    assert out[0, 0] == 0 and out[20, 0] == pytest.approx(1.0) and out.max() <= 1.0 + 1e-12


def test_odd_size_and_bad_settings_rejected(tmp_path):
    with pytest.raises(InputError, match="even"):
        VideoConfig(resolution=33)
    with pytest.raises(InputError, match="--frames"):
        VideoConfig(frames=0)
    with pytest.raises(InputError, match="even"):
        Mp4Writer(tmp_path / "x.mp4", 31, 32, 25.0)


def test_cli_videos_smoke_and_missing_ict(tmp_path, ict_path):
    from train.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["data", "videos", "--out", str(tmp_path / "v"), "-n", "1", "--frames", "2",
                               "--res", "16", "--fps", "5", "--seed", "1", "--ict", str(ict_path)])
    assert res.exit_code == 0, res.output
    assert video_path(tmp_path / "v", 0).exists() and (tmp_path / "v" / "video_0000.gt.npz").exists()
    res = runner.invoke(main, ["data", "videos", "--out", str(tmp_path / "x"), "--ict", str(tmp_path / "no")])
    assert res.exit_code == 2 and "error:" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["data", "videos", "--out", str(tmp_path / "x"), "--res", "33", "--ict",
                               str(ict_path)])
    assert res.exit_code == 2 and "--res" in res.output
