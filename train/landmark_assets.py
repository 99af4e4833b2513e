"""Build the landmark assets of :mod:`model.landmarks`: the MediaPipe embedding and a head model's map.

**Embedding** (``nphm-train landmark-embedding``), as FLAME's MediaPipe embedding was built:

1. render ICT-FaceKit heads of many random identities, half neutral and half with mild expressions
   (:func:`train.sampler.sample_expression` scaled by ``expression_scale``), yaw within +-30 degrees, with
   the project's shading (:mod:`train.shading`);
2. run the real detector (MediaPipe Face Mesh, static-image mode) on each render;
3. cast a ray through each detected landmark onto the rendered mesh (Embree), giving a triangle and
   barycentric weights of that head;
4. carry every hit to one reference surface, the ICT *mean* neutral head (same triangle, same barycentric
   weights, i.e. the same point of the surface parametrisation), and aggregate robustly there: the
   coordinate-wise median, then the mean of the hits within ``2.5`` median absolute deviations;
5. take the nearest point of the reference surface (skin triangles for the 468 face points, the eyeball
   triangles for the 10 iris points) as the landmark: a triangle and barycentric weights in ICT topology.

The per-landmark *spread* is the median distance of the hits from the embedded point (mm on the mean
head); landmarks whose spread exceeds ``flag_mm`` are flagged and get the weight ``(flag_mm / spread)^2``.
iBUG-68 comes from ICT's own ``landmarks_multipie68`` vertex ids.

**Map** (``nphm-train landmark-map``): the canonical landmarks of the head model's training identities are
known exactly (the head data is a pure function of its seed: :func:`train.heads_data.head_weights`), so a
ridge regression from their identity codes to their landmarks (:class:`model.landmarks.LandmarkMap`) is
fitted, the ridge chosen by 8-fold cross-validation. It is evaluated on identities the head model never
saw: their codes are registered to the neutral head's surface (:func:`train.registration.register_points`,
Pix2NPHM's Eq. 11) and the mapped landmarks compared with the ICT truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from model.errors import InputError
from model.landmarks import (N_MEDIAPIPE, LandmarkAssets, LandmarkEmbedding, LandmarkMap, vertex_embedding)
from train.camera import ViewSamplerConfig, sample_view
from train.frame import ict_to_model
from train.metrics import MM_PER_UNIT
from train.ict import IctFaceKit
from train.render import (ICT_EYE_RANGES, ICT_FACE_LAST, _ray_triangle, build_intersector, eye_centres,
                          framing_points, head_vertices, ict_render_mesh, render_head)
from train.sampler import sample_expression, sample_identity
from train.shading import AppearanceConfig, sample_appearance, shade

IRIS = np.arange(468, 478)
"""MediaPipe's refined iris points (centre + 4 per eye)."""

Detect = Callable[[np.ndarray], Optional[np.ndarray]]
"""``image [H, W, 3] uint8 RGB -> [478, 2]`` pixels (centres at integers) or None."""


@dataclass(frozen=True)
class EmbeddingConfig:
    """The renders of the embedding (module docstring)."""

    renders: int = 240
    resolution: int = 512
    yaw_deg: float = 30.0
    pitch_deg: float = 15.0
    roll_deg: float = 10.0
    expression_scale: float = 0.35
    """Mild expressions: every other render's sampled blendshape weights times this."""
    flag_mm: float = 4.0
    """Landmarks whose spread exceeds this are flagged and down-weighted."""
    seed: int = 0


@dataclass
class EmbeddingResult:
    embedding: LandmarkEmbedding
    hits: np.ndarray  # [R, L, 3] reference-surface points per render (model units), NaN where missed
    detected: int  # renders where the detector found the face
    seconds: float
    config: EmbeddingConfig = field(default_factory=EmbeddingConfig)

    def summary(self) -> dict:
        s = self.embedding.spread_mm
        face = s[:468]
        return {"renders": self.config.renders, "detected": self.detected, "seconds": round(self.seconds, 1),
                "spread_mm_median": float(np.median(s)), "spread_mm_mean": float(np.mean(s)),
                "spread_mm_face_p90": float(np.percentile(face, 90)), "spread_mm_max": float(np.max(s)),
                "iris_spread_mm_mean": float(np.mean(s[IRIS])),
                "flagged": int((s > self.config.flag_mm).sum()), "config": asdict(self.config)}


