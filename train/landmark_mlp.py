"""The training loop shared by the per-frame landmark readers (the ARKit regressor, the identity prior): an
MLP on one face's detected landmarks, regressed to per-sample targets with AdamW, a cosine schedule and
pixel jitter on the inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from model.errors import InputError


@dataclass
class LandmarkMlpTrainConfig:
    """Settings every landmark reader's training shares (:func:`fit_landmark_mlp` and its data)."""

    data_dir: str
    out_path: str
    extra_data: tuple[str, ...] = ()
    """More sample folders; the held-out samples are the last of ``data_dir``."""
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    jitter_px: float = 0.5
    heldout: int = 500
    hidden: int = 512
    layers: int = 3
    seed: int = 0


def split_heldout(landmarks: Tensor, targets: Tensor, heldout: int, batch_size: int, source: str
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_landmarks, train_targets, heldout_landmarks, heldout_targets)``: the last ``heldout`` samples
    are held out; :class:`InputError` naming ``source`` when too few remain for a batch."""
    if len(landmarks) <= heldout + batch_size:
        raise InputError(f"{source}: {len(landmarks)} samples is too few for {heldout} held out")
    return landmarks[:-heldout], targets[:-heldout], landmarks[-heldout:], targets[-heldout:]


def fit_landmark_mlp(model: nn.Module, landmarks: Tensor, targets: Tensor, steps: int, batch_size: int, lr: float,
                     weight_decay: float, jitter_px: float, seed: int, report_every: int,
                     report: Callable[[], object], log: Callable[[str], None] = print) -> float:
    """Train ``model`` (``[B, L, 2]`` pixels -> ``[B, K]``) on ``landmarks [N, L, 2]`` and ``targets [N, K]``
    by mean squared error; every ``report_every`` steps and at the end, log the train loss and ``report()``
    (called in eval mode without gradients). Returns the last batch's loss; the model is left in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.02 * lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(landmarks), (batch_size,), generator=g)
        x = landmarks[idx] + jitter_px * torch.randn(landmarks[idx].shape, generator=g)
        loss = (model(x) - targets[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % report_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                rep = report()
            model.train()
            log(f"step {step}: train MSE {loss.item():.4f}; held out {rep}")
    model.eval()
    return loss.item()
