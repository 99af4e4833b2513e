"""Geometric encoders (the paper's E_n and E_p): a plain ViT encoder-decoder from a face crop to per-pixel
camera-space normals or canonical point maps, each with a mask.

Architecture (Pixel3DMM-style; Pixel3DMM uses a pretrained DINOv2 ViT-B/16 at 512 px, a 6-layer, 256-wide
transformer decoder and three transposed convolutions back to 256 px; we cannot fetch pretrained weights,
so the encoder is trained from scratch on the synthetic renders and is much smaller):

1. ``normalize_images``: RGB in [0, 1] -> ImageNet mean/std normalised.
2. Patch embedding (a ``patch x patch`` stride-``patch`` convolution) plus learnable position embeddings
   defined on the grid of ``EncoderConfig.image_size``; other input sizes bicubically interpolate them
   (:func:`interpolate_pos_embed`).
3. ``depth`` pre-norm transformer blocks (LayerNorm, multi-head self-attention through
   ``torch.nn.functional.scaled_dot_product_attention``, LayerNorm, 2-layer GELU MLP) and a final
   LayerNorm: the **tokens** ``[B, T, C]`` (``T = (H / patch) * (W / patch)``, row-major over the patch
   grid, no class token). The regressor consumes these from both frozen encoders (:meth:`encode`).
4. Decoder: a projection to ``decoder_width``, ``decoder_depth`` more transformer blocks, then
   ``log2(patch)`` upsampling stages (3x3 conv to 4x channels, pixel shuffle x2, GELU, 3x3 conv, GELU),
   concatenated at full resolution with a shallow convolution of the input image (sharp silhouettes), and a
   1x1 head to 4 channels: the 3-channel map and a mask logit.

Targets: ``target="normals"``: unit normals in OpenCV camera space (x right, y down, z forward, facing the
camera), the raw 3 channels are normalised to unit length. ``target="points"``: the canonical point map in
model units (1 unit = 250 mm, ``train.frame``): for each pixel the canonical-space point of the head seen
there, raw (unbounded) outputs. Mask logits: > 0 means "head seen at this pixel".

Checkpoints: :func:`save_encoder` / :func:`load_encoder` (format ``nphm-track.encoder`` version 1, through
the generic helpers of :mod:`model.checkpoint`; loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import InputError

TARGETS = ("normals", "points")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_FORMAT = "nphm-track.encoder"
ENCODER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of one geometric encoder; :func:`encoder_preset` gives the named presets.

    Presets (``image_size / patch -> tokens``, params of encoder + decoder):

    * ``"tiny"`` (tests): 32 px, patch 8 -> 16 tokens, width 32, depth 2.
    * ``"default"`` (trains on CPU): 128 px, patch 8 -> 256 tokens, width 192, depth 6, 3 heads: ViT-Tiny's
      width and heads at half its depth. Why: patch 8 at 128 px keeps a 16 x 16 token grid (Pixel3DMM's
      DINO grid at 512 / 16 is 32 x 32), fine enough that the decoder only upsamples x8 for normals and
      point maps. Measured on this CPU, one thread (``tests/benchmarks/bench_encoders.py --cpu-time``):
      3.45 M parameters, forward 50 ms per image (tokens alone 22-26 ms), training step ~0.15 s per image,
      so a batch of 16 is ~2.4 s and a few thousand steps fit in a CPU afternoon; the regressor gets
      2 x 256 tokens of width 192.
    * ``"large"`` (GPU): 256 px, patch 16 -> 256 tokens, width 768, depth 12, 12 heads (ViT-B/16, as
      Pixel3DMM's DINO backbone), decoder 256 wide with 2 transformer blocks (Pixel3DMM: 256 wide, 6).
    """

    target: str = "normals"
    """What the 3-channel map is: ``"normals"`` (unit, camera space) or ``"points"`` (canonical, model units)."""
    image_size: int = 128
    """Side of the square training images in pixels; position embeddings live on its patch grid."""
    patch_size: int = 8
    """Patch side in pixels (a power of two: the decoder upsamples by 2 ``log2(patch_size)`` times)."""
    width: int = 192
    """Token width C of the encoder."""
    depth: int = 6
    """Encoder transformer blocks."""
    heads: int = 3
    """Attention heads of the encoder (``width`` must divide by it)."""
    mlp_ratio: float = 4.0
    """Hidden width of the MLPs as a multiple of the block width."""
    decoder_width: int = 128
    """Token width of the decoder blocks and channels of the first upsampling stage."""
    decoder_depth: int = 1
    """Transformer blocks of the decoder at token resolution."""
    decoder_heads: int = 4
    """Attention heads of the decoder blocks."""
    min_channels: int = 32
    """Channels of the upsampling stages halve per stage down to this many."""
    skip_channels: int = 16
    """Channels of the shallow full-resolution convolution of the input image (0: none)."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"EncoderConfig.target: expected one of {TARGETS}, got {self.target!r}")
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise InputError(f"EncoderConfig.patch_size: expected a power of two >= 2, got {p}")
        if self.image_size % p:
            raise InputError(f"EncoderConfig.image_size {self.image_size} is not a multiple of patch_size {p}")
        for name, w, h in (("width", self.width, self.heads), ("decoder_width", self.decoder_width,
                                                               self.decoder_heads)):
            if w < 1 or h < 1 or w % h:
                raise InputError(f"EncoderConfig.{name} {w} must be positive and divisible by its heads {h}")
        if self.depth < 1 or self.decoder_depth < 0 or self.min_channels < 1 or self.skip_channels < 0:
            raise InputError("EncoderConfig: depth >= 1, decoder_depth >= 0, min_channels >= 1, skip_channels >= 0")

    @property
    def grid(self) -> int:
        """Patches per side at ``image_size``."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "EncoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"{source}: unknown encoder config fields: {', '.join(unknown)}")
        return cls(**d)


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_ratio=2.0, decoder_width=32,
                 decoder_depth=1, decoder_heads=2, min_channels=8, skip_channels=4),
    "default": dict(),
    "large": dict(image_size=256, patch_size=16, width=768, depth=12, heads=12, decoder_width=256,
                  decoder_depth=2, decoder_heads=8, min_channels=32, skip_channels=16),
}


