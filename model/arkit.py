"""ARKit's 52 blendshapes: names, the map from ICT-FaceKit's 53, the rig asset and the curve solve.

ICT-FaceKit's expression blendshapes are ARKit's, less ``tongueOut``, with ``browInnerUp`` and ``cheekPuff``
split into ``_L``/``_R``. So the synthetic head world's expression weights ``w_ex`` are ARKit curves.

Names are Apple's raw values (``eyeBlink_L``; the Swift names are ``eyeBlinkLeft``), in the order of Apple's
``ARFaceAnchor.BlendShapeLocation`` documentation (eyes, mouth and jaw, brows, cheeks, nose, tongue). Left and
right are the face's own sides (ICT's too).

The rig asset (``nphm-train arkit-rig``, :class:`ArkitRig`) holds one expression code per ARKit shape: the
head model's code of that shape at weight 1, registered over several identities. Decoded for one identity,
the codes give that person's 52 target shapes (:mod:`tracker.arkit`); :func:`solve_curves` then expresses
any tracked frame as weights of those shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from model.errors import InputError

ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlink_L", "eyeLookDown_L", "eyeLookIn_L", "eyeLookOut_L", "eyeLookUp_L", "eyeSquint_L", "eyeWide_L",
    "eyeBlink_R", "eyeLookDown_R", "eyeLookIn_R", "eyeLookOut_R", "eyeLookUp_R", "eyeSquint_R", "eyeWide_R",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmile_L", "mouthSmile_R",
    "mouthFrown_L", "mouthFrown_R", "mouthDimple_L", "mouthDimple_R", "mouthStretch_L", "mouthStretch_R",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPress_L", "mouthPress_R",
    "mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L", "mouthUpperUp_R",
    "browDown_L", "browDown_R", "browInnerUp", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff", "cheekSquint_L", "cheekSquint_R",
    "noseSneer_L", "noseSneer_R",
    "tongueOut",
)
"""The 52 ARKit blendshapes: Apple's raw values, in the order of its documentation."""

SPLIT = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"), "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}
"""ARKit shapes that ICT-FaceKit splits into a left and a right half."""

NOT_MODELLED = ("tongueOut",)
"""ARKit shapes the head model cannot show (it has no tongue): always 0."""

RIG_FORMAT = "nphm-track.arkit-rig"
RIG_FORMAT_VERSION = 1


def swift_name(name: str) -> str:
    """``eyeBlink_L`` -> ``eyeBlinkLeft`` (Apple's Swift name of a raw value)."""
    if name.endswith("_L"):
        return name[:-2] + "Left"
    if name.endswith("_R"):
        return name[:-2] + "Right"
    return name


def ict_columns(ict_names: Sequence[str]) -> list[tuple[int, ...]]:
    """For each ARKit shape, the indices of the ICT shapes it stands for in ``ict_names`` (two for a split
    shape, none for :data:`NOT_MODELLED`). :class:`InputError` when an ICT name is missing."""
    index = {n: i for i, n in enumerate(ict_names)}
    cols = []
    for name in ARKIT_NAMES:
        parts = () if name in NOT_MODELLED else SPLIT.get(name, (name,))
        missing = [p for p in parts if p not in index]
        if missing:
            raise InputError(f"ICT expression names lack {', '.join(missing)} (needed for ARKit {name})")
        cols.append(tuple(index[p] for p in parts))
    return cols


def arkit_from_ict(w_ict: np.ndarray, ict_names: Sequence[str]) -> np.ndarray:
    """ARKit weights ``[..., 52]`` of ICT weights ``[..., K_ict]``: a split pair becomes its mean, tongueOut 0."""
    w = np.asarray(w_ict, dtype=np.float32)
    if w.shape[-1] != len(ict_names):
        raise InputError(f"ICT weights must be [..., {len(ict_names)}], got {list(w.shape)}")
    out = np.zeros(w.shape[:-1] + (len(ARKIT_NAMES),), np.float32)
    for j, cols in enumerate(ict_columns(ict_names)):
        if cols:
            out[..., j] = w[..., list(cols)].mean(-1)
    return out


def ict_of_arkit_shape(j: int, ict_names: Sequence[str]) -> np.ndarray:
    """``[K_ict]`` ICT weights of ARKit shape ``j`` at weight 1 (both halves of a split shape at 1)."""
    w = np.zeros(len(ict_names), np.float32)
    w[list(ict_columns(ict_names)[j])] = 1.0
    return w


