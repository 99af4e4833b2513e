"""Training the head model as an auto-decoder, in the manner of NPHM / MonoNPHM.

Per-identity codes ``z_id`` and per-head expression codes ``z_ex`` are learnt jointly with the network
(:class:`model.head.HeadLayer`). The losses follow MonoNPHM's ``loss_functions.py`` (weights from its
``scripts/configs/mononphm.yaml``), with two additions that exact synthetic ground truth allows:

========================  ==============================================================  ===========
term                      what                                                              weight
========================  ==============================================================  ===========
``surf_sdf``              ``|sdf|`` at surface samples (face samples x ``face_weight``)       1.0
``normals``               ``|grad sdf - n|`` at surface samples                              0.3
``eikonal``               ``| |grad sdf| - 1 |`` at surface and volume samples              0.15
``near_sdf`` (added)      ``|sdf - sdf_gt|`` near the surface (exact GT from winding nums)   1.0
``space_sdf`` (added)     ``|sdf - clamp(sdf_gt)|`` uniform in the box                       0.1
``corresp``               ``|x_posed + offsets - x_neutral|^2`` at skin vertices           1000, x0.25 after 25 %
``anchors``               ``|anchors(z_id) - gt|^2``                                          7.5
``reg_zero``              offsets at random box points ~ 0                                  0.0025
``neutral_zero``          offsets of neutral heads ~ 0                                      0.001
``hyper``                 ``|hyper|`` (x10 on neutral heads)                                 0.05
``reg_shape/reg_expr``    ``|z|^2`` of the codes                                          0.01 / 0.05
``symm``                  distance between the local codes of mirror pairs                  0.01
========================  ==============================================================  ===========

Optimisers as MonoNPHM: AdamW (lr 5e-4, weight decay 5e-4) for the network, Adam for the codes
(lr 2e-3 identity, 1e-2 expression), gradient clipping at 1, learning rates halved at fixed fractions of
training. The run is seeded, writes its resolved config beside its output, checkpoints every
``checkpoint_every`` steps and resumes from ``<out>/train_state.pt`` when present.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.checkpoint import atomic_save, save_checkpoint
from model.config import HeadConfig, preset
from model.errors import InputError
from model.head import HeadLayer
from train import frame
from train.head_data import HeadTensors, anchor_vertices, load_training_heads
from train.ict import IctFaceKit, default_ict_path, load_ict

STATE_FILE = "train_state.pt"
MODEL_FILE = "head.pt"


@dataclass(frozen=True)
class LossWeights:
    """Weights of the training terms (module docstring)."""

    surf_sdf: float = 1.0
    normals: float = 0.3
    eikonal: float = 0.15
    near_sdf: float = 1.0
    space_sdf: float = 0.1
    corresp: float = 1000.0
    anchors: float = 7.5
    reg_zero: float = 0.0025
    neutral_zero: float = 0.001
    hyper: float = 0.05
    reg_shape: float = 0.01
    reg_expr: float = 0.05
    symm: float = 0.01
    face_weight: float = 2.0  # extra weight of surface samples on the face area


@dataclass(frozen=True)
class HeadTrainConfig:
    """One training run of the head model."""

    data_dir: str
    """Folder written by ``nphm-train data heads``."""
    out_dir: str
    """Where the checkpoint, the training state and the resolved config go."""
    preset: str = "default"
    """Head network preset (:func:`model.config.preset`)."""
    steps: int = 6000
    """Optimisation steps."""
    heads_per_step: int = 8
    """Heads (identity, expression) per step."""
    n_surface: int = 512
    """Surface samples per head and step."""
    n_grad_surface: int = 192
    """Of those, how many also get the normal and eikonal terms (they need the costly double backward)."""
    n_near: int = 1024
    """Near-surface SDF samples per head and step."""
    n_space: int = 128
    """Uniform box samples per head and step."""
    n_corresp: int = 256
    """Skin-vertex correspondences per head and step."""
    lr: float = 5e-4
    lr_id: float = 2e-3
    lr_ex: float = 1e-2
    weight_decay: float = 5e-4
    lr_decay_at: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of ``steps`` at which all learning rates are halved."""
    grad_clip: float = 1.0
    code_init_std: float = 0.01
    seed: int = 0
    checkpoint_every: int = 500
    ict_path: str | None = None
    """ICT-FaceKit npz or FaceXModel folder (default: :func:`train.ict.default_ict_path`)."""
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    final_losses: dict[str, float]


