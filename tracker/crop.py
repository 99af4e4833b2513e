"""Square face crops for the network, smoothed over time, with the affine back to frame pixels.

Per frame, :class:`FaceCropper` asks its detector for the face (every frame; see
:mod:`tracker.detect`). The default detector is a :class:`~tracker.detect.LandmarkDetector`, MediaPipe Face
Mesh in video mode (about 5 ms per frame: it tracks the mesh and re-runs its face detector only when the
track is lost, so a face that left comes back at once); its 478 landmarks are passed on in
:class:`CropResult` and their tight box (chin to the top of the mesh on the forehead, about ear to ear) is
the face box. A plain :class:`~tracker.detect.FaceDetector` (boxes, e.g. the Haar cascades) works too. The
cropper picks the face that continues the current track, turns its box into a square (side ``scale`` x the
box's longer side, centre moved ``shift_y`` box heights down; separate ``box_scale`` / ``box_shift_y`` for
box detectors, whose boxes sit differently on the face), smooths the square over time with a
:class:`BoxSmoother` (One-Euro by default, an exponential filter as the simple alternative) and resamples
it to ``size`` x ``size``.

Frames without a face (policy, see :class:`CropConfig`):

- ``"held"``: no detection, but the face was seen at most ``max_hold`` frames ago: the last smoothed
  square is cropped again (a missed detection or a blink of occlusion should not break the track).
- ``"gap"``: longer than that: no crop (``image`` and the affine are ``None``); the tracker marks the frame
  as untracked. The track ends and the smoother is reset, so the next detection, wherever it is, starts a
  fresh track (status ``"detected"`` again, on the very frame the face is found).
- While the track is alive, detections that do not overlap it (IoU < ``reacquire_iou``) are treated as
  false positives and ignored (the frame is ``"held"``); once the hold has run out the highest-scoring
  detection starts the new track, so a cut to another shot costs ``max_hold`` held frames.

A video in which no frame has a face: :func:`crop_frames` raises :class:`~model.errors.InputError` once
the stream ends (streaming cannot know earlier; nothing is lost, every frame was a gap).

Conventions: frame and crop pixels with pixel centres at integers (OpenCV); a square is ``[3]``
``(cx, cy, side)`` in frame pixels and covers ``[cx - side/2, cx + side/2]`` edge to edge. The crop
affine ``A`` ``[2, 3]`` maps crop pixels to frame pixels: ``xy_frame = A[:, :2] @ uv_crop + A[:, 2]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

import numpy as np
from PIL import Image

from model.errors import InputError
from tracker.decode import Frame
from tracker.detect import Detector, FaceBox, FaceLandmarks, FaceMeshConfig, build_detector

STATUSES = ("detected", "held", "gap")


# ----------------------------------------------------------------------------------------------- math

def square_from_box(box: FaceBox, scale: float, shift_y: float) -> np.ndarray:
    """Face box -> crop square ``[3]`` ``(cx, cy, side)`` in frame pixels.

    ``side = scale * max(width, height)``; the centre is the box centre moved down by ``shift_y`` box
    heights.
    """
    cx, cy = box.centre
    return np.array([cx, cy + shift_y * box.height, scale * max(box.width, box.height)], dtype=np.float64)


def square_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two squares ``[3]`` ``(cx, cy, side)``."""
    iw = max(0.0, min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2))
    ih = max(0.0, min(a[1] + a[2] / 2, b[1] + b[2] / 2) - max(a[1] - a[2] / 2, b[1] - b[2] / 2))
    inter = iw * ih
    union = a[2] ** 2 + b[2] ** 2 - inter
    return float(inter / union) if union > 0 else 0.0


def crop_affine(square: np.ndarray, size: int) -> np.ndarray:
    """Affine ``[2, 3]`` from crop pixels (``size`` x ``size``) to frame pixels for ``square`` ``[3]``."""
    cx, cy, side = (float(v) for v in square)
    s = side / size
    return np.array([[s, 0.0, cx - side / 2 + 0.5 * s],
                     [0.0, s, cy - side / 2 + 0.5 * s]], dtype=np.float64)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``affine`` ``[2, 3]`` applied to ``points`` ``[..., 2]`` -> ``[..., 2]``."""
    points = np.asarray(points, dtype=np.float64)
    if affine.shape != (2, 3) or points.shape[-1] != 2:
        raise ValueError(f"expected affine [2, 3] and points [..., 2], got {affine.shape} and {points.shape}")
    return points @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of an affine ``[2, 3]`` -> ``[2, 3]``."""
    lin = np.linalg.inv(affine[:, :2])
    return np.concatenate([lin, -(lin @ affine[:, 2])[:, None]], axis=1)


