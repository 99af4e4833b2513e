"""Training the Pix2NPHM regressor (:mod:`model.regressor`) on synthetic renders, encoders and head frozen.

Per step, a batch of renders (:mod:`train.regressor_data`) goes through the two frozen geometric encoders
(tokens of the render's RGB at the encoders' input size, no gradients; computed once per render and kept
in memory with ``cache_tokens``), the regressor predicts
``z_id, z_ex``, and the frozen head model (:class:`model.head.HeadLayer`) evaluates them. The objective
follows Pix2NPHM (its weights; supervising the codes directly did not converge for the authors):

==============  ==============================================================================  =======
term            what                                                                            weight
==============  ==============================================================================  =======
``sdf_3d``      mean ``|SDF(x; z_id, z_ex) - sdf_gt(x)|`` at near-surface points ``x`` of the   10
                ground-truth ICT head (exact SDF of its outer surface, model units)
``normal_2d``   mean ``1 - <n_pred, n_gt>`` over sampled face pixels whose ray hits the         1
                predicted head; ``n_pred`` from :func:`model.render.render_normals` (sphere
                tracing, then a differentiable normal) with the render's camera
``reg``         mean over the batch of ``|z_id|^2 + |z_ex|^2``                                  1e-4
``prior``       mean squared code whitened by the training codes' mean and std (ours; see        1e-2
                :class:`RegressorLossWeights`)
``code``        mean squared whitened difference between the predicted codes and the render's     0
                code targets (ours, off by default: :mod:`train.code_targets`, codes fitted to
                its ground truth)
==============  ==============================================================================  =======

With ``normal_2d = 0`` no normals are rendered (a step is then several times faster).

Sampled face pixels whose ray misses the predicted head get no normal loss (the 3D term pulls the
surface there). Optimiser: Adam at 1e-4 (as the paper), gradient clipping. The run is seeded (one
``torch.Generator`` draws batches, pixels and points), writes its resolved config to
``<out>/config.json``, checkpoints ``<out>/train_state.pt`` (loadable with ``weights_only=True``) every
``checkpoint_every`` steps and resumes from it, and saves the final regressor as ``<out>/regressor.pt``
(:func:`model.regressor.save_regressor`). The regressor's output statistics are set from the head
checkpoint's code tables, so training starts from the mean training head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from model.checkpoint import atomic_save, load_checkpoint
from model.codes import whitened_mean_square
from model.errors import InputError
from model.head import HeadLayer
from model.regressor import Regressor, RegressorOutput, regressor_preset, save_regressor
from model.render import TraceConfig, render_normals
from model.vit import GeometryEncoder, load_encoder
from train import frame
from train.code_targets import CodeFitConfig, CodeTargets, code_targets
from train.ict import IctFaceKit, default_ict_path, load_ict
from train.metrics import MM_PER_UNIT
from train.regressor_data import RegressorBatch, RegressorDataConfig, RegressorSet, load_regressor_set

STATE_FILE = "train_state.pt"
MODEL_FILE = "regressor.pt"


@dataclass(frozen=True)
class RegressorLossWeights:
    """Weights of the training terms (module docstring; Pix2NPHM's lambda_3D, lambda_2D, lambda_reg)."""

    sdf_3d: float = 10.0
    normal_2d: float = 1.0
    reg: float = 1e-4
    prior: float = 1e-2
    """Weight of the code prior: mean squared code, whitened by the head model's training-code statistics
    (about 1 for codes like the training codes). Added after the first shipped regressor, trained with
    ``prior = 0`` (the paper's terms only), drifted to one constant code about 20 standard deviations out
    (see ``model/weights/regressor_default.json``); ``reg`` alone (1e-4 on |z|^2) is too weak at this
    model's code scale."""
    code: float = 0.0
    """Weight of the direct code term against per-render code targets (:mod:`train.code_targets`); 0 (the
    paper's terms only, as the shipped regressor was trained) skips fitting the targets. Added because the
    paper's terms alone taught the regressor no image dependence here; measured (README "Measured"):
    with ``code = 1`` it did not learn any either in 1,357 steps (the loss stayed at the constant
    predictor's), so it is not the default."""


@dataclass(frozen=True)
class RegressorTrainConfig:
    """One training run of the regressor."""

    renders_dir: str
    """Folder written by ``nphm-train data renders`` (trains on its train split)."""
    head: str
    """Head-model checkpoint (:func:`model.checkpoint.load_checkpoint`); its code tables set the output mean."""
    normal_encoder: str
    """Normal encoder checkpoint (:func:`model.vit.load_encoder`, target ``normals``)."""
    point_encoder: str
    """Point-map encoder checkpoint (target ``points``)."""
    out_dir: str
    """Where the checkpoint, the training state, the config and the SDF cache go."""
    preset: str = "default"
    """Regressor preset (:func:`model.regressor.regressor_preset`)."""
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-4
    grad_clip: float = 1.0
    n_points: int = 512
    """Near-surface points per render and step (3D loss)."""
    n_pixels: int = 128
    """Face pixels per render and step (2D loss); sphere tracing cost grows with it."""
    data: RegressorDataConfig = field(default_factory=RegressorDataConfig)
    """What is precomputed per render (``image_size`` is overridden by the encoders')."""
    trace: TraceConfig = field(default_factory=TraceConfig)
    """Sphere-tracing settings of the 2D loss."""
    weights: RegressorLossWeights = field(default_factory=RegressorLossWeights)
    seed: int = 0
    checkpoint_every: int = 200
    cache_tokens: bool = True
    """Encode every training render once (float16 tokens in memory, ``2 * T * C * 2`` bytes per render:
    0.2 MB at the default encoders) instead of at every step: the encoders are frozen and the images are
    not augmented, so this only saves time (about 20 % of a default step)."""
    max_items: Optional[int] = None
    """Use only the first N training renders."""
    code_fit: CodeFitConfig = field(default_factory=CodeFitConfig)
    """How the per-render code targets are fitted (used when ``weights.code > 0``; cached in
    ``<out>/code_targets.npz``)."""
    ict_path: Optional[str] = None
    """ICT-FaceKit npz or FaceXModel folder (default: :func:`train.ict.default_ict_path`)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def code_prior(regressor: Regressor, z_id: Tensor, z_ex: Tensor) -> Tensor:
    """Mean over the batch of the mean squared code ``[B, D]`` whitened by the regressor's code statistics
    (the head model's training codes): about 1 for codes like the training codes."""
    return code_distance(regressor, z_id, z_ex, regressor.id_mean, regressor.ex_mean)


def code_distance(regressor: Regressor, z_id: Tensor, z_ex: Tensor, ref_id: Tensor, ref_ex: Tensor) -> Tensor:
    """Mean over the batch of the mean squared difference of codes ``[B, D]`` from ``ref_*`` (``[D]`` or
    ``[B, D]``), whitened by the regressor's code statistics, identity plus expression."""
    return (whitened_mean_square(z_id, ref_id, regressor.id_scale)
            + whitened_mean_square(z_ex, ref_ex, regressor.ex_scale)).mean()


@dataclass
class RegressorTrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    final_losses: dict[str, float]


class RegressorTrainer:
    """Owns the regressor, its optimiser, the frozen encoders and head, and the data of one run."""

    def __init__(self, cfg: RegressorTrainConfig, head: HeadLayer, head_codes: dict[str, Tensor],
                 normal_encoder: GeometryEncoder, point_encoder: GeometryEncoder, data: RegressorSet,
                 targets: Optional[CodeTargets] = None):
        if normal_encoder.cfg.target != "normals" or point_encoder.cfg.target != "points":
            raise InputError("encoders: expected a normals encoder and a points encoder, got "
                             f"{normal_encoder.cfg.target!r} and {point_encoder.cfg.target!r}")
        if cfg.weights.code > 0 and (targets is None or targets.z_id.shape[0] != len(data)):
            raise InputError(f"code term (weight {cfg.weights.code}): needs code targets for all {len(data)} renders")
        self.cfg, self.data, self.targets = cfg, data, targets
        self.head, self.enc_n, self.enc_p = head.eval(), normal_encoder.eval(), point_encoder.eval()
        for m in (self.head, self.enc_n, self.enc_p):
            for p in m.parameters():
                p.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        rcfg = regressor_preset(cfg.preset, head.cfg, normal_encoder.cfg, point_encoder.cfg)
        self.regressor = Regressor(rcfg)
        if "z_id" in head_codes and "z_ex" in head_codes:
            self.regressor.set_code_statistics(head_codes["z_id"], head_codes["z_ex"])
        self.opt = torch.optim.Adam(self.regressor.parameters(), lr=cfg.lr)
        self.step = 0
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.tokens: Optional[tuple[Tensor, Tensor]] = None  # [M, T_n, C_n], [M, T_p, C_p] float16
        if cfg.cache_tokens:
            chunks = [self.encode(self.data.rgb[i:i + 16].float() / 255.0) for i in range(0, len(data), 16)]
            self.tokens = (torch.cat([c[0] for c in chunks]).half(), torch.cat([c[1] for c in chunks]).half())

    # --- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"regressor": self.regressor.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "rng": self.rng.get_state(), "config": json.dumps(self.cfg.to_dict())}

    def load_state_dict(self, s: dict) -> None:
        self.regressor.load_state_dict(s["regressor"])
        self.opt.load_state_dict(s["opt"])
        self.step = int(s["step"])
        self.rng.set_state(s["rng"])

    # --- forward ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen encoders' tokens of images ``[B, 3, S, S]`` in [0, 1] (resized to each encoder's size)."""
        out = []
        for enc in (self.enc_n, self.enc_p):
            s = enc.cfg.image_size
            img = rgb if rgb.shape[-1] == s and rgb.shape[-2] == s else \
                F.interpolate(rgb, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            out.append(enc.encode(img))
        return out[0], out[1]

    def predict(self, rgb: Tensor) -> RegressorOutput:
        return self.regressor(*self.encode(rgb))

    def losses(self, batch: RegressorBatch) -> dict[str, Tensor]:
        """Every term (module docstring) for one batch; differentiable w.r.t. the regressor."""
        if self.tokens is not None and batch.index is not None:
            codes = self.regressor(self.tokens[0][batch.index].float(), self.tokens[1][batch.index].float())
        else:
            codes = self.predict(batch.rgb)
        z_id, z_ex = codes.z_id, codes.z_ex  # [B, D_id], [B, D_ex]
        sdf = self.head(batch.near, z_id, z_ex).sdf  # [B, N]
        sdf_3d = (sdf - batch.near_sdf).abs().mean()
        if self.cfg.weights.normal_2d > 0:
            ren = render_normals(lambda x: self.head(x, z_id, z_ex).sdf, batch.K, batch.R, batch.t, batch.pixels,
                                 frame.BOX_MIN.tolist(), frame.BOX_MAX.tolist(), self.cfg.trace)
            use = ren.hit & batch.pixel_valid  # [B, P]
            cos = (ren.normals * batch.normals).sum(-1)  # [B, P]
            normal_2d = (1.0 - cos)[use].mean() if bool(use.any()) else ren.normals.sum() * 0.0
            hit = use.float().sum() / batch.pixel_valid.float().sum().clamp_min(1.0)
        else:  # not rendered
            normal_2d, hit = sdf.new_zeros(()), sdf.new_full((), float("nan"))
        reg = (z_id.square().sum(-1) + z_ex.square().sum(-1)).mean()
        prior = code_prior(self.regressor, z_id, z_ex)
        terms = {"sdf_3d": sdf_3d, "normal_2d": normal_2d, "reg": reg, "prior": prior, "hit_fraction": hit}
        if self.targets is not None and batch.index is not None:
            i = batch.index
            terms["code"] = code_distance(self.regressor, z_id, z_ex, self.targets.z_id[i], self.targets.z_ex[i])
        else:
            terms["code"] = sdf.new_zeros(())
        return terms

    def weighted(self, terms: dict[str, Tensor]) -> Tensor:
        w = self.cfg.weights
        return (w.sdf_3d * terms["sdf_3d"] + w.normal_2d * terms["normal_2d"] + w.reg * terms["reg"]
                + w.prior * terms["prior"] + w.code * terms["code"])

    def sample_batch(self) -> RegressorBatch:
        index = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=self.rng)
        return self.data.batch(index, self.rng, self.cfg.n_pixels, self.cfg.n_points)

    def train_step(self, batch: Optional[RegressorBatch] = None) -> dict[str, float]:
        """One optimiser step on ``batch`` (default: a fresh random batch); returns the terms as floats."""
        self.regressor.train()
        batch = batch if batch is not None else self.sample_batch()
        terms = self.losses(batch)
        loss = self.weighted(terms)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.regressor.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["total"] = float(loss.detach())
        return out



def build_regressor_trainer(cfg: RegressorTrainConfig, kit: Optional[IctFaceKit] = None,
                            progress: bool = True) -> RegressorTrainer:
    """Load the head, the encoders and the data (SDF cache in ``<out>/sdf_cache``) and set up a seeded trainer.

    The trainer's config is ``cfg`` resolved: ``data.image_size`` set to the normal encoder's input size."""
    head, codes, _ = load_checkpoint(cfg.head)
    enc_n, _ = load_encoder(cfg.normal_encoder)
    enc_p, _ = load_encoder(cfg.point_encoder)
    kit = kit or load_ict(cfg.ict_path or default_ict_path())
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=enc_n.cfg.image_size))
    data = load_regressor_set(cfg.renders_dir, kit, cfg.data, Path(cfg.out_dir) / "sdf_cache", "train",
                              cfg.max_items, progress)
    targets = None
    if cfg.weights.code > 0:
        tag = hashlib.sha1(Path(cfg.head).read_bytes() + json.dumps(data.files).encode()).hexdigest()[:12]
        targets = code_targets(head, codes, data.near, data.near_sdf, Path(cfg.out_dir) / "code_targets.npz",
                               cfg.code_fit, tag, progress)
        if progress:
            tqdm.write(f"code targets: {len(data)} renders, mean |SDF - ground truth| "
                       f"{float(targets.sdf_l1.mean()) * MM_PER_UNIT:.2f} mm, "
                       f"{targets.seconds:.0f} s of fitting")
    return RegressorTrainer(cfg, head, codes, enc_n, enc_p, data, targets)


