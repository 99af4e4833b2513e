"""``nphm-train arkit-regressor``: data and training of the landmark -> ARKit-52 regressor.

Data (``data`` step, resumable in chunks): ICT-FaceKit heads of random identities (``identity_scale`` 1)
with random expressions, rendered from random head poses and shaded (:func:`train.landmark_assets`'s
renderer), each run through the real MediaPipe Face Mesh detector; the sample is the detected 478
landmarks and the true ARKit weights (:func:`model.arkit.arkit_from_ict`). Expressions, a quarter each:
the sampler's random expressions at 0.5-1 of its strength; one of the strong expressions of
:data:`train.video.STRONG_EXPRESSIONS` plus a random one; a strong one with random blinks and jaw; 1-4
random blendshapes at random weights; then, in 30 % of the samples, the lids closed by a random amount (a
blink, or a wink). Renders where the detector finds no face are dropped.

Training: mean squared error of the predicted weights (L1 would learn the median, 0 for most shapes), Adam, cosine schedule, landmark jitter of ``jitter_px``
as augmentation; the last ``heldout`` samples are held out and reported (mean correlation and MAE over the
shapes that move there).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from model.arkit import arkit_from_ict
from train.landmark_mlp import LandmarkMlpTrainConfig

CHUNK = 250
BLINK_PROBABILITY = 0.3
"""Share of samples whose eyelids are set anew (both at one weight 60 % of the time, else each its own)."""


@dataclass
class ArkitDataConfig:
    out_dir: str
    samples: int = 6000
    resolution: int = 256
    yaw_deg: float = 35.0
    pitch_deg: float = 20.0
    roll_deg: float = 12.0
    seed: int = 0
    ict_path: Optional[str] = None
    shard: tuple[int, int] = (0, 1)
    """``(i, n)``: make only the chunks ``c`` with ``c % n == i`` (run ``n`` processes side by side)."""
    squint_share: float = 0.0
    """Share of squint samples (:func:`sample_expression_mix`)."""


SQUINTS = ("eyeSquint_L", "eyeSquint_R", "cheekSquint_L", "cheekSquint_R", "browDown_L", "browDown_R",
           "noseSneer_L", "noseSneer_R")
"""Shapes that narrow the eyes without closing them: what a landmark reader confuses with a blink."""


def sample_expression_mix(rng: np.random.Generator, names, squint_share: float = 0.0) -> np.ndarray:
    """``[K_ict]`` one training expression (module docstring's mixture); with probability ``squint_share`` a
    squint instead: 1-3 of :data:`SQUINTS` at 0.5-1 (often with a smile), the lids open or half closed."""
    from train.sampler import sample_expression
    from train.video import strong_expression

    names = list(names)
    if squint_share > 0 and rng.random() < squint_share:
        w = np.zeros(len(names))
        for n in rng.choice(SQUINTS, int(rng.integers(1, 4)), replace=False):
            w[names.index(n)] = rng.uniform(0.5, 1.0)
        if rng.random() < 0.5:
            a = rng.uniform(0.3, 1.0)
            w[names.index("mouthSmile_L")] = w[names.index("mouthSmile_R")] = a
        if rng.random() < 0.3:
            w[names.index("eyeBlink_L")] = w[names.index("eyeBlink_R")] = rng.uniform(0.0, 0.6)
        return np.clip(w, 0.0, 1.0).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        w = sample_expression(rng, 1, names)[0] * rng.uniform(0.5, 1.0)
    elif kind == 1:
        w = strong_expression(rng, names) + sample_expression(rng, 1, names)[0] * rng.uniform(0.0, 0.6)
    elif kind == 2:
        w = strong_expression(rng, names)
        for n in ("eyeBlink_L", "eyeBlink_R"):
            w[names.index(n)] = rng.uniform(0, 1) if rng.random() < 0.5 else w[names.index(n)]
        if rng.random() < 0.5:
            w[names.index("jawOpen")] = max(w[names.index("jawOpen")], rng.uniform(0, 1))
    else:
        w = np.zeros(len(names))
        for j in rng.choice(len(names), int(rng.integers(1, 5)), replace=False):
            w[j] = rng.uniform(0.2, 1.0)
    if rng.random() < BLINK_PROBABILITY:  # blinks and winks on top of any of them
        a = rng.uniform(0.0, 1.0)
        b = a if rng.random() < 0.6 else rng.uniform(0.0, 1.0)
        w[names.index("eyeBlink_L")], w[names.index("eyeBlink_R")] = a, b
    return np.clip(w, 0.0, 1.0).astype(np.float32)


def generate_arkit_data(cfg: ArkitDataConfig, progress: bool = True) -> Path:
    """Write ``chunk_NNNN.npz`` files (``landmarks [n, 478, 2]`` pixels, ``arkit [n, 52]``, the ICT
    identity weights ``w_id [n, K_id]``) to ``cfg.out_dir``;
    chunks already there are kept (resumable)."""
    from tqdm import tqdm

    from tracker.detect import FaceMeshConfig
    from train.ict import default_ict_path, load_ict
    from train.render import eye_centres, framing_points, head_vertices, ict_render_mesh, render_head
    from train.sampler import sample_identity
    from train.shading import AppearanceConfig, sample_appearance, shade
    from train.camera import ViewSamplerConfig, sample_view

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "shard": None}, indent=2) + "\n")
    kit = load_ict(Path(cfg.ict_path) if cfg.ict_path else default_ict_path())
    mesh = ict_render_mesh(kit.triangles, kit.landmarks68)
    detector = FaceMeshConfig(static_image_mode=True).setup()
    views = ViewSamplerConfig(yaw_deg=cfg.yaw_deg, pitch_deg=cfg.pitch_deg, roll_deg=cfg.roll_deg,
                              distance=(2.0, 5.0), fill=(0.55, 0.8), aspect_jitter=0.0)
    n_chunks = -(-cfg.samples // CHUNK)
    for c in tqdm(range(n_chunks), desc="arkit data chunks", disable=not progress):
        path = out / f"chunk_{c:04d}.npz"
        if path.is_file() or c % cfg.shard[1] != cfg.shard[0]:
            continue
        lms, ws, ids = [], [], []
        for i in range(c * CHUNK, min((c + 1) * CHUNK, cfg.samples)):
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 31, i]))
            w_id = sample_identity(rng, 1, 1.0, kit.n_identity)[0]
            w_ex = sample_expression_mix(rng, kit.expression_names, cfg.squint_share)
            head = head_vertices(kit, w_id, w_ex)
            view = sample_view(rng, views, framing_points(head.canonical), cfg.resolution, cfg.resolution)
            geom = render_head(head, mesh, view.camera, view.pose)
            app = sample_appearance(rng, AppearanceConfig(noise_std=(0.0, 0.01), jpeg_probability=0.3,
                                                          blur_probability=0.2))
            rgb = shade(geom, app, head.canonical[mesh.landmarks], eye_centres(head.canonical, mesh), rng)
            found = detector.detect(rgb)
            if found is None:
                continue
            lms.append(found.points.astype(np.float32))
            ws.append(arkit_from_ict(w_ex, kit.expression_names))
            ids.append(w_id)
        tmp = path.with_name(f".{path.name}.partial.npz")
        np.savez(tmp, landmarks=np.stack(lms), arkit=np.stack(ws), w_id=np.stack(ids).astype(np.float32))
        tmp.replace(path)
    return out


def load_arkit_data(*data_dirs: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(landmarks [N, 478, 2], arkit [N, 52])`` of every chunk of the folders, in folder then chunk order."""
    files = [f for d in data_dirs for f in sorted(Path(d).glob("chunk_*.npz"))]
    if not files:
        raise FileNotFoundError(f"{', '.join(map(str, data_dirs))}: no chunk_*.npz (run nphm-train arkit-regressor "
                                "without --out first)")
    lm = np.concatenate([np.load(f)["landmarks"] for f in files])
    w = np.concatenate([np.load(f)["arkit"] for f in files])
    return torch.from_numpy(lm), torch.from_numpy(w)


@dataclass
class ArkitTrainConfig(LandmarkMlpTrainConfig):
    """``nphm-train arkit-regressor``: the shared landmark-reader settings, nothing more."""


def curve_report(pred: np.ndarray, truth: np.ndarray, moves: float = 0.2) -> dict:
    """Mean correlation and MAE over the shapes whose truth reaches ``moves``."""
    corr, mae = [], []
    for j in range(truth.shape[1]):
        if truth[:, j].max() < moves:
            continue
        t, p = truth[:, j], pred[:, j]
        corr.append(float(np.corrcoef(t, p)[0, 1]) if p.std() > 1e-8 and t.std() > 1e-8 else 0.0)
        mae.append(float(np.abs(p - t).mean()))
    return {"shapes": len(corr), "mean_corr": round(float(np.mean(corr)), 4), "mean_mae": round(float(np.mean(mae)), 4)}


def train_arkit_regressor(cfg: ArkitTrainConfig, log=print) -> dict:
    from model.arkit_regressor import ArkitRegressor, ArkitRegressorConfig, save_arkit_regressor
    from train.landmark_mlp import fit_landmark_mlp, split_heldout

    torch.manual_seed(cfg.seed)
    lm, w = load_arkit_data(cfg.data_dir)
    n = len(lm)
    tr_lm, tr_w, ho_lm, ho_w = split_heldout(lm, w, cfg.heldout, cfg.batch_size, cfg.data_dir)
    if cfg.extra_data:
        x_lm, x_w = load_arkit_data(*cfg.extra_data)
        tr_lm, tr_w, n = torch.cat([tr_lm, x_lm]), torch.cat([tr_w, x_w]), n + len(x_lm)
    model = ArkitRegressor(ArkitRegressorConfig(hidden=cfg.hidden, layers=cfg.layers))
    t0 = time.perf_counter()
    fit_landmark_mlp(model, tr_lm, tr_w, cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.jitter_px,
                     cfg.seed, 1000, lambda: curve_report(model(ho_lm).numpy(), ho_w.numpy()), log)
    with torch.no_grad():
        report = {"samples": n, "heldout": cfg.heldout, "heldout_report": curve_report(model(ho_lm).numpy(), ho_w.numpy()),
                  "still_face_heldout_mae": curve_report(np.zeros_like(ho_w.numpy()), ho_w.numpy())["mean_mae"],
                  "train_seconds": round(time.perf_counter() - t0, 1)}
    save_arkit_regressor(cfg.out_path, model, {"config": asdict(cfg), "report": report})
    log(json.dumps(report))
    return report
