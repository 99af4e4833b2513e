"""Training the geometric encoders (E_n: camera normals, E_p: canonical point maps) on synthetic renders.

Losses (over the ground-truth head mask ``mask`` unless stated; weights in :class:`EncoderLossWeights`):

==============  ===========================================================================  ======
term            what                                                                          weight
==============  ===========================================================================  ======
``cosine``      normals: mean ``1 - <n_pred, n_gt>``                                          1.0
``normal_l1``   normals: mean ``|n_pred - n_gt|`` over the 3 channels                         1.0
``point_l1``    points: mean ``|p_pred - p_gt|`` over the 3 channels, model units             10.0
``mask``        binary cross-entropy of the mask logits against ``mask``, every pixel        0.5
==============  ===========================================================================  ======

(``point_l1`` x 10 puts a 1 mm = 0.004 unit error at the scale of a 2.3 degree normal error under the
cosine term.) Optimiser: AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient
clipping. The run is seeded (one ``torch.Generator`` draws batches and augmentations), writes its resolved
config to ``<out>/config.json``, checkpoints ``<out>/train_state.pt`` (``torch.save`` of state dicts and
tensors, loadable with ``weights_only=True``) every ``checkpoint_every`` steps and resumes from it, evaluates
on held-out renders every ``eval_every`` steps (``<out>/eval_log.jsonl``) and saves the final encoder as
``<out>/encoder.pt`` (:func:`model.vit.save_encoder`).
"""

from __future__ import annotations

import dataclasses
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

from model.checkpoint import atomic_save
from model.errors import InputError
from model.vit import EncoderConfig, EncoderOutput, GeometryEncoder, build_encoder, encoder_preset, save_encoder
from train.encoder_data import AugmentConfig, EncoderBatch, RenderSet, augment_batch, load_render_set
from train.encoder_eval import EncoderMetrics, evaluate_encoder

STATE_FILE = "train_state.pt"
MODEL_FILE = "encoder.pt"
EVAL_LOG = "eval_log.jsonl"


@dataclass(frozen=True)
class EncoderLossWeights:
    """Weights of the training terms (module docstring)."""

    cosine: float = 1.0
    normal_l1: float = 1.0
    point_l1: float = 10.0
    mask: float = 0.5


@dataclass(frozen=True)
class EncoderTrainConfig:
    """One training run of a geometric encoder."""

    data_dir: str
    """Renders folder (``nphm-train data renders``); trains on its ``train`` split."""
    out_dir: str
    """Where the encoder, the training state, the config and the evaluation log go."""
    target: str = "normals"
    """``"normals"`` (E_n) or ``"points"`` (E_p)."""
    preset: str = "default"
    """Encoder preset (:func:`model.vit.encoder_preset`); its ``image_size`` is the training resolution."""
    steps: int = 3000
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    """Linear warm-up from ``lr / warmup_steps`` to ``lr`` (clipped to ``steps // 5``)."""
    min_lr_ratio: float = 0.05
    """Cosine decay ends at ``min_lr_ratio * lr``."""
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 500
    """Held-out evaluation every this many steps (0: only at the end)."""
    eval_images: int = 64
    """Held-out images used by the periodic and final evaluation (the first ones of the split)."""
    max_train_images: Optional[int] = None
    """Use only the first this many training renders (None: all)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weights: EncoderLossWeights = field(default_factory=EncoderLossWeights)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise InputError(f"--steps and --batch-size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        encoder_preset(self.preset, self.target)  # validates preset and target

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def encoder_config(self) -> EncoderConfig:
        return encoder_preset(self.preset, self.target)


@dataclass
class EncoderTrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    final_losses: dict[str, float]
    metrics: Optional[EncoderMetrics]


def lr_at(step: int, cfg: EncoderTrainConfig) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then cosine decay."""
    warmup = max(1, min(cfg.warmup_steps, cfg.steps // 5))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def encoder_losses(out: EncoderOutput, batch: EncoderBatch, target: str) -> dict[str, Tensor]:
    """Unweighted loss terms (module docstring) of predictions ``out`` against ``batch``."""
    m = batch.mask.float()  # [B, H, W]
    n = m.sum().clamp_min(1.0)
    terms = {"mask": F.binary_cross_entropy_with_logits(out.mask_logits, m)}
    if target == "normals":
        cos = (out.normals * batch.target).sum(1)  # [B, H, W]
        terms["cosine"] = ((1.0 - cos) * m).sum() / n
        terms["normal_l1"] = ((out.normals - batch.target).abs().mean(1) * m).sum() / n
    else:
        terms["point_l1"] = ((out.points - batch.target).abs().mean(1) * m).sum() / n
    return terms


class EncoderTrainer:
    """Owns the encoder, the optimiser, the random generator and the step counter of one run."""

    def __init__(self, cfg: EncoderTrainConfig, data: RenderSet):
        if data.target != cfg.target:
            raise InputError(f"training data holds {data.target!r} maps but the run trains {cfg.target!r}")
        torch.manual_seed(cfg.seed)
        self.cfg, self.data = cfg, data
        self.encoder: GeometryEncoder = build_encoder(cfg.encoder_config())
        self.opt = torch.optim.AdamW(self.encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(0.9, 0.999))
        self.step = 0
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "rng": self.rng.get_state(), "config": json.dumps(self.cfg.to_dict())}

    def load_state_dict(self, s: dict) -> None:
        self.encoder.load_state_dict(s["encoder"])
        self.opt.load_state_dict(s["opt"])
        self.step = int(s["step"])
        self.rng.set_state(s["rng"])

    def next_batch(self) -> EncoderBatch:
        """A random augmented training batch (drawn from the trainer's generator)."""
        idx = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=self.rng)
        return augment_batch(self.data.batch(idx), self.cfg.augment, self.rng)

    def weighted(self, terms: dict[str, Tensor]) -> Tensor:
        w = dataclasses.asdict(self.cfg.weights)
        return sum(w[k] * v for k, v in terms.items())

    def train_step(self, batch: Optional[EncoderBatch] = None) -> dict[str, float]:
        """One optimisation step on ``batch`` (default: :meth:`next_batch`); returns the loss terms."""
        batch = batch if batch is not None else self.next_batch()
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        self.encoder.train()
        terms = self.losses(batch)
        loss = self.weighted(terms)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["total"] = float(loss.detach())
        return out

    def losses(self, batch: EncoderBatch) -> dict[str, Tensor]:
        return encoder_losses(self.encoder(batch.rgb), batch, self.cfg.target)



