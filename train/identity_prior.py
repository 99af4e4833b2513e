"""``nphm-train identity-prior``: the tracker's identity centre and the landmark -> identity regressor
(:mod:`model.identity_prior`).

Three steps, all on the synthetic head world:

1. **Centre.** The landmark map's identity coordinates are registered to ICT-FaceKit's mean neutral head:
   |SDF| of the head model at points sampled on that surface, Adam (:func:`register_centre`).
2. **ICT weights -> coordinates.** A ridge regression from the ICT identity weights of the head model's
   training identities to their codes' coordinates, relative to the centre (:func:`ict_to_alpha`). With
   ``map_identities`` more pairs join them: random ICT identities, each registered like the centre
   (:func:`registered_identities`). 80 pairs for a 100 -> 96 map are few: with 240 more, true identity weights
   through the map gave heads 0.53 x the mean head's error instead of 0.76 (README, identity section).
3. **Regressor.** A reader from one frame's 478 detected landmarks to the ICT identity weights, trained on the
   renders ``nphm-train arkit-regressor`` made (ICT heads of random identities, expressions and poses through
   the real detector). Their identity weights are re-derived from the data's seed (:func:`data_identities`),
   as every sample's random stream starts with its identity. The reader is an MLP (``layers`` blocks), or with
   ``layers=0`` linear, fitted in closed form (:func:`fit_linear_reader`): it reads the first 10 identity modes
   better (R^2 mean 0.21 at ridge 0.3 against the MLP's 0.13), but the tracker's identity was no better on both
   video sets at once (README, identity section), so the shipped prior keeps the MLP.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from model.errors import InputError
from train.landmark_mlp import LandmarkMlpTrainConfig


def data_identities(data_dir: str | Path, kit: Any) -> list[np.ndarray]:
    """``[n_c, K_id]`` the ICT identity weights of each chunk of an ``arkit-regressor`` data folder, in chunk
    order: stored (``w_id``) or re-derived from the folder's config, matching each stored sample by its ARKit
    weights (a render the detector missed was skipped)."""
    from model.arkit import arkit_from_ict
    from train.arkit_regressor import CHUNK, sample_expression_mix
    from train.sampler import sample_identity

    data_dir = Path(data_dir)
    try:
        cfg = json.loads((data_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{data_dir}: no readable config.json ({type(exc).__name__})") from None
    out = []
    for f in sorted(data_dir.glob("chunk_*.npz")):
        with np.load(f) as z:
            if "w_id" in z.files:
                out.append(z["w_id"])
                continue
            stored = z["arkit"]
        c = int(f.stem.split("_")[1])
        ids, j = [], 0
        for i in range(c * CHUNK, min((c + 1) * CHUNK, cfg["samples"])):
            rng = np.random.default_rng(np.random.SeedSequence([cfg["seed"], 31, i]))
            w_id = sample_identity(rng, 1, 1.0, kit.n_identity)[0]
            w_ex = sample_expression_mix(rng, kit.expression_names, cfg.get("squint_share", 0.0))
            if j < len(stored) and np.allclose(arkit_from_ict(w_ex, kit.expression_names), stored[j], atol=1e-6):
                ids.append(w_id)
                j += 1
        if j != len(stored):
            raise InputError(f"{f}: {len(stored)} samples but only {j} re-derived from the seed; was the folder "
                             "made with another config?")
        out.append(np.stack(ids).astype(np.float32))
    if not out:
        raise InputError(f"{data_dir}: no chunk_*.npz")
    return out


def load_identity_data(*data_dirs: str | Path, kit: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(landmarks [N, 478, 2], w_id [N, K_id])`` of every chunk of the folders, in folder then chunk order."""
    lms, ids = [], []
    for d in data_dirs:
        lms += [np.load(f)["landmarks"] for f in sorted(Path(d).glob("chunk_*.npz"))]
        ids += data_identities(d, kit)
    return torch.from_numpy(np.concatenate(lms)), torch.from_numpy(np.concatenate(ids))


