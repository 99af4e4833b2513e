"""The forward deformation (canonical -> posed) of a head: how the tracker poses landmarks and the baked mesh.

The head model's deformation is backward (posed -> canonical, MonoNPHM): posing a canonical point means
solving ``x + offsets(x, z) = x_c``. Where the expression opens a gap that equation has several roots: with
the mouth open, posed points *inside the gap* also map near the lips' meeting line, so a solver started at
the canonical point (lips together) stops at a root with the mouth nearly shut. Measured on the base head at
its own training codes (``tests/benchmarks/bench_expression_capacity.py --head <base> --no-forward``): the
inner lips (MediaPipe 13-14) showed 0.11 of the true opening; started at the true posed landmarks, the same
solver kept 0.98-0.99 of it on the wide-open heads. Closed eyelids have the same shape of problem.

:class:`ForwardDeformation` predicts the posed position of a canonical point from the *same* conditioning
vector as the backward network (``DeformationMLP.condition(z_id, z_ex, anchors)``: the compressed identity
and the expression code), so it is tied to the head's codes and canonical space; it is trained by
``nphm-train forward-deformation`` on the exact ICT-FaceKit correspondences of the head's training heads.
Two uses:

- :func:`forward_posed`: the posed point is the forward pass itself (the tracker's default posing: one
  answer at the lips and lids, a smooth function of the codes, and one network pass instead of an
  iterative inversion);
- :func:`posed_start`: the start of the backward field's inversion (``posing="inverse"``), which then
  converges to the root near the forward prediction.

Architecture: ``offset = MLP([gamma(x_c), cond])`` with Fourier features ``gamma`` of the canonical position
(``n_frequencies`` octaves from ``base_frequency`` radians per model unit; the lips are 3 mm = 0.012 units
apart in canonical space, so the features must resolve that), ``layers`` hidden layers of ``hidden`` ReLU
units. Units: model units (1 unit = 250 mm), the head's canonical frame (:mod:`train.frame`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from model.errors import InputError

FORMAT = "nphm-track.forward-deformation"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ForwardDeformationConfig:
    """Sizes of :class:`ForwardDeformation`; ``cond_dim`` must equal the head's conditioning width
    (``id_compressed_dim + expr_dim``)."""

    cond_dim: int = 80
    hidden: int = 128
    layers: int = 4
    n_frequencies: int = 7
    base_frequency: float = math.pi
    output_scale: float = 0.04
    """The network's raw output is in units of this many model units (0.04 = 1 cm), so its weights train at
    the scale of the motion."""

    def __post_init__(self) -> None:
        if min(self.cond_dim, self.hidden, self.layers) < 1 or self.n_frequencies < 0 or self.base_frequency <= 0:
            raise InputError(f"ForwardDeformationConfig: sizes must be positive, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ForwardDeformation(nn.Module):
    """Canonical points ``[B, N, 3]`` and conditioning ``[B, C]`` -> posed offsets ``[B, N, 3]`` (model units)."""

    def __init__(self, cfg: ForwardDeformationConfig):
        super().__init__()
        self.cfg = cfg
        freqs = cfg.base_frequency * 2.0 ** torch.arange(cfg.n_frequencies, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)  # [F]
        d_in = 3 + 6 * cfg.n_frequencies + cfg.cond_dim
        dims = [d_in] + [cfg.hidden] * cfg.layers
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.out = nn.Linear(cfg.hidden, 3)
        nn.init.zeros_(self.out.weight)  # starts as the identity map (offsets 0)
        nn.init.zeros_(self.out.bias)

    def encode(self, x: Tensor) -> Tensor:
        """``[..., 3] -> [..., 3 + 6F]``: the position and its sines and cosines."""
        a = (x[..., None] * self.freqs).flatten(-2)  # [..., 3F]
        return torch.cat([x, torch.sin(a), torch.cos(a)], -1)

    def forward(self, x_canonical: Tensor, cond: Tensor) -> Tensor:
        if x_canonical.dim() != 3 or x_canonical.shape[-1] != 3:
            raise InputError(f"x_canonical must be [B, N, 3], got {tuple(x_canonical.shape)}")
        if cond.dim() != 2 or cond.shape[-1] != self.cfg.cond_dim or len(cond) != len(x_canonical):
            raise InputError(f"cond must be [B={len(x_canonical)}, {self.cfg.cond_dim}], got {tuple(cond.shape)}")
        h = torch.cat([self.encode(x_canonical), cond[:, None].expand(-1, x_canonical.shape[1], -1)], -1)
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.out(h) * self.cfg.output_scale


    def forward_with_tangents(self, x: Tensor, cond: Tensor, x_dirs: Optional[Tensor], cond_dirs: Optional[Tensor]
                              ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` (one batch) plus its directional derivatives, by forward-mode propagation.

        Args:
            x: ``[N, 3]`` canonical points; cond: ``[C]``.
            x_dirs: ``[T, N, 3]`` tangents of the points (or ``None``: zero); cond_dirs: ``[T, C]`` tangents
                of the conditioning (or ``None``: zero). At least one is given; ``T`` is shared.
        Returns:
            ``(offsets [N, 3], tangents [T, N, 3])``: the offsets and their derivatives along each of the
            ``T`` joint directions. Not meant for autograd through the tangents.
        """
        if x_dirs is None and cond_dirs is None:
            raise InputError("forward_with_tangents: give x_dirs or cond_dirs")
        a = (x[..., None] * self.freqs).flatten(-2)  # [N, 3F]
        enc = torch.cat([x, torch.sin(a), torch.cos(a)], -1)
        F = len(self.freqs)
        T = len(x_dirs) if x_dirs is not None else len(cond_dirs)
        d_in = 3 + 6 * F
        w0 = self.layers[0].weight
        h = enc @ w0[:, :d_in].T + (cond @ w0[:, d_in:].T + self.layers[0].bias)
        t = torch.zeros(T, 1, w0.shape[0]) if x_dirs is None else None
        if x_dirs is not None:
            da = (x_dirs[..., None] * self.freqs).flatten(-2)  # [T, N, 3F]
            denc = torch.cat([x_dirs, torch.cos(a) * da, -torch.sin(a) * da], -1)  # [T, N, d_in]
            t = denc @ w0[:, :d_in].T
        if cond_dirs is not None:
            t = t + (cond_dirs @ w0[:, d_in:].T)[:, None, :]
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = layer(h)
                t = t @ layer.weight.T
            mask = (h > 0).to(h.dtype)
            h = torch.relu(h)
            t = t * mask
        s = self.cfg.output_scale
        return self.out(h) * s, (t @ self.out.weight.T) * s


