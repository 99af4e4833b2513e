"""``nphm-train forward-deformation``: fit :class:`model.forward_deformation.ForwardDeformation` to a head.

Data: the head checkpoint's own training heads, whose ICT weights are known (:func:`train.landmark_assets.head_expressions`:
stored by ``nphm-train expression-finetune``, or re-derived from the data seed for a head trained by
``nphm-train head``). The pairs (canonical = the identity's ICT neutral, posed = the same vertices with the
expression) are exact ICT correspondences in model units; the conditioning is the frozen head's
``condition(z_id, z_ex)`` of that head's codes. Points per step (:func:`sample_batch`): face vertices, head
and neck, the MediaPipe landmarks (the shipped embedding: ICT topology, so any ICT-trained head) and
vertices drawn by how far the head's expression moves them; canonical positions jittered by ``jitter_mm``
(the marching-cubes vertices the tracker bakes are near, not on, ICT's surface) with the vertex's own offset
as the target; Huber loss on the distance in mm.

The last ``heldout_identities`` training identities are kept out and reported (``heldout``: mean distance of
the predicted from the true posed face vertices and landmarks, and the same for offsets of zero, the
canonical start). Resumable: ``<out>/state.pt`` every ``checkpoint_every`` steps; ``<out>/forward.pt`` at
the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from model.forward_deformation import (ForwardDeformation, ForwardDeformationConfig, head_condition,
                                       save_forward_deformation)
from train.frame import ict_to_model
from train.ict import PARTS
from train.metrics import MM_PER_UNIT

FACE = (PARTS["face"].start, PARTS["face"].stop)
HEAD = (PARTS["head_neck"].start, PARTS["head_neck"].stop)


@dataclass
class ForwardTrainConfig:
    head_path: str
    out_dir: str
    data_seed: int = 1
    identities: int = 80
    expressions: int = 8
    steps: int = 3000
    heads_per_step: int = 8
    points_per_head: int = 2048
    lr: float = 1e-3
    jitter_mm: float = 1.0
    heldout_identities: int = 6
    seed: int = 0
    checkpoint_every: int = 500
    hidden: int = 128
    layers: int = 4
    n_frequencies: int = 7
    ict_path: Optional[str] = None


def head_pairs(layer, codes: dict, meta: dict, kit, data_seed: int, identities: int, expressions: int,
               landmark_points) -> dict:
    """Per training head: canonical and posed ICT vertices (model units, float32) of the face and head and of
    the landmarks, its conditioning vector, and its identity index."""
    from train.landmark_assets import head_expressions

    w_id, ident, w_ex = head_expressions(codes, meta, kit, data_seed, identities, expressions)
    can, pos, lm_can, lm_pos = [], [], [], []
    neutral = [kit.vertices(w, np.zeros(kit.n_expression, np.float32)) for w in w_id]
    for i, w in zip(ident, w_ex):
        v0, v1 = neutral[i], kit.vertices(w_id[i], w)
        can.append(ict_to_model(v0[:HEAD[1]]).astype(np.float32))
        pos.append(ict_to_model(v1[:HEAD[1]]).astype(np.float32))
        lm_can.append(ict_to_model(landmark_points(v0)).astype(np.float32))
        lm_pos.append(ict_to_model(landmark_points(v1)).astype(np.float32))
    with torch.no_grad():
        zi = codes["z_id"][codes["identity_of_head"].long()]
        cond = head_condition(layer, zi.float(), codes["z_ex"].float())
    return {"can": torch.from_numpy(np.stack(can)), "pos": torch.from_numpy(np.stack(pos)),
            "lm_can": torch.from_numpy(np.stack(lm_can)), "lm_pos": torch.from_numpy(np.stack(lm_pos)),
            "cond": cond.float(), "identity": torch.as_tensor(ident)}


def sample_batch(data: dict, heads: torch.Tensor, n: int, jitter: float, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_c [B, n, 3]``, target offsets ``[B, n, 3]`` and ``cond [B, C]`` for head indices ``heads [B]``:
    face vertices (40 %), head and neck (10 %), landmarks (15 %) and vertices drawn in proportion to how far
    this head's expression moves them (35 %: the lips and lids, a small share of the surface)."""
    n_face, n_head, n_lm = int(0.4 * n), int(0.1 * n), int(0.15 * n)
    n_moved = n - n_face - n_head - n_lm
    B = len(heads)
    hb = heads[:, None]
    moved = (data["pos"][heads] - data["can"][heads]).norm(dim=-1)  # [B, V]
    idx = torch.cat([torch.randint(FACE[0], FACE[1], (B, n_face), generator=g),
                     torch.randint(HEAD[0], HEAD[1], (B, n_head), generator=g),
                     torch.multinomial(moved + 1e-6, n_moved, replacement=True, generator=g)], 1)
    lm = torch.randint(0, data["lm_can"].shape[1], (B, n_lm), generator=g)
    xc = torch.cat([data["can"][hb, idx], data["lm_can"][hb, lm]], 1)
    target = torch.cat([data["pos"][hb, idx], data["lm_pos"][hb, lm]], 1) - xc
    xc = xc + jitter * torch.randn(xc.shape, generator=g)
    return xc, target, data["cond"][heads]


