"""Animations sampled from a head model: one identity moving through expressions the model has learnt.

This exercises the whole back end (head model -> fixed-topology mesh -> exporter) without a video: the
identity is the mean of the model's training identity codes, the neutral expression is the mean code of
its neutral training heads, and the animation interpolates smoothly (cosine ease) between expression
codes of randomly chosen training heads. Each frame's vertices are found by inverting the backward
deformation (:class:`tracker.bake.Baker`), warm-started from the previous frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from exporters.base import ExportResult
from exporters.registry import open_writer, writer_class
from model.checkpoint import default_weights, load_checkpoint
from model.errors import InputError
from model.forward_deformation import forward_for_head
from tracker.bake import Baker, head_bbox, neutral_expression


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
    z_neutral = neutral_expression(codes, layer.cfg.expr_dim)  # [D_ex]
    g = torch.Generator().manual_seed(cfg.seed)
    expressive = torch.nonzero(~codes["is_neutral"].bool()).flatten()
    pick = expressive[torch.randperm(len(expressive), generator=g)[:cfg.keyframes]]
    path = _expression_path(z_neutral, codes["z_ex"][pick], cfg.frames)  # [T, D_ex]
    baker = Baker(layer, z_id, z_neutral[None], *head_bbox(meta), resolution=cfg.resolution, max_iter=cfg.max_iter,
                  forward=forward_for_head(model))
    with open_writer(out, baker.faces, baker.n_vertices, cfg.fps) as writer:
        for z_ex in tqdm(path, desc="frames", unit="frame", disable=not progress):
            writer.append(baker.vertices(z_ex[None]))
    result = writer.result
    note = baker.note()
    if note:
        print(note)
    return result
