"""Single-view reconstruction evaluation (Pix2NPHM's Table 2, the NeRSemble single-view benchmark protocol).

For each held-out render of a ``nphm-train data renders`` folder, the method (:func:`tracker.predict.fit_image`:
encoders + regressor, then optionally test-time optimisation) predicts codes ``(z_id, z_ex)`` from the RGB
image alone. Two meshes are extracted from the head model by marching cubes over the model's box
(:attr:`tracker.predict.Models.bbox`, the whole head; no ground-truth information is used to place it):

* **posed**: the predicted identity with the predicted expression, against the ground-truth ICT head
  ``ICT(w_id, w_ex)``;
* **neutral**: the predicted identity with the model's neutral expression code
  (:meth:`tracker.predict.Models.neutral_expression`), against ``ICT(w_id, 0)``.

Both live in the canonical model frame (:mod:`train.frame`; the rigid head pose of the image is not part
of either), so the two meshes start aligned. As the benchmark, each reconstruction is then aligned to its
ground truth by a similarity transform (rotation, translation and one scale, :func:`similarity_icp`), so a
global size error, which a single image cannot resolve, does not dominate the figures; the recovered scale
is reported beside them. The figures are those of :func:`train.metrics.chamfer` over the ICT face area above
the neck cut (:func:`train.registration.evaluation_region`, the same region as the head model's
representation error): Chamfer L1 (mm), Chamfer L2 (mm^2) and normal consistency.

Rows: ``feed-forward`` (the regressor's codes), ``tto`` (after test-time optimisation) and, for reference,
``mean-head`` (the model's mean training identity at the neutral expression, the same mesh for every image:
what a method that ignores the image scores). ``seconds`` is the time from the image to the codes
(encoders + regressor, plus the TTO for ``tto``); mesh extraction and the metrics are not included.

Units: meshes in model units (1 unit = 250 mm, ``train.metrics.MM_PER_UNIT``); reported distances in mm.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import igl
import numpy as np
import torch

from model.errors import InputError
from model.mesh import Mesh, extract_mesh
from train import frame
from train.geometry import HeadSurface, SurfaceConfig, SurfaceTopology, outer_surface, surface_topology
from train.ict import IctFaceKit
from train.metrics import MM_PER_UNIT, ChamferResult, chamfer, sample_on_mesh
from train.registration import evaluation_region

VARIANTS = ("feed-forward", "tto")
"""Rows of the report: the regressor's codes, and the codes after test-time optimisation."""
BASELINE = "mean-head"
"""Reference row: the head model's mean training identity at the neutral expression, the same mesh for
every image (no image used); a method should beat it."""
METRICS = ("posed_l1_mm", "posed_l2_mm2", "posed_nc", "neutral_l1_mm", "neutral_l2_mm2", "neutral_nc",
           "seconds")
"""Per-image figures aggregated in the summary (``seconds``: time to the codes, meshes not included)."""


