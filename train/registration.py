"""Registration of meshes with the frozen head model, outlier filtering, and the representation error.

Registration fits codes to a mesh as in Pix2NPHM's data curation (its Eq. 11): minimise the absolute SDF
of the model at points sampled on the mesh plus a latent-norm regulariser,

    L(z_id, z_ex) = mean_i |SDF(x_i; z_id, z_ex)| + lambda_id |z_id|^2 + lambda_ex |z_ex|^2,

starting from the mean identity code of the training set and a zero expression. The outlier filter
flags registered codes whose norm lies far out in the histogram of all norms (robust z-score from the
median and the median absolute deviation).

The representation error registers held-out heads of a ``nphm-train data heads`` folder (identities and
expressions the model never saw), extracts the registered surface by marching cubes and compares it with
the ground-truth outer surface over the ICT face area above the neck cut (:func:`evaluation_region`,
:func:`train.metrics.chamfer`).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.errors import InputError
from model.head import HeadLayer
from model.mesh import extract_mesh
from train import frame
from train.geometry import HeadSurface, SurfaceConfig, outer_surface, surface_topology
from train.ict import IctFaceKit
from train.metrics import chamfer


@dataclass(frozen=True)
class RegisterConfig:
    """Optimisation of the codes against one mesh."""

    steps: int = 300
    lr: float = 5e-3
    points_per_step: int = 4096
    lambda_id: float = 1e-4
    lambda_ex: float = 1e-4
    fit_identity: bool = True
    fit_expression: bool = True
    """False: the expression stays at ``z_ex_init`` (an identity's best code at a given expression, e.g. its
    neutral one)."""
    seed: int = 0


@dataclass
class Registration:
    z_id: Tensor  # [D_id]
    z_ex: Tensor  # [D_ex]
    final_sdf_l1: float  # mean |SDF| at the surface points at the end, model units
    seconds: float


@contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Within the block no parameter of ``module`` requires grad (codes fitted against a frozen network
    compute no parameter gradients); the caller's ``requires_grad`` flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def register_points(layer: HeadLayer, surface_points: Tensor, cfg: RegisterConfig, z_id_init: Tensor,
                    z_ex_init: Tensor | None = None) -> Registration:
    """Fit ``(z_id, z_ex)`` to points ``[N, 3]`` on a surface (model units) with the network frozen."""
    if surface_points.ndim != 2 or surface_points.shape[-1] != 3:
        raise InputError(f"surface points: expected shape [N, 3], got {tuple(surface_points.shape)}")
    g = torch.Generator().manual_seed(cfg.seed)
    z_id = z_id_init.detach().clone().reshape(1, -1).requires_grad_(cfg.fit_identity)
    z_ex = (torch.zeros(1, layer.cfg.expr_dim) if z_ex_init is None
            else z_ex_init.detach().clone().reshape(1, -1)).requires_grad_(cfg.fit_expression)
    params = ([z_ex] if cfg.fit_expression else []) + ([z_id] if cfg.fit_identity else [])
    if not params:
        raise InputError("register_points: nothing to fit (fit_identity and fit_expression are both off)")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    t0 = time.perf_counter()
    n = surface_points.shape[0]
    with frozen_parameters(layer):
        for step in range(cfg.steps):
            idx = torch.randint(0, n, (min(cfg.points_per_step, n),), generator=g)
            sdf = layer(surface_points[idx][None], z_id, z_ex).sdf
            loss = sdf.abs().mean() + cfg.lambda_id * z_id.square().sum() + cfg.lambda_ex * z_ex.square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step == cfg.steps // 2:
                for group in opt.param_groups:
                    group["lr"] *= 0.2
    with torch.no_grad():
        final = float(layer(surface_points[None, : min(n, 16384)], z_id, z_ex).sdf.abs().mean())
    return Registration(z_id=z_id.detach()[0], z_ex=z_ex.detach()[0], final_sdf_l1=final,
                        seconds=time.perf_counter() - t0)


def norm_outliers(codes: np.ndarray, threshold: float = 3.5) -> np.ndarray:
    """``[N]`` bool: codes ``[N, D]`` whose norm has a robust z-score above ``threshold``.

    The z-score is ``0.6745 * (|z| - median) / MAD`` over the set (Iglewicz and Hoaglin); a set with no
    spread has no outliers.
    """
    norms = np.linalg.norm(np.asarray(codes, np.float64), axis=-1)
    med = np.median(norms)
    mad = np.median(np.abs(norms - med))
    if mad == 0:
        return np.zeros(len(norms), bool)
    return 0.6745 * np.abs(norms - med) / mad > threshold


def evaluation_region(gt: HeadSurface, margin: float = 0.02) -> np.ndarray:
    """``[T]`` bool: the ground-truth triangles evaluated: the ICT face area (vertices 0..9408) above the
    neck cut plus ``margin`` (model units). ICT's face area runs down the throat below the plane where the
    ground-truth solid, and so the model, ends (:mod:`train.geometry`); that part is not evaluated."""
    centroid_y = gt.vertices[gt.triangles].mean(1)[:, 1]
    return gt.is_face & (centroid_y > gt.neck_cut_y + margin)


def face_box(vertices: np.ndarray, margin: float = 0.03, min_y: float = frame.NECK_CUT_Y
             ) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the ICT face area of model-unit vertices ``[V, 3]`` above ``min_y``, plus a margin."""
    face = vertices[: 9409]
    face = face[face[:, 1] > min_y]
    return face.min(0) - margin, face.max(0) + margin


