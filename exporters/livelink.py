"""Live Link Face CSV: ARKit curves in the layout of the recordings of Epic's Live Link Face app.

One header row, then one row per video frame::

    Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,...,RightEyeRoll

- ``Timecode``: ``HH:MM:SS:FF.fff``: hours, minutes, seconds, the frame within the second at the take's
  frame rate (``FF``) and the fraction of a frame (``.fff``), from the frame's time in the video.
- ``BlendShapeCount``: 61 (52 blendshapes + 9 head and eye rotations).
- The 52 blendshape columns in the app's order (which puts ``JawRight`` before ``JawLeft`` and ``MouthRight``
  before ``MouthLeft``), values in [0, 1].
- ``HeadYaw``, ``HeadPitch``, ``HeadRoll``: radians, head relative to facing the camera:
  ``R = R_y(yaw) R_x(pitch) R_z(roll)`` in the Y-up camera frame (x right, y up, the face looking along
  +z towards the camera; right-hand rule about each axis): positive yaw turns the face to its own left (the
  viewer's right), positive pitch tips the nose down, positive roll tilts the top of the head towards its own
  right shoulder. 0, 0, 0 faces the camera upright.
- Eye rotations: 0 (this tracker does not track the gaze).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from exporters.base import ExportResult, atomic_path
from model.errors import InputError

LIVE_LINK_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,"
    "MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,"
    "MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,"
    "BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,"
    "CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,"
    "LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
).split(",")
BLENDSHAPE_COLUMNS = LIVE_LINK_HEADER[2:54]
ROTATION_COLUMNS = LIVE_LINK_HEADER[54:]


def column_name(arkit_name: str) -> str:
    """ARKit raw value -> Live Link column: ``eyeBlink_L`` -> ``EyeBlinkLeft``, ``jawOpen`` -> ``JawOpen``."""
    name = arkit_name[:-2] + "Left" if arkit_name.endswith("_L") else (
        arkit_name[:-2] + "Right" if arkit_name.endswith("_R") else arkit_name)
    return name[:1].upper() + name[1:]


def timecode(seconds: float, fps: float) -> str:
    """``HH:MM:SS:FF.fff`` of a time in seconds at frame rate ``fps`` (module docstring)."""
    frames = max(float(seconds), 0.0) * fps
    frames = round(frames * 1000.0) / 1000.0  # to the written precision, so 0.9999 does not print as .1000
    whole = int(np.floor(fps + 1e-9))
    sec = int(np.floor(frames / fps + 1e-9))
    ff = frames - sec * fps
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    f_int = min(int(np.floor(ff + 1e-9)), max(whole - 1, 0))
    return f"{h:02d}:{m:02d}:{s:02d}:{f_int:02d}.{int(round((ff - f_int) * 1000)) % 1000:03d}"


def head_angles(rotations: np.ndarray) -> np.ndarray:
    """``[N, 3]`` (yaw, pitch, roll) radians of head rotations ``[N, 3, 3]`` in the Y-up camera frame."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(rotations, np.float64)).as_euler("YXZ")


def write_live_link_csv(path: str | os.PathLike, names: Sequence[str], weights: Any, time_s: Any, fps: float,
                        head_rotation: Any = None) -> ExportResult:
    """Write a Live Link Face CSV (module docstring).

    Args:
        names: the 52 ARKit raw names of ``weights``' columns (any order; each column is placed by name).
        weights: ``[N, 52]`` values in [0, 1].
        time_s: ``[N]`` each row's time in the video, seconds.
        fps: the take's frame rate (the timecode's frame field).
        head_rotation: optional ``[N, 3]`` (yaw, pitch, roll) radians (:func:`head_angles`); else 0.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise InputError(f"{path}: a Live Link Face take is a .csv file")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    w = np.asarray(weights, np.float64)
    cols = [column_name(n) for n in names]
    if w.ndim != 2 or w.shape[1] != len(cols) or sorted(cols) != sorted(BLENDSHAPE_COLUMNS):
        raise InputError(f"{path}: need [N, 52] weights named by ARKit's 52 shapes, got {list(w.shape)} "
                         f"with {len(set(cols) & set(BLENDSHAPE_COLUMNS))} known names")
    t = np.asarray(time_s, np.float64).reshape(-1)
    if len(t) != len(w):
        raise InputError(f"{path}: time_s must be [{len(w)}], got [{len(t)}]")
    rot = np.zeros((len(w), 3)) if head_rotation is None else np.asarray(head_rotation, np.float64)
    if rot.shape != (len(w), 3):
        raise InputError(f"{path}: head_rotation must be [{len(w)}, 3], got {list(rot.shape)}")
    order = [cols.index(c) for c in BLENDSHAPE_COLUMNS]
    t = t - t[0] if len(t) else t
    lines = [",".join(LIVE_LINK_HEADER)]
    for i in range(len(w)):
        values = [f"{v:.6f}" for v in np.clip(w[i, order], 0.0, 1.0)]
        values += [f"{v:.6f}" for v in rot[i]] + ["0.000000"] * 6
        lines.append(",".join([timecode(t[i], fps), str(len(LIVE_LINK_HEADER) - 2)] + values))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return ExportResult(path, len(w), 0, path.stat().st_size, [path], {"columns": len(LIVE_LINK_HEADER)})
