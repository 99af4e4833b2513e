"""Training the landmark regressor (:mod:`model.landmark_regressor`) on synthetic detections of the head model.

Data (:func:`synthetic_samples`, seeded, generated in batches and cached in the output folder): per sample

- identity ``alpha ~ N(0, alpha_std^2 I)`` (whitened coordinates of the landmark map);
- expression ``beta``: with probability ``train_expression_fraction`` a training expression code of the head
  model (``rig.beta(codes["z_ex"][i])``) plus ``N(0, train_expression_noise^2)``, else
  ``rig.ex_start + N(0, beta_std^2)``;
- pose: yaw, pitch, roll uniform in +-``yaw_deg``, ``pitch_deg``, ``roll_deg`` (degrees) on the frontal
  camera (rotation of pi about x), model -> camera (OpenCV), distance uniform in ``distance`` (model units;
  increased where the face would not fit), focal ``focal_factor x resolution`` pixels, the face shifted to a
  random place fully inside the ``resolution``-square frame;
- the head model's own 478 MediaPipe landmarks: canonical landmarks of ``alpha`` posed by ``beta``
  (:func:`posed_batch`: batched Newton inversion of the deformation with per-point backtracking), projected;
- detector-like noise: Gaussian per landmark and axis with std ``noise_scale x spread_mm`` (the landmark
  asset's spread of the real detector's ray-cast hits on renders, mm on the head), converted to pixels with
  the landmark's depth. Samples whose inversion does not converge (within ``max_residual_mm``) are dropped
  and re-drawn (their count is reported).

Loss: the whitened direct code term, ``mean((alpha' - alpha)^2) + w_beta * mean((beta' - beta)^2)``, plus
optionally ``w_canonical`` x the mean canonical-landmark error (mm, :meth:`LandmarkMap.from_coordinates`: a
cheap, linear stand-in for a 3D identity-shape loss). Adam, cosine learning rate, gradient clipping. The run is
seeded, writes ``config.json``, checkpoints ``train_state.pt`` every ``checkpoint_every`` steps and resumes
from it, and saves ``landmark_regressor.pt`` (:func:`model.landmark_regressor.save_landmark_regressor`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import atomic_save
from model.errors import InputError
from model.landmark_regressor import (LandmarkRegressor, LandmarkRegressorConfig, save_landmark_regressor,
                                      spatial_groups)
from tracker.landmark_fit import LandmarkRig
from tracker.tto import axis_angle_to_matrix
from train.metrics import MM_PER_UNIT

STATE_FILE = "train_state.pt"
MODEL_FILE = "landmark_regressor.pt"


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic detections (module docstring); angles in degrees, distances in model units."""

    alpha_std: float = 0.7
    """Std of the sampled whitened identity coordinates."""
    beta_std: float = 0.7
    """Std around ``rig.ex_start`` of the expressions not taken from the training codes."""
    train_expression_fraction: float = 0.5
    """Share of samples whose expression is a training expression code plus noise."""
    train_expression_noise: float = 0.3
    """Std of the noise added to a training expression (whitened)."""
    yaw_deg: float = 45.0
    pitch_deg: float = 20.0
    roll_deg: float = 15.0
    distance: tuple[float, float] = (1.5, 5.0)
    focal_factor: tuple[float, float] = (1.0, 2.0)
    """Focal length range as multiples of ``resolution`` (pixels)."""
    resolution: int = 512
    margin_px: float = 8.0
    """The projected landmarks stay at least this far inside the frame."""
    noise_scale: float = 0.3
    """Multiplies the per-landmark detector spread (``assets.mediapipe.spread_mm``) to give the noise std.
    At 1.0 the noise hides nearly all of the identity and expression signal (a ridge regression from the
    normalised landmarks explains 6 % of the identity variance at 1.0, 27 % at 0.3, 79 % without noise; the
    transformer learnt nothing in 300 steps at 1.0), hence 0.3 by default; the spread is an upper bound
    of the detector's random error anyway (it also holds its systematic, identity-dependent offsets)."""
    newton_iterations: int = 5
    max_residual_mm: float = 0.5
    """Samples whose inversion leaves a landmark farther than this from its canonical point are re-drawn."""