def register_centre(layer: Any, landmark_map: Any, z_ex: torch.Tensor, surface_points: np.ndarray,
                    steps: int = 300, batch: int = 4096, lr: float = 0.05, seed: int = 0) -> torch.Tensor:
    """``[r]`` landmark-map coordinates whose code's zero level set at expression ``z_ex [1, D_ex]`` passes
    through ``surface_points [N, 3]`` (model units): mean |SDF| by Adam, a small ridge on the coordinates."""
    pts = torch.as_tensor(surface_points, dtype=torch.float32)
    alpha = torch.zeros(1, landmark_map.rank, requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=lr)
    g = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        p.requires_grad_(False)
    for step in range(steps):
        idx = torch.randint(0, len(pts), (batch,), generator=g)
        loss = layer(pts[idx][None], landmark_map.code_of(alpha), z_ex).sdf.abs().mean() + 1e-4 * alpha.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == steps // 2:
            for group in opt.param_groups:
                group["lr"] *= 0.2
    return alpha.detach()[0]


def registered_identities(layer: Any, landmark_map: Any, z_ex: torch.Tensor, kit: Any, n: int, steps: int = 200,
                          batch: int = 2048, seed: int = 1234, cache: Optional[str | Path] = None,
                          log=print) -> tuple[np.ndarray, np.ndarray]:
    """``(w [n, K_id], alpha [n, r])``: ``n`` random ICT identities (weights drawn N(0, 1) by
    ``np.random.default_rng(seed)``) and the landmark map's coordinates registered to each one's neutral head
    at expression ``z_ex [1, D_ex]`` (:func:`register_centre`; identity ``k``'s 60k surface points and its
    batches are drawn with seed ``k``). About 3.5 s an identity on two threads.

    With ``cache`` (an ``.npz`` path) the finished identities are saved every 10, and a call finds them there:
    an interrupted run resumes, a longer one extends it (a cache of other weights is an error)."""
    from train.geometry import sample_surface, surface_topology
    from train.single_view_eval import ground_truth_surface

    w_all = np.random.default_rng(seed).standard_normal((n, kit.n_identity)).astype(np.float32)
    w_done = np.zeros((0, kit.n_identity), np.float32)
    alpha_done = np.zeros((0, landmark_map.rank), np.float32)
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as z:
            w_done, alpha_done = z["w"][:n], z["alpha"][:n]
        if not np.array_equal(w_done, w_all[:len(w_done)]) or alpha_done.shape[1] != landmark_map.rank:
            raise InputError(f"{cache}: registered pairs of other identities or another map; remove it or give "
                             "another --map-cache")
    topo = surface_topology(kit.triangles, kit.n_vertices)
    zero_ex = np.zeros(kit.n_expression, np.float32)
    rows = [alpha_done]
    t0 = time.perf_counter()
    for k in range(len(w_done), n):
        surface, _ = ground_truth_surface(kit, topo, w_all[k], zero_ex)
        pts = sample_surface(surface, np.random.default_rng(k), 60000).points
        rows.append(register_centre(layer, landmark_map, z_ex, pts, steps, batch, seed=k).numpy()[None])
        if cache is not None and (k % 10 == 9 or k == n - 1):
            tmp = Path(str(cache) + ".tmp.npz")
            np.savez(tmp, w=w_all[:k + 1], alpha=np.concatenate(rows))
            tmp.replace(cache)
            log(f"registered {k + 1}/{n} identities ({time.perf_counter() - t0:.0f} s)")
    return w_all, np.concatenate(rows).astype(np.float32)


def ict_to_alpha(w_id: np.ndarray, alpha: np.ndarray, centre: np.ndarray, ridge: float = 10.0) -> np.ndarray:
    """``[K_id, r]`` ridge regression ``alpha - centre ~ w_id @ M`` over identities ``w_id [N, K_id]``,
    ``alpha [N, r]`` (the ICT mean head, ``w = 0``, maps to the centre)."""
    w = np.asarray(w_id, np.float64)
    return np.linalg.solve(w.T @ w + ridge * np.eye(w.shape[1]), w.T @ (np.asarray(alpha) - centre))


