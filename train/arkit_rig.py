"""``nphm-train arkit-rig``: the head model's expression code of each ARKit blendshape at weight 1.

For each of ARKit's 52 shapes (:mod:`model.arkit`; tongueOut has no counterpart) one expression code is
registered, shared by ``identities`` training identities of the head, to ICT-FaceKit heads of those
identities showing that one shape at weight 1 (both halves of browInnerUp and cheekPuff):

    L(z) = mean_i |SDF(x_i; z_id, z)| + w_corr * Huber(|x_p + offsets(x_p; z) - x_c|, 1 mm)
           + w_forward * Huber(|x_c + forward(x_c; z) - x_p|, 1 mm) + w_prior |z - z_0|^2

- the SDF term at surface samples of the posed ICT head (the head model's posed SDF, as Pix2NPHM registers
  its training scans);
- the correspondence term at ICT's posed skin vertices (their canonical counterparts are exact in the
  synthetic world, as the head was trained);
- the forward term: the same vertices posed by the head's forward deformation, the tracker's posing, so the
  rig's targets are the shapes the tracker shows;
- ``z_0``, the start: the linear regression of the head's training codes on their ICT weights
  (``codes["ict_w_ex"]``) evaluated at the shape.

Measured per shape on ``eval_identities`` other training identities, by posing their ICT neutral skin with the
tracker's own posing (the forward deformation) at the code and comparing with ICT's posed skin, over the
vertices the shape moves by more than 1 mm: the mean error (mm) and the shape's own mean motion there (the
error of not moving). Written into the asset's meta and its card.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from model.arkit import ARKIT_NAMES, NOT_MODELLED, ArkitRig, ict_of_arkit_shape, save_arkit_rig
from train.frame import ict_to_model
from train.metrics import MM_PER_UNIT

MOVES_MM = 1.0
"""A vertex counts as moved by a shape when the shape moves it by more than this (mm)."""


@dataclass
class ArkitRigConfig:
    head_path: str
    out_path: str
    forward_path: Optional[str] = None
    """The head's forward deformation (default: the one that belongs to the head)."""
    identities: int = 8
    """Training identities each shape's code is registered over."""
    eval_identities: int = 8
    """Other training identities the card's errors are measured on."""
    steps: int = 150
    lr: float = 1e-2
    points: int = 1024
    """Surface samples (SDF term) and skin vertices (correspondence term) per identity and step."""
    w_corr: float = 1.0
    w_forward: float = 1.0
    """Weight of the forward term: ICT's neutral skin posed by the forward deformation at the code against
    ICT's posed skin (Huber, mm): the tracker poses with it, so the rig's targets are what it shows."""
    w_prior: float = 1e-3
    seed: int = 0
    ict_path: Optional[str] = None


def regression_codes(z_ex: torch.Tensor, w_ict: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c0 [D_ex], W [K_ict, D_ex])``: ridge regression ``z_ex ~ c0 + w_ict @ W`` over a head's training
    codes ``z_ex [N, D_ex]`` and their ICT weights ``w_ict [N, K_ict]``."""
    X = torch.cat([torch.ones(len(w_ict), 1), w_ict.double()], 1)  # [N, 1 + K]
    reg = ridge * torch.eye(X.shape[1], dtype=torch.float64)
    reg[0, 0] = 0.0
    sol = torch.linalg.solve(X.T @ X + reg, X.T @ z_ex.double())  # [1 + K, D_ex]
    return sol[0].float(), sol[1:].float()


def shape_error(forward, layer, z_id: torch.Tensor, code: torch.Tensor, canonical: torch.Tensor,
                posed: torch.Tensor) -> tuple[float, float]:
    """``(error_mm, motion_mm)`` of one shape's code over identities: canonical skin ``[B, V, 3]`` posed by
    the forward deformation at ``code`` against the truth ``[B, V, 3]``, on the vertices it moves by more than
    :data:`MOVES_MM`; the motion is the truth's own displacement there."""
    from model.forward_deformation import forward_posed

    with torch.no_grad():
        x = forward_posed(forward, layer, canonical, z_id, code.expand(len(z_id), -1))
    move = (posed - canonical).norm(dim=-1) * MM_PER_UNIT  # [B, V]
    mask = move > MOVES_MM
    if not bool(mask.any()):
        return 0.0, 0.0
    err = (x - posed).norm(dim=-1) * MM_PER_UNIT
    return float(err[mask].mean()), float(move[mask].mean())


