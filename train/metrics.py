"""Reconstruction metrics: Chamfer distances and normal consistency over a region of a ground-truth mesh.

Conventions (as the NPHM / NeRSemble-style evaluations): points are sampled uniformly by area on both
meshes; ``accuracy`` is the mean distance from reconstruction samples to the ground truth, ``completeness``
the mean distance from ground-truth samples to the reconstruction; Chamfer L1 is the average of the two
mean Euclidean distances, Chamfer L2 the average of the two mean squared distances; normal consistency
is the average over both directions of ``|n_a . n_b|`` at closest points. The region restricts the ground
truth to a subset of its triangles (e.g. the ICT face area) and the reconstruction to the samples whose
closest ground-truth point lies in that region. Distances are returned in millimetres given the mesh
units' size in millimetres (model units: 1 unit = 250 mm, :mod:`train.frame`).
"""

from __future__ import annotations

from dataclasses import dataclass

import igl
import numpy as np

from train.frame import UNITS_PER_CM

MM_PER_UNIT = 10.0 / UNITS_PER_CM  # 250 mm per model unit


@dataclass(frozen=True)
class ChamferResult:
    chamfer_l1_mm: float       # 0.5 * (accuracy + completeness), mean Euclidean distances
    chamfer_l2_mm2: float      # 0.5 * (mean squared distances), mm^2
    accuracy_mm: float         # reconstruction -> ground truth
    completeness_mm: float     # ground truth -> reconstruction
    normal_consistency: float  # in [0, 1]

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in self.__dict__.items()}


def sample_on_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator,
                   face_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniform by area on the (masked) triangles: ``(points [n,3], normals [n,3], face idx [n])``."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    cross = np.cross(e1, e2)
    area = 0.5 * np.linalg.norm(cross, axis=1)
    if face_mask is not None:
        area = np.where(face_mask, area, 0.0)
    if area.sum() <= 0:
        raise ValueError("sample_on_mesh: the (masked) mesh has zero area")
    tri = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    pts = np.einsum("nk,nkd->nd", bary, v[f[tri]])
    normals = cross[tri] / np.maximum(np.linalg.norm(cross[tri], axis=1, keepdims=True), 1e-30)
    return pts, normals, tri


def _closest(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``[N]`` and closest face indices ``[N]`` of points to a mesh (libigl AABB tree)."""
    d2, fi, _ = igl.point_mesh_squared_distance(np.ascontiguousarray(points, np.float64),
                                                np.ascontiguousarray(vertices, np.float64),
                                                np.ascontiguousarray(faces, np.int64))
    return np.sqrt(np.maximum(d2, 0.0)), np.asarray(fi, np.int64)


def chamfer(rec_vertices: np.ndarray, rec_faces: np.ndarray, gt_vertices: np.ndarray, gt_faces: np.ndarray,
            gt_region: np.ndarray | None = None, n_samples: int = 100_000, seed: int = 0,
            mm_per_unit: float = MM_PER_UNIT) -> ChamferResult:
    """Chamfer L1/L2 (mm) and normal consistency of a reconstruction against a ground-truth mesh region.

    Args:
        rec_vertices, rec_faces: reconstruction ``[Vr, 3]``, ``[Fr, 3]`` (mesh units).
        gt_vertices, gt_faces: ground truth ``[Vg, 3]``, ``[Fg, 3]`` (same units).
        gt_region: ``[Fg]`` bool, the ground-truth triangles evaluated (None: all).
        mm_per_unit: millimetres per mesh unit (default: model units).
    """
    rng = np.random.default_rng(seed)
    gt_pts, gt_n, _ = sample_on_mesh(gt_vertices, gt_faces, n_samples, rng, gt_region)
    rec_pts, rec_n, _ = sample_on_mesh(rec_vertices, rec_faces, n_samples, rng)
    d_gt, f_rec = _closest(gt_pts, rec_vertices, rec_faces)           # completeness
    d_rec, f_gt = _closest(rec_pts, gt_vertices, gt_faces)            # accuracy
    if gt_region is not None:
        keep = np.asarray(gt_region, bool)[f_gt]
        d_rec, f_gt, rec_n = d_rec[keep], f_gt[keep], rec_n[keep]
    if len(d_rec) == 0:
        raise ValueError("chamfer: no reconstruction sample lies near the evaluated region")
    rec_face_n = _unit(np.cross(*_edges(rec_vertices, rec_faces)))
    gt_face_n = _unit(np.cross(*_edges(gt_vertices, gt_faces)))
    nc_gt = np.abs((gt_n * rec_face_n[f_rec]).sum(1)).mean()
    nc_rec = np.abs((rec_n * gt_face_n[f_gt]).sum(1)).mean()
    acc, comp = d_rec * mm_per_unit, d_gt * mm_per_unit
    return ChamferResult(chamfer_l1_mm=0.5 * (acc.mean() + comp.mean()),
                         chamfer_l2_mm2=0.5 * ((acc ** 2).mean() + (comp ** 2).mean()),
                         accuracy_mm=acc.mean(), completeness_mm=comp.mean(),
                         normal_consistency=0.5 * (nc_gt + nc_rec))


def _edges(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(v, np.float64)
    return v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