def crop_square(image: np.ndarray, square: np.ndarray, size: int) -> np.ndarray:
    """Resample ``square`` ``[3]`` of ``image`` ``[H, W, 3]`` uint8 to ``[size, size, 3]`` uint8.

    Bilinear with Pillow's area-aware support (antialiased when shrinking). Outside the frame the border
    pixels are repeated (the networks never saw black bars in training; a replicated border looks like
    more background).
    Consistent with :func:`crop_affine`: crop pixel ``u`` samples frame pixel ``A @ [u, v, 1]``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    cx, cy, side = (float(v) for v in square)
    if not side > 0:
        raise ValueError(f"square side must be > 0, got {side}")
    ex0, ey0 = cx - side / 2 + 0.5, cy - side / 2 + 0.5        # edge coordinates: pixel i spans [i, i+1]
    ix0, iy0 = math.floor(ex0), math.floor(ey0)
    ix1, iy1 = math.ceil(ex0 + side), math.ceil(ey0 + side)
    sx0, sy0 = min(max(ix0, 0), w - 1), min(max(iy0, 0), h - 1)
    sx1, sy1 = max(min(ix1, w), sx0 + 1), max(min(iy1, h), sy0 + 1)
    pad = ((sy0 - iy0, iy1 - sy1), (sx0 - ix0, ix1 - sx1), (0, 0))
    patch = np.pad(image[sy0:sy1, sx0:sx1], [(max(a, 0), max(b, 0)) for a, b in pad], mode="edge")
    patch = patch[max(-pad[0][0], 0):patch.shape[0] - max(-pad[0][1], 0),
                  max(-pad[1][0], 0):patch.shape[1] - max(-pad[1][1], 0)]  # [ph, pw, 3]
    box = (ex0 - ix0, ey0 - iy0, ex0 - ix0 + side, ey0 - iy0 + side)
    out = Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------------------- smoothing

class BoxSmoother(Protocol):
    """Temporal filter of the crop square ``[3]`` ``(cx, cy, side)``; a policy object of the cropper."""

    def reset(self) -> None:
        """Forget the past (called when a track starts after a gap)."""

    def __call__(self, time_s: float, square: np.ndarray) -> np.ndarray:
        """New measurement at ``time_s`` (seconds) -> smoothed square ``[3]``."""


@dataclass
class OneEuroSmoother:
    """One-Euro filter (Casiez et al. 2012) on the square, with one adaptive cutoff for all three values.

    The cutoff is ``min_cutoff + beta * speed`` Hz, the speed being the filtered centre speed in crop sides
    per second: still heads are smoothed hard, moving heads followed with little lag. Uses the frame times,
    so variable frame rates are handled.

    Attributes:
        min_cutoff: cutoff frequency at rest (Hz); lower is smoother.
        beta: cutoff increase per (side / s) of speed; higher is less lag when moving.
        d_cutoff: cutoff for the speed estimate (Hz).
    """

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0
    _x: np.ndarray | None = field(default=None, repr=False)
    _dx: np.ndarray | None = field(default=None, repr=False)
    _t: float | None = field(default=None, repr=False)

    def reset(self) -> None:
        self._x, self._dx, self._t = None, None, None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, time_s: float, square: np.ndarray) -> np.ndarray:
        square = np.asarray(square, dtype=np.float64)
        if self._x is None or self._t is None or time_s <= self._t:
            self._x, self._dx, self._t = square.copy(), np.zeros(3), time_s
            return square.copy()
        dt = time_s - self._t
        dx = (square - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        speed = float(np.hypot(self._dx[0], self._dx[1]) / max(self._x[2], 1e-6))   # sides per second
        a = self._alpha(self.min_cutoff + self.beta * speed, dt)
        self._x = a * square + (1 - a) * self._x
        self._t = time_s
        return self._x.copy()


@dataclass
class ExponentialSmoother:
    """Exponential moving average ``x <- alpha * new + (1 - alpha) * x`` (per frame, ignores time).

    Attributes:
        alpha: weight of the new measurement in (0, 1]; 1 is no smoothing.
    """

    alpha: float = 0.4
    _x: np.ndarray | None = field(default=None, repr=False)

    def reset(self) -> None:
        self._x = None

    def __call__(self, time_s: float, square: np.ndarray) -> np.ndarray:
        square = np.asarray(square, dtype=np.float64)
        self._x = square.copy() if self._x is None else self.alpha * square + (1 - self.alpha) * self._x
        return self._x.copy()


# ----------------------------------------------------------------------------------------- the cropper

@dataclass
class CropConfig:
    """Settings of :class:`FaceCropper`.

    Attributes:
        size: crop side in pixels (the network input).
        scale: crop side / the longer side of the landmarks' tight box (chin to the top of the mesh,
            about ear to ear: 178 x 220 px on the example clip). The crop frames the whole head at about
            0.6-0.7 of the crop, as the encoders' training renders do (their head fills 0.45-0.85 of the
            image); a tighter crop cut the skull and chin and left the renders' range. 2.25 and ``shift_y``
            -0.2 give the squares of the former Haar defaults on the example clip (per frame, Haar square
            side / landmark box side: median 2.26; centre offset -0.20 box heights; on the real clips d0 /
            d6: 2.37 / 2.16 and -0.12 / -0.12). Smoothed squares on the example, vs Haar: side 1.00x
            (0.89-1.16), centre within 0.03 side, 4-6x less jitter. A single photo's mesh (detection only,
            no tracking) is about 5% shorter than a tracked one, so its crop is about 5% tighter.
        shift_y: crop centre below the box centre, in box heights (negative: up, because the skull
            reaches well above the top of the mesh).
        box_scale, box_shift_y: the same for a plain box detector (:class:`~tracker.detect.FaceDetector`;
            the defaults suit the Haar cascades, whose boxes span brows..lips).
        max_hold: frames without a usable detection that re-use the last square (``"held"``) before the
            frame is a ``"gap"``.
        reacquire_iou: while a track is alive, a detection whose square overlaps the current one less than
            this is ignored as a false positive.
        detector: the detector :meth:`setup` builds when given none: ``"auto"`` (Face Mesh if MediaPipe
            is installed, else the Haar cascades) or a name in :data:`tracker.detect.DETECTORS`.
        face_mesh: settings of the Face Mesh detector; ``FaceMeshConfig(static_image_mode=True)`` for
            single photos.
        images: cut the crop images; ``False`` leaves :attr:`CropResult.image` ``None`` for a caller that
            reads only the squares and landmarks (the landmark tracker: 2 ms a frame saved).
    """

    size: int = 256
    scale: float = 2.25
    shift_y: float = -0.2
    box_scale: float = 2.1
    box_shift_y: float = -0.05
    max_hold: int = 5
    reacquire_iou: float = 0.1
    detector: str = "auto"
    face_mesh: FaceMeshConfig = field(default_factory=FaceMeshConfig)
    images: bool = True

    def __post_init__(self) -> None:
        if self.size < 1 or self.scale <= 0 or self.box_scale <= 0 or self.max_hold < 0:
            raise ValueError(f"CropConfig needs size >= 1, scale > 0, box_scale > 0, max_hold >= 0; got {self}")

    def setup(self, detector: Detector | None = None, smoother: BoxSmoother | None = None) -> "FaceCropper":
        """The cropper; default detector ``build_detector(self.detector, self.face_mesh)``, default
        smoother One-Euro."""
        detector = detector or build_detector(self.detector, self.face_mesh)
        return FaceCropper(detector, self, smoother or OneEuroSmoother())


@dataclass(frozen=True)
class CropResult:
    """The crop of one frame.

    Attributes:
        index, time_s: the frame's index and time (seconds), from :class:`~tracker.decode.Frame`.
        status: ``"detected"``, ``"held"`` or ``"gap"`` (see module docstring).
        image: ``[size, size, 3]`` uint8 RGB crop; ``None`` for a gap (and always with ``CropConfig.images``
            off).
        crop_to_frame: ``[2, 3]`` affine crop pixels -> frame pixels; ``None`` for a gap.
        square: ``[3]`` smoothed ``(cx, cy, side)`` in frame pixels; ``None`` for a gap.
        detection: the raw face box used this frame, for a landmark detector the landmarks' tight box
            (``None`` unless ``"detected"``).
        landmarks: ``[N, 2]`` (x, y) frame pixels (pixel centres at integers), the landmark detector's raw
            points of this frame (``[478, 2]`` for Face Mesh, not smoothed); ``None`` unless ``"detected"``
            by a landmark detector.
        landmark_score: their confidence in [0, 1]; 0 when ``landmarks`` is ``None``.
    """

    index: int
    time_s: float
    status: str
    image: np.ndarray | None
    crop_to_frame: np.ndarray | None
    square: np.ndarray | None
    detection: FaceBox | None
    landmarks: np.ndarray | None = None
    landmark_score: float = 0.0

    def to_frame(self, points_crop: np.ndarray) -> np.ndarray:
        """Crop pixels ``[..., 2]`` -> frame pixels ``[..., 2]``."""
        if self.crop_to_frame is None:
            raise ValueError(f"frame {self.index} is a gap: it has no crop")
        return apply_affine(self.crop_to_frame, points_crop)

    def to_crop(self, points_frame: np.ndarray) -> np.ndarray:
        """Frame pixels ``[..., 2]`` -> crop pixels ``[..., 2]``."""
        if self.crop_to_frame is None:
            raise ValueError(f"frame {self.index} is a gap: it has no crop")
        return apply_affine(invert_affine(self.crop_to_frame), points_frame)


@dataclass(frozen=True)
class _Candidate:
    """A face found in a frame: its box, crop square ``[3]`` (unsmoothed) and landmarks if any."""

    box: FaceBox
    square: np.ndarray
    landmarks: FaceLandmarks | None


@dataclass
class CropStats:
    """Frame counts by status."""

    frames: int = 0
    detected: int = 0
    held: int = 0
    gap: int = 0


class FaceCropper:
    """Detect, pick, smooth and crop, one frame at a time (state: the current track).

    ``detector`` is a :class:`~tracker.detect.LandmarkDetector` (one face's landmarks or ``None``; its box
    framed by ``config.scale`` / ``shift_y``) or a :class:`~tracker.detect.FaceDetector` (a list of boxes,
    framed by ``config.box_scale`` / ``box_shift_y``); told apart by what ``detect`` returns.
    """

    def __init__(self, detector: Detector, config: CropConfig | None = None,
                 smoother: BoxSmoother | None = None):
        self.detector = detector
        self.config = config or CropConfig()
        self.smoother = smoother or OneEuroSmoother()
        self.stats = CropStats()
        self._square: np.ndarray | None = None     # [3] current smoothed square, None = no track
        self._missed = 0

    def reset(self) -> None:
        """Forget the track, the counts and the detector's temporal state (a new video)."""
        self.smoother.reset()
        reset = getattr(self.detector, "reset", None)
        if callable(reset):
            reset()
        self.stats = CropStats()
        self._square, self._missed = None, 0

    def _candidates(self, found: FaceLandmarks | list[FaceBox] | None) -> list[_Candidate]:
        """The detector's answer -> faces with their squares, best first."""
        cfg = self.config
        if found is None:
            return []
        if isinstance(found, FaceLandmarks):
            box = found.box
            return [_Candidate(box, square_from_box(box, cfg.scale, cfg.shift_y), found)]
        return [_Candidate(b, square_from_box(b, cfg.box_scale, cfg.box_shift_y), None) for b in found]

    def _pick(self, candidates: list[_Candidate]) -> _Candidate | None:
        if not candidates:
            return None
        if self._square is None:
            return candidates[0]                          # best score starts the track
        ious = [square_iou(c.square, self._square) for c in candidates]
        j = int(np.argmax(ious))
        return candidates[j] if ious[j] >= self.config.reacquire_iou else None

    def __call__(self, frame: Frame) -> CropResult:
        cfg = self.config
        self.stats.frames += 1
        candidates = self._candidates(self.detector.detect(frame.image))
        picked = self._pick(candidates)
        if picked is None and self._square is not None and self._missed < cfg.max_hold:
            self._missed, status = self._missed + 1, "held"
        else:
            if picked is None and self._square is not None:      # the hold ran out: end the track
                self.smoother.reset()
                self._square = None
                picked = self._pick(candidates)                    # a new track may start right here
            if picked is None:
                self._square, status = None, "gap"
            else:
                self._square = self.smoother(frame.time_s, picked.square)
                self._missed, status = 0, "detected"
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        if self._square is None:
            return CropResult(frame.index, frame.time_s, status, None, None, None, None)
        square = self._square.copy()
        found = picked if status == "detected" else None
        marks = found.landmarks if found is not None else None
        return CropResult(index=frame.index, time_s=frame.time_s, status=status,
                          image=crop_square(frame.image, square, cfg.size) if cfg.images else None,
                          crop_to_frame=crop_affine(square, cfg.size), square=square,
                          detection=found.box if found is not None else None,
                          landmarks=None if marks is None else marks.points.copy(),
                          landmark_score=0.0 if marks is None else float(marks.score))


def crop_frames(frames: Iterable[Frame], cropper: FaceCropper, source: str = "video") -> Iterator[CropResult]:
    """Crop every frame of a stream; at the end, :class:`InputError` if no frame had a face.

    Args:
        frames: e.g. a :class:`~tracker.decode.VideoStream`.
        cropper: reset here, so one cropper serves several videos in turn.
        source: name used in the error message (the file).
    """
    cropper.reset()
    for frame in frames:
        yield cropper(frame)
    if cropper.stats.detected == 0:
        raise InputError(f"{source}: no face found in any of its {cropper.stats.frames} frames")