def build_arkit_rig(cfg: ArkitRigConfig, log=print) -> ArkitRig:
    """Register the 52 codes (module docstring) and write the asset to ``cfg.out_path``."""
    from model.checkpoint import load_checkpoint
    from model.forward_deformation import forward_for_head, forward_posed, load_forward_deformation
    from tracker.bake import neutral_expression
    from train.expression_finetune import SKIN
    from train.ict import default_ict_path, load_ict
    from train.landmark_assets import head_expressions
    import trimesh

    torch.manual_seed(cfg.seed)
    kit = load_ict(Path(cfg.ict_path) if cfg.ict_path else default_ict_path())
    layer, codes, meta = load_checkpoint(cfg.head_path)
    forward = (load_forward_deformation(cfg.forward_path)[0] if cfg.forward_path
               else forward_for_head(cfg.head_path))
    if forward is None:
        raise ValueError(f"{cfg.head_path}: no forward deformation beside it; give --forward")
    for p in list(layer.parameters()) + list(forward.parameters()):
        p.requires_grad_(False)
    ft = (meta.get("expression_finetune") or {}).get("config", {})
    w_id, _, w_ex = head_expressions(codes, meta, kit, ft.get("data_seed", 1), ft.get("identities", 80),
                                     ft.get("expressions", 8))
    n_fit, n_eval = cfg.identities, cfg.eval_identities
    if n_fit + n_eval > len(w_id):
        raise ValueError(f"the head has {len(w_id)} identities; asked for {n_fit} + {n_eval}")
    z_ex_all = codes["z_ex"].float()
    neutral = neutral_expression(codes, layer.cfg.expr_dim).float()
    c0, W = regression_codes(z_ex_all, torch.as_tensor(w_ex, dtype=torch.float32))
    names = kit.expression_names
    zero = np.zeros(kit.n_expression, np.float32)
    triangles = np.asarray(kit.triangles)
    skin_tri = triangles[(triangles < SKIN).all(1)]
    rng = np.random.default_rng(cfg.seed)

    def heads(ids, w):  # canonical and posed skin of identities ``ids`` at ICT weights w
        can = np.stack([ict_to_model(kit.vertices(w_id[i], zero)[:SKIN]) for i in ids]).astype(np.float32)
        pos = np.stack([ict_to_model(kit.vertices(w_id[i], w)[:SKIN]) for i in ids]).astype(np.float32)
        return torch.from_numpy(can), torch.from_numpy(pos)

    fit_ids, eval_ids = list(range(n_fit)), list(range(n_fit, n_fit + n_eval))
    z_fit, z_eval = codes["z_id"][fit_ids].float(), codes["z_id"][eval_ids].float()
    with torch.no_grad():
        anchors = layer.anchors(z_fit)
    rig_codes = neutral.expand(len(ARKIT_NAMES), -1).clone()
    modelled = torch.tensor([n not in NOT_MODELLED for n in ARKIT_NAMES])
    report: dict[str, dict] = {}
    t0 = time.perf_counter()
    for j, name in enumerate(ARKIT_NAMES):
        if not bool(modelled[j]):
            continue
        w = ict_of_arkit_shape(j, names)
        start = (c0 + torch.from_numpy(w) @ W).float()
        can, pos = heads(fit_ids, w)
        surface = torch.from_numpy(np.stack([
            trimesh.sample.sample_surface(trimesh.Trimesh(pos[b].numpy(), skin_tri, process=False), 8 * cfg.points,
                                          seed=int(rng.integers(1 << 31)))[0] for b in range(len(fit_ids))
        ]).astype(np.float32))  # [B, 8P, 3] surface samples of the posed heads
        z = torch.nn.Parameter(start.clone())
        opt = torch.optim.Adam([z], lr=cfg.lr)
        for step in range(cfg.steps):
            si = torch.randint(0, surface.shape[1], (cfg.points,))
            vi = torch.randint(0, SKIN, (cfg.points,))
            zz = z.expand(len(fit_ids), -1)
            sdf = layer(surface[:, si], z_fit, zz).sdf.abs().mean() * MM_PER_UNIT
            cond = layer.deformation.condition(z_fit, zz, anchors)
            p = pos[:, vi]
            d = (p + layer.deformation(p, cond)[..., :3] - can[:, vi]).norm(dim=-1) * MM_PER_UNIT
            corr = torch.nn.functional.huber_loss(d, torch.zeros_like(d), delta=1.0)
            fwd = (forward_posed(forward, layer, can[:, vi], z_fit, zz) - p).norm(dim=-1) * MM_PER_UNIT
            fwd = torch.nn.functional.huber_loss(fwd, torch.zeros_like(fwd), delta=1.0)
            loss = sdf + cfg.w_corr * corr + cfg.w_forward * fwd + cfg.w_prior * (z - start).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rig_codes[j] = z.detach()
        ce, pe = heads(eval_ids, w)
        entry = {"sdf_l1_mm": round(float(sdf.detach()), 3), "correspondence_mm": round(float(d.detach().mean()), 3)}
        for label, (zi, c, p) in (("fit", (z_fit, can, pos)), ("eval", (z_eval, ce, pe))):
            err, motion = shape_error(forward, layer, zi, z.detach(), c, p)
            err0, _ = shape_error(forward, layer, zi, start, c, p)
            entry[label] = {"error_mm": round(err, 3), "motion_mm": round(motion, 3),
                            "regression_start_error_mm": round(err0, 3)}
        report[name] = entry
        log(f"{name}: eval error {entry['eval']['error_mm']:.2f} mm of motion {entry['eval']['motion_mm']:.2f} mm "
            f"(regression start {entry['eval']['regression_start_error_mm']:.2f}); "
            f"{time.perf_counter() - t0:.0f} s")
    errs = [r["eval"]["error_mm"] for r in report.values()]
    motions = [r["eval"]["motion_mm"] for r in report.values()]
    summary = {"eval_error_mm_mean": round(float(np.mean(errs)), 3),
               "eval_motion_mm_mean": round(float(np.mean(motions)), 3),
               "eval_regression_start_error_mm_mean": round(float(np.mean(
                   [r["eval"]["regression_start_error_mm"] for r in report.values()])), 3),
               "seconds": round(time.perf_counter() - t0, 1)}
    rig = ArkitRig(rig_codes, neutral, modelled, {"config": asdict(cfg), "summary": summary, "shapes": report})
    save_arkit_rig(cfg.out_path, rig)
    log(json.dumps(summary))
    return rig