def encoder_preset(name: str, target: str = "normals", **overrides: Any) -> EncoderConfig:
    """The named preset (``tiny``, ``default``, ``large``; see :class:`EncoderConfig`) for ``target``."""
    if name not in _PRESETS:
        raise InputError(f"--preset: unknown encoder preset {name!r} (choose from {', '.join(_PRESETS)})")
    return EncoderConfig(**{**_PRESETS[name], "target": target, **overrides})


@dataclass
class EncoderOutput:
    """What a geometric encoder predicts for images ``[B, 3, H, W]``.

    Exactly one of ``normals`` / ``points`` is set, following ``EncoderConfig.target``.
    """

    tokens: Tensor
    """``[B, T, C]`` encoder tokens (row-major over the ``H/p x W/p`` patch grid, after the final LayerNorm)."""
    mask_logits: Tensor
    """``[B, H, W]`` logits of "head seen at this pixel"."""
    normals: Optional[Tensor] = None
    """``[B, 3, H, W]`` unit normals in OpenCV camera space (target ``normals``)."""
    points: Optional[Tensor] = None
    """``[B, 3, H, W]`` canonical points in model units (target ``points``)."""

    @property
    def prediction(self) -> Tensor:
        """The 3-channel map, whichever target it is: ``[B, 3, H, W]``."""
        return self.normals if self.normals is not None else self.points


# --------------------------------------------------------------------------------------- free functions

def normalize_images(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] -> ImageNet-normalised ``[B, 3, H, W]``."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def interpolate_pos_embed(pos: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Resample position embeddings ``[1, g*g, C]`` (square grid ``g``) to ``[1, h*w, C]`` bicubically.

    Returns ``pos`` itself when the grid already matches.
    """
    n, c = pos.shape[1], pos.shape[2]
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise InputError(f"position embeddings: expected a square grid of tokens, got {n}")
    h, w = grid_hw
    if (h, w) == (g, g):
        return pos
    grid = pos.reshape(1, g, g, c).permute(0, 3, 1, 2)  # [1, C, g, g]
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, c)


def multi_head_attention(x: Tensor, qkv: nn.Linear, proj: nn.Linear, heads: int) -> Tensor:
    """Self-attention of tokens ``[B, T, C]`` with packed ``qkv`` projection, ``heads`` heads -> ``[B, T, C]``."""
    B, T, C = x.shape
    q, k, v = qkv(x).view(B, T, 3, heads, C // heads).permute(2, 0, 3, 1, 4)  # each [B, h, T, C/h]
    out = F.scaled_dot_product_attention(q, k, v)  # [B, h, T, C/h]
    return proj(out.transpose(1, 2).reshape(B, T, C))


# --------------------------------------------------------------------------------------------- modules

class Block(nn.Module):
    """Pre-norm transformer block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))`` with a 2-layer GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C] -> [B, T, C]
        x = x + multi_head_attention(self.norm1(x), self.qkv, self.proj, self.heads)
        return x + self.mlp(self.norm2(x))


