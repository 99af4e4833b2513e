"""The Pix2NPHM regressor: tokens of the two frozen geometric encoders -> head-model codes ``z_id``, ``z_ex``.

Architecture (Pix2NPHM, Giebenhain et al.; sizes in :class:`RegressorConfig`):

1. The token sequences of the normal encoder ``[B, T_n, C_n]`` and of the point-map encoder
   ``[B, T_p, C_p]`` (:meth:`model.vit.GeometryEncoder.encode`) are each projected to the regressor width
   ``C`` by their own linear map, and get their own learnt position embedding ``[T, C]`` plus a learnt type
   embedding ``[C]`` (which stream a token came from).
2. Learnable classifier tokens are prepended: one for the expression and one per identity part of the
   head model: one for the global part and one per local slot (``n_anchors + 1`` slots: one per anchor
   plus the global ensemble member; the default head preset has 1 + 30 = 31 identity tokens).
3. ``depth`` pre-norm transformer blocks (:class:`model.vit.Block`: LayerNorm, multi-head self-attention
   through ``F.scaled_dot_product_attention``, LayerNorm, 2-layer GELU MLP) and a final LayerNorm.
4. Output heads, one 2-layer GELU MLP per classifier token (batched as an ensemble): the expression token
   gives ``z_ex [B, D_ex]``, the global token the global part ``[B, G]`` of ``z_id`` and local token ``i``
   the local part ``i`` ``[B, L]``. They are assembled in the head model's layout
   ``z_id = [global, local_0, ..., local_A]`` (:class:`model.head.HeadLayer`), so each part of the code is a
   function of its own token only.

Output scaling: every code dimension is ``mean + scale * head_output`` with per-dimension buffers
``code_mean`` / ``code_scale`` (0 and 1 unless set by :meth:`Regressor.set_code_statistics` from the head
model's training codes). The last layer of each head starts near zero (std 0.02), so an untrained
regressor predicts about the mean training head and the heads work at unit scale although the codes
themselves have a std of about 0.02.

Checkpoints: :func:`save_regressor` / :func:`load_regressor` (format ``nphm-track.regressor`` version 1,
through the generic helpers of :mod:`model.checkpoint`; loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from model.errors import InputError
from model.vit import Block

REGRESSOR_FORMAT = "nphm-track.regressor"
REGRESSOR_FORMAT_VERSION = 1

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class RegressorConfig:
    """Sizes of the regressor: the transformer (``width`` ... ``head_hidden``) and its inputs and outputs.

    The input and output sizes must match the encoders and the head model; :func:`regressor_preset` fills
    them from an :class:`model.config.HeadConfig` and the two :class:`model.vit.EncoderConfig`.

    Presets (transformer part):

    * ``"tiny"`` (tests): width 32, depth 1, 2 heads, MLP ratio 2, heads' hidden width 32.
    * ``"default"`` (trains on CPU): width 192, depth 4, 3 heads, MLP ratio 4, heads' hidden width 256.
      Why: 192 is the token width of the default encoders, so the input projections are square and cheap,
      and 3 heads of 64 channels are ViT-Tiny's; with 2 x 256 encoder tokens plus 32 classifier tokens
      (544 tokens) a block costs about 0.35 GMAC per image. Measured on this CPU, one thread
      (``tests/benchmarks/bench_regressor.py --cpu-time``, +-20 % between runs on the shared machine):
      3.7 M parameters, 35-42 ms per image (about as much as the two default encoders' token passes
      together; 77-92 ms for encoders + regressor), and a training step at 8 renders (regressor from cached
      tokens, 3D loss at 512 points and sphere-traced 2D loss at 128 pixels per render, backward) of 1.3 s
      (1.6 s encoding the images every step), so a few thousand steps fit in a CPU afternoon. The
      paper's 8 x 1024 takes about 42x the multiply-adds (60 vs 1.4 GMAC per image).
    * ``"paper"`` (GPU): width 1024, depth 8, 8 heads as Pix2NPHM, heads' hidden width 1024.
    """

    width: int = 192
    """Token width C of the transformer."""
    depth: int = 4
    """Number of transformer blocks."""
    heads: int = 3
    """Attention heads (``width`` must divide by it)."""
    mlp_ratio: float = 4.0
    """Hidden width of the blocks' MLPs as a multiple of ``width``."""
    head_hidden: int = 256
    """Hidden width of the output MLPs (one per classifier token)."""
    normal_tokens: int = 256
    """Tokens T_n of the normal encoder (``(image_size / patch) ** 2``)."""
    normal_dim: int = 192
    """Token width C_n of the normal encoder."""
    point_tokens: int = 256
    """Tokens T_p of the point-map encoder."""
    point_dim: int = 192
    """Token width C_p of the point-map encoder."""
    id_global_dim: int = 32
    """Size G of the global part of ``z_id`` (``HeadConfig.id_global_dim``)."""
    id_local_dim: int = 16
    """Size L of each local part of ``z_id`` (``HeadConfig.id_local_dim``)."""
    id_local_slots: int = 30
    """Number of local parts of ``z_id`` (``HeadConfig.n_anchors + 1``)."""
    expr_dim: int = 64
    """Size of ``z_ex`` (``HeadConfig.expr_dim``)."""

    def __post_init__(self) -> None:
        ints = ("width", "depth", "heads", "head_hidden", "normal_tokens", "normal_dim", "point_tokens",
                "point_dim", "id_global_dim", "id_local_dim", "id_local_slots", "expr_dim")
        bad = [n for n in ints if getattr(self, n) < 1]
        if bad or self.mlp_ratio <= 0:
            raise InputError(f"RegressorConfig: fields must be positive: {', '.join(bad or ['mlp_ratio'])}")
        if self.width % self.heads:
            raise InputError(f"RegressorConfig: width {self.width} is not divisible by heads {self.heads}")

    @property
    def id_dim(self) -> int:
        """Size of ``z_id``: ``G + slots * L``."""
        return self.id_global_dim + self.id_local_slots * self.id_local_dim

    @property
    def n_class_tokens(self) -> int:
        """Classifier tokens: expression, global identity, one per local slot."""
        return 2 + self.id_local_slots

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "RegressorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"{source}: unknown regressor config fields: {', '.join(unknown)}")
        return cls(**d)


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=32, depth=1, heads=2, mlp_ratio=2.0, head_hidden=32),
    "default": dict(width=192, depth=4, heads=3, mlp_ratio=4.0, head_hidden=256),
    "paper": dict(width=1024, depth=8, heads=8, mlp_ratio=4.0, head_hidden=1024),
}


