"""Face detection on real footage, behind a small :class:`FaceDetector` protocol.

Backend: OpenCV's Viola-Jones Haar cascades (``opencv-python-headless>=4.8,<5``, a project dependency; the
cascade files ship inside the OpenCV wheel, so nothing is downloaded, ever). Order of fallbacks inside
:class:`HaarFaceDetector`, per frame:

1. the frontal-face cascade (``haarcascade_frontalface_default``);
2. only if it finds nothing (a turned head): the profile cascade on the frame and on its mirror image
   (the cascade knows one facing direction only);
3. nothing: an empty list; holding the previous box or marking a gap is the cropper's policy
   (``tracker/crop.py``), not the detector's.

Why this backend (checked Nov 2026 on this machine): MediaPipe >= 0.10.30 (1.2.2 is current) ships no face
model in its wheel (the Tasks API wants a downloaded ``.task`` file), and the last wheel that bundled one
(0.10.21) pins ``numpy<2`` and pulls jax; OpenCV's YuNet and its DNN SSD need model files that no wheel
ships, and OpenCV 5 dropped the Haar cascades (hence ``<5``); facenet-pytorch bundles MTCNN weights but pins
``torch<2.3`` and ``numpy<2``; dlib's HOG detector is built in but comes only from an unofficial binary
wheel (dlib-bin) and found fewer faces on our renders (76% vs 99% of frames). Another backend only has to
implement ``detect(image) -> list[FaceBox]`` and be registered in :data:`DETECTORS`.

Coordinates: pixels of the frame given to ``detect``, pixel centres at integers (the OpenCV convention
the synthetic ground truth uses); a box spans ``[x0, x1] x [y0, y1]`` edge to edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from model.errors import MissingDependencyError

OPENCV_INSTALL = 'pip install "opencv-python-headless>=4.8,<5"'


@dataclass(frozen=True)
class FaceBox:
    """An axis-aligned face box in frame pixels (pixel centres at integers).

    Attributes:
        x0, y0: top-left corner (pixels).
        x1, y1: bottom-right corner (pixels), ``x1 > x0``, ``y1 > y0``.
        score: detector confidence, larger is surer; only comparable between boxes of one detector.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def centre(self) -> tuple[float, float]:
        return 0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """``points`` ``[N, 2]`` (x, y) pixels -> ``[N]`` bool, inside the box (edges included)."""
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points must be [N, 2] (x, y), got shape {points.shape}")
        x, y = points[:, 0], points[:, 1]
        return (x >= self.x0) & (x <= self.x1) & (y >= self.y0) & (y <= self.y1)


def box_iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes, in [0, 1]."""
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = iw * ih
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


class FaceDetector(Protocol):
    """Anything that finds faces in one RGB frame."""

    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """``image`` ``[H, W, 3]`` uint8 RGB -> faces, best (highest score) first; ``[]`` when none."""
        ...


@dataclass
class HaarDetectorConfig:
    """Settings of :class:`HaarFaceDetector`.

    Attributes:
        work_size: the frame is downscaled so its longer side is at most this many pixels before detection
            (speed; faces in tracker input are large). Boxes are returned in full-resolution pixels.
        scale_factor: image-pyramid step of ``detectMultiScale`` (> 1; smaller finds more, slower).
        min_neighbors: overlapping raw hits needed to keep a detection (higher: fewer false positives).
        min_face_fraction: smallest face side searched, as a fraction of the frame's shorter side.
        profile: when the frontal cascade finds nothing, try the profile cascade (and its mirror).
        equalize: histogram-equalise the grey image first (helps dim or low-contrast footage).
    """

    work_size: int = 320
    scale_factor: float = 1.1
    min_neighbors: int = 3
    min_face_fraction: float = 0.15
    profile: bool = True
    equalize: bool = True

    def setup(self) -> "HaarFaceDetector":
        return HaarFaceDetector(self)


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(f"face detection needs OpenCV: {OPENCV_INSTALL}") from None
    return cv2


class HaarFaceDetector:
    """OpenCV Haar-cascade face detector (frontal, then profile both ways); see the module docstring."""

    name = "opencv-haar"

    def __init__(self, config: HaarDetectorConfig | None = None):
        self.config = config or HaarDetectorConfig()
        if self.config.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {self.config.scale_factor}")
        cv2 = _import_cv2()
        self._cv2 = cv2
        folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".")
        self._frontal = self._load(folder / "haarcascade_frontalface_default.xml")
        self._profile = self._load(folder / "haarcascade_profileface.xml") if self.config.profile else None

    def _load(self, path: Path):
        cascade = self._cv2.CascadeClassifier(str(path)) if path.is_file() else None
        if cascade is None or cascade.empty():
            raise MissingDependencyError(
                f"OpenCV {self._cv2.__version__} has no Haar cascade {path.name} (OpenCV 5 dropped them): "
                f"{OPENCV_INSTALL}")
        return cascade

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """``image`` ``[H, W, 3]`` uint8 RGB -> faces, best first (see :class:`FaceDetector`)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
        cv2, cfg = self._cv2, self.config
        h, w = image.shape[:2]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        s = min(1.0, cfg.work_size / max(h, w))
        if s < 1.0:
            grey = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        if cfg.equalize:
            grey = cv2.equalizeHist(grey)
        sy, sx = grey.shape[0] / h, grey.shape[1] / w          # small pixels per frame pixel
        min_side = max(12, int(cfg.min_face_fraction * min(grey.shape)))

        def run(cascade, img) -> tuple[np.ndarray, np.ndarray]:
            rects, _, weights = cascade.detectMultiScale3(
                img, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors,
                minSize=(min_side, min_side), outputRejectLevels=True)
            rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)       # [n, 4] x, y, w, h
            return rects, np.asarray(weights, dtype=np.float64).reshape(-1)  # [n]

        rects, scores = run(self._frontal, grey)
        if len(rects) == 0 and self._profile is not None:
            r1, s1 = run(self._profile, grey)
            r2, s2 = run(self._profile, np.ascontiguousarray(grey[:, ::-1]))
            r2[:, 0] = grey.shape[1] - r2[:, 0] - r2[:, 2]                  # un-mirror x
            rects, scores = np.concatenate([r1, r2]), np.concatenate([s1, s2])
        boxes = [FaceBox(x0=x / sx - 0.5, y0=y / sy - 0.5, x1=(x + bw) / sx - 0.5, y1=(y + bh) / sy - 0.5,
                         score=float(sc))
                 for (x, y, bw, bh), sc in zip(rects, scores)]
        return sorted(boxes, key=lambda b: -b.score)


DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "opencv-haar": lambda: HaarDetectorConfig().setup(),
}


def build_detector(name: str = "auto") -> FaceDetector:
    """A face detector by name; ``"auto"`` tries :data:`DETECTORS` in order and returns the first that loads.

    Raises:
        ValueError: unknown name.
        MissingDependencyError: no backend can be loaded (the message has the pip command).
    """
    if name != "auto":
        if name not in DETECTORS:
            raise ValueError(f"unknown face detector {name!r}; known: auto, {', '.join(DETECTORS)}")
        return DETECTORS[name]()
    errors = []
    for factory in DETECTORS.values():
        try:
            return factory()
        except MissingDependencyError as e:
            errors.append(str(e))
    raise MissingDependencyError("no face detector available: " + "; ".join(errors))
