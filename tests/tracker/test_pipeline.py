"""The streaming tracker end to end on short clips cut from the shipped synthetic example.

The networks are tiny and untrained (the head is the shipped trained one), and the TTO stages are cut to a
few steps, so these tests check the pipeline's behaviour (every frame accounted for, outputs and track file
consistent, gaps, odd inputs, failures leaving nothing behind), not accuracy: that is
``tests/benchmarks/bench_tracker.py``.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from exporters import read_animation
from model.errors import InputError
from tests.tracker.test_decode import write_video
from tracker.cli import main
from tracker.pipeline import (FrameSolution, TrackConfig, crop_intrinsics, track_path_for, track_video)
from tracker.predict import Prediction
from tracker.strategy import FixedLagSmoother, TrackingStrategy
from tracker.trackfile import load_track
from tracker.tto import TTOStage

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    with av.open(str(EXAMPLE)) as c:
        out = [f.to_ndarray(format="rgb24") for _, f in zip(range(6), c.decode(video=0))]
    return out


def plausible_maps(pred: Prediction) -> Prediction:
    """Replace the untrained encoders' maps by those of a sphere of radius 0.3 seen from the front (a
    centred disc mask), so the pose estimation and the TTO have consistent targets."""
    B, S = pred.mask.shape[0], pred.mask.shape[-1]
    c = (S - 1) / 2
    v, u = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    x, y = (u - c) / S, (v - c) / S
    inside = x ** 2 + y ** 2 < 0.35 ** 2
    z = torch.sqrt((0.36 ** 2 - x ** 2 - y ** 2).clamp_min(1e-4))
    canonical = torch.stack([x, -y, z], -1) * (0.3 / 0.36)  # +z towards the camera in the head frame
    normals = torch.nn.functional.normalize(torch.stack([x, y, -z], -1), dim=-1)  # OpenCV camera
    pred.mask = inside.float().expand(B, S, S).clone()
    pred.point_map = canonical.expand(B, S, S, 3).clone()
    pred.normals = normals.expand(B, S, S, 3).clone()
    return pred


@pytest.fixture(autouse=True)
def consistent_maps(monkeypatch):
    import tracker.pipeline as pipeline

    real = pipeline.predict
    monkeypatch.setattr(pipeline, "predict", lambda models, crops: plausible_maps(real(models, crops)))


def fast_strategy(**kw) -> TrackingStrategy:
    return TrackingStrategy(identity_frames=2, keyframes=2,
                            identity_stages=[TTOStage("id", 2, params=("pose", "z_id", "z_ex"))],
                            frame_stages=[TTOStage("frame", 2, params=("pose", "z_ex"), w_prior=1.0)], **kw)


FAST = TrackConfig(tto_resolution=20, export_resolution=32)


def run(video, out, models, preview=None, **kw):
    return track_video(video, out, FAST, models=models, strategy=fast_strategy(**kw), preview=preview,
                       progress=False)


# --- smoother and strategy ---------------------------------------------------------------------------------

def _sol(i, status="tracked", value=0.0):
    return FrameSolution(i, i / 25, status, torch.full((3,), value), torch.tensor([3.1, 0, 0, 0, 0, float(value)]),
                         np.eye(3), np.zeros((2, 3)), 1.0)


def test_fixed_lag_smoother_delays_by_lag_and_keeps_every_frame():
    sm = FixedLagSmoother(lag=2, sigma=1.0)
    out = []
    for i in range(6):
        ready = sm.push(_sol(i, value=float(i % 2)))
        assert len(ready) == (1 if i >= 2 else 0)
        out += ready
    out += sm.flush()
    assert [s.index for s in out] == list(range(6))
    inner = [float(s.z_ex[0]) for s in out[2:4]]
    assert all(0.2 < v < 0.8 for v in inner)  # the 0/1 alternation is smoothed towards 0.5


def test_smoother_does_not_mix_across_a_gap():
    sm = FixedLagSmoother(lag=2, sigma=2.0)
    sols = [_sol(0, value=0.0), _sol(1, value=0.0), _sol(2, "gap", 0.0), _sol(3, value=1.0), _sol(4, value=1.0)]
    out = [r for s in sols for r in sm.push(s)] + sm.flush()
    assert [float(s.z_ex[0]) for s in out] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_keyframes_are_varied_and_start_at_the_most_confident():
    st = TrackingStrategy(keyframes=2)
    z = torch.tensor([[0.0], [0.1], [5.0], [0.2]])
    assert st.select_keyframes(z, torch.tensor([0.1, 0.9, 0.2, 0.3])) == [1, 2]
    assert st.reinitialise(None, 0) and not st.reinitialise(_sol(0), 1) and st.reinitialise(_sol(0), 6)


def test_crop_intrinsics_match_the_crop_affine():
    K = np.array([[500.0, 0, 255.5], [0, 500.0, 255.5], [0, 0, 1]])
    affine = np.array([[2.0, 0, 100.0], [0, 2.0, 50.0]])  # crop pixel (u, v) -> frame (2u + 100, 2v + 50)
    Kc = crop_intrinsics(K, affine)
    X = np.array([0.1, 0.2, 2.0])
    u_frame = (K @ X)[:2] / X[2]
    u_crop = (Kc @ X)[:2] / X[2]
    np.testing.assert_allclose(2 * u_crop + [100, 50], u_frame)


def test_track_file_name():
    assert track_path_for("out/anim.usd") == Path("out/anim.track.npz")
    assert track_path_for("out/frames/") == Path("out/frames.track.npz")


# --- end to end ----------------------------------------------------------------------------------------

def test_tracks_a_clip_into_usd_track_and_preview(tmp_path, frames, models):
    video = write_video(tmp_path / "clip.mp4", frames)
    res = run(video, tmp_path / "anim.usd", models, preview=tmp_path / "prev.mp4")
    assert res.frames == 6 and res.tracked + res.held == 6 and res.gaps == 0
    assert res.export.path == tmp_path / "anim.usd" and res.export.n_frames == 6
    # the clock's stages cover the once-only work too (the benchmark's per-stage figures)
    assert {"setup", "identity", "mesh", "export", "track file"} <= set(res.stage_seconds)
    assert 0 < sum(res.stage_seconds.values()) <= res.seconds
    track = load_track(res.track_path)
    assert track.n_frames == 6 and list(track.frame_index) == list(range(6))
    assert track.z_ex.shape[0] == 6 and np.isfinite(track.pose).all()
    with av.open(str(tmp_path / "prev.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_npz_output_matches_the_track_file_export(tmp_path, frames, models):
    video = write_video(tmp_path / "clip.mp4", frames[:4])
    res = run(video, tmp_path / "anim.npz", models)
    anim = read_animation(tmp_path / "anim.npz")
    assert anim.vertices.shape[0] == 4
    again = CliRunner().invoke(main, ["export", str(res.track_path), "--out", str(tmp_path / "again.npz"),
                                      "--resolution", "32", "-q"])
    assert again.exit_code == 0, again.output
    np.testing.assert_allclose(read_animation(tmp_path / "again.npz").vertices, anim.vertices, atol=2e-4)


def test_face_that_leaves_and_returns(tmp_path, frames, models):
    blank = np.full_like(frames[0], 90)
    clip = frames[:3] + [blank] * 8 + frames[3:6]
    res = run(write_video(tmp_path / "gap.mp4", clip), tmp_path / "gap.pc2", models)
    track = load_track(res.track_path)
    status = list(track.status)
    assert len(status) == 14 and status[-1] in ("tracked", "held") and "gap" in status
    assert (track.confidence[track.status == "gap"] == 0).all()
    assert res.export.n_frames == 14  # one sample per frame: a gap repeats the last solution


def test_odd_inputs_are_tracked(tmp_path, frames, models):
    gray = [np.repeat(f.mean(-1, keepdims=True).astype(np.uint8), 3, -1) for f in frames[:3]]
    odd = [f[:501, :499] for f in frames[:3]]
    cases = {"gray.mp4": write_video(tmp_path / "gray.mp4", gray, pix_fmt="gray", codec="ffv1", fmt="matroska"),
             "odd.mp4": write_video(tmp_path / "odd.mkv", odd, codec="ffv1", pix_fmt="yuv444p", fmt="matroska"),
             "rot.mp4": write_video(tmp_path / "rot.mp4", [np.ascontiguousarray(np.rot90(f, -1)) for f in frames[:3]],
                                    rotation=90),
             "one.mp4": write_video(tmp_path / "one.mp4", frames[:1])}
    for name, video in cases.items():
        res = run(video, tmp_path / f"{name}.npz", models)
        assert res.frames == len(load_track(res.track_path).status) >= 1, name
        assert res.tracked >= 1, name


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(folder: Path) -> Path:
    with av.open(str(EXAMPLE)) as c:
        images = [f.to_ndarray(format="rgb24") for _, f in zip(range(4), c.decode(video=0))]
    data = write_video(folder / "full.mp4", images).read_bytes()
    return _written(folder / "cut.mp4", data[: len(data) // 3])


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.mp4", "no such file"),
    (lambda d: _written(d / "empty.mp4", b""), "empty"),
    (lambda d: _written(d / "text.mp4", b"not a video\n" * 50), "text.mp4"),
    (_truncated, "cut.mp4"),
])
def test_bad_videos_fail_with_one_line_and_leave_nothing(tmp_path, models, make, message):
    video = make(tmp_path)
    with pytest.raises(InputError, match=message):
        run(video, tmp_path / "out" / "anim.usd", models)
    res = CliRunner().invoke(main, [str(video), "--out", str(tmp_path / "anim.usd"), "-q"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and str(video.name) in res.output
    assert not list(tmp_path.glob("anim*")) and not list(tmp_path.glob(".anim*"))


def test_video_without_a_face(tmp_path, models):
    video = write_video(tmp_path / "noface.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 3)
    with pytest.raises(InputError, match="no face"):
        run(video, tmp_path / "anim.usd", models)
    assert not list(tmp_path.glob("*anim*"))


def test_unknown_extension_and_unwritable_folder_fail_before_work(tmp_path, frames):
    video = write_video(tmp_path / "clip.mp4", frames[:1])
    res = CliRunner().invoke(main, [str(video), "--out", str(tmp_path / "anim.xyz")])
    assert res.exit_code == 2 and "unknown output extension" in res.output
    ro = Path("/proc/self")  # never writable, whoever runs the tests
    res = CliRunner().invoke(main, [str(video), "--out", str(ro / "sub" / "anim.usd")])
    assert res.exit_code == 2 and "cannot be written" in res.output