def regressor_preset_names() -> list[str]:
    return sorted(_PRESETS)


def regressor_preset(name: str, head_cfg, normal_cfg, point_cfg, **overrides: Any) -> RegressorConfig:
    """The named preset (``tiny``, ``default``, ``paper``) sized for a head model and two encoders.

    Args:
        head_cfg: :class:`model.config.HeadConfig` of the head whose codes are predicted.
        normal_cfg, point_cfg: :class:`model.vit.EncoderConfig` of the two encoders (token count from
            their ``image_size`` / ``patch_size``, width from ``width``).
        overrides: any other :class:`RegressorConfig` field.
    """
    if name not in _PRESETS:
        raise InputError(f"--preset: unknown regressor preset {name!r} (choose from {', '.join(_PRESETS)})")
    io = dict(normal_tokens=normal_cfg.grid ** 2, normal_dim=normal_cfg.width, point_tokens=point_cfg.grid ** 2,
              point_dim=point_cfg.width, id_global_dim=head_cfg.id_global_dim, id_local_dim=head_cfg.id_local_dim,
              id_local_slots=head_cfg.n_anchors + 1, expr_dim=head_cfg.expr_dim)
    return RegressorConfig(**{**_PRESETS[name], **io, **overrides})


@dataclass
class RegressorOutput:
    """Codes predicted for a batch of images, in the head model's layout."""

    z_id: Tensor  # [B, D_id] identity code: [global (G), local_0 (L), ..., local_{S-1} (L)]
    z_ex: Tensor  # [B, D_ex] expression code