def rig_card(path: str | Path, rig: ArkitRig, command: str, git_commit: str, machine: str) -> dict:
    """The JSON card of a rig asset (written beside it as ``<stem>.json``): what it is, how it was made, and
    its registration error per shape (module docstring's protocol)."""
    import hashlib

    path = Path(path)
    shapes = rig.meta.get("shapes", {})
    card = {
        "name": path.stem, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "what": "ARKit-52 rig asset of head_default.pt (model.arkit.ArkitRig): the head's expression code of each "
                "ARKit blendshape at weight 1 (tongueOut: the neutral code; the head has no tongue); the tracker "
                "decodes them for the tracked identity into a personalised ARKit rig (tracker/arkit.py)",
        "head": rig.meta.get("config", {}).get("head_path"),
        "command": command, "data": "ICT-FaceKit heads of the head's training identities 0-7 (registration) showing "
                                    "one ARKit shape at weight 1; identities 8-15 for the errors",
        "git_commit": git_commit, "machine": machine,
        "config": rig.meta.get("config"), "summary": rig.meta.get("summary"),
        "metrics_protocol": "per shape, on identities 8-15: ICT's neutral skin posed by the forward deformation at "
                            "the code against ICT's posed skin, over the vertices the shape moves by more than "
                            f"{MOVES_MM} mm: mean error (mm); motion_mm: the shape's own mean motion there (the error "
                            "of not moving); regression_start: the start code (a linear regression of the training "
                            "codes on their ICT weights)",
        "per_shape": {k: v["eval"] for k, v in shapes.items()},
    }
    path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return card
