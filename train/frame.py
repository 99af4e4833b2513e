"""The canonical frame of the head model ("model units") and its relation to ICT-FaceKit centimetres.

NPHM and MonoNPHM work in FLAME's metric frame scaled by 4, so one model unit is 25 cm and
1 cm = 0.04 units. This project keeps that scale and defines the canonical frame from ICT-FaceKit's:

- axes: the ICT axes unchanged: +Y up, +Z out of the face (the face looks toward +Z), +X toward the
  head's left (the viewer's right when facing the head). Right-handed.
- scale: ``UNITS_PER_CM = 0.04``.
- origin: the ICT point ``HEAD_CENTRE_CM = (0, -1.5, 5.0)`` cm (behind the upper lip, 8 cm
  behind the nose tip), chosen so that heads fit MonoNPHM's box with margin (numbers below), so
  ``x_model = (x_ict_cm - HEAD_CENTRE_CM) * UNITS_PER_CM``. A pure scale and translation: no rotation,
  so directions (normals) are the same in both frames.

Where the heads land above the neck cut (ICT neutral / extremes over 200 identities with
``w_id ~ N(0, 1)``): nose tip z = 0.32 (at most 0.36), back of the head z = -0.55 (at least -0.68), top
of the head y = 0.64 (at most 0.71), chin y = -0.24, width |x| <= 0.37 (at most 0.52, the ears).
That fits the box MonoNPHM reconstructs in,
``BOX_MIN = (-0.55, -0.5, -0.95)``, ``BOX_MAX = (0.55, 0.75, 0.4)``.

The ICT neck continues to y = -0.7 (shoulders); the ground-truth surface is cut by the plane
``y = NECK_CUT_Y = -0.4`` (ICT y = -11.5 cm, about 4 cm below the chin) and the box keeps 0.1 units
below the cut so the flat cap is learnt (see :mod:`train.geometry`).
"""

from __future__ import annotations

import numpy as np

UNITS_PER_CM = 0.04                                   # model units per centimetre (NPHM = FLAME metres x 4)
HEAD_CENTRE_CM = np.array([0.0, -1.5, 5.0])           # [3] ICT point (cm) that becomes the model origin
BOX_MIN = np.array([-0.55, -0.5, -0.95])              # [3] model units, MonoNPHM's reconstruction box
BOX_MAX = np.array([0.55, 0.75, 0.4])                 # [3] model units
NECK_CUT_Y = -0.4                                     # model units: the head surface ends at this plane
for _a in (HEAD_CENTRE_CM, BOX_MIN, BOX_MAX):
    _a.setflags(write=False)                          # constants: read-only
del _a


def ict_to_model(vertices_cm: np.ndarray) -> np.ndarray:
    """ICT-FaceKit positions ``[..., 3]`` in cm to canonical model units ``[..., 3]`` (same dtype if float)."""
    v = np.asarray(vertices_cm)
    if v.shape[-1:] != (3,):
        raise ValueError(f"vertices must have shape [..., 3], got {v.shape}")
    dtype = v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64
    return ((v - HEAD_CENTRE_CM) * UNITS_PER_CM).astype(dtype, copy=False)


def model_to_ict(points_model: np.ndarray) -> np.ndarray:
    """Canonical model-unit positions ``[..., 3]`` to ICT-FaceKit cm ``[..., 3]`` (inverse of ict_to_model)."""
    p = np.asarray(points_model)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must have shape [..., 3], got {p.shape}")
    dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64
    return (p / UNITS_PER_CM + HEAD_CENTRE_CM).astype(dtype, copy=False)


def ict_to_model_matrix() -> np.ndarray:
    """``[4, 4]`` homogeneous matrix taking ICT cm to model units (``p_model = M @ [p_cm, 1]``)."""
    m = np.eye(4)
    m[:3, :3] *= UNITS_PER_CM
    m[:3, 3] = -HEAD_CENTRE_CM * UNITS_PER_CM
    return m