def cast_points(vertices_cam: np.ndarray, triangles: np.ndarray, K: np.ndarray, points_px: np.ndarray,
                intersector=None) -> tuple[np.ndarray, np.ndarray]:
    """First hits of rays through pixels ``[N, 2]`` (centres at integers) on a camera-space mesh.

    Returns the hit triangle index ``[N]`` (-1 on a miss) and barycentric weights ``[N, 3]``.
    """
    V = np.asarray(vertices_cam, dtype=np.float64)
    d = np.stack([(points_px[:, 0] - K[0, 2]) / K[0, 0], (points_px[:, 1] - K[1, 2]) / K[1, 1],
                  np.ones(len(points_px))], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    origins = np.zeros_like(d)
    intersector = intersector or build_intersector(V, triangles)
    tri = intersector.intersects_first(origins, d).astype(np.int64)
    bary = np.zeros((len(d), 3))
    hit = tri >= 0
    if hit.any():
        _, bary[hit] = _ray_triangle(origins[hit], d[hit], V[triangles[tri[hit]]])
    return tri, bary


def _nearest_on(reference: np.ndarray, triangles: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest surface points: vertex ids ``[N, 3]`` and barycentric weights ``[N, 3]`` on ``triangles``."""
    import igl
    import trimesh

    _, tri, closest = igl.point_mesh_squared_distance(np.asarray(points, np.float64),
                                                      np.asarray(reference, np.float64), triangles)
    ids = triangles[np.asarray(tri, np.int64)]
    bary = trimesh.triangles.points_to_barycentric(reference[ids], closest)
    bary = np.clip(bary, 0.0, None)
    return ids.astype(np.int64), bary / bary.sum(1, keepdims=True)


def robust_centre(points: np.ndarray, k: float = 2.5) -> tuple[np.ndarray, float]:
    """Robust centre of ``[N, 3]`` points (NaN rows ignored) and the median distance to it."""
    p = points[np.isfinite(points).all(1)]
    if len(p) == 0:
        raise InputError("no hits for a landmark: more renders are needed")
    med = np.median(p, 0)
    dist = np.linalg.norm(p - med, axis=1)
    mad = np.median(dist)
    inliers = p[dist <= k * max(mad, 1e-9) + 1e-12]
    centre = inliers.mean(0) if len(inliers) else med
    return centre, float(np.median(np.linalg.norm(p - centre, axis=1)))


def embedding_render(kit: IctFaceKit, mesh, rng: np.random.Generator, cfg: EmbeddingConfig, mild: bool):
    """One random render: ``(rgb [H, W, 3] uint8, camera-space vertices [V, 3], K [3, 3])``."""
    w_id = sample_identity(rng, 1, 1.0, kit.n_identity)[0]
    w_ex = np.zeros(kit.n_expression, np.float32)
    if mild:
        w_ex = (sample_expression(rng, 1, kit.expression_names)[0] * cfg.expression_scale).astype(np.float32)
    head = head_vertices(kit, w_id, w_ex)
    views = ViewSamplerConfig(yaw_deg=cfg.yaw_deg, pitch_deg=cfg.pitch_deg, roll_deg=cfg.roll_deg,
                              distance=(2.0, 5.0), fill=(0.55, 0.8), aspect_jitter=0.0)
    view = sample_view(rng, views, framing_points(head.canonical), cfg.resolution, cfg.resolution)
    geom = render_head(head, mesh, view.camera, view.pose)
    app = sample_appearance(rng, AppearanceConfig(noise_std=(0.0, 0.01), jpeg_probability=0.0,
                                                  blur_probability=0.2))
    rgb = shade(geom, app, head.canonical[mesh.landmarks], eye_centres(head.canonical, mesh), rng)
    R, t = view.model_to_camera()
    return rgb, head.posed @ R.T + t, view.camera.K


def build_embedding(kit: IctFaceKit, detect: Detect, cfg: EmbeddingConfig = EmbeddingConfig(),
                    progress: bool = True) -> EmbeddingResult:
    """The MediaPipe embedding from ``cfg.renders`` renders (module docstring)."""
    from tqdm import tqdm

    start = time.perf_counter()
    mesh = ict_render_mesh(kit.triangles, kit.landmarks68)
    reference = ict_to_model(kit.neutral.astype(np.float64))  # the mean head, model units
    hits = np.full((cfg.renders, N_MEDIAPIPE, 3), np.nan)
    detected = 0
    for i in tqdm(range(cfg.renders), desc="embedding renders", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i]))
        rgb, v_cam, K = embedding_render(kit, mesh, rng, cfg, mild=bool(i % 2))
        points = detect(rgb)
        if points is None:
            continue
        if points.shape != (N_MEDIAPIPE, 2):
            raise InputError(f"the detector returned {points.shape} points, expected [{N_MEDIAPIPE}, 2]")
        detected += 1
        tri, bary = cast_points(v_cam, mesh.triangles, K, points)
        ok = tri >= 0
        ids = mesh.triangles[tri[ok]]  # [n, 3] ICT vertex ids
        hits[i, ok] = (reference[ids] * bary[ok, :, None]).sum(1)
    if detected == 0:
        raise InputError("the detector found no face in any embedding render")
    centres, spread = zip(*(robust_centre(hits[:, j]) for j in range(N_MEDIAPIPE)))
    centres = np.stack(centres)
    spread_mm = np.array(spread) * MM_PER_UNIT
    tris = np.asarray(kit.triangles, dtype=np.int64)
    skin = tris[(tris <= ICT_FACE_LAST).all(1)]
    eyes = tris[((tris >= ICT_EYE_RANGES[0][0]) & (tris <= ICT_EYE_RANGES[1][1])).all(1)]
    vertex_ids = np.zeros((N_MEDIAPIPE, 3), np.int64)
    bary = np.zeros((N_MEDIAPIPE, 3))
    face = np.setdiff1d(np.arange(N_MEDIAPIPE), IRIS)
    vertex_ids[face], bary[face] = _nearest_on(reference, skin, centres[face])
    vertex_ids[IRIS], bary[IRIS] = _nearest_on(reference, eyes, centres[IRIS])
    weight = np.minimum(1.0, (cfg.flag_mm / np.maximum(spread_mm, 1e-9)) ** 2)
    emb = LandmarkEmbedding(vertex_ids=vertex_ids, bary=bary, spread_mm=spread_mm, weight=weight)
    return EmbeddingResult(emb, hits, detected, time.perf_counter() - start, cfg)


def save_embedding(path: Path, result: EmbeddingResult) -> None:
    e = result.embedding
    np.savez(path, vertex_ids=e.vertex_ids, bary=e.bary, spread_mm=e.spread_mm, weight=e.weight,
             detected=result.detected, seconds=result.seconds, config=json.dumps(asdict(result.config)))


def load_embedding(path: Path, cfg: EmbeddingConfig) -> Optional[EmbeddingResult]:
    """A cached embedding made with the same config, else None."""
    if not Path(path).is_file():
        return None
    with np.load(path) as f:
        if json.loads(str(f["config"])) != json.loads(json.dumps(asdict(cfg))):
            return None
        emb = LandmarkEmbedding(f["vertex_ids"], f["bary"], f["spread_mm"], f["weight"])
        return EmbeddingResult(emb, np.zeros((0, N_MEDIAPIPE, 3)), int(f["detected"]), float(f["seconds"]), cfg)


# --- the map of one head model ---------------------------------------------------------------------------

def head_identities(meta: dict, kit: IctFaceKit, seed: int, n_ids: int, identity_scale: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ICT identity weights of a head checkpoint's training identities (row ``i`` = code ``z_id[i]``) and
    of its held-out identities, from the seed and identity count of its ``nphm-train data heads`` command
    (the head's card) and the checkpoint's list of training files (``idNNNN_exMMM.npz``).

    Returns ``(w_train [N, K_id], w_heldout [M, K_id], data)`` where ``data`` describes the dataset.
    """
    from train.heads_data import HeadItem, HeadsDataConfig, head_weights

    files = meta.get("train_files") or []
    if not files:
        raise InputError("head checkpoint: its meta lists no training files; was it trained by nphm-train head?")
    train_ids = sorted({int(Path(f).name[2:6]) for f in files})
    config = HeadsDataConfig(identity_scale=identity_scale)
    weights = [head_weights(kit, HeadItem(i, 0, "train", "neutral"), seed, config)[0] for i in range(n_ids)]
    held = [i for i in range(n_ids) if i not in set(train_ids)]
    return (np.stack([weights[i] for i in train_ids]), np.stack([weights[i] for i in held]) if held else
            np.zeros((0, kit.n_identity)), {"seed": seed, "identities": n_ids, "train": train_ids, "heldout": held})


def head_expressions(codes: dict, meta: dict, kit, data_seed: int, identities: int, expressions: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w_id [N_id, K_id], identity [N], w_ex [N, K_ex])``: the ICT weights of a head's training identities
    (row ``i`` = code ``z_id[i]``) and of each expression code's head. A head fine-tuned by
    ``nphm-train expression-finetune`` stores them (``codes["ict_w_ex"]``); otherwise they are re-derived from
    the data seed and the checkpoint's training files."""
    from train.heads_data import HeadsDataConfig, head_weights, plan_items

    w_id, _, _ = head_identities(meta, kit, data_seed, identities)
    ident = codes["identity_of_head"].long().numpy()
    if "ict_w_ex" in codes:
        return w_id, ident, codes["ict_w_ex"].float().numpy()
    files = meta.get("train_files") or []
    if len(files) != len(codes["z_ex"]):
        raise InputError("head checkpoint: its meta does not list one training file per expression code")
    plan = {f"id{it.identity:04d}_ex{it.expression:03d}.npz": it for it in plan_items(identities, expressions,
                                                                                       HeadsDataConfig())}
    missing = [f for f in files if f not in plan]
    if missing:
        raise InputError(f"training file {missing[0]} is not in the plan of seed {data_seed} with {identities} "
                         f"identities x {expressions} expressions: wrong --data-seed/--identities/--expressions?")
    return w_id, ident, np.stack([head_weights(kit, plan[f], data_seed, HeadsDataConfig())[1] for f in files])


def canonical_landmarks(kit: IctFaceKit, w_id: np.ndarray, embeddings: list[LandmarkEmbedding]) -> np.ndarray:
    """``[N, L, 3]`` canonical landmarks (model units) of identities ``[N, K_id]``, embeddings concatenated."""
    zero = np.zeros(kit.n_expression, np.float32)
    out = []
    for w in np.atleast_2d(w_id):
        v = ict_to_model(kit.vertices(np.asarray(w, np.float32), zero).astype(np.float64))
        out.append(np.concatenate([e.points(v) for e in embeddings]))
    return np.stack(out)


def choose_ridge(z: torch.Tensor, y: torch.Tensor, ridges=(1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0),
                 folds: int = 8, seed: int = 0, rank: int | None = None) -> tuple[float, dict]:
    """The ridge with the least k-fold cross-validated mean landmark error (model units)."""
    n = len(z)
    order = np.random.default_rng(seed).permutation(n)
    errors = {}
    for ridge in ridges:
        err = []
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            m = LandmarkMap.fit(z[train], y[train], ridge, rank)
            err.append((m(z[test].float()) - y[test]).norm(dim=-1).mean(1))
        errors[ridge] = float(torch.cat(err).mean())
    best = min(errors, key=errors.get)
    return best, errors


def register_identities(layer, codes: dict, kit: IctFaceKit, w_id: np.ndarray, seed: int = 0,
                        near_points: int = 4096, chunk: int = 50, progress: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity codes of neutral ICT heads ``[M, K_id]``, fitted with the frozen head model to near-surface
    SDF samples of each head (:func:`train.code_targets.fit_codes`, Pix2NPHM's Eq. 11 on SDF samples, many
    heads at once). Returns ``z_id [M, D]`` and the final mean |SDF - sdf_gt| per head (mm)."""
    from tqdm import tqdm

    from model.codes import CodeStatistics
    from train.code_targets import CodeFitConfig, fit_codes
    from train.geometry import surface_topology
    from train.heads_data import HeadsDataConfig, make_head_sample

    topo = surface_topology(kit.triangles, kit.n_vertices)
    config = HeadsDataConfig(n_surface=16, n_near=near_points, n_space=16)
    zero = np.zeros(kit.n_expression, np.float32)
    stats = CodeStatistics.of(codes)
    fit_cfg = CodeFitConfig(seed=seed)
    w_id = np.atleast_2d(w_id)
    z_out, err_out = [], []
    for s in tqdm(range(0, len(w_id), chunk), desc="registering identities", disable=not progress):
        near, sdf = [], []
        for i in range(s, min(len(w_id), s + chunk)):
            a = make_head_sample(kit, topo, np.asarray(w_id[i], np.float32), zero,
                                 np.random.default_rng([seed, i]), config)
            near.append(a["near_points"])
            sdf.append(a["near_sdf"])
        g = torch.Generator().manual_seed(seed * 100003 + s)
        z, _, err = fit_codes(layer, torch.as_tensor(np.stack(near)), torch.as_tensor(np.stack(sdf)), stats,
                              fit_cfg, g)
        z_out.append(z)
        err_out.append(err * MM_PER_UNIT)
    return torch.cat(z_out), torch.cat(err_out)


def mediapipe_layout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region id per MediaPipe landmark ``[478]`` (:data:`model.landmarks.REGIONS`), eyelid pairs ``[P, 2]``
    and their eye corners ``[P, 2]``, from the detector's own tables (:mod:`tracker.detect`)."""
    from model.landmarks import REGIONS
    from tracker.detect import (LEFT_EYE_CORNERS, LEFT_EYELID_PAIRS, RIGHT_EYE_CORNERS, RIGHT_EYELID_PAIRS,
                                face_mesh_regions)

    regions = face_mesh_regions()
    region = np.zeros(N_MEDIAPIPE, np.int64)
    for name, keys in (("nose", ("nose",)), ("contour", ("face_oval",)), ("brows", ("left_eyebrow", "right_eyebrow")),
                       ("eyes", ("left_eye", "right_eye")), ("lips", ("lips",)), ("iris", ("left_iris", "right_iris"))):
        for key in keys:
            region[regions[key]] = REGIONS.index(name)
    pairs = np.array(LEFT_EYELID_PAIRS + RIGHT_EYELID_PAIRS, np.int64)
    corners = np.array([LEFT_EYE_CORNERS] * len(LEFT_EYELID_PAIRS) + [RIGHT_EYE_CORNERS] * len(RIGHT_EYELID_PAIRS),
                       np.int64)
    return region, pairs, corners


@dataclass
class MapResult:
    assets: LandmarkAssets
    report: dict


def build_map(layer, codes: dict, meta: dict, kit: IctFaceKit, embedding: LandmarkEmbedding, data_seed: int,
              identities: int, extra_identities: int = 300, rank: int = 64, heldout: int = 8, seed: int = 0,
              progress: bool = True, cache: Optional[Path] = None) -> MapResult:
    """Fit the map for one head model and evaluate it on held-out identities (module docstring);
    ``data_seed`` and ``identities`` are those of the head's ``nphm-train data heads`` command.

    Besides the head's training identities (their codes from its table), ``extra_identities`` new random ICT
    identities are registered to the head model (:func:`register_identities`) and fitted too: the map then
    learns from registered codes, the kind a held-out identity gets, and from more than the head's 72
    identities. ``rank``: principal directions of the codes the map (and the tracker's identity) uses.
    ``cache``: an npz keeping the registered codes (the slow part) for a re-run with other settings.
    """
    start = time.perf_counter()
    ibug = vertex_embedding(kit.landmarks68)
    w_train, w_held, data = head_identities(meta, kit, data_seed, identities)
    z = codes["z_id"].detach().double()
    if len(z) != len(w_train):
        raise InputError(f"head checkpoint: {len(z)} identity codes but {len(w_train)} training identities in "
                         "its data plan")
    key = f"{extra_identities}-{heldout}-{seed}-{float(codes['z_id'].double().sum()):.6f}"
    cached = None
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as c:
            if str(c["key"]) == key:
                cached = {k: torch.from_numpy(c[k]) for k in ("z_extra", "err_extra", "z_held", "err_held")}
    if extra_identities:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        w_extra = sample_identity(rng, extra_identities, 1.0, kit.n_identity)
        if cached is not None:
            z_extra, err_extra = cached["z_extra"], cached["err_extra"]
        else:
            z_extra, err_extra = register_identities(layer, codes, kit, w_extra, seed + 1, progress=progress)
        z = torch.cat([z, z_extra.double()])
        w_train = np.concatenate([w_train, w_extra])
        data["extra_identities"] = {"n": extra_identities, "register_sdf_mm_mean": float(err_extra.mean())}
    y = torch.as_tensor(canonical_landmarks(kit, w_train, [embedding, ibug]))
    ridge, cv = choose_ridge(z, y, seed=seed, rank=rank)
    lmap = LandmarkMap.fit(z, y, ridge, rank)
    train_err = (lmap(z.float()) - y).norm(dim=-1) * MM_PER_UNIT
    report = {"ridge": ridge, "cv_mean_mm": {str(k): v * MM_PER_UNIT for k, v in cv.items()},
              "rank": lmap.rank, "train_identities": len(z), "train_mean_mm": float(train_err.mean()), "data": data}
    mean_y = y.mean(0)
    if heldout and len(w_held):
        w_eval = w_held[:heldout]
        if cached is not None:
            z_reg, sdf_mm = cached["z_held"], cached["err_held"]
        else:
            z_reg, sdf_mm = register_identities(layer, codes, kit, w_eval, seed + 2)
            if cache is not None:
                Path(cache).parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, key=np.array(key), z_extra=(z_extra if extra_identities else torch.zeros(0)).numpy(),
                         err_extra=(err_extra if extra_identities else torch.zeros(0)).numpy(),
                         z_held=z_reg.numpy(), err_held=sdf_mm.numpy())
        sdf_mm = [round(float(v), 3) for v in sdf_mm]
        truth = torch.as_tensor(canonical_landmarks(kit, w_eval, [embedding, ibug])).float()
        err = (lmap(z_reg) - truth).norm(dim=-1) * MM_PER_UNIT  # [M, L]
        ref = (mean_y.float() - truth).norm(dim=-1) * MM_PER_UNIT
        n_mp = len(embedding)
        report["heldout"] = {
            "identities": len(w_eval), "register_sdf_mm": sdf_mm,
            "mean_mm": float(err.mean()), "mediapipe_mean_mm": float(err[:, :n_mp].mean()),
            "ibug68_mean_mm": float(err[:, n_mp:].mean()), "p90_mm": float(err.flatten().quantile(0.9)),
            "mean_head_reference_mm": float(ref.mean()),
        }
    report["seconds"] = round(time.perf_counter() - start, 1)
    meta_out = {"n_mediapipe": len(embedding), "n_ibug68": len(ibug), "map": report}
    region, pairs, corners = mediapipe_layout()
    return MapResult(LandmarkAssets(embedding, ibug, lmap, region, pairs, corners, meta_out), report)


def save_card(path: Path, card: dict) -> Path:
    """A JSON card beside an asset (temporary name, then renamed)."""
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def run_landmarks_command(head_path: str, data_seed: int, identities: int, out_path: str, work_dir: str,
                          renders: int, extra_identities: int, rank: int, seed: int,
                          ict_path: Optional[str] = None) -> dict:
    """``nphm-train landmarks``: embedding (cached in ``work_dir``), map, asset and card; returns the card."""
    import platform
    import subprocess
    import sys

    from model.checkpoint import load_checkpoint
    from model.landmarks import save_landmark_assets
    from tracker.detect import FaceMeshConfig
    from train.ict import default_ict_path, load_ict

    out = Path(out_path)
    if out.suffix != ".npz":
        raise InputError(f"{out}: the asset must be an .npz file")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    kit = load_ict(Path(ict_path) if ict_path else default_ict_path())
    cfg = EmbeddingConfig(renders=renders, seed=seed)
    cached = work / "embedding.npz"
    result = load_embedding(cached, cfg)
    if result is None:
        detector = FaceMeshConfig(static_image_mode=True).setup()

        def detect(image: np.ndarray) -> Optional[np.ndarray]:
            found = detector.detect(image)
            return None if found is None else found.points

        result = build_embedding(kit, detect, cfg)
        save_embedding(cached, result)
    layer, codes, meta = load_checkpoint(head_path)
    layer.eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    mapped = build_map(layer, codes, meta, kit, result.embedding, data_seed, identities, extra_identities, rank,
                       seed=seed, cache=work / "registered.npz")
    mapped.assets.meta["embedding"] = result.summary()
    save_landmark_assets(out, mapped.assets)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    card = {
        "name": out.stem, "file": out.name, "bytes": out.stat().st_size,
        "what": "MediaPipe Face Mesh (478) and iBUG-68 landmarks embedded on ICT-FaceKit, and the map from the "
                "head model's identity codes to canonical landmarks (model.landmarks)",
        "command": "nphm-train landmarks " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["landmarks"] else
        f"nphm-train landmarks --head {head_path} --data-seed {data_seed} --identities {identities} --out "
        f"{out_path} --renders {renders} --extra-identities {extra_identities} --rank {rank} --seed {seed}",
        "head": str(head_path), "seed": seed, "git_commit": commit,
        "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, no GPU",
        "metrics": {"embedding": result.summary(), "map": mapped.report},
        "notes": "spread: median distance (mm, on the ICT mean head) of the per-render ray-cast hits of a landmark "
                 "from its embedded point; landmarks above flag_mm are down-weighted by (flag_mm / spread)^2. "
                 "map held-out: identities the head model never saw, codes registered to their neutral heads, "
                 "mapped landmarks vs ICT truth; reference: the training identities' mean landmarks.",
    }
    save_card(out.with_suffix(".json"), card)
    return card