@dataclass(frozen=True)
class LandmarkRegressorTrainConfig:
    """One training run (module docstring)."""

    model: LandmarkRegressorConfig = field(default_factory=LandmarkRegressorConfig)
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    head_path: Optional[str] = None
    """Head checkpoint (default ``model/weights/head_default.pt``)."""
    landmarks_path: Optional[str] = None
    """Landmark assets (default ``model/weights/landmarks_default.npz``)."""
    n_samples: int = 24000
    seed: int = 0
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    w_beta: float = 1.0
    w_canonical: float = 0.0
    """Weight of the mean canonical-landmark error in mm (0: the direct code term only)."""
    expression_dims: int = 32
    checkpoint_every: int = 500
    gen_batch: int = 64
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_rig(head_path: Optional[str] = None, landmarks_path: Optional[str] = None, expression_dims: int = 32):
    """``(rig, codes, assets)`` of the landmark tracker for a head checkpoint and landmark assets."""
    from model.checkpoint import default_weights, load_checkpoint
    from model.landmarks import load_landmark_assets
    from tracker.landmark_tracker import LandmarkStrategy, build_rig

    layer, codes, _ = load_checkpoint(head_path or default_weights("head_default"))
    layer.eval().requires_grad_(False)
    assets = load_landmark_assets(landmarks_path or default_weights("landmarks_default", ".npz"))
    rig = build_rig(layer, codes, assets, LandmarkStrategy(expression_dims=expression_dims))
    return rig, codes, assets


# --- synthetic data --------------------------------------------------------------------------------------