def evaluate(module: ForwardDeformation, data: dict, heads: torch.Tensor) -> dict:
    """Mean L1 (mm) of predicted vs true offsets on all face vertices and on the landmarks of ``heads``, and
    of zero offsets (the canonical start)."""
    err, zero, err_lm, zero_lm = [], [], [], []
    with torch.no_grad():
        for h in heads.tolist():
            xc = data["can"][h, FACE[0]:FACE[1]][None]
            t = data["pos"][h, FACE[0]:FACE[1]][None] - xc
            p = module(xc, data["cond"][h][None])
            err.append(float((p - t).norm(dim=-1).mean()))
            zero.append(float(t.norm(dim=-1).mean()))
            xl = data["lm_can"][h][None]
            tl = data["lm_pos"][h][None] - xl
            err_lm.append(float((module(xl, data["cond"][h][None]) - tl).norm(dim=-1).mean()))
            zero_lm.append(float(tl.norm(dim=-1).mean()))
    m = MM_PER_UNIT
    return {"heads": len(heads), "face_l1_mm": round(float(m * np.mean(err)), 3), "face_zero_offset_mm": round(float(m * np.mean(zero)), 3),
            "landmarks_l1_mm": round(float(m * np.mean(err_lm)), 3), "landmarks_zero_offset_mm": round(float(m * np.mean(zero_lm)), 3)}


def train_forward_deformation(cfg: ForwardTrainConfig, log=print) -> dict:
    """Train (or resume) and write ``<out>/forward.pt`` and ``<out>/report.json``; returns the report."""
    from model.checkpoint import default_weights, load_checkpoint
    from model.landmarks import load_landmark_assets
    from train.ict import default_ict_path, load_ict

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    kit = load_ict(Path(cfg.ict_path) if cfg.ict_path else default_ict_path())
    layer, codes, meta = load_checkpoint(cfg.head_path)
    layer.eval()
    assets = load_landmark_assets(default_weights("landmarks_default", ".npz"))
    t0 = time.perf_counter()
    data = head_pairs(layer, codes, meta, kit, cfg.data_seed, cfg.identities, cfg.expressions,
                      assets.mediapipe.points)
    log(f"data: {len(data['cond'])} heads in {time.perf_counter() - t0:.1f} s")
    ids = sorted(set(data["identity"].tolist()))
    held_ids = set(ids[-cfg.heldout_identities:]) if cfg.heldout_identities else set()
    held = torch.tensor([i for i, v in enumerate(data["identity"].tolist()) if v in held_ids], dtype=torch.long)
    train = torch.tensor([i for i, v in enumerate(data["identity"].tolist()) if v not in held_ids], dtype=torch.long)
    fcfg = ForwardDeformationConfig(cond_dim=data["cond"].shape[1], hidden=cfg.hidden, layers=cfg.layers,
                                    n_frequencies=cfg.n_frequencies)
    module = ForwardDeformation(fcfg)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.02)
    g = torch.Generator().manual_seed(cfg.seed)
    step, seconds = 0, 0.0
    state_path = out / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        module.load_state_dict(st["module"]); opt.load_state_dict(st["opt"]); sched.load_state_dict(st["sched"])
        g.set_state(st["rng"]); step, seconds = st["step"], st["seconds"]
        log(f"resumed at step {step}")
    jitter = cfg.jitter_mm / MM_PER_UNIT
    module.train()
    t = time.perf_counter()
    while step < cfg.steps:
        heads = train[torch.randint(0, len(train), (cfg.heads_per_step,), generator=g)]
        xc, target, cond = sample_batch(data, heads, cfg.points_per_head, jitter, g)
        # Huber on the distance in mm (1 mm): L2 near the truth, L1 for the few far-moving points
        d = (module(xc, cond) - target).norm(dim=-1) * MM_PER_UNIT
        loss = torch.nn.functional.huber_loss(d, torch.zeros_like(d), delta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 250 == 0:
            log(f"step {step}: Huber {float(loss.detach()):.3f} (mm)")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            seconds += time.perf_counter() - t
            t = time.perf_counter()
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": g.get_state(), "step": step, "seconds": seconds}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
    module.eval()
    report = {"steps": step, "train_seconds": round(seconds, 1), "train_heads": len(train),
              "heldout": evaluate(module, data, held) if len(held) else None,
              "train_subset": evaluate(module, data, train[:24])}
    save_forward_deformation(out / "forward.pt", module, {"kind": "forward-deformation", "head": str(cfg.head_path),
                                                          "train_config": asdict(cfg), "report": report})
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report))
    return report
