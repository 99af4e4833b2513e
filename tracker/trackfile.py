"""The tracking file: per-frame NPHM codes, rigid pose and crop camera of one tracked video.

Written beside every tracked output (``anim.usd`` -> ``anim.track.npz``, the pipeline's choice) so an
animation can be re-exported, re-baked at another resolution or given another identity
(:mod:`tracker.transfer`) without tracking the video again.

Schema (a standard uncompressed ``.npz``, read with ``numpy.load(allow_pickle=False)``; ``T`` frames)::

    key             dtype     shape       meaning
    format          str       []          "nphm-track.track"
    format_version  int64     []          1
    z_id            float32   [D_id]      the one identity code of the video
    z_ex            float32   [T, D_ex]   expression code per frame
    pose            float32   [T, 6]      model -> crop camera: rotvec (axis-angle, radians) + translation
                                          (model units, 1 unit = 0.25 m); OpenCV camera (x right, y down,
                                          z forward): x_cam = R(rotvec) @ x_model + t
    K               float32   [T, 3, 3]   crop intrinsics in crop pixels (pixel centres at integers)
    crop_to_frame   float32   [T, 2, 3]   affine crop pixels -> video frame pixels
    frame_index     int64     [T]         decoded frame index, strictly increasing
    time_s          float64   [T]         presentation time in seconds, non-decreasing
    status          <U7       [T]         "tracked" | "held" (estimate carried over) | "gap" (no face)
    confidence      float32   [T]         in [0, 1]
    fps             float64   []          frame rate of the video (estimate)
    source          str       []          the video file
    frame_size      int64     [2]         (width, height) of the displayed video frames, pixels
    head            str       []          head checkpoint path, or "default" (model/weights/head_default.pt)
    meta            str       []          JSON object: anything else (configs, versions, timings)

Optional arrays, written by the landmark tracker (the default; absent for ``--evidence maps``), for users to
compare with their own detectors (frame pixels, pixel centres at integers, NaN on gap rows)::

    landmarks_px    float32   [T, 478, 2] the fitted head's MediaPipe Face Mesh landmarks (the embedding of
                                          model/weights/landmarks_default.npz), after smoothing
    landmarks68_px  float32   [T, 68, 2]  the fitted head's iBUG-68 landmarks (Multi-PIE order, ICT's
                                          ``landmarks_multipie68`` vertices)
    detections_px   float32   [T, 478, 2] the detector's raw landmarks (MediaPipe Face Mesh, refined irises)
    K_frame         float32   [3, 3]      frame intrinsics the landmarks are fitted with (focal length
                                          estimated over the identity keyframes); with the landmark tracker
                                          ``K`` is this matrix on every row and ``crop_to_frame`` the identity

Optional ARKit curves (:mod:`tracker.arkit`; written when the head has an ARKit rig asset, as the shipped
one does)::

    arkit              float32 [T, 52]  ARKit blendshape weights in [0, 1] (gap rows: the last usable row's)
    arkit_names        <U16    [52]     their names: Apple's raw values (``eyeBlink_L``), Apple's order
    arkit_residual_mm  float32 [T]      RMS distance (mm, per point) between the frame's tracked shape and
                                        the personalised ARKit rig at these weights

Gap rows carry no measurement: their ``z_ex``, ``pose``, ``K`` and ``crop_to_frame`` may be NaN and must
not be used (:func:`hold_over_gaps` fills them from the nearest earlier usable row). Every other row must be
finite.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import atomic_path
from model.errors import InputError

FORMAT = "nphm-track.track"
FORMAT_VERSION = 1
STATUSES = ("tracked", "held", "gap")
_STATUS_DTYPE = "<U7"

PathLike = str | os.PathLike


@dataclass
class Track:
    """One tracked video (schema and conventions in the module docstring).

    Arrays are converted to the schema's dtypes on construction; shapes, lengths and values are checked
    (:class:`InputError` naming the field and the expected shape).
    """

    z_id: np.ndarray  # [D_id] float32
    z_ex: np.ndarray  # [T, D_ex] float32
    pose: np.ndarray  # [T, 6] float32, model -> crop camera (rotvec radians, t model units)
    K: np.ndarray  # [T, 3, 3] float32, crop pixels
    crop_to_frame: np.ndarray  # [T, 2, 3] float32
    frame_index: np.ndarray  # [T] int64
    time_s: np.ndarray  # [T] float64, seconds
    status: np.ndarray  # [T] "tracked" | "held" | "gap"
    confidence: np.ndarray  # [T] float32 in [0, 1]
    fps: float
    source: str
    frame_size: tuple[int, int]  # (W, H) pixels
    head: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)
    landmarks_px: np.ndarray | None = None  # [T, 478, 2] float32, optional
    landmarks68_px: np.ndarray | None = None  # [T, 68, 2] float32, optional
    detections_px: np.ndarray | None = None  # [T, 478, 2] float32, optional
    K_frame: np.ndarray | None = None  # [3, 3] float32, optional
    arkit: np.ndarray | None = None  # [T, 52] float32 in [0, 1], optional
    arkit_names: np.ndarray | None = None  # [52] str, with arkit
    arkit_residual_mm: np.ndarray | None = None  # [T] float32, with arkit

    def __post_init__(self) -> None:
        self.z_id = np.asarray(self.z_id, dtype=np.float32)
        self.z_ex = np.asarray(self.z_ex, dtype=np.float32)
        if self.z_id.ndim != 1 or len(self.z_id) == 0:
            raise InputError(f"Track: z_id must be [D_id] (one identity), got {list(self.z_id.shape)}")
        if self.z_ex.ndim != 2 or self.z_ex.shape[0] == 0 or self.z_ex.shape[1] == 0:
            raise InputError(f"Track: z_ex must be [T, D_ex] with T >= 1, got {list(self.z_ex.shape)}")
        T = self.n_frames
        self.pose = _shaped(self.pose, np.float32, (T, 6), "pose")
        self.K = _shaped(self.K, np.float32, (T, 3, 3), "K")
        self.crop_to_frame = _shaped(self.crop_to_frame, np.float32, (T, 2, 3), "crop_to_frame")
        self.frame_index = _shaped(self.frame_index, np.int64, (T,), "frame_index")
        self.time_s = _shaped(self.time_s, np.float64, (T,), "time_s")
        self.confidence = _shaped(self.confidence, np.float32, (T,), "confidence")
        status = np.asarray(self.status)
        if status.shape != (T,) or status.dtype.kind not in "UO":
            raise InputError(f"Track: status must be [T] = [{T}] strings, got {list(status.shape)} {status.dtype}")
        unknown = sorted(set(map(str, status.tolist())) - set(STATUSES))
        if unknown:
            raise InputError(f"Track: unknown status values {unknown}; known: {', '.join(STATUSES)}")
        self.status = status.astype(_STATUS_DTYPE)
        usable = self.usable
        for name in ("z_ex", "pose", "K", "crop_to_frame"):
            if not np.isfinite(getattr(self, name)[usable]).all():
                raise InputError(f"Track: {name} has NaN or infinite values in frames that are not gaps")
        if not np.isfinite(self.z_id).all():
            raise InputError("Track: z_id has NaN or infinite values")
        if T > 1 and not (np.diff(self.frame_index) > 0).all():
            raise InputError("Track: frame_index must be strictly increasing")
        if not np.isfinite(self.time_s).all() or (T > 1 and not (np.diff(self.time_s) >= 0).all()):
            raise InputError("Track: time_s must be finite and non-decreasing")
        if not ((self.confidence >= 0) & (self.confidence <= 1)).all():
            raise InputError("Track: confidence must be in [0, 1]")
        self.fps = float(self.fps)
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"Track: fps must be a positive number, got {self.fps}")
        size = tuple(int(v) for v in np.asarray(self.frame_size).reshape(-1))
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"Track: frame_size must be (width, height) >= 1, got {self.frame_size}")
        self.frame_size = size
        self.source, self.head = str(self.source), str(self.head)
        if not isinstance(self.meta, dict):
            raise InputError(f"Track: meta must be a dict, got {type(self.meta).__name__}")
        for name in OPTIONAL_KEYS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "arkit_names":
                self.arkit_names = np.asarray(value).astype(str)
                continue
            arr = np.asarray(value, dtype=np.float32)
            if name in ("arkit", "arkit_residual_mm"):
                self._check_curves(name, arr)
            elif name == "K_frame":
                if arr.shape != (3, 3):
                    raise InputError(f"Track: K_frame must be [3, 3], got {list(arr.shape)}")
            elif arr.ndim != 3 or arr.shape[0] != T or arr.shape[2] != 2:
                raise InputError(f"Track: {name} must be [T, L, 2] = [{T}, L, 2], got {list(arr.shape)}")
            setattr(self, name, arr)

    def _check_curves(self, name: str, arr: np.ndarray) -> None:
        T = self.n_frames
        if self.arkit is None or self.arkit_names is None or self.arkit_residual_mm is None:
            raise InputError("Track: arkit, arkit_names and arkit_residual_mm go together")
        names = np.asarray(self.arkit_names)
        if name == "arkit":
            if arr.ndim != 2 or arr.shape[0] != T or names.shape != (arr.shape[1],):
                raise InputError(f"Track: arkit must be [T, K] = [{T}, K] with K arkit_names, got {list(arr.shape)} "
                                 f"and {list(names.shape)} names")
            if not (np.isfinite(arr).all() and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 1):
                raise InputError("Track: arkit must be finite and in [0, 1]")
        elif arr.shape != (T,):
            raise InputError(f"Track: arkit_residual_mm must be [T] = [{T}], got {list(arr.shape)}")

    @property
    def n_frames(self) -> int:
        """``T``."""
        return int(self.z_ex.shape[0])

    @property
    def usable(self) -> np.ndarray:
        """``[T]`` bool: frames with an estimate (status ``tracked`` or ``held``, not ``gap``)."""
        return self.status != "gap"


def _shaped(value: Any, dtype: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``value`` as ``dtype`` with exactly ``shape``, else :class:`InputError` naming the expected shape."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InputError(f"Track: {name} must be numbers of shape {list(shape)}") from None
    if arr.shape != shape:
        expected = "[T" + "".join(f", {s}" for s in shape[1:]) + "]"
        raise InputError(f"Track: {name} must be {expected} = {list(shape)} (T from z_ex), got {list(arr.shape)}")
    return arr


def hold_over_gaps(values: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Fill unusable rows of ``values [T, ...]`` with the last usable row before them; rows before the
    first usable one take the first usable row. Raises :class:`InputError` when no row is usable."""
    usable = np.asarray(usable, dtype=bool)
    if usable.shape != values.shape[:1]:
        raise InputError(f"usable must be [T] = [{len(values)}], got {list(usable.shape)}")
    if not usable.any():
        raise InputError("no usable frame: every frame is a gap")
    idx = np.where(usable, np.arange(len(usable)), -1)
    idx = np.maximum.accumulate(idx)  # last usable index at or before each row
    idx[idx < 0] = int(np.argmax(usable))  # leading gaps: the first usable row
    return values[idx]