def representation_error(layer: HeadLayer, z_id_mean: Tensor, data_dir: str | Path, kit: IctFaceKit,
                         splits: tuple[str, ...] = ("test_identity", "test_expression", "test_extreme"),
                         cfg: RegisterConfig = RegisterConfig(), resolution: int = 256,
                         max_heads: int | None = None, progress: bool = True) -> dict:
    """Register the held-out heads (at most ``max_heads`` per split, evenly spread) of a heads dataset and measure Chamfer / normal consistency (face area).

    Returns a dict with one record per head and the means per split and per kind (neutral, random,
    extreme:<name>), distances in millimetres.
    """
    data_dir = Path(data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    entries = [e for e in manifest["files"] if e["split"] in splits]
    if max_heads is not None:  # at most max_heads per split: kinds in turn, each spread over its list
        picked = []
        for split in splits:
            by_kind: dict[str, list[dict]] = {}
            for e in entries:
                if e["split"] == split:
                    by_kind.setdefault(e.get("kind", ""), []).append(e)
            per_kind = -(-max_heads // max(1, len(by_kind)))  # ceil
            spread = [[group[int(i)] for i in np.linspace(0, len(group) - 1, min(len(group), per_kind))]
                      for group in by_kind.values()]
            turns = [e for rank in range(max_heads) for group in spread if rank < len(group) for e in [group[rank]]]
            picked += turns[:max_heads]
        entries = picked
    if not entries:
        raise InputError(f"{data_dir}: no held-out heads in splits {splits}")
    topo = surface_topology(kit.triangles, kit.n_vertices)
    surf_cfg = SurfaceConfig(**{k: v for k, v in manifest.get("config", {}).get("surface", {}).items()
                                if k in SurfaceConfig.__dataclass_fields__})
    records = []
    for e in tqdm(entries, desc="register", disable=not progress):
        with np.load(data_dir / e["file"]) as z:
            w_id, w_ex, pts = z["w_id"], z["w_ex"], z["surface_points"]
        verts = frame.ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))
        gt = outer_surface(verts, topo, surf_cfg)
        reg = register_points(layer, torch.from_numpy(pts).float(), cfg, z_id_mean)
        lo, hi = face_box(verts)

        def sdf_fn(x: Tensor) -> Tensor:
            with torch.no_grad():
                return layer(x[None], reg.z_id[None], reg.z_ex[None]).sdf[0]

        t0 = time.perf_counter()
        mesh = extract_mesh(sdf_fn, lo, hi, resolution, largest_component=True)
        t_mesh = time.perf_counter() - t0
        res = chamfer(mesh.vertices, mesh.faces, gt.vertices, gt.triangles, evaluation_region(gt))
        records.append({"file": e["file"], "split": e["split"], "kind": e.get("kind", ""),
                        **res.as_dict(), "register_seconds": round(reg.seconds, 2),
                        "mesh_seconds": round(t_mesh, 2), "final_sdf_l1_mm": round(reg.final_sdf_l1 * 250.0, 4),
                        "z_id_norm": float(reg.z_id.norm()), "z_ex_norm": float(reg.z_ex.norm())})
    summary: dict[str, dict[str, float]] = {}
    for key in sorted({r["split"] for r in records} | {r["kind"] for r in records}):
        rs = [r for r in records if key in (r["split"], r["kind"])]
        summary[key] = {m: round(float(np.mean([r[m] for r in rs])), 4)
                        for m in ("chamfer_l1_mm", "chamfer_l2_mm2", "normal_consistency")}
        summary[key]["n"] = len(rs)
    outliers = norm_outliers(np.array([[r["z_id_norm"]] for r in records]))
    return {"records": records, "summary": summary,
            "norm_outliers": [r["file"] for r, o in zip(records, outliers) if o]}


