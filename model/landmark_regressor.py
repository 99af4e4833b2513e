"""Feed-forward codes from detector landmarks: MediaPipe Face Mesh points -> whitened ``alpha``, ``beta``.

The token source of the Pix2NPHM regressor (:mod:`model.regressor`) swapped for the detector's 2D landmarks:

1. **Normalisation** (:func:`normalise_landmarks`): each set of ``[478, 2]`` pixel detections is moved to a
   canonical frame by a similarity: centroid subtracted, divided by the RMS radius, rotated so that the outer
   eye corners (MediaPipe 33, the subject's right eye, and 263, the left) lie on the +x axis. The output is
   invariant to any similarity of the input (scale, in-plane rotation, translation in pixels).
2. **Tokens**: landmarks are grouped ``group_size`` at a time (a fixed spatial grouping of the mean face,
   :func:`spatial_groups`; ``group_size = 1`` is one token per landmark, the issue's design); a token is a
   token-specific linear map ``2 * group_size -> width`` of its landmarks' standardised xy (the normalised xy minus the
   training set's mean normalised face, divided by its per-landmark std: the identity and expression signal
   is a few percent of the face size, invisible next to the mean shape otherwise) plus a learnt token-id
   embedding. Token-specific maps (rather than one shared ``Linear`` plus the id embedding) let the
   classifier tokens' near-uniform attention average compute a linear regression of all landmarks from the
   start; with a shared map the network learnt nothing in 700 steps while ridge regression explained 27 %
   of the identity variance.
   Grouping exists for speed: self-attention over 480 tokens runs at about 200 images/s on one CPU thread
   (width 64, 2 layers), over 120 tokens at about 1,000/s.
3. Two learnt classifier tokens (expression, identity) are prepended; ``depth`` pre-norm transformer blocks
   (:class:`model.vit.Block`) and a final LayerNorm.
4. One 2-layer GELU MLP per classifier token (:class:`model.regressor.TokenHeads`): the expression token gives
   ``beta [B, k]``, the identity token ``alpha [B, r]``, each as ``mean + scale * head`` with per-dimension
   buffers set from the training targets (:meth:`LandmarkRegressor.set_target_statistics`).

``alpha`` and ``beta`` are the landmark tracker's whitened coordinates (:mod:`tracker.landmark_fit`):
``z_id = rig.z_id(alpha)`` (:meth:`model.landmarks.LandmarkMap.code_of`), ``z_ex = rig.z_ex(beta)``, so the
outputs start the tracker's fit directly.

Checkpoints: :func:`save_landmark_regressor` / :func:`load_landmark_regressor` (format
``nphm-track.landmark-regressor`` version 1, config inside; ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from model.errors import InputError
from model.regressor import TokenHeads
from model.vit import Block

LANDMARK_REGRESSOR_FORMAT = "nphm-track.landmark-regressor"
LANDMARK_REGRESSOR_FORMAT_VERSION = 1
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
"""MediaPipe Face Mesh ids of the outer eye corners (the subject's right and left eye)."""

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class LandmarkRegressorConfig:
    """Sizes of :class:`LandmarkRegressor`."""

    width: int = 64
    """Token width of the transformer."""
    depth: int = 2
    """Number of pre-norm transformer blocks."""
    heads: int = 4
    """Attention heads (``width`` must divide by it)."""
    mlp_ratio: float = 2.0
    """Hidden width of the blocks' MLPs as a multiple of ``width``."""
    head_hidden: int = 128
    """Hidden width of the two output MLPs."""
    group_size: int = 4
    """Landmarks per input token (1: one token per landmark; module docstring for why 4)."""
    n_landmarks: int = 478
    """Input landmarks (MediaPipe Face Mesh with irises); ids 33 and 263 must be the outer eye corners."""
    alpha_dims: int = 96
    """Whitened identity coordinates ``r`` (the landmark map's rank)."""
    beta_dims: int = 32
    """Whitened expression coordinates ``k`` (the tracker's ``expression_dims``)."""

    def __post_init__(self) -> None:
        ints = ("width", "depth", "heads", "head_hidden", "group_size", "n_landmarks", "alpha_dims", "beta_dims")
        bad = [n for n in ints if int(getattr(self, n)) != getattr(self, n) or getattr(self, n) < 1]
        if bad or not self.mlp_ratio > 0:
            raise InputError("LandmarkRegressorConfig: fields must be positive integers: "
                             f"{', '.join(bad or ['mlp_ratio'])}")
        if self.width % self.heads:
            raise InputError(f"LandmarkRegressorConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.n_landmarks <= LEFT_EYE_OUTER:
            raise InputError(f"LandmarkRegressorConfig: n_landmarks must exceed {LEFT_EYE_OUTER} (eye corner ids)")

    @property
    def n_tokens(self) -> int:
        """Landmark tokens: ``ceil(n_landmarks / group_size)`` (the last group padded by repeats)."""
        return -(-self.n_landmarks // self.group_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "LandmarkRegressorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"{source}: unknown landmark regressor config fields: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class LandmarkRegressorOutput:
    """Whitened codes of the landmark tracker (module docstring)."""

    alpha: Tensor  # [B, r] identity coordinates (LandmarkMap.code_of)
    beta: Tensor  # [B, k] expression coordinates (LandmarkRig.z_ex)


# --- an MLP on one face's normalised landmarks -----------------------------------------------------------

def landmark_mlp(n_landmarks: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` blocks of Linear + LayerNorm + GELU from ``2 * n_landmarks`` inputs to ``hidden`` units: the
    body of the per-frame landmark readers (:mod:`model.arkit_regressor`, :mod:`model.identity_prior`)."""
    dims = [2 * n_landmarks] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU()]
    return nn.Sequential(*blocks)


def landmark_features(landmarks: Tensor, n_landmarks: int) -> Tensor:
    """``[..., 2 L]`` the similarity-normalised, flattened landmarks ``[..., L, 2]`` (pixels) of one face per
    row; :class:`InputError` for another shape."""
    if landmarks.dim() < 2 or landmarks.shape[-2:] != (n_landmarks, 2):
        raise InputError(f"landmarks must be [..., {n_landmarks}, 2], got {tuple(landmarks.shape)}")
    return normalise_landmarks(landmarks.float()).flatten(-2)


# --- normalisation and grouping ------------------------------------------------------------------------

def normalise_landmarks(points: Tensor, right: int = RIGHT_EYE_OUTER, left: int = LEFT_EYE_OUTER) -> Tensor:
    """Similarity-normalised landmarks ``[..., L, 2]`` of pixel landmarks ``[..., L, 2]``.

    Centroid at 0, RMS distance from it 1, and the vector from landmark ``right`` to ``left`` along +x (image
    axes: x right, y down). Invariant to scale, in-plane rotation and translation of the input; unitless.
    """
    if points.dim() < 2 or points.shape[-1] != 2 or points.shape[-2] <= max(right, left):
        raise InputError(f"landmarks must be [..., L, 2] with L > {max(right, left)}, got {tuple(points.shape)}")
    p = points - points.mean(-2, keepdim=True)
    rms = p.square().sum(-1).mean(-1).sqrt().clamp_min(1e-6)  # [...]
    p = p / rms[..., None, None]
    v = p[..., left, :] - p[..., right, :]  # [..., 2]
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    c, s = v[..., None, 0:1], v[..., None, 1:2]  # [..., 1, 1]; rotate by -angle(v)
    x, y = p[..., 0:1], p[..., 1:2]
    return torch.cat([c * x + s * y, -s * x + c * y], -1)


def spatial_groups(points: np.ndarray, group_size: int) -> np.ndarray:
    """A fixed grouping of landmarks ``[L, D]`` (e.g. the mean face) into ``ceil(L / group_size)`` spatially
    compact groups by median bisection along the longest axis; returns the landmark ids ``[G * group_size]``
    in group order (the last ids repeated to pad to a whole number of groups)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or group_size < 1:
        raise InputError(f"spatial_groups: need points [L, D] and group_size >= 1, got {pts.shape}, {group_size}")
    n_groups = -(-len(pts) // group_size)
    ids = np.concatenate([np.arange(len(pts)), np.arange(n_groups * group_size - len(pts)) % len(pts)])

    def split(idx: np.ndarray, n: int) -> list[np.ndarray]:
        if n == 1:
            return [idx]
        p = pts[idx]
        axis = int(np.argmax(p.max(0) - p.min(0)))
        idx = idx[np.argsort(p[:, axis], kind="stable")]
        cut = (n // 2) * group_size
        return split(idx[:cut], n // 2) + split(idx[cut:], n - n // 2)

    return np.concatenate(split(ids, n_groups)).astype(np.int64)


# --- the network ----------------------------------------------------------------------------------------

class LandmarkRegressor(nn.Module):
    """Detections ``[B, L, 2]`` (pixels) -> :class:`LandmarkRegressorOutput` (module docstring).

    Buffers: ``order [G * group_size]`` (landmark ids in token order, :func:`spatial_groups`; default the
    identity order), ``input_mean``, ``input_scale`` ``[L, 2]`` (:meth:`set_input_statistics`),
    ``alpha_mean``, ``alpha_scale`` ``[r]``, ``beta_mean``, ``beta_scale`` ``[k]``.
    """

    def __init__(self, cfg: LandmarkRegressorConfig, order: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg = cfg
        C, G = cfg.width, cfg.n_tokens
        if order is None:
            order = np.arange(G * cfg.group_size) % cfg.n_landmarks
        order = torch.as_tensor(np.asarray(order), dtype=torch.int64)
        if order.shape != (G * cfg.group_size,) or order.min() < 0 or order.max() >= cfg.n_landmarks:
            raise InputError(f"order must be [{G * cfg.group_size}] landmark ids < {cfg.n_landmarks}")
        self.register_buffer("order", order)
        self.embed_weight = nn.Parameter(torch.randn(G, 2 * cfg.group_size, C) / np.sqrt(2 * cfg.group_size))
        self.embed_bias = nn.Parameter(torch.zeros(G, C))
        self.token_id = nn.Parameter(torch.zeros(1, G, C))
        self.class_tokens = nn.Parameter(torch.zeros(1, 2, C))  # [expression, identity]
        self.blocks = nn.ModuleList([Block(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(C)
        self.beta_head = TokenHeads(1, C, cfg.head_hidden, cfg.beta_dims)
        self.alpha_head = TokenHeads(1, C, cfg.head_hidden, cfg.alpha_dims)
        self.register_buffer("input_mean", torch.zeros(cfg.n_landmarks, 2))
        self.register_buffer("input_scale", torch.ones(cfg.n_landmarks, 2))
        self.register_buffer("alpha_mean", torch.zeros(cfg.alpha_dims))
        self.register_buffer("alpha_scale", torch.ones(cfg.alpha_dims))
        self.register_buffer("beta_mean", torch.zeros(cfg.beta_dims))
        self.register_buffer("beta_scale", torch.ones(cfg.beta_dims))
        nn.init.trunc_normal_(self.token_id, std=0.02)
        nn.init.trunc_normal_(self.class_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_input_statistics(self, points: Tensor, min_scale: float = 1e-4) -> None:
        """Input standardisation from training detections ``[N, L, 2]`` (pixels): the mean and std per
        landmark and axis of their normalised form (:func:`normalise_landmarks`)."""
        if points.dim() != 3 or points.shape[1:] != (self.cfg.n_landmarks, 2) or len(points) < 2:
            raise InputError(f"points: expected [N >= 2, {self.cfg.n_landmarks}, 2], got {tuple(points.shape)}")
        with torch.no_grad():
            p = normalise_landmarks(points.float())
            self.input_mean.copy_(p.mean(0))
            self.input_scale.copy_(p.std(0).clamp_min(min_scale))

    def set_target_statistics(self, alpha: Tensor, beta: Tensor, min_scale: float = 1e-3) -> None:
        """Output mean and scale per dimension from training targets ``alpha [N, r]``, ``beta [N, k]``."""
        for name, v, dim in (("alpha", alpha, self.cfg.alpha_dims), ("beta", beta, self.cfg.beta_dims)):
            if v.dim() != 2 or v.shape[1] != dim or len(v) < 2:
                raise InputError(f"{name}: expected targets [N >= 2, {dim}], got {tuple(v.shape)}")
        with torch.no_grad():
            self.alpha_mean.copy_(alpha.float().mean(0))
            self.alpha_scale.copy_(alpha.float().std(0).clamp_min(min_scale))
            self.beta_mean.copy_(beta.float().mean(0))
            self.beta_scale.copy_(beta.float().std(0).clamp_min(min_scale))

    def tokens(self, points: Tensor) -> Tensor:
        """Input tokens ``[B, G, C]`` of pixel detections ``[B, L, 2]``."""
        cfg = self.cfg
        if points.dim() != 3 or points.shape[1:] != (cfg.n_landmarks, 2) or not points.is_floating_point():
            raise InputError(f"landmarks: expected float [B, {cfg.n_landmarks}, 2] pixels, got "
                             f"{tuple(points.shape)} {points.dtype}")
        p = (normalise_landmarks(points.float()) - self.input_mean) / self.input_scale
        p = p[:, self.order]  # [B, G * g, 2]
        p = p.reshape(len(p), cfg.n_tokens, 2 * cfg.group_size)
        return torch.einsum("bgi,gic->bgc", p, self.embed_weight) + self.embed_bias + self.token_id

    def forward(self, points: Tensor) -> LandmarkRegressorOutput:
        """Codes for detections ``points [B, L, 2]`` (pixels, any image size; only their shape matters)."""
        x = self.tokens(points)
        x = torch.cat([self.class_tokens.expand(len(x), -1, -1), x], 1)  # [B, 2 + G, C]
        for blk in self.blocks:
            x = blk(x)
        c = self.norm(x[:, :2])
        beta = self.beta_head(c[:, :1])[:, 0]
        alpha = self.alpha_head(c[:, 1:2])[:, 0]
        return LandmarkRegressorOutput(alpha=self.alpha_mean + self.alpha_scale * alpha,
                                       beta=self.beta_mean + self.beta_scale * beta)


# --- checkpoints ----------------------------------------------------------------------------------------

def save_landmark_regressor(path: PathLike, model: LandmarkRegressor, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write the regressor (config, weights, grouping and target statistics) and plain-type ``meta``."""
    from model.checkpoint import save_module_checkpoint

    return save_module_checkpoint(path, model, model.cfg.to_dict(), LANDMARK_REGRESSOR_FORMAT,
                                  LANDMARK_REGRESSOR_FORMAT_VERSION, meta)


def load_landmark_regressor(path: PathLike) -> tuple[LandmarkRegressor, dict[str, Any]]:
    """Read :func:`save_landmark_regressor`'s file: ``(regressor in eval mode, meta)``."""
    from model.checkpoint import load_module_payload, load_state_strict

    payload = load_module_payload(path, LANDMARK_REGRESSOR_FORMAT, LANDMARK_REGRESSOR_FORMAT_VERSION)
    model = LandmarkRegressor(LandmarkRegressorConfig.from_dict(payload["config"], source=str(path)))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in (payload.get("state_dict") or {}).items()}
    load_state_strict(model, state, str(path))
    return model.eval(), dict(payload.get("meta") or {})