class TokenHeads(nn.Module):
    """``S`` independent 2-layer GELU MLPs, ``[B, S, C] -> [B, S, out]``, the ``s``-th applied to token ``s``."""

    def __init__(self, n: int, width: int, hidden: int, out: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n, width, hidden) * width ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(n, hidden))
        self.w2 = nn.Parameter(torch.randn(n, hidden, out) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(n, out))

    def forward(self, x: Tensor) -> Tensor:  # [B, S, C] -> [B, S, out]
        h = nn.functional.gelu(torch.einsum("bsc,sch->bsh", x, self.w1) + self.b1)
        return torch.einsum("bsh,sho->bso", h, self.w2) + self.b2


class Regressor(nn.Module):
    """Pix2NPHM regressor (module docstring): encoder tokens -> :class:`RegressorOutput`."""

    def __init__(self, cfg: RegressorConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.width
        self.normal_proj = nn.Linear(cfg.normal_dim, C)
        self.point_proj = nn.Linear(cfg.point_dim, C)
        self.normal_pos = nn.Parameter(torch.zeros(1, cfg.normal_tokens, C))
        self.point_pos = nn.Parameter(torch.zeros(1, cfg.point_tokens, C))
        self.type_embed = nn.Parameter(torch.zeros(3, C))  # classifier, normal, point
        self.class_tokens = nn.Parameter(torch.zeros(1, cfg.n_class_tokens, C))  # [expr, global, local...]
        self.blocks = nn.ModuleList([Block(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(C)
        self.expr_head = TokenHeads(1, C, cfg.head_hidden, cfg.expr_dim)
        self.global_head = TokenHeads(1, C, cfg.head_hidden, cfg.id_global_dim)
        self.local_heads = TokenHeads(cfg.id_local_slots, C, cfg.head_hidden, cfg.id_local_dim)
        self.register_buffer("id_mean", torch.zeros(cfg.id_dim))
        self.register_buffer("id_scale", torch.ones(cfg.id_dim))
        self.register_buffer("ex_mean", torch.zeros(cfg.expr_dim))
        self.register_buffer("ex_scale", torch.ones(cfg.expr_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.normal_pos, self.point_pos, self.type_embed, self.class_tokens):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_code_statistics(self, z_id: Tensor, z_ex: Tensor, min_scale: float = 1e-3) -> None:
        """Set the output mean and scale per dimension from training codes ``z_id [N, D_id]``, ``z_ex [M, D_ex]``
        (e.g. the code tables of the head checkpoint); the scale is the std, at least ``min_scale``."""
        for name, z, dim in (("z_id", z_id, self.cfg.id_dim), ("z_ex", z_ex, self.cfg.expr_dim)):
            if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != dim or z.shape[0] < 1:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise InputError(f"{name}: expected training codes [N, {dim}], got {got}")
        with torch.no_grad():
            z_id, z_ex = z_id.detach().float(), z_ex.detach().float()
            self.id_mean.copy_(z_id.mean(0))
            self.ex_mean.copy_(z_ex.mean(0))
            self.id_scale.copy_(z_id.std(0, unbiased=False).clamp_min(min_scale) if len(z_id) > 1
                                else torch.full_like(self.id_scale, min_scale))
            self.ex_scale.copy_(z_ex.std(0, unbiased=False).clamp_min(min_scale) if len(z_ex) > 1
                                else torch.full_like(self.ex_scale, min_scale))

    def _check(self, tokens: Tensor, n: int, c: int, name: str) -> None:
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tokens.shape[1:] != (n, c):
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise InputError(f"{name}: expected shape [B, {n}, {c}], got {got}")
        if not tokens.is_floating_point():
            raise InputError(f"{name}: expected a float tensor, got {tokens.dtype}")

    def tokens(self, normal_tokens: Tensor, point_tokens: Tensor) -> Tensor:
        """The transformer's output classifier tokens ``[B, 2 + S, C]`` (expr, global, local_0..S-1)."""
        cfg = self.cfg
        self._check(normal_tokens, cfg.normal_tokens, cfg.normal_dim, "normal_tokens")
        self._check(point_tokens, cfg.point_tokens, cfg.point_dim, "point_tokens")
        B = normal_tokens.shape[0]
        if point_tokens.shape[0] != B:
            raise InputError(f"point_tokens: batch {point_tokens.shape[0]} differs from normal_tokens' {B}")
        n = self.normal_proj(normal_tokens) + self.normal_pos + self.type_embed[1]  # [B, T_n, C]
        p = self.point_proj(point_tokens) + self.point_pos + self.type_embed[2]  # [B, T_p, C]
        c = (self.class_tokens + self.type_embed[0]).expand(B, -1, -1)  # [B, 2 + S, C]
        x = torch.cat([c, n, p], 1)  # [B, 2 + S + T_n + T_p, C]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, :cfg.n_class_tokens])

    def decode(self, class_tokens: Tensor) -> RegressorOutput:
        """Codes from the output classifier tokens ``[B, 2 + S, C]`` (each code part from its own token)."""
        cfg = self.cfg
        if class_tokens.ndim != 3 or class_tokens.shape[1:] != (cfg.n_class_tokens, cfg.width):
            raise InputError(f"class_tokens: expected shape [B, {cfg.n_class_tokens}, {cfg.width}], "
                             f"got {tuple(class_tokens.shape)}")
        B = class_tokens.shape[0]
        z_ex = self.expr_head(class_tokens[:, :1])[:, 0]  # [B, D_ex]
        glob = self.global_head(class_tokens[:, 1:2])[:, 0]  # [B, G]
        local = self.local_heads(class_tokens[:, 2:]).reshape(B, -1)  # [B, S * L]
        z_id = torch.cat([glob, local], -1)  # [B, D_id]
        return RegressorOutput(z_id=self.id_mean + self.id_scale * z_id, z_ex=self.ex_mean + self.ex_scale * z_ex)

    def forward(self, normal_tokens: Tensor, point_tokens: Tensor) -> RegressorOutput:
        """Codes for encoder tokens ``normal_tokens [B, T_n, C_n]`` and ``point_tokens [B, T_p, C_p]``."""
        return self.decode(self.tokens(normal_tokens, point_tokens))


# ----------------------------------------------------------------------------------------- checkpoints

def save_regressor(path: PathLike, regressor: Regressor, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write ``regressor`` (config, weights, code statistics) and plain-type ``meta`` as a checkpoint."""
    from model.checkpoint import save_module_checkpoint

    return save_module_checkpoint(path, regressor, regressor.cfg.to_dict(), REGRESSOR_FORMAT,
                                  REGRESSOR_FORMAT_VERSION, meta)


def load_regressor(path: PathLike) -> tuple[Regressor, dict[str, Any]]:
    """Read a regressor checkpoint: ``(regressor in eval mode, meta)``; refuses other formats and versions."""
    from model.checkpoint import load_module_payload, load_state_strict

    payload = load_module_payload(path, REGRESSOR_FORMAT, REGRESSOR_FORMAT_VERSION)
    regressor = Regressor(RegressorConfig.from_dict(payload["config"], source=str(path)))
    load_state_strict(regressor, payload.get("state_dict") or {}, str(path))
    return regressor.eval(), dict(payload.get("meta") or {})