def posed_batch(rig: LandmarkRig, canonical: Tensor, z_id: Tensor, z_ex: Tensor, iterations: int = 8,
                tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Posed landmarks ``[B, L, 3]`` (head frame) of canonical ``[B, L, 3]`` and codes ``[B, D]``: Newton
    steps of ``x + offsets(x) = canonical`` from the canonical points with exact 3 x 3 Jacobians, each step
    halved per point (up to twice) while it does not reduce that point's residual (a point still worse
    stays); stops when every residual is below ``tol`` (model units). The batched form of
    :func:`tracker.landmark_fit.newton_refine`. Returns ``x`` and the final residual norms ``[B, L]``."""
    layer = rig.layer
    eye = torch.eye(3, dtype=canonical.dtype)
    with torch.no_grad():
        x = canonical.clone()
        for _ in range(iterations):
            out, jac = layer.deform_with_jacobian(x, z_id, z_ex)
            res = x + out.offsets - canonical
            err = res.norm(dim=-1)
            if float(err.max()) < tol:
                break
            step = -(torch.linalg.inv(eye + jac) @ res.unsqueeze(-1)).squeeze(-1)
            lam = torch.ones_like(err)
            for _ in range(3):
                x_new = x + lam[..., None] * step
                worse = (x_new + layer.deform(x_new, z_id, z_ex).offsets - canonical).norm(dim=-1) > err
                if not bool(worse.any()):
                    break
                lam = torch.where(worse, lam * 0.5, lam)
            x = torch.where(worse[..., None], x, x_new)
        res = x + layer.deform(x, z_id, z_ex).offsets - canonical
        return x, res.norm(dim=-1)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _rotations(gen: torch.Generator, n: int, cfg: SyntheticConfig) -> Tensor:
    """``[n, 3, 3]`` model -> camera rotations: frontal (pi about x) after roll, pitch, yaw of the head."""
    def axis(a: Tensor, i: int) -> Tensor:
        v = torch.zeros(len(a), 3)
        v[:, i] = a
        return axis_angle_to_matrix(v)

    deg = math.pi / 180.0
    yaw = axis(_uniform(gen, n, -cfg.yaw_deg, cfg.yaw_deg) * deg, 1)
    pitch = axis(_uniform(gen, n, -cfg.pitch_deg, cfg.pitch_deg) * deg, 0)
    roll = axis(_uniform(gen, n, -cfg.roll_deg, cfg.roll_deg) * deg, 2)
    frontal = axis(torch.full((n,), math.pi), 0)
    return frontal @ roll @ pitch @ yaw


def _project(x_cam: Tensor, f: Tensor, c: float) -> Tensor:
    """``[B, L, 3]`` camera points -> ``[B, L, 2]`` pixels (focal ``f [B]``, principal point ``(c, c)``)."""
    return x_cam[..., :2] / x_cam[..., 2:3].clamp_min(1e-4) * f[:, None, None] + c


def synthetic_samples(rig: LandmarkRig, codes: dict, spread_mm: np.ndarray, cfg: SyntheticConfig, n: int,
                      seed: int, gen_batch: int = 64, progress: bool = False) -> dict[str, Tensor]:
    """``n`` samples (module docstring), deterministic in ``seed``.

    Returns float32 tensors: ``points [n, 478, 2]`` noisy detections (pixels), ``clean [n, 478, 2]``, ``alpha
    [n, r]``, ``beta [n, k]``, ``R [n, 3, 3]``, ``t [n, 3]`` (model -> camera, model units), ``focal [n]``
    (pixels; principal point at the frame centre), and ``rejected`` (a count: samples re-drawn).
    """
    gen = torch.Generator().manual_seed(int(seed))
    L, r, k = rig.n_fit, rig.landmark_map.rank, rig.expression_dims
    spread = torch.as_tensor(np.nan_to_num(np.asarray(spread_mm, np.float64)[:L], nan=3.0), dtype=torch.float32)
    train_beta = rig.beta(codes["z_ex"].float())
    c = cfg.resolution / 2.0
    out: dict[str, list[Tensor]] = {k_: [] for k_ in ("points", "clean", "alpha", "beta", "R", "t", "focal")}
    have, rejected, t0 = 0, 0, time.perf_counter()
    while have < n:
        B = gen_batch
        alpha = torch.randn(B, r, generator=gen) * cfg.alpha_std
        from_train = torch.rand(B, generator=gen) < cfg.train_expression_fraction
        pick = train_beta[torch.randint(len(train_beta), (B,), generator=gen)]
        noise = torch.randn(B, k, generator=gen)
        beta = torch.where(from_train[:, None], pick + cfg.train_expression_noise * noise,
                           rig.ex_start + cfg.beta_std * noise)
        R = _rotations(gen, B, cfg)
        d = _uniform(gen, B, *cfg.distance)
        f = _uniform(gen, B, *cfg.focal_factor) * cfg.resolution
        shift_u, det_noise = torch.rand(B, 2, generator=gen), torch.randn(B, L, 2, generator=gen)
        canonical = rig.landmark_map.from_coordinates(alpha)[:, :L]
        x, residual = posed_batch(rig, canonical, rig.z_id(alpha), rig.z_ex(beta), cfg.newton_iterations)
        ok = residual.amax(1) * MM_PER_UNIT <= cfg.max_residual_mm
        rejected += int((~ok).sum())
        rot = x @ R.transpose(1, 2)  # [B, L, 3]
        # distance: at least what fits the face in the frame (extent ~ 1 / depth)
        t = torch.zeros(B, 3)
        t[:, 2] = d
        uv = _project(rot + t[:, None], f, c)
        extent = (uv.amax(1) - uv.amin(1)).amax(1)  # [B] px
        room = cfg.resolution - 2 * cfg.margin_px
        t[:, 2] = d * torch.clamp(extent / (0.95 * room), min=1.0)
        uv = _project(rot + t[:, None], f, c)
        lo, hi = cfg.margin_px - uv.amin(1), cfg.resolution - cfg.margin_px - uv.amax(1)  # [B, 2] px shift range
        shift = lo + (hi - lo).clamp_min(0.0) * shift_u
        t[:, :2] = shift * t[:, 2:3] / f[:, None]
        cam = rot + t[:, None]
        uv = _project(cam, f, c)
        std_px = spread[None] / MM_PER_UNIT * f[:, None] / cam[..., 2]  # [B, L]
        noisy = uv + cfg.noise_scale * std_px[..., None] * det_noise
        for key, v in (("points", noisy), ("clean", uv), ("alpha", alpha), ("beta", beta), ("R", R), ("t", t),
                       ("focal", f)):
            out[key].append(v[ok])
        have += int(ok.sum())
        if progress:
            print(f"  synthetic samples {have}/{n} ({time.perf_counter() - t0:.0f} s, {rejected} re-drawn)",
                  flush=True)
    data = {k_: torch.cat(v)[:n].float().contiguous() for k_, v in out.items()}
    data["rejected"] = torch.tensor(rejected)
    return data


def cached_samples(path: Path, rig: LandmarkRig, codes: dict, spread_mm: np.ndarray, cfg: SyntheticConfig, n: int,
                   seed: int, gen_batch: int, progress: bool = True) -> dict[str, Tensor]:
    """:func:`synthetic_samples`, read from ``path`` when it holds the same request (config, n, seed). The file
    holds the samples at ``noise_scale = 1``; the noise is rescaled on reading (Gaussian, so exactly the
    samples ``noise_scale`` would have drawn)."""
    unit = dataclasses.replace(cfg, noise_scale=1.0)
    key = hashlib.sha1(json.dumps([dataclasses.asdict(unit), n, seed, gen_batch], sort_keys=True).encode()).hexdigest()
    samples = None
    if path.is_file():
        data = torch.load(path, weights_only=True)
        if data.get("key") == key:
            samples = data["samples"]
    if samples is None:
        samples = synthetic_samples(rig, codes, spread_mm, unit, n, seed, gen_batch, progress)
        atomic_save({"key": key, "samples": samples}, path)
    samples = dict(samples)
    samples["points"] = samples["clean"] + cfg.noise_scale * (samples["points"] - samples["clean"])
    return samples


# --- training --------------------------------------------------------------------------------------------

def regressor_loss(model: LandmarkRegressor, rig: LandmarkRig, points: Tensor, alpha: Tensor, beta: Tensor,
                   w_beta: float = 1.0, w_canonical: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The training objective (module docstring) of one batch and its terms."""
    pred = model(points)
    a = (pred.alpha - alpha).square().mean()
    b = (pred.beta - beta).square().mean()
    loss = a + w_beta * b
    terms = {"alpha": float(a.detach()), "beta": float(b.detach())}
    if w_canonical > 0:
        lm = rig.landmark_map
        err = (lm.from_coordinates(pred.alpha)[:, :rig.n_fit] - lm.from_coordinates(alpha)[:, :rig.n_fit])
        mm = err.norm(dim=-1).mean() * MM_PER_UNIT
        loss = loss + w_canonical * mm
        terms["canonical_mm"] = float(mm.detach())
    terms["loss"] = float(loss.detach())
    return loss, terms