class UpStage(nn.Module):
    """x2 upsampling: 3x3 conv to ``4 * c_out``, pixel shuffle, GELU, 3x3 conv, GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.expand = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.refine = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, c_in, h, w] -> [B, c_out, 2h, 2w]
        x = F.gelu(self.shuffle(self.expand(x)))
        return F.gelu(self.refine(x))


class GeometryEncoder(nn.Module):
    """ViT encoder-decoder from RGB face crops to a per-pixel geometric map and a mask (module docstring).

    Input: RGB float in [0, 1], ``[B, 3, H, W]`` with H and W multiples of ``patch_size`` (any size; the
    position embeddings are interpolated when it is not ``image_size``). Normalised inside.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        C, p = cfg.width, cfg.patch_size
        self.patch_embed = nn.Conv2d(3, C, p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid, C))
        self.blocks = nn.ModuleList([Block(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(C)
        D = cfg.decoder_width
        self.dec_in = nn.Linear(C, D)
        self.dec_blocks = nn.ModuleList([Block(D, cfg.decoder_heads, cfg.mlp_ratio)
                                         for _ in range(cfg.decoder_depth)])
        self.dec_norm = nn.LayerNorm(D)
        stages, c = [], D
        for _ in range(int(math.log2(p))):
            c_out = max(c // 2, cfg.min_channels)
            stages.append(UpStage(c, c_out))
            c = c_out
        self.up = nn.ModuleList(stages)
        self.skip = (nn.Conv2d(3, cfg.skip_channels, 3, padding=1) if cfg.skip_channels else None)
        self.head = nn.Sequential(nn.Conv2d(c + cfg.skip_channels, c, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(c, 4, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, images: Tensor) -> tuple[int, int]:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InputError(f"images: expected RGB [B, 3, H, W] in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise InputError(f"images: expected a float tensor in [0, 1], got {images.dtype}")
        p = self.cfg.patch_size
        H, W = images.shape[-2:]
        if H % p or W % p:
            raise InputError(f"images: H and W must be multiples of the patch size {p}, got {H}x{W}")
        return H // p, W // p

    def encode(self, images: Tensor) -> Tensor:
        """Tokens ``[B, T, C]`` of RGB images ``[B, 3, H, W]`` in [0, 1] (``T = H/p * W/p``, row-major)."""
        h, w = self._check(images)
        x = self.patch_embed(normalize_images(images))  # [B, C, h, w]
        x = x.flatten(2).transpose(1, 2) + interpolate_pos_embed(self.pos_embed, (h, w))  # [B, T, C]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def decode(self, tokens: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw 3-channel map ``[B, 3, H, W]`` and mask logits ``[B, H, W]`` from tokens ``[B, T, C]``."""
        B = tokens.shape[0]
        h, w = self._check(images)
        x = self.dec_in(tokens)  # [B, T, D]
        for blk in self.dec_blocks:
            x = blk(x)
        x = self.dec_norm(x).transpose(1, 2).reshape(B, -1, h, w)  # [B, D, h, w]
        for stage in self.up:
            x = stage(x)  # [B, c, H, W] after the last stage
        if self.skip is not None:
            x = torch.cat([x, F.gelu(self.skip(normalize_images(images)))], 1)
        out = self.head(x)  # [B, 4, H, W]
        return out[:, :3], out[:, 3]

    def forward(self, images: Tensor) -> EncoderOutput:
        """Predict the map and mask of RGB images ``[B, 3, H, W]`` in [0, 1] (see :class:`EncoderOutput`)."""
        tokens = self.encode(images)
        raw, mask_logits = self.decode(tokens, images)
        if self.cfg.target == "normals":
            return EncoderOutput(tokens=tokens, mask_logits=mask_logits, normals=F.normalize(raw, dim=1, eps=1e-6))
        return EncoderOutput(tokens=tokens, mask_logits=mask_logits, points=raw)


class NormalEncoder(GeometryEncoder):
    """E_n: camera-space unit normals + mask (``EncoderConfig.target == "normals"``; default preset)."""

    def __init__(self, cfg: Optional[EncoderConfig] = None):
        cfg = cfg or encoder_preset("default", "normals")
        if cfg.target != "normals":
            raise InputError(f"NormalEncoder: config target must be 'normals', got {cfg.target!r}")
        super().__init__(cfg)


class PointMapEncoder(GeometryEncoder):
    """E_p: canonical point map (model units) + mask (``EncoderConfig.target == "points"``; default preset)."""

    def __init__(self, cfg: Optional[EncoderConfig] = None):
        cfg = cfg or encoder_preset("default", "points")
        if cfg.target != "points":
            raise InputError(f"PointMapEncoder: config target must be 'points', got {cfg.target!r}")
        super().__init__(cfg)


def build_encoder(cfg: EncoderConfig) -> GeometryEncoder:
    """The encoder class matching ``cfg.target`` (:class:`NormalEncoder` or :class:`PointMapEncoder`)."""
    return NormalEncoder(cfg) if cfg.target == "normals" else PointMapEncoder(cfg)


# ----------------------------------------------------------------------------------------- checkpoints

PathLike = Union[str, os.PathLike]


def save_encoder(path: PathLike, encoder: GeometryEncoder, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write ``encoder`` (config + weights) and plain-type ``meta`` as an ``nphm-track.encoder`` checkpoint."""
    from model.checkpoint import save_module_checkpoint

    return save_module_checkpoint(path, encoder, encoder.cfg.to_dict(), ENCODER_FORMAT, ENCODER_FORMAT_VERSION,
                                  meta)


def load_encoder(path: PathLike) -> tuple[GeometryEncoder, dict[str, Any]]:
    """Read an encoder checkpoint: ``(encoder in eval mode, meta)``; refuses other formats and versions."""
    from model.checkpoint import load_module_payload, load_state_strict

    payload = load_module_payload(path, ENCODER_FORMAT, ENCODER_FORMAT_VERSION)
    encoder = build_encoder(EncoderConfig.from_dict(payload["config"], source=str(path)))
    load_state_strict(encoder, payload.get("state_dict") or {}, str(path))
    return encoder.eval(), dict(payload.get("meta") or {})