def fit_linear_reader(model: Any, landmarks: torch.Tensor, targets: torch.Tensor, ridge: float) -> None:
    """Set a linear :class:`model.identity_prior.IdentityPrior` (``layers=0``) to the ridge regression of
    ``targets [N, K]`` on the normalised landmarks ``[N, L, 2]`` (pixels), each feature standardised over the
    data first (``ridge`` acts on the standardised features; the standardisation is folded into the weights)."""
    from model.landmark_regressor import landmark_features

    if model.cfg.layers != 0:
        raise InputError(f"fit_linear_reader needs a linear reader (layers=0), got layers={model.cfg.layers}")
    with torch.no_grad():
        x = landmark_features(landmarks.float(), model.cfg.n_landmarks).double().numpy()
    y = targets.double().numpy()
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xs, ym = (x - mu) / sd, y.mean(0)
    A = np.linalg.solve(xs.T @ xs + ridge * np.eye(xs.shape[1]), xs.T @ (y - ym))  # [F, K]
    with torch.no_grad():
        model.out.weight.copy_(torch.as_tensor((A / sd[:, None]).T, dtype=torch.float32))
        model.out.bias.copy_(torch.as_tensor(ym - (mu / sd) @ A, dtype=torch.float32))


def ict_face_basis(kit: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [V, 3], modes [K_id, V, 3])`` of ICT's neutral narrow face area (vertices 0-6705), mm."""
    zero_ex = np.zeros(kit.n_expression, np.float32)
    mean = kit.vertices(np.zeros(kit.n_identity, np.float32), zero_ex)[:6706] * 10.0
    eye = np.eye(kit.n_identity, dtype=np.float32)
    modes = np.stack([kit.vertices(eye[k], zero_ex)[:6706] * 10.0 - mean for k in range(kit.n_identity)])
    return mean, modes


@dataclass
class IdentityPriorTrainConfig(LandmarkMlpTrainConfig):
    """``nphm-train identity-prior``: the shared landmark-reader settings, and the head and centre's."""

    head_path: Optional[str] = None
    data_seed: int = 1
    """Seed of the head's ``nphm-train data heads`` command (its training identities' ICT weights)."""
    identities: int = 80
    """Identities of that command."""
    ridge: float = 10.0
    centre_steps: int = 300
    map_identities: int = 0
    """Random ICT identities registered to fit the ICT -> coordinates map beside the head's training identities
    (:func:`registered_identities`; 0: those alone)."""
    map_steps: int = 200
    map_cache: Optional[str] = None
    """Where the registered pairs are kept (resumable); ``None``: not kept."""
    reader_ridge: float = 3000.0
    """Ridge of the linear reader (``layers=0``: closed form, :func:`fit_linear_reader`) on standardised features
    (README, identity section: 0.3 reads the most identity, 3000 keeps the real clips' identity as steady as the
    MLP's)."""
    ict_path: Optional[str] = None