def _log_eval(out_dir: Path, step: int, metrics: EncoderMetrics, losses: dict[str, float]) -> None:
    with open(out_dir / EVAL_LOG, "a") as f:
        f.write(json.dumps({"step": step, "train_losses": losses, "heldout": metrics.to_dict()}) + "\n")


RESUMABLE_CHANGES = ("steps", "eval_every", "eval_images", "checkpoint_every")
"""Settings a resumed run may change (it may be extended or shortened: the learning-rate schedule follows
the new ``steps`` from the step it resumes at)."""


def _without_schedule(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def train_encoder(cfg: EncoderTrainConfig, progress: bool = True, train_data: Optional[RenderSet] = None,
                  heldout_data: Optional[RenderSet] = None) -> EncoderTrainResult:
    """Train (or resume) one encoder; returns the checkpoint path, last losses and held-out metrics.

    ``train_data`` / ``heldout_data`` may be given already loaded (otherwise read from ``cfg.data_dir`` at
    the preset's resolution; a dataset without held-out samples skips the evaluation).
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = cfg.encoder_config().image_size
    if train_data is None:
        train_data = load_render_set(cfg.data_dir, cfg.target, res, "train", cfg.max_train_images)
    if heldout_data is None and cfg.eval_images > 0:
        try:
            heldout_data = load_render_set(cfg.data_dir, cfg.target, res, "heldout", cfg.eval_images)
        except InputError:
            heldout_data = None  # no held-out samples in this folder
    trainer = EncoderTrainer(cfg, train_data)
    state_path = out_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        if _without_schedule(json.loads(state["config"])) != _without_schedule(json.loads(json.dumps(cfg.to_dict()))):
            raise InputError(f"{state_path}: saved by a run with another configuration; use a new --out folder")
        trainer.load_state_dict(state)
    (out_dir / "config.json").write_text(json.dumps({"train": cfg.to_dict(),
                                                     "encoder": trainer.encoder.cfg.to_dict()}, indent=2))
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    with tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc=f"encoder[{cfg.target}]",
              unit="step") as bar:
        while trainer.step < cfg.steps:
            last = trainer.train_step()
            if not math.isfinite(last["total"]):
                raise RuntimeError(f"training diverged at step {trainer.step} (non-finite loss)")
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()})
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
                atomic_save(trainer.state_dict(), out_dir / STATE_FILE)
            if heldout_data is not None and cfg.eval_every and trainer.step % cfg.eval_every == 0 \
                    and trainer.step < cfg.steps:
                _log_eval(out_dir, trainer.step, evaluate_encoder(trainer.encoder, heldout_data), last)
    seconds = time.perf_counter() - t0
    metrics = None
    if heldout_data is not None:
        metrics = evaluate_encoder(trainer.encoder, heldout_data)
        _log_eval(out_dir, trainer.step, metrics, last)
    meta = {"kind": f"encoder-{cfg.target}", "train_config": cfg.to_dict(), "step": trainer.step,
            "train_seconds_this_run": seconds, "train_images": len(train_data),
            "heldout": metrics.to_dict() if metrics is not None else None,
            "units": "normals: unit camera-space (OpenCV); points: model units (1 unit = 250 mm)"}
    ckpt = save_encoder(out_dir / MODEL_FILE, trainer.encoder, _plain(meta))
    return EncoderTrainResult(checkpoint=ckpt, steps=trainer.step, seconds=seconds, final_losses=last,
                              metrics=metrics)


def _plain(obj):
    """JSON round trip: tuples -> lists, inf/nan kept as floats, for checkpoint meta."""
    return json.loads(json.dumps(obj))