def train_regressor(cfg: RegressorTrainConfig, kit: Optional[IctFaceKit] = None,
                    progress: bool = True) -> RegressorTrainResult:
    """Train (or resume) the regressor; returns where the checkpoint went and the last losses."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.n_points < 1 or cfg.n_pixels < 1:
        raise InputError("steps, batch_size, n_points and n_pixels must be >= 1")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_regressor_trainer(cfg, kit, progress)
    cfg = trainer.cfg  # resolved (the data's image size is the encoders')
    state_path = out_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        saved, now = json.loads(state["config"]), json.loads(json.dumps(cfg.to_dict()))
        saved.pop("steps"), now.pop("steps")  # a run may be extended; anything else must match
        if saved != now:
            raise InputError(f"{state_path}: saved by a run with another configuration; use a new --out folder")
        trainer.load_state_dict(state)
    (out_dir / "config.json").write_text(json.dumps({"train": cfg.to_dict(),
                                                     "regressor": trainer.regressor.cfg.to_dict()}, indent=2))
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    with tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc="regressor", unit="step") as bar:
        while trainer.step < cfg.steps:
            last = trainer.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{last['total']:.4f}", sdf=f"{last['sdf_3d']:.4f}", cos=f"{last['normal_2d']:.3f}",
                            code=f"{last['code']:.3f}")
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
                atomic_save(trainer.state_dict(), out_dir / STATE_FILE)
    seconds = time.perf_counter() - t0
    meta = {"kind": "regressor", "train_config": cfg.to_dict(), "step": trainer.step,
            "train_seconds_this_run": seconds, "train_files": trainer.data.files,
            "head_config": trainer.head.cfg.to_dict(), "normal_encoder_config": trainer.enc_n.cfg.to_dict(),
            "point_encoder_config": trainer.enc_p.cfg.to_dict(), "final_losses": last}
    ckpt = save_regressor(out_dir / MODEL_FILE, trainer.regressor, meta)
    if last and not math.isfinite(last["total"]):
        raise RuntimeError("training diverged (non-finite loss)")
    return RegressorTrainResult(checkpoint=ckpt, steps=trainer.step, seconds=seconds, final_losses=last)