class HeadTrainer:
    """Owns the network, the code tables, the optimisers and the data of one run."""

    def __init__(self, cfg: HeadTrainConfig, head_cfg: HeadConfig, data: HeadTensors, anchor_idx: np.ndarray):
        self.cfg, self.head_cfg, self.data, self.anchor_idx = cfg, head_cfg, data, anchor_idx
        g = torch.Generator().manual_seed(cfg.seed)
        self.layer = HeadLayer(head_cfg)
        self.layer.set_anchor_mean(data.anchors.mean(0))
        self.z_id = torch.nn.Parameter(torch.randn(data.n_identities, head_cfg.id_dim, generator=g) * cfg.code_init_std)
        self.z_ex = torch.nn.Parameter(torch.randn(data.n_heads, head_cfg.expr_dim, generator=g) * cfg.code_init_std)
        self.opt_net = torch.optim.AdamW(self.layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt_codes = torch.optim.Adam([{"params": [self.z_id], "lr": cfg.lr_id},
                                           {"params": [self.z_ex], "lr": cfg.lr_ex}])
        self.step = 0
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.box_min = torch.tensor(frame.BOX_MIN.tolist())  # [3] where the deformation is pulled to zero
        self.box_size = torch.tensor(frame.BOX_MAX.tolist()) - self.box_min

    # --- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"layer": self.layer.state_dict(), "z_id": self.z_id.detach(), "z_ex": self.z_ex.detach(),
                "opt_net": self.opt_net.state_dict(), "opt_codes": self.opt_codes.state_dict(),
                "step": self.step, "rng": self.rng.get_state(), "config": json.dumps(self.cfg.to_dict())}

    def load_state_dict(self, s: dict) -> None:
        self.layer.load_state_dict(s["layer"])
        with torch.no_grad():
            self.z_id.copy_(s["z_id"])
            self.z_ex.copy_(s["z_ex"])
        self.opt_net.load_state_dict(s["opt_net"])
        self.opt_codes.load_state_dict(s["opt_codes"])
        self.step = int(s["step"])
        self.rng.set_state(s["rng"])

    # --- one step ---------------------------------------------------------------------------------------
    def losses(self, heads: Tensor) -> dict[str, Tensor]:
        """Every loss term for the heads ``[B]`` (indices into the training heads)."""
        cfg, d, lc = self.cfg, self.data, self.layer
        ns, nn_, nv = cfg.n_surface, cfg.n_near, cfg.n_space
        sidx = torch.randint(0, d.surface.shape[1], (heads.shape[0], ns), generator=self.rng)
        surf, normals = d.surface[heads[:, None], sidx], d.normals[heads[:, None], sidx]
        is_face = d.surface_is_face[heads[:, None], sidx]
        nidx = torch.randint(0, d.near.shape[1], (heads.shape[0], nn_), generator=self.rng)
        near, near_gt = d.near[heads[:, None], nidx], d.near_sdf[heads[:, None], nidx]
        vidx = torch.randint(0, d.space.shape[1], (heads.shape[0], nv), generator=self.rng)
        space, space_gt = d.space[heads[:, None], vidx], d.space_sdf[heads[:, None], vidx]
        cidx = torch.randint(0, d.corr_posed.shape[1], (heads.shape[0], cfg.n_corresp), generator=self.rng)
        c_posed, c_neutral = d.corr_posed[heads[:, None], cidx], d.corr_neutral[heads[:, None], cidx]
        rand_pts = self.box_min + self.box_size * torch.rand(heads.shape[0], 64, 3, generator=self.rng)

        z_id = self.z_id[d.identity[heads]]  # [B, D_id]
        z_ex = self.z_ex[heads]  # [B, D_ex]
        # Two passes: the eikonal / normal terms need d(sdf)/dx with a graph (double backward, the costly
        # part), so only the first n_grad surface samples and the volume samples go through that pass.
        ng = min(cfg.n_grad_surface, ns)
        xg = torch.cat([surf[:, :ng], space], 1).requires_grad_(True)  # [B, ng + nv, 3]
        out_g = lc(xg, z_id, z_ex)
        grad = torch.autograd.grad(out_g.sdf.sum(), xg, create_graph=True)[0]  # [B, ng + nv, 3]
        x = torch.cat([surf[:, ng:], near, c_posed, rand_pts], 1)  # [B, M, 3]
        out = lc(x, z_id, z_ex)
        s_sdf = torch.cat([out_g.sdf[:, :ng], out.sdf[:, :ns - ng]], 1)
        v_sdf = out_g.sdf[:, ng:]
        n_sdf = out.sdf[:, ns - ng:ns - ng + nn_]
        o = ns - ng + nn_
        offsets = torch.cat([out_g.canonical - xg, out.canonical - x], 1)
        hyper = torch.cat([out_g.hyper, out.hyper], 1)
        c_can = out.canonical[:, o:o + cfg.n_corresp]
        rand_off = out.canonical[:, -rand_pts.shape[1]:] - rand_pts
        w_surf = 1.0 + (cfg.weights.face_weight - 1.0) * is_face.float()
        neutral = d.is_neutral[heads]
        terms = {
            "surf_sdf": (w_surf * s_sdf.abs()).sum() / w_surf.sum(),
            "normals": (w_surf[:, :ng] * (grad[:, :ng] - normals[:, :ng]).norm(dim=-1)).sum() / w_surf[:, :ng].sum(),
            "eikonal": (grad.norm(dim=-1) - 1).abs().mean(),
            "near_sdf": (n_sdf - near_gt).abs().mean(),
            "space_sdf": (v_sdf - space_gt.clamp(-0.1, 0.1)).abs().mean(),
            "corresp": (c_can - c_neutral).square().sum(-1).mean(),
            "anchors": (lc.anchors(z_id) - d.anchors[d.identity[heads]]).square().sum(-1).mean(),
            "reg_zero": rand_off.square().sum(-1).mean(),
            "neutral_zero": (offsets[neutral].square().sum(-1).mean() if neutral.any()
                             else offsets.new_zeros(())),
            "hyper": hyper.abs().mean() + (10 * hyper[neutral].abs().mean() if neutral.any()
                                           else hyper.new_zeros(())),
            "reg_shape": z_id.square().sum(-1).mean(),
            "reg_expr": z_ex.square().sum(-1).mean(),
            "symm": self._symmetry_distance(z_id),
        }
        return terms

    def _symmetry_distance(self, z_id: Tensor) -> Tensor:
        hc = self.head_cfg
        p = hc.n_symmetric_pairs
        if p == 0:
            return z_id.new_zeros(())
        local = z_id[:, hc.id_global_dim:].view(z_id.shape[0], hc.n_anchors + 1, hc.id_local_dim)
        return (local[:, 0:2 * p:2] - local[:, 1:2 * p:2]).norm(dim=-1).mean()

    def weighted(self, terms: dict[str, Tensor]) -> Tensor:
        w = dataclasses.asdict(self.cfg.weights)
        corresp_scale = 0.25 if self.step > 0.25 * self.cfg.steps else 1.0
        total = sum(w[k] * v * (corresp_scale if k == "corresp" else 1.0) for k, v in terms.items())
        return total

    def train_step(self) -> dict[str, float]:
        self._decay_lr()
        heads = torch.randint(0, self.data.n_heads, (self.cfg.heads_per_step,), generator=self.rng)
        terms = self.losses(heads)
        loss = self.weighted(terms)
        self.opt_net.zero_grad(set_to_none=True)
        self.opt_codes.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.layer.parameters(), self.cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_([self.z_id, self.z_ex], self.cfg.grad_clip)
        self.opt_net.step()
        self.opt_codes.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["total"] = float(loss.detach())
        return out

    def _decay_lr(self) -> None:
        if any(self.step == int(f * self.cfg.steps) for f in self.cfg.lr_decay_at) and self.step > 0:
            for opt in (self.opt_net, self.opt_codes):
                for group in opt.param_groups:
                    group["lr"] *= 0.5



