"""A linear basis of shape offsets by PCA, shared by the blend-shape (USD) and morph-target (glTF) writers.

``frames[i] ~= base + weights[i] @ offsets``: a base shape plus K offset shapes (principal components of the
per-frame offsets from the mean shape) mixed by per-frame weights. Each component is rescaled so that its
weight spans exactly [0, 1] over the clip (the base absorbs the shift): DCC sliders clamp shape-key values
to 0..1 by default (Blender's glTF and USD importers do), so this plays back unclamped everywhere. With
K >= N - 1 (N frames) the encoding is exact up to float32 rounding.
"""

from __future__ import annotations

import numpy as np


def pca_basis(frames: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA basis of per-frame offsets with weights in [0, 1].

    Args:
        frames: ``[N, V, 3]`` positions.
        k: number of components wanted (capped at the numerical rank of the offsets, at least 1).

    Returns:
        ``base [V, 3]``, ``offsets [K, V, 3]`` and ``weights [N, K]`` in [0, 1] (each column spans [0, 1]
        unless it is constant) with ``frames[i] ~= base + weights[i] @ offsets``; float32.
    """
    n, v, _ = frames.shape
    mean = frames.mean(axis=0, dtype=np.float64).astype(np.float32)  # [V, 3]
    x = (frames - mean).reshape(n, 3 * v)  # [N, 3V]
    gram = (x @ x.T).astype(np.float64)  # [N, N]
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    rank = int((evals > max(evals[0], 0.0) * 1e-10).sum())
    keep = max(1, min(int(k), rank))
    u = evecs[:, :keep]  # [N, K] orthonormal; x ~= u @ (u.T @ x)
    lo, hi = u.min(axis=0), u.max(axis=0)  # [K]
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    weights = ((u - lo) / span).astype(np.float32)  # [N, K] in [0, 1]
    comps = (x.T @ u.astype(np.float32)).T  # [K, 3V]
    offsets = comps * span[:, None].astype(np.float32)  # [K, 3V]
    base = mean.reshape(-1) + (lo.astype(np.float32) @ comps)  # [3V]
    return base.reshape(v, 3).astype(np.float32), offsets.reshape(keep, v, 3).astype(np.float32), weights


def reconstruction_error(frames: np.ndarray, base: np.ndarray, offsets: np.ndarray,
                         weights: np.ndarray) -> float:
    """Largest absolute coordinate error of ``base + weights @ offsets`` against ``frames`` [N, V, 3]."""
    flat = offsets.reshape(len(offsets), -1)
    err = 0.0
    for start in range(0, len(frames), 64):
        rec = base.reshape(-1) + weights[start:start + 64] @ flat
        err = max(err, float(np.abs(rec - frames[start:start + 64].reshape(len(rec), -1)).max()))
    return err