def evaluate_checkpoint(model_path: str | Path, data_dir: str | Path, ict_path: str | Path | None = None,
                        cfg: RegisterConfig = RegisterConfig(), resolution: int = 256,
                        max_heads: int | None = None, progress: bool = True) -> dict:
    """:func:`representation_error` of a project head checkpoint, starting from its mean identity code."""
    from model.checkpoint import load_checkpoint
    from train.ict import default_ict_path, load_ict

    layer, codes, meta = load_checkpoint(model_path)
    if "z_id" not in codes:
        raise InputError(f"{model_path}: holds no identity codes (z_id); is it a head model trained here?")
    kit = load_ict(ict_path or default_ict_path())
    t0 = time.perf_counter()
    report = representation_error(layer, codes["z_id"].mean(0), data_dir, kit, cfg=cfg, resolution=resolution,
                                  max_heads=max_heads, progress=progress)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["model"] = str(model_path)
    report["register_config"] = cfg.__dict__
    report["resolution"] = resolution
    return report


def register_mesh_file(mesh_path: str | Path, model_path: str | Path, out_path: str | Path, units: str = "model",
                       cfg: RegisterConfig = RegisterConfig(), n_points: int = 20000) -> Registration:
    """Register a mesh file (any format trimesh reads) and write its codes as ``.npz`` (z_id, z_ex)."""
    import trimesh

    from model.checkpoint import load_checkpoint

    mesh_path = Path(mesh_path)
    if not mesh_path.is_file():
        raise InputError(f"{mesh_path}: no such file")
    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise InputError(f"{mesh_path}: not a readable mesh ({exc})") from exc
    if len(getattr(mesh, "faces", [])) == 0:
        raise InputError(f"{mesh_path}: the mesh has no faces")
    layer, codes, _ = load_checkpoint(model_path)
    v = np.asarray(mesh.vertices, np.float64)
    v = {"model": v, "cm": frame.ict_to_model(v), "m": frame.ict_to_model(v * 100.0)}[units]
    pts, _ = trimesh.sample.sample_surface(trimesh.Trimesh(v, mesh.faces, process=False), n_points, seed=cfg.seed)
    z0 = codes["z_id"].mean(0) if "z_id" in codes else torch.zeros(layer.cfg.id_dim)
    reg = register_points(layer, torch.from_numpy(np.asarray(pts)).float(), cfg, z0)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp.npz")
    np.savez(tmp, z_id=reg.z_id.numpy(), z_ex=reg.z_ex.numpy(), final_sdf_l1=reg.final_sdf_l1)
    tmp.replace(out_path)
    return reg
