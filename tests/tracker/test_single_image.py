"""The photo command on landmarks: one frame of the shipped clip as a PNG, its mesh and its pose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tracker.cli import main
from tracker.landmark_fit import rotation_distance
from tracker.single_image import reconstruct_image
from tracker.tto import axis_angle_to_matrix

pytest.importorskip("mediapipe", reason="the photo command finds landmarks with MediaPipe Face Mesh")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from tracker.decode import open_video

    with open_video(EXAMPLE) as stream:
        frame = next(iter(stream))
    path = tmp_path_factory.mktemp("photo") / "face.png"
    Image.fromarray(frame.image).save(path)
    return path


def test_photo_is_fitted_to_its_landmarks(models, photo, tmp_path):
    res = reconstruct_image(photo, tmp_path / "face.obj", resolution=48, models=models)
    assert res.out.exists() and res.n_vertices > 100 and res.n_faces > 100
    gt = np.load(EXAMPLE.with_suffix("").with_suffix(".gt.npz"))
    R = axis_angle_to_matrix(res.fit.pose[:3].double()).numpy()
    assert rotation_distance(R, gt["model_to_camera_R"][0]) < 8.0
    assert res.fit.detections.shape == (478, 2) and torch.isfinite(res.fit.z_id).all()
    assert "landmark fit" in res.describe()


def test_photo_without_a_face_is_one_line_error(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    res = CliRunner().invoke(main, [str(blank), "--out", str(tmp_path / "face.obj")])
    assert res.exit_code == 2
    assert res.output.strip() == f"nphm-track: error: {blank}: no face found"
    assert not (tmp_path / "face.obj").exists()


def test_transfer_from_a_photo_uses_its_landmarks(models, photo, tmp_path):
    from tracker.pipeline import TrackConfig, track_video
    from tracker.transfer import transfer_expressions

    res = track_video(EXAMPLE, tmp_path / "anim.npz", TrackConfig(export_resolution=32, max_frames=14),
                      models=models, progress=False)
    moved = transfer_expressions(res.track, photo, models=models)
    np.testing.assert_array_equal(moved.z_ex, res.track.z_ex)
    assert moved.meta["transfer"]["identity_from"] == str(photo)
    assert not np.allclose(moved.z_id, models.codes["z_id"].mean(0).numpy())  # fitted, not the mean code
