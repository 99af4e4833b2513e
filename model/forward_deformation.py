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
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from model.errors import InputError

FORMAT = "nphm-track.forward-deformation"
POINT_CHUNK = 4096
"""Points per pass of :meth:`ForwardDeformation.offsets_at`: blocks of activations that stay in the CPU's cache
(41k mesh vertices, one thread: 0.047 s in blocks of 4096 against 0.061 s in one pass)."""
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


class PointEncoding(NamedTuple):
    """What the forward network computes of canonical points ``[N, 3]`` alone
    (:meth:`ForwardDeformation.point_encoding`): ``sin``, ``cos [N, 3F]`` of the positional encoding, ``pre
    [N, hidden]`` its product with the first layer's point weights, ``features = pre + bias``
    (:meth:`ForwardDeformation.point_features`)."""

    sin: Tensor
    cos: Tensor
    pre: Tensor
    features: Tensor


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

    def forward(self, x_canonical: Tensor, cond: Tensor) -> Tensor:
        if x_canonical.dim() != 3 or x_canonical.shape[-1] != 3:
            raise InputError(f"x_canonical must be [B, N, 3], got {tuple(x_canonical.shape)}")
        if cond.dim() != 2 or cond.shape[-1] != self.cfg.cond_dim or len(cond) != len(x_canonical):
            raise InputError(f"cond must be [B={len(x_canonical)}, {self.cfg.cond_dim}], got {tuple(cond.shape)}")
        return self.offsets_at(self.point_features(x_canonical), cond)

    def point_features(self, x_canonical: Tensor) -> Tensor:
        """``[..., N, 3] -> [..., N, hidden]``: the part of the first layer's pre-activation that depends on the
        points alone (their encoding through the layer's point weights, plus its bias).

        ``forward(x, cond) == offsets_at(point_features(x), cond)``: for points that stay fixed while the codes
        change (a mesh's canonical vertices, one identity's landmarks) compute it once."""
        return self.point_encoding(x_canonical).features

    def offsets_at(self, features: Tensor, cond: Tensor, chunk: int = POINT_CHUNK) -> Tensor:
        """Offsets ``[B, N, 3]`` (model units) of points given by their :meth:`point_features` ``[B, N, hidden]``
        (or ``[N, hidden]``, shared by the batch) at conditioning ``[B, C]``, ``chunk`` points per pass."""
        if cond.dim() != 2 or cond.shape[-1] != self.cfg.cond_dim:
            raise InputError(f"cond must be [B, {self.cfg.cond_dim}], got {tuple(cond.shape)}")
        c = (cond @ self.layers[0].weight[:, self._d_points:].T)[:, None]  # [B, 1, hidden]
        n = features.shape[-2]
        parts = [self._hidden_to_offsets(features[..., s:s + chunk, :] + c) for s in range(0, n, max(1, chunk))]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -2)

    def _hidden_to_offsets(self, pre: Tensor) -> Tensor:
        """The network from the first layer's pre-activation ``[..., hidden]`` to the offsets ``[..., 3]``."""
        h = torch.relu(pre)
        for layer in self.layers[1:]:
            h = torch.relu(layer(h))
        return self.out(h) * self.cfg.output_scale

    @property
    def _d_points(self) -> int:
        """Width of the point encoding (the first layer's point columns; the conditioning's follow)."""
        return 3 + 6 * self.cfg.n_frequencies

    def point_encoding(self, x: Tensor) -> PointEncoding:
        """``[..., N, 3]`` canonical points -> what :meth:`jacobians` and :meth:`offsets_at` need of them alone:
        the position's sines and cosines and their product with the first layer's point weights. Keep it for
        points that stay fixed over many calls (one identity's landmarks through a video's frame fits)."""
        a = (x[..., None] * self.freqs).flatten(-2)  # [..., 3F], index coordinate * F + frequency
        sin, cos = torch.sin(a), torch.cos(a)
        pre = torch.cat([x, sin, cos], -1) @ self.layers[0].weight[:, :self._d_points].T
        return PointEncoding(sin=sin, cos=cos, pre=pre, features=pre + self.layers[0].bias)

    def jacobians(self, x: Tensor, cond: Tensor, encoding: Optional[PointEncoding] = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` (one batch) with its exact Jacobians with respect to the points and the conditioning.

        Reverse accumulation from the 3 outputs per point (one backward sweep of a ``[N, 3, hidden]`` block
        through the ReLU masks), so the cost does not grow with the number of directions a caller needs:
        :meth:`forward_with_tangents` and the landmark fit contract these with their directions.

        Args:
            x: ``[N, 3]`` canonical points (model units); cond: ``[C]``.
            encoding: ``point_encoding(x)``, when the caller keeps it (the same numbers, computed once).
        Returns:
            ``(offsets [N, 3], d_x [N, 3, 3], d_cond [N, 3, C])`` with ``d_x[n, i, j] = d offsets[n, i] / d x[n, j]``
            and ``d_cond[n, i, c] = d offsets[n, i] / d cond[c]``. Not meant for autograd.
        """
        if x.dim() != 2 or x.shape[-1] != 3 or cond.shape != (self.cfg.cond_dim,):
            raise InputError(f"jacobians: x must be [N, 3] and cond [{self.cfg.cond_dim}], got {tuple(x.shape)} "
                             f"and {tuple(cond.shape)}")
        F, d = len(self.freqs), self._d_points
        enc = encoding if encoding is not None else self.point_encoding(x)
        sin, cos = enc.sin, enc.cos
        w0 = self.layers[0].weight
        h = enc.pre + (cond @ w0[:, d:].T + self.layers[0].bias)
        masks = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = layer(h)
            masks.append((h > 0).to(h.dtype))
            h = torch.relu(h)
        s = self.cfg.output_scale
        # d offsets / d (first pre-activation), [N, 3, hidden]: back through the layers and their ReLU masks
        A = (self.out.weight * s) * masks[-1][:, None, :]
        for i in range(len(self.layers) - 1, 0, -1):
            A = (A @ self.layers[i].weight) * masks[i - 1][:, None, :]
        d_cond = A @ w0[:, d:]  # [N, 3, C]
        M = A @ w0[:, :d]  # [N, 3, d]: d offsets / d encoding
        n = len(x)
        freqs = self.freqs.to(x.dtype)
        d_sin = (cos.view(n, 3, F) * freqs)  # d sin(a_jf) / d x_j, [N, 3, F]
        d_cos = (-sin.view(n, 3, F) * freqs)
        d_x = (M[..., :3] + (M[..., 3:3 + 3 * F].view(n, 3, 3, F) * d_sin[:, None]).sum(-1)
               + (M[..., 3 + 3 * F:].view(n, 3, 3, F) * d_cos[:, None]).sum(-1))
        return self.out(h) * s, d_x, d_cond

    def forward_with_tangents(self, x: Tensor, cond: Tensor, x_dirs: Optional[Tensor], cond_dirs: Optional[Tensor]
                              ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` (one batch) plus its directional derivatives (from :meth:`jacobians`).

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
        off, d_x, d_cond = self.jacobians(x, cond)
        t = 0.0
        if cond_dirs is not None:
            t = (d_cond @ cond_dirs.T).permute(2, 0, 1)  # [T, N, 3]
        if x_dirs is not None:
            t = t + torch.einsum("nij,tnj->tni", d_x, x_dirs)
        return off, t


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
