"""Animations sampled from a head model: one identity moving through expressions the model has learnt.

This exercises the whole back end (head model -> fixed-topology mesh -> exporter) without a video: the
identity is the mean of the model's training identity codes, the neutral expression is the mean code of
its neutral training heads, and the animation interpolates smoothly (cosine ease) between expression
codes of randomly chosen training heads. Each frame's vertices are found by inverting the backward
deformation (:class:`model.topology.FixedTopology`), warm-started from the previous frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from exporters.base import ExportResult
from exporters.registry import open_writer, writer_class
from model.checkpoint import default_weights, load_checkpoint
from model.errors import InputError
from model.topology import FixedTopology


@dataclass(frozen=True)
class SampleConfig:
    """What :func:`sample_animation` makes."""

    frames: int = 50               # number of frames
    fps: float = 25.0              # frames per second of the output
    keyframes: int = 4             # training expressions visited (after the neutral start)
    resolution: int = 128          # marching-cubes resolution of the neutral mesh
    seed: int = 0                  # which training expressions are visited
    max_iter: int = 20             # Newton iterations per frame (warm-started)


def _expression_path(z_neutral: torch.Tensor, keys: torch.Tensor, n_frames: int) -> torch.Tensor:
    """``[n_frames, D]`` codes: neutral -> keys[0] -> ... -> keys[-1], cosine-eased, evenly timed."""
    stops = torch.cat([z_neutral[None], keys], 0)  # [K+1, D]
    t = torch.linspace(0, len(stops) - 1, n_frames)
    i = t.floor().clamp(max=len(stops) - 2).long()
    a = (1 - torch.cos(math.pi * (t - i))) / 2  # ease in/out
    return stops[i] * (1 - a[:, None]) + stops[i + 1] * a[:, None]


def sample_animation(out: str | os.PathLike, model: str | os.PathLike | None = None,
                     cfg: SampleConfig = SampleConfig(), progress: bool = True) -> ExportResult:
    """Write an animation of the model's mean identity through learnt expressions to ``out``.

    Args:
        out: output path; the format follows the extension (every format of :mod:`exporters`).
        model: head checkpoint (project format); default: the shipped ``model/weights/head_default.pt``.
    """
    if cfg.frames < 1:
        raise InputError(f"frames must be >= 1, got {cfg.frames}")
    writer_class(out)  # fail on an unknown extension before any work
    model_path = Path(model) if model is not None else default_weights("head_default")
    layer, codes, meta = load_checkpoint(model_path)
    if not {"z_id", "z_ex", "is_neutral"} <= set(codes):
        raise InputError(f"{model_path}: needs the training code tables z_id, z_ex and is_neutral")
    z_id = codes["z_id"].mean(0, keepdim=True)  # [1, D_id]
    neutral = codes["is_neutral"].bool()
    z_neutral = codes["z_ex"][neutral].mean(0) if neutral.any() else torch.zeros(layer.cfg.expr_dim)
    g = torch.Generator().manual_seed(cfg.seed)
    expressive = torch.nonzero(~neutral).flatten()
    pick = expressive[torch.randperm(len(expressive), generator=g)[:cfg.keyframes]]
    path = _expression_path(z_neutral, codes["z_ex"][pick], cfg.frames)  # [T, D_ex]
    lo, hi = meta.get("bbox_min", [-0.55, -0.5, -0.95]), meta.get("bbox_max", [0.55, 0.75, 0.4])
    with torch.no_grad():
        topo = FixedTopology.extract(layer, z_id, z_neutral[None], lo, hi, cfg.resolution)
    faces = topo.faces.numpy()
    x_prev = None
    unconverged = 0
    with open_writer(out, faces, len(topo.canonical_vertices), cfg.fps) as writer:
        for z_ex in tqdm(path, desc="frames", unit="frame", disable=not progress):
            res = topo.posed_vertices(layer, z_id, z_ex[None], x_init=x_prev, max_iter=cfg.max_iter)
            x_prev = res.x.detach()
            unconverged += int((~res.converged).sum())
            writer.append(x_prev[0].numpy().astype(np.float32))
    result = writer.result
    if unconverged:
        total = cfg.frames * len(topo.canonical_vertices)
        print(f"note: {unconverged} of {total} vertex-frames ({100 * unconverged / total:.3f} %) did not reach the "
              "inversion tolerance (kept at their best iterate)")
    return result
