"""A named blend-shape rig and its weight curves, written as glTF morph targets or UsdSkel blend shapes.

Unlike the point-cache writers, nothing per frame is a mesh: the file holds a base mesh, K named target
offsets and a ``[N, K]`` weight animation (the ARKit rig of :mod:`tracker.arkit`: 52 targets named after
ARKit's shapes). ``point(frame i) = base + sum_k weights[i, k] * offsets[k]``.

- ``.glb``/``.gltf``: :func:`exporters.gltf.morph_document`: the targets' names in ``mesh.extras.targetNames``
  (Blender's importer makes them shape keys), the weights as a ``weights`` animation; the head pose, when
  given, as the node's ``translation``/``rotation`` animation.
- ``.usd``/``.usdc``/``.usda``: :func:`exporters.usd.author_blendshapes` under ``/Head`` (a ``SkelRoot``):
  ``BlendShape`` prims with the names, a ``SkelAnimation`` with ``blendShapes`` and time-sampled
  ``blendShapeWeights`` as the skeleton's ``skel:animationSource``; the head pose, when given, as the
  ``SkelRoot``'s time-sampled ``xformOp:transform``.

Conventions (units, Y up, winding, frame numbers) are those of :mod:`exporters.base`. Written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import METRES_PER_UNIT, NPHM_UNITS_PER_METRE, ExportResult, atomic_path, check_colors, \
    check_faces
from model.errors import InputError

RIG_EXTENSIONS = (".glb", ".gltf", ".usd", ".usdc", ".usda")


@dataclass
class BlendShapeRig:
    """A base mesh and named target offsets (input units: NPHM model units unless said otherwise).

    Attributes:
        base: ``[V, 3]`` the mesh at all weights 0.
        offsets: ``[K, V, 3]`` each target minus the base.
        names: ``K`` target names.
    """

    base: np.ndarray
    offsets: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        self.base = np.asarray(self.base, np.float32)
        self.offsets = np.asarray(self.offsets, np.float32)
        self.names = [str(n) for n in self.names]
        if self.base.ndim != 2 or self.base.shape[1] != 3:
            raise InputError(f"BlendShapeRig: base must be [V, 3], got {list(self.base.shape)}")
        if self.offsets.ndim != 3 or self.offsets.shape[1:] != self.base.shape:
            raise InputError(f"BlendShapeRig: offsets must be [K, {len(self.base)}, 3], got {list(self.offsets.shape)}")
        if len(self.names) != len(self.offsets) or len(set(self.names)) != len(self.names):
            raise InputError(f"BlendShapeRig: need {len(self.offsets)} distinct names, got {len(self.names)}")


def check_rig_target(path: str | os.PathLike) -> None:
    """:class:`InputError` (one line) unless ``path`` is a format that can hold a blend-shape rig."""
    if Path(path).suffix.lower() not in RIG_EXTENSIONS:
        raise InputError(f"{path}: a rig (--rig arkit) needs a format with named blend shapes: "
                         f"{', '.join(RIG_EXTENSIONS)}")


def _rigid(transforms: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(translations [N, 3] scaled, rotations [N, 4] xyzw)`` of rigid ``[N, 4, 4]`` transforms."""
    from scipy.spatial.transform import Rotation

    return transforms[:, :3, 3] * scale, Rotation.from_matrix(transforms[:, :3, :3]).as_quat()