@dataclass
class ArkitRig:
    """One expression code per ARKit shape, for one head model.

    Attributes:
        codes: ``[52, D_ex]`` the head's expression code of each shape at weight 1 (rows of
            :data:`NOT_MODELLED` shapes hold ``neutral``).
        neutral: ``[D_ex]`` the head's neutral expression code (the rig's weight 0).
        modelled: ``[52]`` bool, False for shapes the head cannot show.
        meta: JSON facts (the head it belongs to, the registration and its error per shape).
    """

    codes: Tensor
    neutral: Tensor
    modelled: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codes = torch.as_tensor(self.codes, dtype=torch.float32)
        self.neutral = torch.as_tensor(self.neutral, dtype=torch.float32)
        self.modelled = torch.as_tensor(self.modelled, dtype=torch.bool)
        n = len(ARKIT_NAMES)
        if self.codes.dim() != 2 or len(self.codes) != n:
            raise InputError(f"ArkitRig: codes must be [{n}, D_ex], got {list(self.codes.shape)}")
        if self.neutral.shape != self.codes.shape[1:]:
            raise InputError(f"ArkitRig: neutral must be [{self.codes.shape[1]}], got {list(self.neutral.shape)}")
        if self.modelled.shape != (n,):
            raise InputError(f"ArkitRig: modelled must be [{n}], got {list(self.modelled.shape)}")

    @property
    def expr_dim(self) -> int:
        return int(self.codes.shape[1])


def save_arkit_rig(path: str | Path, rig: ArkitRig) -> Path:
    """Write the rig asset (a small torch file) atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({"format": RIG_FORMAT, "format_version": RIG_FORMAT_VERSION, "names": list(ARKIT_NAMES),
                "codes": rig.codes.clone(), "neutral": rig.neutral.clone(), "modelled": rig.modelled.clone(),
                "meta": rig.meta}, tmp)
    tmp.replace(path)
    return path


def load_arkit_rig(path: str | Path) -> ArkitRig:
    """Read a rig asset; :class:`InputError` (one line naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ARKit rig file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not its own
        raise InputError(f"{path}: not an ARKit rig ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != RIG_FORMAT:
        raise InputError(f"{path}: not an ARKit rig (expected format {RIG_FORMAT!r})")
    if payload.get("format_version") != RIG_FORMAT_VERSION:
        raise InputError(f"{path}: unsupported ARKit rig version {payload.get('format_version')!r}")
    if list(payload.get("names", [])) != list(ARKIT_NAMES):
        raise InputError(f"{path}: the rig's shape names are not ARKit's 52 in order")
    return ArkitRig(payload["codes"], payload["neutral"], payload["modelled"], dict(payload.get("meta") or {}))


def rig_for_head(head_path: str | Path | None) -> ArkitRig | None:
    """The rig asset of a head checkpoint: the shipped one for the shipped head (``None`` or its path),
    ``<head stem>.arkit.pt`` beside another head when there is one, else ``None``."""
    from model.checkpoint import head_asset

    path = head_asset(head_path, "arkit_rig_default", ".arkit.pt")
    return load_arkit_rig(path) if path is not None else None


def solve_curves(basis: np.ndarray, displacement: np.ndarray, ridge: float = 1e-2
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Weights in [0, 1] of target shapes that best explain displacements (bounded least squares).

    Minimises ``|sum_k w_k basis_k - d|^2 / P + ridge * sum_k (|basis_k|^2 / P) w_k^2`` over ``0 <= w <= 1``
    for each frame (``P`` points): the ridge is relative to each shape's own size, so a shape alone is
    recovered at ``1 / (1 + ridge)`` of its weight whatever its size, and shapes the displacements cannot tell
    apart share the motion instead of swinging against each other.

    Args:
        basis: ``[K, P, 3]`` each shape's displacement at weight 1 (target minus neutral).
        displacement: ``[T, P, 3]`` each frame's displacement from the neutral shape.
        ridge: relative Tikhonov weight (0: plain bounded least squares).

    Returns:
        ``weights [T, K]`` float32 in [0, 1], and ``residual [T]``: the root-mean-square distance (per
        point, displacement units) between ``weights @ basis`` and the frame's displacement.
    """
    from scipy.optimize import lsq_linear

    basis = np.asarray(basis, np.float64)
    d = np.asarray(displacement, np.float64)
    if basis.ndim != 3 or basis.shape[2] != 3:
        raise InputError(f"basis must be [K, P, 3], got {list(basis.shape)}")
    if d.ndim != 3 or d.shape[1:] != basis.shape[1:]:
        raise InputError(f"displacement must be [T, {basis.shape[1]}, 3], got {list(d.shape)}")
    k, p = basis.shape[:2]
    A = basis.reshape(k, -1).T / np.sqrt(p)  # [3P, K]
    A_aug = np.vstack([A, np.diag(np.sqrt(ridge) * np.linalg.norm(A, axis=0))])
    weights = np.zeros((len(d), k), np.float32)
    residual = np.zeros(len(d), np.float32)
    for t in range(len(d)):
        b = np.concatenate([d[t].reshape(-1) / np.sqrt(p), np.zeros(k)])
        w = lsq_linear(A_aug, b, bounds=(0.0, 1.0), method="bvls").x.clip(0.0, 1.0)
        weights[t] = w
        residual[t] = np.sqrt(np.square(A @ w - b[:3 * p]).sum())
    return weights, residual