# --- alignment -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IcpConfig:
    """Similarity ICP of a reconstruction onto a ground-truth surface (:func:`similarity_icp`)."""

    iterations: int = 30
    """Most rounds (the point-to-plane rounds settle in about 10 on real reconstructions)."""
    samples: int = 20_000
    """Points sampled (uniformly by area) on the reconstruction to align it."""
    trim: float = 0.1
    """Fraction of the pairs with the largest distance dropped each round (outliers, partial overlap)."""
    with_scale: bool = True
    """Estimate one global scale as well as rotation and translation (False: rigid)."""
    tolerance: float = 1e-4
    """Stop when the RMS distance of the kept pairs changes by less than this fraction of itself."""
    seed: int = 0
    """Seed of the sampling on the reconstruction."""
    method: str = "point_to_plane"
    """Update of each round: ``point_to_plane`` (linearised, fast) or ``point_to_point`` (Umeyama)."""

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.samples < 3:
            raise InputError(f"IcpConfig: need iterations >= 1 and samples >= 3, got {self.iterations}, {self.samples}")
        if not 0.0 <= self.trim < 1.0:
            raise InputError(f"IcpConfig.trim must be in [0, 1), got {self.trim}")


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * R @ x + t``, taking the reconstruction onto the ground truth."""

    scale: float
    R: np.ndarray  # [3, 3] proper rotation
    t: np.ndarray  # [3] model units
    rms: float  # RMS distance (model units) of the kept pairs after the last round
    iterations: int  # rounds run

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points ``[..., 3]``."""
        return self.scale * np.asarray(points, np.float64) @ self.R.T + self.t

    def rotation_deg(self) -> float:
        """Angle of ``R`` in degrees."""
        return float(np.degrees(np.arccos(np.clip((np.trace(self.R) - 1.0) / 2.0, -1.0, 1.0))))


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``(s, R [3, 3], t [3])`` minimising ``sum |s R src_i + t - dst_i|^2``
    (Umeyama 1991) for paired points ``src, dst [N, 3]``, ``N >= 3``; ``R`` is a proper rotation."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape or len(src) < 3:
        raise ValueError(f"umeyama: expected two point sets [N, 3] with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)  # [3, 3]
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    R = u @ np.diag(d) @ vt
    var_s = (a ** 2).sum(1).mean()
    s = float((sig * d).sum() / var_s) if with_scale and var_s > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def _point_to_plane_step(x: np.ndarray, q: np.ndarray, n: np.ndarray, with_scale: bool
                         ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """One linearised point-to-plane solve: ``(delta, R_d [3, 3], dt [3], c [3])`` such that
    ``x -> c + (1 + delta) R_d (x - c) + dt`` reduces ``sum (((x' - q) . n)^2)`` for points ``x``, their
    closest points ``q`` and unit target normals ``n`` ``[N, 3]`` (small-angle, about the centroid ``c``)."""
    c = x.mean(0)
    y = x - c
    cols = [np.cross(y, n), n] + ([(y * n).sum(1, keepdims=True)] if with_scale else [])
    A = np.concatenate(cols, 1)  # [N, 6 or 7]
    r = ((q - x) * n).sum(1)  # [N]
    sol, *_ = np.linalg.lstsq(A, r, rcond=None)
    omega, dt = sol[:3], sol[3:6]
    delta = float(sol[6]) if with_scale else 0.0
    angle = float(np.linalg.norm(omega))
    if angle > 0:  # Rodrigues
        k = _skew(omega / angle)
        R_d = np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * k @ k
    else:
        R_d = np.eye(3)
    return delta, R_d, dt, c


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def similarity_icp(source_points: np.ndarray, target_vertices: np.ndarray, target_faces: np.ndarray,
                   iterations: int = 30, trim: float = 0.1, with_scale: bool = True,
                   target_region: Optional[np.ndarray] = None, tolerance: float = 1e-4,
                   method: str = "point_to_plane") -> Similarity:
    """Align points ``[N, 3]`` to a triangle mesh by a similarity transform (ICP with scale).

    Each round pairs every (transformed) source point with its closest point on the target surface (libigl
    AABB tree), keeps the pairs whose closest triangle is in ``target_region`` (``[F]`` bool; None: all)
    and, of those, drops the fraction ``trim`` with the largest distances (outliers), then updates the
    transform from the kept pairs, until the RMS distance of the kept pairs changes by at most
    ``tolerance`` (relative) or ``iterations`` rounds have run:

    * ``"point_to_point"``: the closed-form similarity from the original source points to the closest
      points (:func:`umeyama`, Besl-McKay with scale). Converges linearly, slowly where the surfaces slide
      along each other (about 4e-3 units left after 100 rounds on the test ellipsoid).
    * ``"point_to_plane"`` (default): one linearised least-squares step on the distances along the target
      triangles' normals (Chen-Medioni, with a scale term), about the kept points' centroid. Converges in
      tens of rounds to the exact transform when one exists.

    It starts at the identity: the reconstruction and the ground truth share the canonical frame, so no
    coarse initialisation is needed (a centroid or size match would be biased by the partial overlap of
    a whole-head reconstruction with a face region). Returns the :class:`Similarity` taking the source
    onto the target; ``rms`` in the target's units.
    """
    p = np.asarray(source_points, np.float64)
    v = np.ascontiguousarray(target_vertices, np.float64)
    f = np.ascontiguousarray(target_faces, np.int64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 3:
        raise ValueError(f"similarity_icp: source points must be [N, 3] with N >= 3, got {p.shape}")
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"similarity_icp: target must be vertices [V, 3] and faces [F, 3], got {v.shape}, {f.shape}")
    region = None if target_region is None else np.asarray(target_region, bool)
    if region is not None and region.shape != (len(f),):
        raise ValueError(f"similarity_icp: target_region must be [F] = [{len(f)}] bool, got {region.shape}")
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"similarity_icp: trim must be in [0, 1), got {trim}")
    if method not in ("point_to_plane", "point_to_point"):
        raise ValueError(f"similarity_icp: method must be 'point_to_plane' or 'point_to_point', got {method!r}")
    tree = igl.AABB()
    tree.init(v, f)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    normals = np.cross(e1, e2)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)  # [F, 3]

    def pairs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        d2, fi, closest = tree.squared_distance(v, f, np.ascontiguousarray(x))
        keep = np.ones(len(x), bool) if region is None else region[fi]
        if keep.sum() < 3:
            raise ValueError("similarity_icp: fewer than 3 source points lie near the target region")
        if trim > 0:
            keep &= d2 <= np.quantile(d2[keep], 1.0 - trim)
        return keep, np.maximum(d2, 0.0), closest, fi

    s, R, t = 1.0, np.eye(3), np.zeros(3)
    rms_prev = np.inf
    done = 0
    for done in range(1, iterations + 1):
        x = s * p @ R.T + t
        keep, d2, closest, fi = pairs(x)
        rms = float(np.sqrt(d2[keep].mean()))
        if abs(rms_prev - rms) <= tolerance * rms or rms < 1e-12:  # settled, or exact
            break
        rms_prev = rms
        if method == "point_to_point":
            s, R, t = umeyama(p[keep], closest[keep], with_scale)
        else:
            delta, R_d, dt, c = _point_to_plane_step(x[keep], closest[keep], normals[fi[keep]], with_scale)
            s, R, t = (1.0 + delta) * s, R_d @ R, c + (1.0 + delta) * R_d @ (t - c) + dt
    keep, d2, _, _ = pairs(s * p @ R.T + t)
    return Similarity(scale=float(s), R=R, t=t, rms=float(np.sqrt(d2[keep].mean())), iterations=done)