def save_track(path: PathLike, track: Track) -> Path:
    """Write ``track`` to ``path`` (an ``.npz``) atomically: a hidden temporary file in the same folder,
    renamed into place, so a failed write leaves no partial file and an existing file untouched."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    arrays = {
        "format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION, np.int64),
        "z_id": track.z_id, "z_ex": track.z_ex, "pose": track.pose, "K": track.K,
        "crop_to_frame": track.crop_to_frame, "frame_index": track.frame_index, "time_s": track.time_s,
        "status": track.status, "confidence": track.confidence, "fps": np.array(track.fps, np.float64),
        "source": np.array(track.source), "frame_size": np.array(track.frame_size, np.int64),
        "head": np.array(track.head), "meta": np.array(_meta_json(track.meta)),
    }
    arrays.update({k: getattr(track, k) for k in OPTIONAL_KEYS if getattr(track, k) is not None})
    with atomic_path(path, " the track file") as tmp, open(tmp, "xb") as f:
        np.savez(f, **arrays)
    return path


def _meta_json(meta: dict[str, Any]) -> str:
    try:
        return json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"Track: meta must hold JSON types only ({exc})") from None


_KEYS = ("z_id", "z_ex", "pose", "K", "crop_to_frame", "frame_index", "time_s", "status", "confidence", "fps",
         "source", "frame_size", "head", "meta")
OPTIONAL_KEYS = ("landmarks_px", "landmarks68_px", "detections_px", "K_frame", "arkit", "arkit_names",
                 "arkit_residual_mm")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{path}: no such track file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a track file (not a readable NPZ: {reason})") from None


def is_track_file(path: PathLike) -> bool:
    """Whether ``path`` is an NPZ whose ``format`` is ``"nphm-track.track"`` (any version); for commands
    that take either a track or an animation NPZ."""
    try:
        with np.load(Path(path), allow_pickle=False) as npz:
            return "format" in npz.files and str(npz["format"]) == FORMAT
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def load_track(path: PathLike) -> Track:
    """Read a track file. :class:`InputError` (one line naming the file) when it is missing, not a track
    file, of another ``format_version``, lacks arrays, or has inconsistent shapes or values."""
    path = Path(path)
    data = _read_npz(path)
    fmt = str(data["format"]) if "format" in data and data["format"].dtype.kind == "U" else None
    if fmt != FORMAT:
        what = "an animation NPZ" if "vertices" in data else f"format {fmt!r}"
        raise InputError(f"{path}: not an nphm-track track file ({what}; expected format {FORMAT!r})")
    version = data.get("format_version")
    version = int(version) if version is not None and version.dtype.kind in "iu" else version
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: unsupported track format_version {version!r} (this version reads {FORMAT_VERSION})")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise InputError(f"{path}: track file lacks arrays: {', '.join(missing)}")
    try:
        meta = json.loads(str(data["meta"]))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: track meta is not JSON ({exc})") from None
    try:
        return Track(z_id=data["z_id"], z_ex=data["z_ex"], pose=data["pose"], K=data["K"],
                     crop_to_frame=data["crop_to_frame"], frame_index=data["frame_index"],
                     time_s=data["time_s"], status=data["status"], confidence=data["confidence"],
                     fps=float(data["fps"]), source=str(data["source"]), frame_size=tuple(data["frame_size"]),
                     head=str(data["head"]), meta=meta, **{k: data[k] for k in OPTIONAL_KEYS if k in data})
    except (InputError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from None
