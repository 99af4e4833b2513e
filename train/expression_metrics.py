"""Does the fitted face move as much as the detected one? Ground-truth-free expression measures of a track.

The mean landmark error hides missing expressions (most of the 478 points do not move), so these measure
the parts that move. Per frame, a feature is the distance of a MediaPipe landmark pair divided by the
outer-eye-corner distance (33-263) of the same landmarks (fitted or detected). Over a clip:

- ``detected_spread``: the 95th minus the 5th percentile of the detected feature (in eye distances);
- ``ratio``: the fitted feature's spread over the detected one's (1 = the fit moves as much);
- ``corr``: the correlation of the fitted and detected features over time; ``None`` where the detected
  spread is below ``min_spread`` (0.05 eye distances: nothing moves there to correlate with).

Features (pairs averaged where two are listed): inner mouth opening 13-14; eye openings 159-145 and 386-374;
brow heights over the outer eye corners 105-33 and 334-263; mouth width 61-291.

``region_reprojection``: per frame, the mean distance of the fitted from the detected points of a region
(lips, eyes) in % of the detected eye distance; its 95th percentile over the clip.
"""

from __future__ import annotations

import numpy as np

from model.errors import InputError

EYE_CORNERS = (33, 263)
FEATURES: dict[str, tuple[tuple[int, int], ...]] = {
    "mouth_opening": ((13, 14),),
    "eyes": ((159, 145), (386, 374)),
    "brows": ((105, 33), (334, 263)),
    "mouth_width": ((61, 291),),
}
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409, 78, 95, 88, 178,
        87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415)
EYES = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173, 263, 249, 390, 373, 374, 380, 381,
        382, 362, 466, 388, 387, 386, 385, 384, 398)


def feature_series(points: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``[T]`` mean distance of ``pairs`` of ``points [T, 478, 2]``, in eye distances of the same points."""
    if points.ndim != 3 or points.shape[1] < 478 or points.shape[2] != 2:
        raise InputError(f"points must be [T, 478, 2], got {points.shape}")
    eye = np.linalg.norm(points[:, EYE_CORNERS[0]] - points[:, EYE_CORNERS[1]], axis=-1)
    d = np.mean([np.linalg.norm(points[:, a] - points[:, b], axis=-1) for a, b in pairs], axis=0)
    return d / np.maximum(eye, 1e-9)


def spread(x: np.ndarray) -> float:
    return float(np.percentile(x, 95) - np.percentile(x, 5))


def expression_features(fitted: np.ndarray, detected: np.ndarray, min_spread: float = 0.05) -> dict:
    """The module's measures for fitted and detected landmarks ``[T, 478, 2]`` (usable frames only)."""
    if fitted.shape != detected.shape:
        raise InputError(f"fitted and detected landmarks differ in shape: {fitted.shape} vs {detected.shape}")
    if len(fitted) < 2:
        raise InputError("expression features need at least 2 frames")
    out = {}
    for name, pairs in FEATURES.items():
        f, d = feature_series(fitted, pairs), feature_series(detected, pairs)
        sd = spread(d)
        ratio = spread(f) / sd if sd > 0 else float("nan")
        corr = float(np.corrcoef(f, d)[0, 1]) if sd >= min_spread and np.std(f) > 0 else None
        out[name] = {"detected_spread": round(sd, 4), "ratio": round(float(ratio), 3),
                     "corr": None if corr is None else round(corr, 3)}
    eye = np.linalg.norm(detected[:, EYE_CORNERS[0]] - detected[:, EYE_CORNERS[1]], axis=-1)
    for name, ids in (("lips", LIPS), ("eyes", EYES)):
        e = np.linalg.norm(fitted[:, ids] - detected[:, ids], axis=-1).mean(1) / eye * 100
        out[f"{name}_reprojection_p95_pct"] = round(float(np.percentile(e, 95)), 3)
    return out


def track_expression_features(track, min_spread: float = 0.05) -> dict:
    """:func:`expression_features` of a :class:`tracker.trackfile.Track` with fitted and detected landmarks."""
    if track.landmarks_px is None or track.detections_px is None:
        raise InputError(f"{track.source}: the track has no fitted and detected landmarks (landmark tracker only)")
    ok = track.usable & np.isfinite(track.detections_px).all((1, 2)) & np.isfinite(track.landmarks_px).all((1, 2))
    return expression_features(track.landmarks_px[ok], track.detections_px[ok], min_spread)