def train_identity_prior(cfg: IdentityPriorTrainConfig, log=print) -> dict:
    """Steps 1-3 of the module docstring; writes ``cfg.out_path`` and returns the report (also in its meta)."""
    from model.identity_prior import IdentityPrior, IdentityPriorConfig, map_check_of, save_identity_prior
    from train.geometry import sample_surface, surface_topology
    from train.ict import default_ict_path, load_ict
    from train.landmark_assets import head_identities
    from train.landmark_mlp import fit_landmark_mlp, split_heldout
    from train.single_view_eval import ground_truth_surface
    from tracker.predict import Models

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    kit = load_ict(Path(cfg.ict_path) if cfg.ict_path else default_ict_path())
    models = Models.load(cfg.head_path)
    if models.landmarks is None:
        raise InputError(f"{models.head_path}: no landmark assets; build them with nphm-train landmarks first")
    lmap = models.landmarks.landmark_map
    # 1. the centre
    topo = surface_topology(kit.triangles, kit.n_vertices)
    mean_head, _ = ground_truth_surface(kit, topo, np.zeros(kit.n_identity, np.float32),
                                        np.zeros(kit.n_expression, np.float32))
    pts = sample_surface(mean_head, np.random.default_rng(cfg.seed), 60000).points
    centre = register_centre(models.layer, lmap, models.neutral_expression(), pts, cfg.centre_steps, seed=cfg.seed)
    log(f"centre registered to ICT's mean head ({time.perf_counter() - t0:.0f} s), |alpha| {float(centre.norm()):.2f}")
    # 2. ICT weights -> coordinates, from the head's training identities
    w_train, _, _ = head_identities(models.head_meta, kit, cfg.data_seed, cfg.identities)
    alpha_train = lmap.coordinates(models.codes["z_id"].float()).detach().numpy()
    if cfg.map_identities:
        w_reg, alpha_reg = registered_identities(models.layer, lmap, models.neutral_expression(), kit,
                                                 cfg.map_identities, cfg.map_steps, cache=cfg.map_cache, log=log)
        w_train, alpha_train = np.concatenate([w_train, w_reg]), np.concatenate([alpha_train, alpha_reg])
    M = ict_to_alpha(w_train, alpha_train, centre.numpy(), cfg.ridge)
    # 3. the regressor
    lm, w = load_identity_data(cfg.data_dir, kit=kit)
    tr_lm, tr_w, ho_lm, ho_w = split_heldout(lm, w, cfg.heldout, cfg.batch_size, cfg.data_dir)
    if cfg.extra_data:
        x_lm, x_w = load_identity_data(*cfg.extra_data, kit=kit)
        tr_lm, tr_w = torch.cat([tr_lm, x_lm]), torch.cat([tr_w, x_w])
    model = IdentityPrior(IdentityPriorConfig(n_ict=kit.n_identity, rank=lmap.rank, hidden=cfg.hidden,
                                              layers=cfg.layers))
    model.centre.copy_(centre)
    model.ict_to_alpha.copy_(torch.as_tensor(M, dtype=torch.float32))
    model.map_check.copy_(map_check_of(lmap))
    _, modes = ict_face_basis(kit)
    modes_t = torch.as_tensor(modes.reshape(len(modes), -1), dtype=torch.float32)
    t1 = time.perf_counter()
    if cfg.layers == 0:
        fit_linear_reader(model, tr_lm, tr_w, cfg.reader_ridge)
    else:
        fit_landmark_mlp(model, tr_lm, tr_w, cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.jitter_px,
                         cfg.seed, 2000, lambda: heldout_report(model, ho_lm, ho_w, modes_t), log)
    model.eval()
    report = {"samples": len(tr_lm) + len(ho_lm), "heldout": cfg.heldout,
              "heldout_report": heldout_report(model, ho_lm, ho_w, modes_t),
              "centre_norm": round(float(centre.norm()), 3), "ict_to_alpha_identities": len(w_train),
              "train_seconds": round(time.perf_counter() - t1, 1), "seconds": round(time.perf_counter() - t0, 1)}
    save_identity_prior(cfg.out_path, model, {"config": asdict(cfg), "report": report})
    log(json.dumps(report))
    return report


@torch.no_grad()
def heldout_report(model: Any, landmarks: torch.Tensor, w_id: torch.Tensor, modes: torch.Tensor) -> dict:
    """Per-frame figures on held-out samples: the mean vertex error (mm) of the predicted ICT face against
    the true one and the mean head's, and the R^2 of the first 10 identity modes (``model`` in eval mode)."""
    pred = model(landmarks)

    def err(dw):
        return float((dw @ modes).reshape(len(dw), -1, 3).norm(dim=-1).mean())
    r2 = 1 - (pred - w_id).square().mean(0) / w_id.var(0)
    return {"face_vertex_mm": round(err(pred - w_id), 3), "mean_head_face_vertex_mm": round(err(-w_id), 3),
            "r2_first10": [round(float(v), 2) for v in r2[:10]]}