def head_condition(layer: Any, z_id: Tensor, z_ex: Tensor) -> Tensor:
    """``[B, C]`` the backward network's conditioning of codes ``z_id [B, D_id]``, ``z_ex [B, D_ex]``."""
    return layer.deformation.condition(z_id, z_ex, layer.anchors(z_id))


POSINGS = ("forward", "inverse")
"""How a head's canonical points are posed: by its forward deformation, or by inverting its backward field."""


def resolve_posing(posing: Optional[str], forward: Optional[ForwardDeformation]) -> str:
    """``posing`` checked against the forward model at hand; ``None``: ``"forward"`` when there is one."""
    if posing is None:
        return "forward" if forward is not None else "inverse"
    if posing not in POSINGS or (posing == "forward" and forward is None):
        raise InputError(f"posing must be 'inverse', or 'forward' with a forward deformation; got {posing!r}")
    return posing


def posed_start(forward: Optional[ForwardDeformation], layer: Any, x_canonical: Tensor, z_id: Tensor,
                z_ex: Tensor) -> Tensor:
    """Start points ``[B, N, 3]`` for inverting the backward field at canonical points ``[B, N, 3]``: the
    forward prediction, or the canonical points themselves when there is no forward model."""
    if forward is None:
        return x_canonical.clone()
    with torch.no_grad():
        return x_canonical + forward(x_canonical, head_condition(layer, z_id, z_ex))


def save_forward_deformation(path: str | Path, module: ForwardDeformation, meta: Optional[dict] = None) -> Path:
    from model.checkpoint import save_module_checkpoint

    return save_module_checkpoint(path, module, module.cfg.to_dict(), FORMAT, FORMAT_VERSION, meta)


def load_forward_deformation(path: str | Path) -> tuple[ForwardDeformation, dict]:
    """The module (eval mode, float32) and the checkpoint's meta; :class:`InputError` for another file."""
    from model.checkpoint import load_module_payload, load_state_strict

    payload = load_module_payload(path, FORMAT, FORMAT_VERSION)
    module = ForwardDeformation(ForwardDeformationConfig(**payload["config"]))
    load_state_strict(module, {k: v.float() for k, v in payload["state_dict"].items()}, str(path))
    return module.eval(), dict(payload.get("meta") or {})


DEFAULT_NAME = "forward_default"
"""The shipped forward deformation of the shipped head (``model/weights/forward_default.pt``)."""


def forward_for_head(head_path: str | Path | None) -> Optional[ForwardDeformation]:
    """The forward deformation that belongs to a head checkpoint: the shipped one for the shipped head
    (``None`` or its path), ``<head stem>.forward.pt`` beside another head when there is one, else ``None``
    (the inversion then starts from the canonical points; ``nphm-train forward-deformation`` makes one)."""
    from model.checkpoint import head_asset

    path = head_asset(head_path, DEFAULT_NAME, ".forward.pt")
    return load_forward_deformation(path)[0] if path is not None else None


def forward_posed(forward: ForwardDeformation, layer: Any, x_canonical: Tensor, z_id: Tensor, z_ex: Tensor) -> Tensor:
    """Posed points ``[B, N, 3]`` of canonical points ``[B, N, 3]`` by the forward deformation alone (no
    inversion): ``x_c + forward(x_c, condition(z_id, z_ex))``. Differentiable in the points and the codes;
    one network pass, with a single answer where the backward field has several roots (lips and lids that
    meet in canonical space)."""
    return x_canonical + forward(x_canonical, head_condition(layer, z_id, z_ex))