def export_head(trainer: HeadTrainer, path: Path, extra_meta: dict | None = None) -> Path:
    """Write the trained network and its code tables as a project checkpoint (:mod:`model.checkpoint`)."""
    meta = {"kind": "head", "train_config": trainer.cfg.to_dict(), "step": trainer.step,
            "anchor_vertices": trainer.anchor_idx.tolist(), "train_files": trainer.data.files,
            "units": "model units (1 cm = 0.04), see train/frame.py",
            "bbox_min": frame.BOX_MIN.tolist(), "bbox_max": frame.BOX_MAX.tolist()}
    meta.update(extra_meta or {})
    codes = {"z_id": trainer.z_id.detach().clone(), "z_ex": trainer.z_ex.detach().clone(),
             "identity_of_head": trainer.data.identity.clone(), "is_neutral": trainer.data.is_neutral.clone()}
    save_checkpoint(path, trainer.layer, codes, meta)
    return path


def build_trainer(cfg: HeadTrainConfig, kit: IctFaceKit | None = None) -> HeadTrainer:
    """Load the data and set up a fresh trainer (seeded)."""
    torch.manual_seed(cfg.seed)
    head_cfg = preset(cfg.preset)
    kit = kit or load_ict(cfg.ict_path or default_ict_path())
    anchor_idx = anchor_vertices(kit, head_cfg.n_symmetric_pairs, head_cfg.n_middle)
    data = load_training_heads(cfg.data_dir, kit, anchor_idx)
    return HeadTrainer(cfg, head_cfg, data, anchor_idx)