def build_model(cfg: LandmarkRegressorConfig, rig: LandmarkRig) -> LandmarkRegressor:
    """A regressor whose tokens group landmarks spatially on the mean face (:func:`spatial_groups`)."""
    mean_face = rig.landmark_map.y0[:cfg.n_landmarks, :2].numpy()
    return LandmarkRegressor(cfg, spatial_groups(mean_face, cfg.group_size))


def _lr(cfg: LandmarkRegressorTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(p, 1.0)))


def train_landmark_regressor(cfg: LandmarkRegressorTrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume) a landmark regressor into ``out_dir`` (module docstring); returns a summary dict."""
    if cfg.model.n_landmarks != 478:
        raise InputError("the landmark regressor is trained on MediaPipe's 478 landmarks (n_landmarks = 478)")
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    rig, codes, assets = load_rig(cfg.head_path, cfg.landmarks_path, cfg.expression_dims)
    if (cfg.model.alpha_dims, cfg.model.beta_dims) != (rig.landmark_map.rank, rig.expression_dims):
        raise InputError(f"model alpha_dims/beta_dims {cfg.model.alpha_dims}/{cfg.model.beta_dims} differ from the "
                         f"rig's {rig.landmark_map.rank}/{rig.expression_dims}")
    t0 = time.perf_counter()
    data = cached_samples(out / "samples.pt", rig, codes, assets.mediapipe.spread_mm, cfg.data, cfg.n_samples,
                          cfg.seed, cfg.gen_batch, progress)
    data_s = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, rig)
    model.set_input_statistics(data["points"][:4096])
    model.set_target_statistics(data["alpha"], data["beta"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, history = 0, []
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, history = int(state["step"]), list(state["history"])
    model.train()
    t1, n = time.perf_counter(), len(data["alpha"])
    running: dict[str, float] = {}
    while step < cfg.steps:
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        loss, terms = regressor_loss(model, rig, data["points"][idx], data["alpha"][idx], data["beta"][idx],
                                     cfg.w_beta, cfg.w_canonical)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        for k_, v in terms.items():
            running[k_] = running.get(k_, 0.0) + v
        if step % 100 == 0 or step == cfg.steps:
            m = max(1, step % 100 or 100)
            row = {"step": step, **{k_: round(v / m, 5) for k_, v in running.items()}}
            history.append(json.dumps(row))
            running = {}
            if progress:
                print(f"  step {step}/{cfg.steps} {row} ({time.perf_counter() - t1:.0f} s)", flush=True)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                         "step": step, "history": history}, state_path)
    train_s = time.perf_counter() - t1
    summary = {"steps": step, "samples": n, "rejected_samples": int(data["rejected"]),
               "data_seconds": round(data_s, 1), "train_seconds_this_run": round(train_s, 1),
               "last": json.loads(history[-1]) if history else {}}
    save_landmark_regressor(out / MODEL_FILE, model.eval(), {"train": cfg.to_dict(), "summary": summary})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
