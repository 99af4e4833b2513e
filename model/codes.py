"""Statistics of a head model's training codes, and the projection of codes onto their plausible region.

An auto-decoded head model (:mod:`model.head`) is only trained at and between its training codes; far
outside them its SDF is unconstrained and the zero level set grows stray sheets ("flaps") through the
whole box. The statistics here whiten a code per dimension by the training codes' mean and standard
deviation; a code's *radius* is the root mean square of its whitened entries (about 1 for a training
code). :meth:`CodeStatistics.project` shrinks any code whose radius exceeds the largest radius among the
training codes onto that sphere, keeping its direction (as 3DMM fitting clamps coefficients to a few
standard deviations). Identity and expression codes are treated separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from model.errors import InputError


def whitened_mean_square(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``[...]`` mean square of ``(z - mean) / std`` over the last axis of codes ``z [..., D]`` (smooth at
    ``mean``, unlike its square root)."""
    return ((z - mean) / std).square().mean(-1)


def whitened_radius(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``[...]`` root mean square of ``(z - mean) / std`` over the last axis of codes ``z [..., D]``."""
    return whitened_mean_square(z, mean, std).sqrt()


def shrink_to_radius(z: Tensor, mean: Tensor, std: Tensor, max_radius: float) -> Tensor:
    """Codes ``z [..., D]`` whose :func:`whitened_radius` exceeds ``max_radius`` moved towards ``mean`` onto
    that radius (direction kept); the others unchanged."""
    r = whitened_radius(z, mean, std)[..., None]  # [..., 1]
    factor = torch.clamp(max_radius / r.clamp_min(1e-12), max=1.0)
    return mean + (z - mean) * factor


@dataclass(frozen=True)
class CodeStatistics:
    """Per-dimension mean and std of the training codes, the start expression and the largest radii."""

    id_mean: Tensor  # [D_id]
    id_std: Tensor  # [D_id]
    ex_mean: Tensor  # [D_ex]
    ex_std: Tensor  # [D_ex]
    ex_start: Tensor  # [D_ex] mean neutral expression code (the mean code without neutral flags)
    id_max_radius: float  # largest whitened radius of a training identity code
    ex_max_radius: float  # largest whitened radius of a training expression code

    @classmethod
    def of(cls, codes: dict[str, Tensor], min_std: float = 1e-3) -> "CodeStatistics":
        """From a head checkpoint's code tables (``z_id [N, D_id]``, ``z_ex [M, D_ex]``, optional
        ``is_neutral [M]``); the std is at least ``min_std``."""
        if "z_id" not in codes or "z_ex" not in codes:
            raise InputError("head checkpoint: holds no code tables (z_id, z_ex); is it a head model trained here?")
        z_id, z_ex = codes["z_id"].detach().float(), codes["z_ex"].detach().float()
        if z_id.ndim != 2 or z_ex.ndim != 2 or len(z_id) < 2 or len(z_ex) < 2:
            raise InputError(f"code tables: expected z_id [N, D] and z_ex [M, D] with N, M >= 2, got "
                             f"{tuple(z_id.shape)} and {tuple(z_ex.shape)}")
        neutral = codes.get("is_neutral")
        start = z_ex[neutral.bool()].mean(0) if neutral is not None and bool(neutral.any()) else z_ex.mean(0)
        id_mean, id_std = z_id.mean(0), z_id.std(0, unbiased=False).clamp_min(min_std)
        ex_mean, ex_std = z_ex.mean(0), z_ex.std(0, unbiased=False).clamp_min(min_std)
        return cls(id_mean, id_std, ex_mean, ex_std, start,
                   float(whitened_radius(z_id, id_mean, id_std).max()),
                   float(whitened_radius(z_ex, ex_mean, ex_std).max()))

    @classmethod
    def maybe(cls, codes: dict[str, Tensor]) -> Optional["CodeStatistics"]:
        """:meth:`of`, or ``None`` for a checkpoint without usable code tables (e.g. an official one)."""
        try:
            return cls.of(codes)
        except InputError:
            return None

    def to(self, device: torch.device | str) -> "CodeStatistics":
        return CodeStatistics(self.id_mean.to(device), self.id_std.to(device), self.ex_mean.to(device),
                              self.ex_std.to(device), self.ex_start.to(device), self.id_max_radius,
                              self.ex_max_radius)

    def whitened_square(self, z_id: Tensor, z_ex: Tensor) -> Tensor:
        """``[B]`` mean squared whitened identity code plus the same for the expression code."""
        return whitened_mean_square(z_id, self.id_mean, self.id_std) + whitened_mean_square(z_ex, self.ex_mean,
                                                                                             self.ex_std)

    def project(self, z_id: Tensor, z_ex: Tensor) -> tuple[Tensor, Tensor]:
        """Codes ``[..., D_id]``, ``[..., D_ex]`` shrunk onto the training codes' largest radii (module
        docstring); codes inside are returned unchanged."""
        return (shrink_to_radius(z_id, self.id_mean, self.id_std, self.id_max_radius),
                shrink_to_radius(z_ex, self.ex_mean, self.ex_std, self.ex_max_radius))