def train_head(cfg: HeadTrainConfig, kit: IctFaceKit | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume) the head model; returns where the checkpoint went and the last losses."""
    if cfg.steps < 1:
        raise InputError(f"steps must be >= 1, got {cfg.steps}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, kit)
    state_path = out_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        saved, now = json.loads(state["config"]), json.loads(json.dumps(cfg.to_dict()))
        saved.pop("steps"), now.pop("steps")  # a run may be extended; anything else must match
        if saved != now:
            raise InputError(f"{state_path}: saved by a run with another configuration; use a new --out folder")
        trainer.load_state_dict(state)
    (out_dir / "config.json").write_text(json.dumps({"train": cfg.to_dict(),
                                                     "head": trainer.head_cfg.to_dict()}, indent=2))
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    with tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc="head", unit="step") as bar:
        while trainer.step < cfg.steps:
            last = trainer.train_step()
            bar.update(1)
            if trainer.step % 20 == 0:
                bar.set_postfix(loss=f"{last['total']:.4f}", sdf=f"{last['surf_sdf']:.4f}")
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
                atomic_save(trainer.state_dict(), out_dir / STATE_FILE)
    seconds = time.perf_counter() - t0
    ckpt = export_head(trainer, out_dir / MODEL_FILE, {"train_seconds_this_run": seconds})
    if not math.isfinite(last.get("total", 0.0)):
        raise RuntimeError("training diverged (non-finite loss)")
    return TrainResult(checkpoint=ckpt, steps=trainer.step, seconds=seconds, final_losses=last)
