"""Face landmarks tied to the head model: MediaPipe Face Mesh's 478 points and iBUG-68.

Three pieces, all in model units (1 unit = 250 mm; canonical frame of :mod:`train.frame`):

- :class:`LandmarkEmbedding`: each landmark is a fixed point on the ICT-FaceKit surface, three vertex ids
  and barycentric weights in ICT topology (built by ``nphm-train landmark-embedding``, which runs the real
  detector on renders and ray-casts its points; see :mod:`train.landmark_assets`). ``points(vertices)``
  gives the landmarks of any ICT head.
- :class:`LandmarkMap`: the canonical landmarks of an identity code, ``c(z_id) = mean + B A (z_id - z0)``,
  a ridge regression fitted to the head model's training identities, whose ICT geometry is known (the head
  model's canonical space *is* each identity's ICT neutral face: its deformation is trained on ICT
  correspondences). Linear in ``z_id``, so differentiable; ``A`` spans the training codes' principal
  directions (``[r, D_id]``, orthonormal rows), so only the part of ``z_id`` the training codes vary in moves
  the landmarks. The same basis gives the whitened identity coordinates the tracker optimises
  (:meth:`LandmarkMap.code_of`).
- :func:`posed_landmarks`: canonical landmarks -> posed (head frame, expression ``z_ex``) by inverting the
  backward deformation at those points, with implicit gradients (:func:`model.topology.invert_deformation`),
  exactly as the fixed-topology mesh is animated; and :func:`linearised_posed`, the one-Newton-step form the
  Gauss-Newton tracker differentiates in forward mode.

An official MonoNPHM checkpoint has no ICT correspondences, so no :class:`LandmarkMap` can be fitted for it
here; its anchors are the only canonical points it defines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from model.errors import InputError
from model.topology import InversionResult, invert_deformation

N_MEDIAPIPE = 478
"""MediaPipe Face Mesh with refined landmarks: 468 face points + 2 x 5 iris points."""
N_IBUG = 68


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmarks as points on the ICT-FaceKit surface (ICT topology, any identity or expression).

    Attributes:
        vertex_ids: ``[L, 3]`` int64 ICT vertex ids of the triangle holding each landmark.
        bary: ``[L, 3]`` barycentric weights (rows sum to 1).
        spread_mm: ``[L]`` robust spread of the per-render ray-cast hits around the embedded point (mm);
            NaN where unknown (iBUG-68, taken from ICT's own vertex ids).
        weight: ``[L]`` in [0, 1], down-weighting landmarks with a large spread.
    """

    vertex_ids: np.ndarray
    bary: np.ndarray
    spread_mm: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        L = len(self.vertex_ids)
        if self.vertex_ids.shape != (L, 3) or self.bary.shape != (L, 3):
            raise InputError(f"LandmarkEmbedding: vertex_ids and bary must be [L, 3], got "
                             f"{self.vertex_ids.shape} and {self.bary.shape}")
        if self.spread_mm.shape != (L,) or self.weight.shape != (L,):
            raise InputError(f"LandmarkEmbedding: spread_mm and weight must be [L={L}]")

    def __len__(self) -> int:
        return len(self.vertex_ids)

    def points(self, vertices: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Landmarks ``[..., L, 3]`` of ICT vertices ``[..., V, 3]`` (numpy or torch, same units)."""
        if vertices.shape[-1] != 3:
            raise InputError(f"vertices must be [..., V, 3], got {tuple(vertices.shape)}")
        tri = vertices[..., self.vertex_ids, :]  # [..., L, 3, 3]
        bary = self.bary if isinstance(vertices, np.ndarray) else torch.as_tensor(self.bary, dtype=vertices.dtype,
                                                                                   device=vertices.device)
        return (tri * bary[..., None]).sum(-2)


def vertex_embedding(vertex_ids: np.ndarray) -> LandmarkEmbedding:
    """An embedding whose landmarks are mesh vertices (bary one-hot), e.g. ICT's ``landmarks_multipie68``."""
    v = np.asarray(vertex_ids, dtype=np.int64)
    if v.ndim != 1:
        raise InputError(f"vertex_ids must be [L], got {v.shape}")
    n = len(v)
    return LandmarkEmbedding(vertex_ids=np.repeat(v[:, None], 3, 1), bary=np.tile([1.0, 0.0, 0.0], (n, 1)),
                             spread_mm=np.full(n, np.nan), weight=np.ones(n))


# --- the identity -> canonical landmark map ------------------------------------------------------------

def fit_linear_map(z: Tensor, y: Tensor, ridge: float, rank: Optional[int] = None, min_singular: float = 1e-6
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Ridge regression ``y ~ y0 + ((z - z0) A^T) B`` in the principal subspace of the codes.

    Args:
        z: ``[N, D]`` codes; y: ``[N, M]`` targets.
        ridge: penalty on ``B`` in whitened coordinates (the codes' principal coordinates divided by their
            std), so it is unitless: 0 is least squares.
        rank: keep at most this many principal directions (default: all, up to the numerical rank).
    Returns:
        ``z0 [D]``, ``A [r, D]`` (orthonormal rows, the principal directions), ``scale [r]`` (std of the codes
        along them), ``y0 [M]``, ``B [r, M]`` with ``r`` the numerical rank of the centred codes.
    """
    if z.dim() != 2 or y.dim() != 2 or len(z) != len(y) or len(z) < 2:
        raise InputError(f"fit_linear_map: need z [N, D] and y [N, M] with N >= 2, got {tuple(z.shape)}, "
                         f"{tuple(y.shape)}")
    z, y = z.double(), y.double()
    z0, y0 = z.mean(0), y.mean(0)
    U, S, Vt = torch.linalg.svd(z - z0, full_matrices=False)
    keep = S > min_singular * S[0]
    if rank is not None:
        keep[rank:] = False
    A, S = Vt[keep], S[keep]  # [r, D], [r]
    scale = S / np.sqrt(len(z) - 1)
    a = ((z - z0) @ A.T) / scale  # [N, r] whitened coordinates
    B = torch.linalg.solve(a.T @ a + ridge * torch.eye(len(S), dtype=z.dtype), a.T @ (y - y0))  # [r, M]
    return z0, A, scale, y0, B / scale[:, None]


class LandmarkMap(nn.Module):
    """Canonical landmarks ``[B, L, 3]`` (model units) of identity codes ``[B, D_id]`` (module docstring).

    Buffers: ``z0 [D]``, ``basis [r, D]`` (orthonormal), ``scale [r]`` (training codes' std along each basis
    direction), ``y0 [L, 3]``, ``B [r, L, 3]``.
    """

    def __init__(self, z0: Tensor, basis: Tensor, scale: Tensor, y0: Tensor, B: Tensor):
        super().__init__()
        r, d = basis.shape
        if z0.shape != (d,) or scale.shape != (r,) or y0.dim() != 2 or y0.shape[1] != 3 or B.shape != (r, *y0.shape):
            raise InputError(f"LandmarkMap: inconsistent shapes z0 {tuple(z0.shape)}, basis {tuple(basis.shape)}, "
                             f"scale {tuple(scale.shape)}, y0 {tuple(y0.shape)}, B {tuple(B.shape)}")
        for name, value in (("z0", z0), ("basis", basis), ("scale", scale), ("y0", y0), ("B", B)):
            self.register_buffer(name, value.float())

    @classmethod
    def fit(cls, z_id: Tensor, landmarks: Tensor, ridge: float = 1.0, rank: Optional[int] = None) -> "LandmarkMap":
        """Fit to codes ``[N, D]`` and their canonical landmarks ``[N, L, 3]`` (:func:`fit_linear_map`)."""
        if landmarks.dim() != 3 or landmarks.shape[-1] != 3:
            raise InputError(f"landmarks must be [N, L, 3], got {tuple(landmarks.shape)}")
        n, L, _ = landmarks.shape
        z0, A, scale, y0, B = fit_linear_map(z_id, landmarks.reshape(n, -1), ridge, rank)
        return cls(z0, A, scale, y0.view(L, 3), B.view(len(A), L, 3))

    @property
    def n_landmarks(self) -> int:
        return self.y0.shape[0]

    @property
    def rank(self) -> int:
        return self.basis.shape[0]

    def coordinates(self, z_id: Tensor) -> Tensor:
        """Whitened identity coordinates ``[..., r]`` of codes ``[..., D]`` (0 at the training mean)."""
        return ((z_id - self.z0) @ self.basis.T) / self.scale

    def code_of(self, alpha: Tensor) -> Tensor:
        """Codes ``[..., D]`` of whitened coordinates ``[..., r]`` (the mean code plus the basis part)."""
        return self.z0 + (alpha * self.scale) @ self.basis

    def from_coordinates(self, alpha: Tensor) -> Tensor:
        """Canonical landmarks ``[..., L, 3]`` of whitened coordinates ``[..., r]``."""
        return self.y0 + torch.einsum("...r,rlc->...lc", alpha * self.scale, self.B)

    def recentred(self, alpha: Tensor) -> "LandmarkMap":
        """The same map with its coordinates' origin moved to ``alpha [r]``: ``new.code_of(a) ==
        self.code_of(alpha + a)`` (the tracker's identity prior pulls towards the origin)."""
        alpha = torch.as_tensor(alpha, dtype=self.scale.dtype)
        if alpha.shape != (self.rank,):
            raise InputError(f"recentred needs alpha [{self.rank}], got {tuple(alpha.shape)}")
        return LandmarkMap(self.code_of(alpha), self.basis, self.scale, self.from_coordinates(alpha), self.B)

    def forward(self, z_id: Tensor) -> Tensor:
        if z_id.shape[-1] != self.basis.shape[1]:
            raise InputError(f"z_id must be [..., {self.basis.shape[1]}], got {tuple(z_id.shape)}")
        return self.from_coordinates(self.coordinates(z_id))


# --- assets ----------------------------------------------------------------------------------------------

REGIONS = ("other", "contour", "brows", "eyes", "lips", "iris", "nose")
"""Region names of :attr:`LandmarkAssets.region` (index = id)."""


@dataclass
class LandmarkAssets:
    """What the tracker needs: the embeddings (478 MediaPipe + 68 iBUG), the map of one head model, and the
    MediaPipe landmarks' regions and eyelid pairs.

    Attributes:
        region: ``[478]`` int, index into :data:`REGIONS`.
        lid_pairs: ``[P, 2]`` (upper lid, lower lid) landmark ids, vertically opposite on one eye.
        lid_corners: ``[P, 2]`` the two corner ids of that pair's eye (its width).
    """

    mediapipe: LandmarkEmbedding
    ibug68: LandmarkEmbedding
    landmark_map: LandmarkMap  # outputs the 478 MediaPipe landmarks, then the 68 iBUG ones
    region: np.ndarray
    lid_pairs: np.ndarray
    lid_corners: np.ndarray
    meta: dict[str, Any]

    @property
    def n_mediapipe(self) -> int:
        return len(self.mediapipe)


def save_landmark_assets(path: str | Path, assets: LandmarkAssets) -> Path:
    """Write the assets to one ``.npz`` (temporary name, then renamed)."""
    import json
    import os

    path = Path(path)
    m = assets.landmark_map
    arrays = {"mp_vertex_ids": assets.mediapipe.vertex_ids, "mp_bary": assets.mediapipe.bary,
              "mp_spread_mm": assets.mediapipe.spread_mm, "mp_weight": assets.mediapipe.weight,
              "ibug_vertex_ids": assets.ibug68.vertex_ids, "ibug_bary": assets.ibug68.bary,
              "map_z0": m.z0.numpy(), "map_basis": m.basis.numpy(), "map_scale": m.scale.numpy(),
              "map_y0": m.y0.numpy(), "map_B": m.B.numpy(), "region": assets.region,
              "lid_pairs": assets.lid_pairs, "lid_corners": assets.lid_corners,
              "meta": np.array(json.dumps(assets.meta))}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_landmark_assets(path: str | Path) -> LandmarkAssets:
    """Read :func:`save_landmark_assets`' file; :class:`InputError` naming the file when it is not one."""
    import json

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            a = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a landmark asset file ({exc})") from exc
    need = {"mp_vertex_ids", "mp_bary", "mp_spread_mm", "mp_weight", "ibug_vertex_ids", "ibug_bary", "map_z0",
            "map_basis", "map_scale", "map_y0", "map_B", "region", "lid_pairs", "lid_corners"}
    if not need <= set(a):
        raise InputError(f"{path}: landmark asset file lacks {sorted(need - set(a))}")
    n68 = len(a["ibug_vertex_ids"])
    mp = LandmarkEmbedding(a["mp_vertex_ids"].astype(np.int64), a["mp_bary"].astype(np.float64),
                           a["mp_spread_mm"].astype(np.float64), a["mp_weight"].astype(np.float64))
    ib = LandmarkEmbedding(a["ibug_vertex_ids"].astype(np.int64), a["ibug_bary"].astype(np.float64),
                           np.full(n68, np.nan), np.ones(n68))
    lmap = LandmarkMap(*(torch.from_numpy(a[k]) for k in ("map_z0", "map_basis", "map_scale", "map_y0", "map_B")))
    if lmap.n_landmarks != len(mp) + len(ib):
        raise InputError(f"{path}: the map gives {lmap.n_landmarks} landmarks, the embeddings {len(mp) + len(ib)}")
    meta = json.loads(str(a["meta"])) if "meta" in a else {}
    return LandmarkAssets(mediapipe=mp, ibug68=ib, landmark_map=lmap, region=a["region"].astype(np.int64),
                          lid_pairs=a["lid_pairs"].astype(np.int64), lid_corners=a["lid_corners"].astype(np.int64),
                          meta=meta)


# --- posing ----------------------------------------------------------------------------------------------

def posed_landmarks(layer: Any, canonical: Tensor, z_id: Tensor, z_ex: Tensor, x_init: Optional[Tensor] = None,
                    **solver: Any) -> InversionResult:
    """Posed landmarks (head frame, model units) of canonical landmarks ``[B, L, 3]`` for codes
    ``z_id [B, D_id]``, ``z_ex [B, D_ex]``: the points ``x`` with ``x + offsets(x) = canonical``.

    ``x_init [B, L, 3]`` warm-starts the solver (default: the canonical points). Differentiable with respect to
    the canonical points and the codes (implicit function theorem); see
    :func:`model.topology.invert_deformation` for ``solver`` options.
    """
    if canonical.dim() != 3 or canonical.shape[-1] != 3 or z_id.dim() != 2 or z_ex.dim() != 2:
        raise InputError(f"posed_landmarks: need canonical [B, L, 3], z_id [B, D_id], z_ex [B, D_ex]; got "
                         f"{tuple(canonical.shape)}, {tuple(z_id.shape)}, {tuple(z_ex.shape)}")

    def canonical_fn(x: Tensor) -> Tensor:
        return x + layer.deform(x, z_id, z_ex).offsets

    return invert_deformation(canonical_fn, canonical, x_init, **solver)


def linearised_posed(layer: Any, x_star: Tensor, inv_jacobian: Tensor, canonical: Tensor, z_id: Tensor,
                     z_ex: Tensor) -> Tensor:
    """One Newton step of the inversion from ``x_star [B, L, 3]`` for the given codes and canonical points:
    ``x = x* - J^{-1} (x* + offsets(x*; z) - canonical)`` with ``J^{-1} [B, L, 3, 3]`` held fixed.

    At a solution for the current codes its value is ``x*`` and its derivatives are the implicit-function
    ones; away from it, it is the Newton update. It is a plain function of the codes (no solver loop), so
    forward-mode Jacobians (``torch.func.jacfwd``) go through it: the Gauss-Newton tracker's route.
    """
    d = x_star + layer.deform(x_star, z_id, z_ex).offsets - canonical  # [B, L, 3]
    return x_star - (inv_jacobian @ d.unsqueeze(-1)).squeeze(-1)