def write_rig(path: str | os.PathLike, faces: Any, rig: BlendShapeRig, weights: Any, fps: float, *,
              transforms: Any = None, units: str = "m", units_per_metre: float = NPHM_UNITS_PER_METRE,
              vertex_colors: Any = None, start_frame: int = 1, extras: dict | None = None) -> ExportResult:
    """Write ``rig`` animated by ``weights [N, K]`` to ``path`` (module docstring).

    Args:
        faces: ``[F, 3]`` vertex indices, counter-clockwise seen from outside.
        transforms: optional ``[N, 4, 4]`` rigid head transforms (column vectors, input units).
        extras: facts stored in the file (glTF ``asset.extras``, USD ``customLayerData``).
    """
    path = Path(path)
    check_rig_target(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"{path}: fps must be a positive number, got {fps}")
    if units not in METRES_PER_UNIT:
        raise InputError(f"{path}: unknown units {units!r}; known: {', '.join(METRES_PER_UNIT)}")
    w = np.asarray(weights, np.float32)
    if w.ndim != 2 or w.shape[1] != len(rig.names) or len(w) == 0:
        raise InputError(f"{path}: weights must be [N, {len(rig.names)}] with N >= 1, got {list(w.shape)}")
    if not np.isfinite(w).all():
        raise InputError(f"{path}: weights have NaN or infinite values")
    v = len(rig.base)
    faces = check_faces(faces, v, path)
    colors = check_colors(vertex_colors, v, path)
    t = None
    if transforms is not None:
        t = np.asarray(transforms, np.float64)
        if t.shape != (len(w), 4, 4) or not np.isfinite(t).all():
            raise InputError(f"{path}: transforms must be finite [{len(w)}, 4, 4], got {list(t.shape)}")
    scale = 1.0 / (float(units_per_metre) * METRES_PER_UNIT[units])
    base, offsets = rig.base * scale, rig.offsets * scale
    info = {"fps": float(fps), "start_frame": int(start_frame), "rig_targets": len(rig.names), **(extras or {})}
    ext = path.suffix.lower()
    files = [path] + ([path.with_suffix(".bin")] if ext == ".gltf" else [])  # a .gltf's buffer beside it
    with ExitStack() as stack:  # every file under a temporary name, renamed when all are written
        tmp, *bin_tmp = [stack.enter_context(atomic_path(f)) for f in files]
        if ext in (".glb", ".gltf"):
            from exporters.gltf import morph_document, save_document

            doc, blob = morph_document(faces, base, offsets, rig.names, w, fps, vertex_colors=colors, extras=info,
                                       node_motion=None if t is None else _rigid(t, scale))
            save_document(doc, blob, tmp, *((files[1].name, bin_tmp[0]) if bin_tmp else ()))
        else:
            _write_usd(tmp, faces, base, offsets, rig.names, w, fps, t, scale, METRES_PER_UNIT[units], colors,
                       int(start_frame), info)
    size = sum(f.stat().st_size for f in files)
    return ExportResult(path, len(w), v, size, files, {"rig_targets": len(rig.names)})


def _write_usd(tmp: Path, faces, base, offsets, names, weights, fps, transforms, scale, metres_per_unit, colors,
               start_frame, info) -> None:
    from pxr import Sdf, UsdSkel, Vt

    from exporters.usd import _matrix, author_blendshapes, define_mesh, new_stage

    st = new_stage(tmp, metres_per_unit, fps, start_frame)
    st.SetEndTimeCode(start_frame + len(weights) - 1)
    root = UsdSkel.Root.Define(st, "/Head")
    st.SetDefaultPrim(root.GetPrim())
    mesh = define_mesh(st, "/Head/Mesh", faces, colors)
    author_blendshapes(st, mesh, base, offsets, names, weights, start_frame)
    lo = (base[None] + np.minimum(offsets, 0).sum(0)).min(0)
    hi = (base[None] + np.maximum(offsets, 0).sum(0)).max(0)
    root.GetPrim().CreateAttribute("extent", Sdf.ValueTypeNames.Float3Array).Set(
        Vt.Vec3fArray.FromNumpy(np.stack([lo, hi]).astype(np.float32)))
    if transforms is not None:
        op = root.AddTransformOp()
        for i, m in enumerate(transforms):
            m = m.copy()
            m[:3, 3] *= scale
            op.Set(_matrix(m), start_frame + i)
    layer = st.GetRootLayer()
    layer.customLayerData = {"generator": "nphm-track exporters.rig", **info}
    layer.Save()
