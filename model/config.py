"""Sizes of the neural parametric head model, as one frozen dataclass with named presets.

Two presets exist:

* ``"mononphm"``: the sizes published with MonoNPHM (Giebenhain et al. 2024), taken from
  ``scripts/configs/mononphm.yaml`` and ``src/mononphm/models/{canonical_space,deformations}.py`` of
  github.com/SimonGiebenhain/MonoNPHM. Official checkpoints load into it (``model.checkpoint``).
* ``"default"``: the same structure, small enough to train on 2 CPU cores within about an hour and to
  evaluate at interactive rates (see :func:`preset` for the choice and the reasons).

Coordinates are in MonoNPHM's model units: the head spans roughly [-0.5, 0.5] per axis (about 4 dm per
unit), +x is the subject's left, +y up, +z towards the camera (the face looks along +z). Symmetric anchor
pairs are mirror images across the plane x = 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.errors import InputError


@dataclass(frozen=True)
class HeadConfig:
    """Sizes and fixed constants of the head network; every field is fixed at construction.

    Layout conventions (shared with the MonoNPHM release): anchors ``0 .. 2*n_symmetric_pairs-1`` are the
    symmetric pairs, stored as consecutive (even, odd) members whose odd member sees its offset mirrored
    in x; the remaining ``n_anchors - 2*n_symmetric_pairs`` anchors lie on the mid-plane. One extra
    "global" member (no anchor, fixed blending distance) sees the raw canonical point. The identity code
    is ``[global (id_global_dim), local_0 .. local_{n_anchors} (id_local_dim each)]``, the last local
    code belonging to the global member; the appearance code has the same layout with its own sizes.

    ``default`` preset choice (see :func:`preset`): 29 anchors (12 pairs + 5 middle) instead of 65, so a
    face is still covered by several anchors per region; K = 6 neighbours with the blending std taken from
    the 6th (7 MLP evaluations per point instead of 13); geometry members 3 hidden layers of width 32;
    deformation MLP 4 x 64 with the skip at layer 2; identity 32 + 30 x 16 = 512, expression 64 (room for
    the 53 ICT blendshapes plus jaw/eye motion); appearance off (the tracker fits geometry; colour comes
    from the video). Why: on the project's 2-core CPU the cost is dominated by the Softplus evaluations
    and the bmm of each evaluated member (K + 1 per point), so throughput scales with
    ``(K + 1) * sdf_layers * sdf_hidden``. Measured per core (CPU time, shared machine, +-30 %): K = 8 /
    width 64 ~90k posed SDF points/s, K = 6 / width 48 ~120-190k, K = 6 / width 32 ~270k, which keeps
    the >= 200k points/s target with a margin; the deformation MLP runs at ~1M points/s per core and its
    forward-mode Jacobian for 20k vertices takes ~0.1 s per core (``tests/benchmarks/bench_head.py``).
    """

    # --- anchors and blending -------------------------------------------------------------------------
    n_anchors: int = 65
    """Number of anchors (local MLP centres); ``2 * n_symmetric_pairs`` of them form mirror pairs."""
    n_symmetric_pairs: int = 30
    """Number of mirror pairs among the anchors; each pair shares one MLP, the odd member mirrored in x."""
    k_nearest: int = 12
    """Number of nearest anchors blended at each point (the global member is always added on top)."""
    blend_std_neighbour: int = 8
    """The Gaussian blending std is the distance to this-th nearest anchor divided by
    ``blend_std_divisor``. MonoNPHM hard-codes 8 whatever K is; must be <= ``k_nearest``."""
    blend_std_divisor: float = 3.75
    """Divisor turning the neighbour distance into the Gaussian std (MonoNPHM ``blend_std``)."""
    global_distance: float = 0.75
    """Fixed distance (model units) at which the global member enters the Gaussian blending."""
    anchor_hidden: int = 64
    """Width of the two hidden ReLU layers of the MLP predicting anchor offsets from the global code."""

    # --- identity geometry code and SDF ensemble ------------------------------------------------------
    id_global_dim: int = 64
    """Size of the global part of the identity (geometry) code."""
    id_local_dim: int = 32
    """Size of each of the ``n_anchors + 1`` local parts of the identity (geometry) code."""
    sdf_hidden: int = 200
    """Width of the hidden layers of every SDF ensemble member."""
    sdf_layers: int = 4
    """Number of hidden layers of every SDF ensemble member (no skip connection)."""
    softplus_beta: float = 100.0
    """Beta of the Softplus activations of the SDF and deformation MLPs (threshold 20, as torch)."""

    # --- expression and deformation -------------------------------------------------------------------
    expr_dim: int = 100
    """Size of the expression code."""
    id_compressed_dim: int = 16
    """Size of the identity summary given to the deformation MLP, a linear map of the full geometry code
    concatenated with the flattened anchor positions."""
    deform_hidden: int = 400
    """Width of the hidden layers of the backward deformation MLP."""
    deform_layers: int = 6
    """Number of hidden layers of the backward deformation MLP."""
    deform_skip: int = 3
    """Index of the deformation layer whose input is ``[hidden, x, cond] / sqrt(2)`` (MonoNPHM uses
    ``deform_layers // 2``); -1 disables the skip."""
    n_hyper: int = 2
    """Number of hyper-dimensions predicted by the deformation MLP and fed to the canonical SDF."""

    # --- appearance -------------------------------------------------------------------------------------
    appearance: bool = True
    """Whether the appearance (RGB) ensemble exists. It needs an appearance code at evaluation."""
    app_global_dim: int = 64
    """Size of the global part of the appearance code."""
    app_local_dim: int = 32
    """Size of each of the ``n_anchors + 1`` local parts of the appearance code."""
    app_hidden: int = 200
    """Width of the hidden ReLU layers of every appearance ensemble member."""
    app_layers: int = 4
    """Number of hidden layers of every appearance ensemble member."""
    app_bottleneck: int = 16
    """Width of the bottleneck (Linear-ReLU-Linear) carrying geometry features to the appearance MLPs."""

    # --- evaluation strategy (does not change results) ------------------------------------------------
    evaluation: str = "knn"
    """How the ensemble is evaluated: ``"knn"`` runs each local MLP only on the points that have its
    anchor among their K nearest (bucketed per anchor, padded, batched matmuls); ``"dense"`` runs every
    local MLP on every point and zeroes the weights outside the K nearest. Both give the same values;
    ``knn`` measured 4-6x faster on CPU for both presets (``tests/benchmarks/bench_head.py``)."""

    def __post_init__(self) -> None:
        positive = [f.name for f in dataclasses.fields(self)
                    if f.type in ("int", "float") and f.name not in ("n_symmetric_pairs", "n_hyper", "deform_skip")
                    and getattr(self, f.name) <= 0]
        if positive:
            raise InputError(f"HeadConfig: fields must be positive: {', '.join(positive)}")
        if self.n_symmetric_pairs < 0 or 2 * self.n_symmetric_pairs > self.n_anchors:
            raise InputError(f"HeadConfig: n_symmetric_pairs={self.n_symmetric_pairs} needs 0 <= 2 * pairs "
                             f"<= n_anchors={self.n_anchors}")
        if not 1 <= self.k_nearest <= self.n_anchors:
            raise InputError(f"HeadConfig: k_nearest={self.k_nearest} must be in [1, n_anchors={self.n_anchors}]")
        if not 1 <= self.blend_std_neighbour <= self.k_nearest:
            raise InputError(f"HeadConfig: blend_std_neighbour={self.blend_std_neighbour} must be in "
                             f"[1, k_nearest={self.k_nearest}]")
        if self.n_hyper < 0:
            raise InputError(f"HeadConfig: n_hyper={self.n_hyper} must be >= 0")
        if not (self.deform_skip == -1 or 1 <= self.deform_skip < self.deform_layers):
            raise InputError(f"HeadConfig: deform_skip={self.deform_skip} must be -1 or in [1, deform_layers)")
        if self.evaluation not in ("knn", "dense"):
            raise InputError(f"HeadConfig: evaluation={self.evaluation!r} must be 'knn' or 'dense'")

    # --- derived sizes ----------------------------------------------------------------------------------
    @property
    def id_dim(self) -> int:
        """Size of the identity geometry code: global + (n_anchors + 1) * local (mononphm: 2176)."""
        return self.id_global_dim + (self.n_anchors + 1) * self.id_local_dim

    @property
    def app_dim(self) -> int:
        """Size of the appearance code (0 when appearance is off)."""
        if not self.appearance:
            return 0
        return self.app_global_dim + (self.n_anchors + 1) * self.app_local_dim

    @property
    def n_middle(self) -> int:
        """Number of anchors on the mid-plane (not in a pair)."""
        return self.n_anchors - 2 * self.n_symmetric_pairs

    @property
    def n_members(self) -> int:
        """Number of distinct ensemble MLPs: one per pair, one per middle anchor, one global."""
        return self.n_symmetric_pairs + self.n_middle + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict of all fields (stored inside checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "HeadConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError` naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"{source}: unknown HeadConfig fields: {', '.join(unknown)}")
        return cls(**d)


def _default() -> HeadConfig:
    return HeadConfig(
        n_anchors=29, n_symmetric_pairs=12, k_nearest=6, blend_std_neighbour=6,
        anchor_hidden=32,
        id_global_dim=32, id_local_dim=16, sdf_hidden=32, sdf_layers=3,
        expr_dim=64, id_compressed_dim=16, deform_hidden=64, deform_layers=4, deform_skip=2, n_hyper=2,
        appearance=False,
        evaluation="knn",
    )


def _mononphm() -> HeadConfig:
    return HeadConfig(evaluation="knn")


_PRESETS = {"default": _default, "mononphm": _mononphm}


def preset_names() -> list[str]:
    """Names accepted by :func:`preset`."""
    return sorted(_PRESETS)


def preset(name: str) -> HeadConfig:
    """The named configuration: ``"mononphm"`` (published sizes) or ``"default"`` (small, CPU-friendly).

    Unknown names raise :class:`InputError` listing the presets.
    """
    if name not in _PRESETS:
        raise InputError(f"unknown head preset {name!r}; choose one of: {', '.join(preset_names())}")
    return _PRESETS[name]()
