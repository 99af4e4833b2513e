"""Per-render code targets for the regressor: the head model's codes of each training render's ground truth.

Pix2NPHM supervises its regressor through the SDF only (supervising codes "did not converge" for the
authors, whose targets were codes registered to scans). Trained that way on this project's CPU budget,
the regressor learned no image dependence at all (the same code for every image; README "Measured").
A direct code term gives it a signal per image, so here every training render gets target codes:
``(z_id, z_ex)`` fitted with the frozen head model to the render's ground-truth near-surface SDF samples
(:mod:`train.regressor_data`, the same points the 3D loss uses), by Adam on

    mean_x |SDF(x; z_id, z_ex) - sdf_gt(x)|  +  prior * mean(((z - mean) / std)^2)

(the prior whitened by the head model's training codes, :class:`model.codes.CodeStatistics`),
starting from the mean identity code and the mean neutral expression code, many renders at once (each
with its own codes; the network is shared and frozen). This is Pix2NPHM's registration (its Eq. 11, also
:mod:`train.registration`) against the SDF samples instead of surface points.

The result is cached in one npz per (renders, head, settings) with a ``done`` mask, written after each
chunk of renders, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.codes import CodeStatistics
from model.errors import InputError
from model.head import HeadLayer
from train.registration import frozen_parameters


@dataclass(frozen=True)
class CodeFitConfig:
    """How the codes of each render are fitted (module docstring)."""

    steps: int = 150
    """Adam steps per chunk of renders."""
    lr: float = 1e-2
    """Adam learning rate; divided by 5 after 60 % of the steps."""
    points_per_step: int = 256
    """Near-surface points drawn per render and step (of the cached pool)."""
    chunk: int = 50
    """Renders fitted together (one batched head evaluation per step)."""
    prior: float = 1e-4
    """Weight of the whitened code prior (keeps the codes in the training distribution)."""
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class CodeTargets:
    """Fitted codes of ``M`` renders (index ``i`` = render ``i`` of the regressor set)."""

    z_id: Tensor  # [M, D_id]
    z_ex: Tensor  # [M, D_ex]
    sdf_l1: Tensor  # [M] mean |SDF - sdf_gt| at the end, model units (on a fixed subset of the pool)
    seconds: float


def fit_codes(layer: HeadLayer, near: Tensor, near_sdf: Tensor, stats: CodeStatistics, cfg: CodeFitConfig,
              generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Fit codes to ``B`` ground truths given as SDF samples ``near [B, N, 3]``, ``near_sdf [B, N]``.

    The network is frozen (its ``requires_grad`` flags are restored afterwards). Returns ``z_id [B, D_id]``,
    ``z_ex [B, D_ex]`` and the final mean absolute SDF error ``[B]`` (model units) on the first
    ``min(N, 1024)`` samples.
    """
    if near.ndim != 3 or near.shape[-1] != 3 or near_sdf.shape != near.shape[:2]:
        raise InputError(f"near / near_sdf: expected [B, N, 3] and [B, N], got {tuple(near.shape)} and "
                         f"{tuple(near_sdf.shape)}")
    B, N = near.shape[:2]
    g = generator or torch.Generator().manual_seed(cfg.seed)
    z_id = stats.id_mean.expand(B, -1).clone().requires_grad_(True)
    z_ex = stats.ex_start.expand(B, -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([z_id, z_ex], lr=cfg.lr)
    rows = torch.arange(B)[:, None]
    with frozen_parameters(layer):
        for step in range(cfg.steps):
            idx = torch.randint(0, N, (B, min(cfg.points_per_step, N)), generator=g)  # [B, P]
            sdf = layer(near[rows, idx], z_id, z_ex).sdf  # [B, P]
            err = (sdf - near_sdf[rows, idx]).abs().mean(-1)  # [B]
            loss = (err + cfg.prior * stats.whitened_square(z_id, z_ex)).sum()  # sum: each render its own
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step == int(0.6 * cfg.steps):
                for group in opt.param_groups:
                    group["lr"] *= 0.2
    with torch.no_grad():
        m = min(N, 1024)
        final = (layer(near[:, :m], z_id, z_ex).sdf - near_sdf[:, :m]).abs().mean(-1)
    return z_id.detach(), z_ex.detach(), final


def code_targets(layer: HeadLayer, codes: dict[str, Tensor], near: Tensor, near_sdf: Tensor, cache: Path,
                 cfg: CodeFitConfig = CodeFitConfig(), tag: str = "", progress: bool = True) -> CodeTargets:
    """Codes of every render (``near [M, N, 3]``, ``near_sdf [M, N]``), fitted chunk by chunk (module
    docstring) and cached in ``cache`` (an npz; resumed when it exists for the same ``cfg`` and ``tag``,
    e.g. the head checkpoint's and the renders' identity)."""
    stats = CodeStatistics.of(codes)
    M = near.shape[0]
    spec = json.dumps({"cfg": asdict(cfg), "tag": tag, "M": M})
    z_id = torch.zeros(M, stats.id_mean.shape[0])
    z_ex = torch.zeros(M, stats.ex_mean.shape[0])
    err = torch.zeros(M)
    done = np.zeros(M, bool)
    seconds = 0.0
    if cache.is_file():
        with np.load(cache) as c:
            if str(c["spec"]) == spec:
                z_id, z_ex = torch.from_numpy(c["z_id"]), torch.from_numpy(c["z_ex"])
                err, done, seconds = torch.from_numpy(c["sdf_l1"]), c["done"].copy(), float(c["seconds"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    starts = [s for s in range(0, M, cfg.chunk) if not done[s:s + cfg.chunk].all()]
    for s in tqdm(starts, desc="code targets", unit="chunk", disable=not progress):
        t0 = time.perf_counter()
        e = min(M, s + cfg.chunk)
        g = torch.Generator().manual_seed(cfg.seed * 100003 + s)
        zi, ze, fe = fit_codes(layer, near[s:e], near_sdf[s:e], stats, cfg, g)
        z_id[s:e], z_ex[s:e], err[s:e] = zi, ze, fe
        done[s:e] = True
        seconds += time.perf_counter() - t0
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, z_id=z_id.numpy(), z_ex=z_ex.numpy(), sdf_l1=err.numpy(), done=done, spec=spec,
                 seconds=seconds)
        tmp.replace(cache)
    return CodeTargets(z_id=z_id, z_ex=z_ex, sdf_l1=err, seconds=seconds)
