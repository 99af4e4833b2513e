"""Training tensors for the head model: the SDF samples of ``nphm-train data heads`` plus what ICT gives free.

Beside the SDF samples on disk (:mod:`train.heads_data`), ICT-FaceKit's fixed topology gives two kinds of
supervision that MonoNPHM had to compute from registrations:

- **correspondences**: the same skin vertex in the posed head and in the neutral head of the same identity
  (MonoNPHM's ``corresp_posed`` / ``corresp_neutral``), which teach the backward deformation directly;
- **anchors**: the canonical (neutral-expression) positions of a fixed set of skin vertices, chosen once
  per kit as a mirror-symmetric farthest-point layout in the anchor order of :mod:`model.anchors` (pairs
  ``2i``/``2i+1`` with the even member at +x, then the mid-plane anchors). MonoNPHM supervises its
  anchor positions with landmarks in the same way (its ``gt_anchors``).

All positions are model units (:mod:`train.frame`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.errors import InputError
from train import frame
from train.ict import PARTS, IctFaceKit

SKIN = range(PARTS["face"].start, PARTS["head_neck"].stop)  # vertices used for correspondences / anchors


def anchor_vertices(kit: IctFaceKit, n_pairs: int, n_middle: int, min_y: float = frame.NECK_CUT_Y + 0.1,
                    mid_tol: float = 0.004) -> np.ndarray:
    """Skin vertex indices ``[2 * n_pairs + n_middle]`` for the anchors, in :mod:`model.anchors` order.

    Farthest-point sampling on the neutral mean head: pairs from the vertices at x > 0.02 units (each
    paired with the skin vertex nearest to its mirror image), middle anchors from the vertices with
    ``|x| < mid_tol``; only vertices above ``min_y`` (away from the neck cut) are used. Deterministic.
    """
    v = frame.ict_to_model(kit.neutral.astype(np.float64))[: SKIN.stop]  # [Vs, 3]
    ok = v[:, 1] > min_y
    left = np.flatnonzero(ok & (v[:, 0] > 0.02))
    mid = np.flatnonzero(ok & (np.abs(v[:, 0]) < mid_tol))
    if len(left) < n_pairs or len(mid) < n_middle:
        raise InputError(f"anchor layout: not enough skin vertices for {n_pairs} pairs and {n_middle} middle anchors")
    pick_left = left[_farthest_points(v[left], n_pairs)]
    pick_mid = mid[_farthest_points(v[mid], n_middle)] if n_middle else np.zeros(0, np.int64)
    mirrored = v[pick_left] * np.array([-1.0, 1.0, 1.0])
    partner = np.array([ok.nonzero()[0][np.argmin(np.linalg.norm(v[ok] - m, axis=1))] for m in mirrored])
    pairs = np.stack([pick_left, partner], 1).reshape(-1)
    return np.concatenate([pairs, pick_mid]).astype(np.int64)


def _farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` farthest-point samples of ``points [N, 3]``, starting from the point nearest the mean."""
    if k == 0:
        return np.zeros(0, np.int64)
    chosen = [int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))]
    d = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return np.asarray(chosen, np.int64)


@dataclass
class HeadTensors:
    """Every training head in memory (float32 tensors, model units); head ``h`` has identity ``identity[h]``.

    The per-point arrays are stacked: each head has the same number of points of each kind.
    """

    identity: Tensor          # [H] int64 index into the identity codes
    is_neutral: Tensor        # [H] bool
    surface: Tensor           # [H, Ns, 3]
    normals: Tensor           # [H, Ns, 3]
    surface_is_face: Tensor   # [H, Ns] bool
    near: Tensor              # [H, Nn, 3]
    near_sdf: Tensor          # [H, Nn]
    space: Tensor             # [H, Nv, 3]
    space_sdf: Tensor         # [H, Nv]
    corr_posed: Tensor        # [H, Vs, 3] skin vertices of the posed head
    corr_neutral: Tensor      # [H, Vs, 3] the same vertices of the neutral head of the identity
    anchors: Tensor           # [n_identities, A, 3] canonical anchor positions per identity
    files: list[str]

    @property
    def n_heads(self) -> int:
        return int(self.identity.shape[0])

    @property
    def n_identities(self) -> int:
        return int(self.anchors.shape[0])


def load_training_heads(data_dir: str | Path, kit: IctFaceKit, anchor_idx: np.ndarray,
                        split: str = "train") -> HeadTensors:
    """Read the ``split`` heads of a ``nphm-train data heads`` folder and add correspondences and anchors.

    Identities are renumbered 0..n-1 in order of first appearance; the mapping is kept in ``files``.
    """
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{data_dir}: no manifest.json; make the data with `nphm-train data heads --out {data_dir}`")
    manifest = json.loads(manifest_path.read_text())
    entries = [e for e in manifest["files"] if e["split"] == split]
    if not entries:
        raise InputError(f"{manifest_path}: no heads with split {split!r}")
    id_map: dict[int, int] = {}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "identity", "is_neutral", "surface", "normals", "surface_is_face", "near", "near_sdf", "space", "space_sdf",
        "corr_posed", "corr_neutral")}
    anchors: list[np.ndarray] = []
    for e in entries:
        path = data_dir / e["file"]
        if not path.is_file():
            raise InputError(f"{path}: listed in the manifest but missing; rerun `nphm-train data heads` to finish it")
        with np.load(path) as z:
            w_id, w_ex = z["w_id"], z["w_ex"]
            ident = int(z["identity"])
            neutral = frame.ict_to_model(kit.vertices(w_id, np.zeros_like(w_ex)).astype(np.float64))
            if ident not in id_map:
                id_map[ident] = len(id_map)
                anchors.append(neutral[anchor_idx])
            neutral = neutral[: SKIN.stop]
            posed = frame.ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))[: SKIN.stop]
            keep = posed[:, 1] > frame.NECK_CUT_Y
            cols["identity"].append(np.int64(id_map[ident]))
            cols["is_neutral"].append(np.bool_(not np.any(w_ex)))
            cols["surface"].append(z["surface_points"])
            cols["normals"].append(z["surface_normals"])
            cols["surface_is_face"].append(z["surface_is_face"])
            cols["near"].append(z["near_points"])
            cols["near_sdf"].append(z["near_sdf"])
            cols["space"].append(z["space_points"])
            cols["space_sdf"].append(z["space_sdf"])
            # a fixed count per head so the arrays stack: the kept vertices, cycled
            sel = np.flatnonzero(keep)
            sel = np.resize(sel, SKIN.stop)
            cols["corr_posed"].append(posed[sel].astype(np.float32))
            cols["corr_neutral"].append(neutral[sel].astype(np.float32))
    t = {k: torch.from_numpy(np.stack(v)) for k, v in cols.items()}
    return HeadTensors(anchors=torch.from_numpy(np.stack(anchors)).float(), files=[e["file"] for e in entries], **t)