# --- one reconstruction ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReconstructionMetrics:
    """Figures of one reconstruction against its ground truth (after the alignment, when made)."""

    chamfer: ChamferResult
    alignment: Optional[Similarity]  # None when evaluated without alignment

    def as_dict(self) -> dict[str, float]:
        out = self.chamfer.as_dict()
        if self.alignment is not None:
            a = self.alignment
            out.update(icp_scale=round(a.scale, 6), icp_rotation_deg=round(a.rotation_deg(), 4),
                       icp_translation_mm=round(float(np.linalg.norm(a.t)) * MM_PER_UNIT, 4),
                       icp_rms_mm=round(a.rms * MM_PER_UNIT, 4))
        return out


def evaluate_reconstruction(rec_vertices: np.ndarray, rec_faces: np.ndarray, gt_vertices: np.ndarray,
                            gt_faces: np.ndarray, gt_region: Optional[np.ndarray] = None, align: bool = True,
                            icp: IcpConfig = IcpConfig(), n_samples: int = 100_000, seed: int = 0,
                            mm_per_unit: float = MM_PER_UNIT) -> ReconstructionMetrics:
    """Align a reconstruction ``[Vr, 3], [Fr, 3]`` to a ground truth ``[Vg, 3], [Fg, 3]`` (same units) by
    :func:`similarity_icp` over ``gt_region`` (``[Fg]`` bool; None: all), then Chamfer L1 (mm), L2 (mm^2)
    and normal consistency over the region (:func:`train.metrics.chamfer`, ``n_samples`` each way).
    With ``align=False`` the meshes are compared as given."""
    rec_v = np.asarray(rec_vertices, np.float64)
    rec_f = np.asarray(rec_faces, np.int64)
    if rec_v.ndim != 2 or rec_v.shape[1] != 3 or rec_f.ndim != 2 or rec_f.shape[1] != 3 or len(rec_f) == 0:
        raise ValueError(f"reconstruction must be vertices [V, 3] and faces [F, 3], got {rec_v.shape}, {rec_f.shape}")
    alignment = None
    if align:
        pts, _, _ = sample_on_mesh(rec_v, rec_f, icp.samples, np.random.default_rng(icp.seed))
        alignment = similarity_icp(pts, gt_vertices, gt_faces, icp.iterations, icp.trim, icp.with_scale,
                                   gt_region, icp.tolerance, icp.method)
        rec_v = alignment.apply(rec_v)
    result = chamfer(rec_v, rec_f, gt_vertices, gt_faces, gt_region, n_samples, seed, mm_per_unit)
    return ReconstructionMetrics(chamfer=result, alignment=alignment)


# --- ground truth and reconstructions of one render --------------------------------------------------------

def ground_truth_surface(kit: IctFaceKit, topology: SurfaceTopology, w_id: np.ndarray, w_ex: np.ndarray,
                         surface: SurfaceConfig = SurfaceConfig()) -> tuple[HeadSurface, np.ndarray]:
    """The outer surface of ``ICT(w_id [K_id], w_ex [K_ex])`` in model units and its evaluated triangles
    ``[T]`` bool (:func:`train.registration.evaluation_region`)."""
    verts = frame.ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))  # [V, 3] model units
    gt = outer_surface(verts, topology, surface)
    return gt, evaluation_region(gt)


def extract_head(layer: Any, z_id: torch.Tensor, z_ex: torch.Tensor, bbox: tuple, resolution: int) -> Mesh:
    """The zero level set of the head model for codes ``z_id [1, D_id]``, ``z_ex [1, D_ex]`` in the box
    ``bbox = (lo [3], hi [3])`` (model units), largest connected component."""
    def sdf_fn(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        return layer(x[None], z_id, z_ex).sdf[0]

    with torch.no_grad():
        return extract_mesh(sdf_fn, bbox[0], bbox[1], resolution, dtype=z_id.dtype, device=z_id.device,
                            largest_component=True)


# --- the benchmark ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SingleViewConfig:
    """What :func:`evaluate_single_view` runs."""

    max_images: Optional[int] = None
    """Evaluate only the first N held-out renders (manifest order); None: all."""
    tto: bool = True
    """Also evaluate the codes after test-time optimisation (the ``tto`` row)."""
    steps: int = 100
    """TTO steps (:func:`tracker.tto.default_stages`)."""
    fit_resolution: int = 64
    """Marching-cubes resolution of the canonical mesh the TTO optimises (``fit_image``'s ``mesh_resolution``)."""
    resolution: int = 128
    """Marching-cubes resolution of the evaluated meshes, over the head model's whole box."""
    n_samples: int = 100_000
    """Points sampled on each mesh for the Chamfer distances."""
    align: bool = True
    """Align each reconstruction to its ground truth by similarity ICP before measuring."""
    icp: IcpConfig = field(default_factory=IcpConfig)
    """Settings of that alignment."""
    split: str = "heldout"
    """Which renders: ``heldout`` (never trained on), ``train`` or ``all``."""
    baseline: bool = True
    """Add the ``mean-head`` reference row (:data:`BASELINE`; needs the head checkpoint's code tables)."""

    def __post_init__(self) -> None:
        if self.max_images is not None and self.max_images < 1:
            raise InputError(f"--max-images: need at least 1, got {self.max_images}")
        if self.steps < 2 and self.tto:
            raise InputError(f"--steps: TTO needs at least 2 steps, got {self.steps}")
        if self.resolution < 8 or self.fit_resolution < 8:
            raise InputError(f"--resolution: need at least 8, got {self.resolution} / {self.fit_resolution}")
        if self.n_samples < 100:
            raise InputError(f"n_samples: need at least 100, got {self.n_samples}")


def _extract_pair(models: Any, z_id: torch.Tensor, z_ex: torch.Tensor, resolution: int) -> dict[str, Mesh]:
    """The posed (``z_ex``) and neutral meshes of identity ``z_id`` (codes ``[1, D]``)."""
    return {"posed": extract_head(models.layer, z_id, z_ex, models.bbox, resolution),
            "neutral": extract_head(models.layer, z_id, models.neutral_expression(), models.bbox, resolution)}


def _evaluate_meshes(meshes: dict[str, Mesh], gts: dict, cfg: SingleViewConfig, seed: int) -> dict[str, float]:
    """Posed and neutral figures of the meshes against ``gts`` (``kind -> (surface, region)``)."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for kind, mesh in meshes.items():
        gt, region = gts[kind]
        m = evaluate_reconstruction(mesh.vertices, mesh.faces, gt.vertices, gt.triangles, region, cfg.align,
                                    cfg.icp, cfg.n_samples, seed)
        figures = m.as_dict()
        out[f"{kind}_l1_mm"] = figures.pop("chamfer_l1_mm")
        out[f"{kind}_l2_mm2"] = figures.pop("chamfer_l2_mm2")
        out[f"{kind}_nc"] = figures.pop("normal_consistency")
        out.update({f"{kind}_{key}": value for key, value in figures.items()})
    out["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _summarise(records: list[dict], variants: tuple[str, ...]) -> dict[str, dict[str, float]]:
    summary = {}
    for variant in variants:
        rows = [r[variant] for r in records if variant in r]
        stats: dict[str, float] = {"n": len(rows)}
        for key in METRICS:
            values = np.array([row[key] for row in rows], np.float64)
            stats[f"{key}_mean"] = round(float(values.mean()), 4) if len(values) else float("nan")
            stats[f"{key}_median"] = round(float(np.median(values)), 4) if len(values) else float("nan")
        summary[variant] = stats
    return summary


def evaluate_single_view(data_dir: str | Path, models: Any, cfg: SingleViewConfig = SingleViewConfig(),
                         kit: Optional[IctFaceKit] = None, out_path: str | Path | None = None,
                         progress: bool = True) -> dict:
    """Run the single-view benchmark over the held-out renders of ``data_dir``.

    Args:
        data_dir: a complete ``nphm-train data renders`` folder (its ``heldout`` split by default).
        models: a :class:`tracker.predict.Models` (head model, encoders, regressor).
        cfg: what to run (:class:`SingleViewConfig`).
        kit: the ICT-FaceKit the renders were made with (default: :func:`train.ict.load_ict` of
            :func:`train.ict.default_ict_path`).
        out_path: also write the report here as JSON.

    Returns the report: ``records`` (per image: the file, the head yaw, the sum of the ICT expression
    weights, and per variant its posed and neutral figures in mm, the ICP alignment and the seconds),
    ``summary`` (per variant: n, mean and median of :data:`METRICS`), ``failed`` (images where the encoders
    saw no head or no surface could be extracted, with the reason; they are left out of every row, the
    ``mean-head`` one included, so that all rows average over the same images) and ``config``.
    """
    from tqdm import tqdm

    from tracker.predict import fit_image
    from train.ict import default_ict_path, load_ict
    from train.renders_data import load_sample, read_manifest, write_json_atomic

    data_dir = Path(data_dir)
    _, entries = read_manifest(data_dir, cfg.split, cfg.max_images)
    kit = kit if kit is not None else load_ict(default_ict_path())
    topology = surface_topology(kit.triangles, kit.n_vertices)
    variants = VARIANTS if cfg.tto else VARIANTS[:1]
    if cfg.baseline and "z_id" in models.codes:
        variants = (BASELINE,) + variants
        z_mean, z_neutral = models.codes["z_id"].mean(0, keepdim=True), models.neutral_expression()
        mean_head = extract_head(models.layer, z_mean, z_neutral, models.bbox, cfg.resolution)
        baseline = {"posed": mean_head, "neutral": mean_head}
    records, failed = [], []
    t_start = time.perf_counter()
    for index, file in tqdm(entries, desc="single-view", unit="img", disable=not progress):
        sample = load_sample(data_dir / file)
        w_id, w_ex = sample["w_id"], sample["w_ex"]
        gts = {"posed": ground_truth_surface(kit, topology, w_id, w_ex),
               "neutral": ground_truth_surface(kit, topology, w_id, np.zeros_like(w_ex))}
        record: dict[str, Any] = {"index": index, "file": file, "yaw_deg": round(float(sample["pose_angles"][0]), 2),
                                  "expression_weight_sum": round(float(np.abs(w_ex).sum()), 3)}
        if BASELINE in variants:
            record[BASELINE] = {**_evaluate_meshes(baseline, gts, cfg, index), "seconds": 0.0}
        try:
            fit = fit_image(models, sample["rgb"], sample["K"], tto=cfg.tto, steps=cfg.steps,
                            mesh_resolution=cfg.fit_resolution)
            codes = {"feed-forward": (fit.ff_z_id, fit.ff_z_ex, fit.seconds_ff),
                     "tto": (fit.z_id, fit.z_ex, fit.seconds_ff + fit.seconds_tto)}
            for variant in (v for v in variants if v != BASELINE):
                z_id, z_ex, seconds = codes[variant]
                t0 = time.perf_counter()
                meshes = _extract_pair(models, z_id.detach(), z_ex.detach(), cfg.resolution)
                mesh_seconds = round(time.perf_counter() - t0, 3)
                record[variant] = {**_evaluate_meshes(meshes, gts, cfg, index), "seconds": round(seconds, 3),
                                   "mesh_seconds": mesh_seconds}
        except InputError as exc:  # no head seen, or no surface in the box for the predicted codes
            failed.append({"index": index, "file": file, "reason": str(exc)})
            continue
        records.append(record)
    report = {"records": records, "summary": _summarise(records, variants), "failed": failed,
              "n_images": len(entries), "seconds": round(time.perf_counter() - t_start, 1),
              "data": str(data_dir), "head": getattr(models, "head_path", ""),
              "config": dataclasses.asdict(cfg)}
    if out_path is not None:
        write_json_atomic(Path(out_path), report)
    return report


def format_table(report: dict) -> str:
    """The summary as a text table in the layout of Pix2NPHM's Table 2: one row per variant, mean (median)."""
    cols = [("posed L1 mm", "posed_l1_mm"), ("posed L2 mm^2", "posed_l2_mm2"), ("posed NC", "posed_nc"),
            ("neutral L1 mm", "neutral_l1_mm"), ("s/img", "seconds")]
    names = {BASELINE: "mean head", "feed-forward": "feed-forward", "tto": "+ TTO"}
    lines = [f"{'method':<14}" + "".join(f"{c:>18}" for c, _ in cols) + f"{'n':>5}"]
    for variant, stats in report["summary"].items():
        cells = "".join(f"{stats[k + '_mean']:>9.3f} ({stats[k + '_median']:.3f})".rjust(18) for _, k in cols)
        lines.append(f"{names.get(variant, variant):<14}{cells}{stats['n']:>5}")
    if report.get("failed"):
        lines.append(f"failed: {len(report['failed'])} of {report['n_images']} images (see the JSON report)")
    return "\n".join(lines)


def run_single_view(data_dir: str | Path, cfg: SingleViewConfig = SingleViewConfig(), head: str | None = None,
                    normal_encoder: str | None = None, point_encoder: str | None = None,
                    regressor: str | None = None, ict_path: str | Path | None = None,
                    out_path: str | Path | None = None, progress: bool = True) -> dict:
    """:func:`evaluate_single_view` from checkpoint paths (None: the shipped weights of
    :meth:`tracker.predict.Models.load`); the renders folder is checked before any model is loaded."""
    from tracker.predict import Models
    from train.ict import default_ict_path, load_ict
    from train.renders_data import read_manifest

    read_manifest(data_dir, cfg.split, cfg.max_images)  # clear error on a bad folder first
    models = Models.load(head, normal_encoder, point_encoder, regressor)
    kit = load_ict(ict_path if ict_path is not None else default_ict_path())
    return evaluate_single_view(data_dir, models, cfg, kit=kit, out_path=out_path, progress=progress)
