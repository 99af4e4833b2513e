"""ICT-FaceKit reader: the linear head model the synthetic head world is built from.

ICT-FaceKit (USC ICT, MIT licensed) ships as a folder ``FaceXModel/`` of OBJ files that share one
topology plus ``vertex_indices.json``; the project also keeps the same numbers as one npz
(``<shared>/ict-facekit/ict_facekit_light.npz``). :func:`load_ict` reads either form into the same
:class:`IctFaceKit` arrays.

Conventions (those of ICT-FaceKit, unchanged here):

- units: centimetres;
- axes: +Y up, +Z out of the face (the face looks toward +Z), +X toward the head's left;
- a head is ``neutral + sum_k w_id[k] * identity_modes[k] + sum_j w_ex[j] * expression_modes[j]`` with
  ``w_id ~ N(0, 1)`` per mode and ``w_ex`` in [0, 1] per blendshape;
- ``identity_modes[k] = identityNNN.obj - generic_neutral_mesh.obj`` and
  ``expression_modes[j] = <name>.obj - generic_neutral_mesh.obj`` (difference in float64, stored float32).

The folder layout read (from the public ICT-VGL/ICT-FaceKit repository)::

    FaceXModel/
      generic_neutral_mesh.obj   v x y z / vt u v / usemtl M_* / f v/vt ... (quads and triangles)
      identity000.obj ... identity099.obj
      <expression>.obj           one per name in vertex_indices.json["expressions"]
      vertex_indices.json        "expressions", "idx_to_landmark_verts" (Multi-PIE 68),
                                 "idx_to_rigid_verts", "idx_to_fitting_verts", ...

Other OBJs in the folder (e.g. ``PupilDilate_L.obj``, ``cheekRaiser_L.obj``) are not part of the 53
expressions listed in the json and are ignored.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from model.errors import InputError

#: Vertex index ranges of the parts of the ICT-FaceKit topology (from its README; ``range`` is half-open).
PARTS: Mapping[str, range] = MappingProxyType({
    "face": range(0, 9409),              # the face area (the narrow face area is [0, 6706))
    "head_neck": range(9409, 11248),     # back of the head and the neck, open at the bottom
    "mouth_socket": range(11248, 13294),  # inside of the mouth, closes the skin behind the lips
    "eye_sockets": range(13294, 14062),  # inside of the eye openings, behind the eyelids
    "gums_tongue": range(14062, 17039),
    "teeth": range(17039, 21451),
    "eyeballs": range(21451, 24591),
    "eye_extras": range(24591, 25351),   # lacrimal fluid, eye blend and occlusion meshes
    "eyelashes": range(25351, 26719),
})

NPZ_FILENAME = "ict_facekit_light.npz"
_NPZ_KEYS = ("neutral", "polygons", "triangles", "uv", "polygon_uv", "polygon_material", "material_names",
             "identity_modes", "identity_names", "expression_modes", "expression_names",
             "landmarks_multipie68", "rigid_vertices", "fitting_vertices")
_IDENTITY_OBJ = re.compile(r"^identity(\d{3})\.obj$")


@dataclass(frozen=True)
class IctFaceKit:
    """The ICT-FaceKit linear head model, all parts (skin, mouth, eyes, teeth, lashes) in one topology.

    Positions are centimetres in ICT axes (+Y up, +Z out of the face, +X the head's left).
    """

    neutral: np.ndarray            # [V, 3] float32, cm
    identity_modes: np.ndarray     # [K_id, V, 3] float32, cm per unit weight (K_id = 100 in the release)
    expression_modes: np.ndarray   # [K_ex, V, 3] float32, cm at full activation (K_ex = 53)
    identity_names: tuple[str, ...]    # [K_id] identity000 ...
    expression_names: tuple[str, ...]  # [K_ex] ARKit-style names, browDown_L ... noseSneer_R
    triangles: np.ndarray          # [T, 3] int64, polygons split as quad a,b,c,d -> (a,b,c), (a,c,d)
    polygons: np.ndarray           # [P, 4] int64, OBJ polygons, triangles padded with -1
    uv: np.ndarray                 # [U, 2] float32 texture coordinates
    polygon_uv: np.ndarray         # [P, 4] int64 uv index per polygon corner, -1 padded
    polygon_material: np.ndarray   # [P] int64 index into material_names
    material_names: tuple[str, ...]  # sorted material names, M_BackHead ... M_Teeth
    landmarks68: np.ndarray        # [68] int64 vertex index of each Multi-PIE 68 landmark
    rigid_vertices: np.ndarray     # [R] int64 vertices that move rigidly with the skull
    fitting_vertices: np.ndarray   # [F] int64 vertices ICT fits scans against
    source: str = ""               # the file or folder this was read from

    @property
    def n_vertices(self) -> int:
        return int(self.neutral.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_modes.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_modes.shape[0])

    def triangle_material(self) -> np.ndarray:
        """Material index of each triangle, ``[T]`` int64 (each polygon gives 1 or 2 triangles)."""
        per_poly = np.where(self.polygons[:, 3] >= 0, 2, 1)
        return np.repeat(self.polygon_material, per_poly)

    def vertices(self, w_id: np.ndarray, w_ex: np.ndarray) -> np.ndarray:
        """Vertex positions of heads with identity weights ``w_id`` and expression weights ``w_ex``.

        Args:
            w_id: ``[..., K_id]`` identity weights (unit-variance modes).
            w_ex: ``[..., K_ex]`` expression weights, nominally in [0, 1].
        Returns:
            ``[..., V, 3]`` float32 positions in centimetres, ICT axes; batch dims broadcast.
        """
        w_id = np.asarray(w_id, dtype=np.float32)
        w_ex = np.asarray(w_ex, dtype=np.float32)
        if w_id.ndim < 1 or w_id.shape[-1] != self.n_identity:
            raise ValueError(f"w_id must have shape [..., {self.n_identity}], got {w_id.shape}")
        if w_ex.ndim < 1 or w_ex.shape[-1] != self.n_expression:
            raise ValueError(f"w_ex must have shape [..., {self.n_expression}], got {w_ex.shape}")
        batch = np.broadcast_shapes(w_id.shape[:-1], w_ex.shape[:-1])
        v = self.n_vertices
        offset = (w_id.reshape(-1, self.n_identity) @ self.identity_modes.reshape(self.n_identity, -1))
        offset = offset.reshape(w_id.shape[:-1] + (v, 3))
        expr = (w_ex.reshape(-1, self.n_expression) @ self.expression_modes.reshape(self.n_expression, -1))
        expr = expr.reshape(w_ex.shape[:-1] + (v, 3))
        out = self.neutral + offset + expr  # [..., V, 3]
        assert out.shape == batch + (v, 3)
        return out.astype(np.float32, copy=False)

    def expression_index(self, name: str) -> int:
        """Index of blendshape ``name`` in ``expression_names`` (ValueError if unknown)."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise ValueError(f"unknown ICT expression {name!r}; known: {', '.join(self.expression_names)}")

    def select_modes(self, n_identity: int | None = None,
                     expressions: Sequence[str] | None = None) -> "IctFaceKit":
        """A copy keeping the first ``n_identity`` identity modes and the named expressions (in that order)."""
        n_id = self.n_identity if n_identity is None else int(n_identity)
        if not 0 < n_id <= self.n_identity:
            raise ValueError(f"n_identity must be in [1, {self.n_identity}], got {n_identity}")
        names = self.expression_names if expressions is None else tuple(expressions)
        idx = [self.expression_index(n) for n in names]
        return replace(self, identity_modes=self.identity_modes[:n_id],
                       identity_names=self.identity_names[:n_id],
                       expression_modes=self.expression_modes[idx], expression_names=tuple(names))


def default_shared_dir() -> Path:
    """The project's shared data folder: env ``NPHM_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("NPHM_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"


def default_ict_path() -> Path:
    """Where ICT-FaceKit is looked for when no path is given.

    Env ``NPHM_ICT`` (npz or FaceXModel folder), else ``$NPHM_SHARED/ict-facekit/ict_facekit_light.npz``,
    else ``<repo>/../shared/ict-facekit/ict_facekit_light.npz``. The path may not exist.
    """
    env = os.environ.get("NPHM_ICT")
    if env:
        return Path(env)
    return default_shared_dir() / "ict-facekit" / NPZ_FILENAME


def load_ict(path: str | Path) -> IctFaceKit:
    """Read ICT-FaceKit from its npz or from the original ``FaceXModel/`` folder (same arrays either way).

    ``path`` may be the npz, the ``FaceXModel`` folder, or a folder containing ``FaceXModel/``.
    Raises :class:`InputError` (naming the path and what is wrong) if it is missing or malformed.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such ICT-FaceKit file or folder "
                         f"(expected {NPZ_FILENAME} or a FaceXModel/ folder)")
    if path.is_dir():
        folder = path / "FaceXModel" if (path / "FaceXModel").is_dir() else path
        return _load_folder(folder)
    return _load_npz(path)


# ----------------------------------------------------------------------------------------- npz form


def _load_npz(path: Path) -> IctFaceKit:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _NPZ_KEYS if k not in data.files]
            if missing:
                raise InputError(f"{path}: not an ICT-FaceKit npz, missing key(s) {', '.join(missing)}")
            arrays = {k: data[k] for k in _NPZ_KEYS}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: cannot read as an ICT-FaceKit npz ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    kit = IctFaceKit(
        neutral=arrays["neutral"].astype(np.float32),
        identity_modes=arrays["identity_modes"].astype(np.float32),
        expression_modes=arrays["expression_modes"].astype(np.float32),
        identity_names=tuple(str(s) for s in arrays["identity_names"]),
        expression_names=tuple(str(s) for s in arrays["expression_names"]),
        triangles=arrays["triangles"].astype(np.int64),
        polygons=arrays["polygons"].astype(np.int64),
        uv=arrays["uv"].astype(np.float32),
        polygon_uv=arrays["polygon_uv"].astype(np.int64),
        polygon_material=arrays["polygon_material"].astype(np.int64),
        material_names=tuple(str(s) for s in arrays["material_names"]),
        landmarks68=arrays["landmarks_multipie68"].astype(np.int64),
        rigid_vertices=arrays["rigid_vertices"].astype(np.int64),
        fitting_vertices=arrays["fitting_vertices"].astype(np.int64),
        source=str(path),
    )
    _validate(kit, path)
    return kit


def _validate(kit: IctFaceKit, path: Path) -> None:
    """Check shapes and index ranges; raise InputError naming ``path`` and the first problem."""
    v = kit.n_vertices
    checks = [
        (kit.neutral.ndim == 2 and kit.neutral.shape[1] == 3, f"neutral must be [V, 3], got {kit.neutral.shape}"),
        (kit.identity_modes.shape[1:] == (v, 3),
         f"identity_modes must be [K, {v}, 3], got {kit.identity_modes.shape}"),
        (kit.expression_modes.shape[1:] == (v, 3),
         f"expression_modes must be [K, {v}, 3], got {kit.expression_modes.shape}"),
        (len(kit.identity_names) == kit.n_identity, "identity_names and identity_modes differ in length"),
        (len(kit.expression_names) == kit.n_expression, "expression_names and expression_modes differ in length"),
        (kit.triangles.ndim == 2 and kit.triangles.shape[1] == 3,
         f"triangles must be [T, 3], got {kit.triangles.shape}"),
        (kit.polygons.ndim == 2 and kit.polygons.shape[1] == 4, f"polygons must be [P, 4], got {kit.polygons.shape}"),
        (kit.landmarks68.shape == (68,), f"landmarks must be [68], got {kit.landmarks68.shape}"),
        (kit.polygon_material.shape == (kit.polygons.shape[0],), "polygon_material must have one entry per polygon"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InputError(f"{path}: malformed ICT-FaceKit data, {msg}")
    for name, idx in (("triangles", kit.triangles), ("landmarks", kit.landmarks68),
                      ("rigid_vertices", kit.rigid_vertices), ("fitting_vertices", kit.fitting_vertices)):
        if idx.size and (idx.min() < 0 or idx.max() >= v):
            raise InputError(f"{path}: malformed ICT-FaceKit data, {name} index out of range [0, {v})")
    if kit.polygon_material.size and (kit.polygon_material.min() < 0
                                      or kit.polygon_material.max() >= len(kit.material_names)):
        raise InputError(f"{path}: malformed ICT-FaceKit data, polygon_material index out of range")


# -------------------------------------------------------------------------------------- folder form


@dataclass(frozen=True)
class _Obj:
    vertices: np.ndarray      # [V, 3] float64
    uv: np.ndarray            # [U, 2] float64
    polygons: np.ndarray      # [P, 4] int64, -1 padded
    polygon_uv: np.ndarray    # [P, 4] int64, -1 padded
    materials: tuple[str, ...]  # [P] material name per polygon


def _read_obj(path: Path, with_faces: bool) -> _Obj:
    """Minimal OBJ reader for ICT-FaceKit files: ``v``, ``vt``, ``usemtl`` and ``f`` with 3 or 4 corners."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read OBJ ({exc.strerror or exc})") from None
    try:
        vertices = np.array(" ".join(ln[2:] for ln in lines if ln.startswith("v ")).split(),
                            dtype=np.float64)
        if vertices.size % 3:
            raise ValueError("vertex lines must have exactly 3 coordinates")
        vertices = vertices.reshape(-1, 3)
        if not with_faces:
            return _Obj(vertices, np.zeros((0, 2)), np.zeros((0, 4), np.int64), np.zeros((0, 4), np.int64), ())
        uv = np.array(" ".join(ln[3:] for ln in lines if ln.startswith("vt ")).split(), dtype=np.float64)
        uv = uv.reshape(-1, 2)
        polys, puv, mats = [], [], []
        material = "default"
        for ln in lines:
            if ln.startswith("usemtl "):
                material = ln.split()[1]
            elif ln.startswith("f "):
                corners = ln.split()[1:]
                if not 3 <= len(corners) <= 4:
                    raise ValueError(f"face with {len(corners)} corners (only triangles and quads)")
                vi, ti = [-1, -1, -1, -1], [-1, -1, -1, -1]
                for c, corner in enumerate(corners):
                    parts = corner.split("/")
                    vi[c] = int(parts[0]) - 1
                    ti[c] = int(parts[1]) - 1 if len(parts) > 1 and parts[1] else -1
                polys.append(vi)
                puv.append(ti)
                mats.append(material)
    except ValueError as exc:
        raise InputError(f"{path}: malformed OBJ ({exc})") from None
    return _Obj(vertices, uv, np.array(polys, np.int64).reshape(-1, 4), np.array(puv, np.int64).reshape(-1, 4),
                tuple(mats))


def _split_triangles(polygons: np.ndarray) -> np.ndarray:
    """Quads a,b,c,d -> (a,b,c), (a,c,d), in polygon order; triangles kept. ``[P, 4] -> [T, 3]``."""
    first = polygons[:, [0, 1, 2]]
    second = polygons[:, [0, 2, 3]]
    is_quad = polygons[:, 3] >= 0
    stacked = np.stack([first, second], axis=1)  # [P, 2, 3]
    keep = np.stack([np.ones_like(is_quad), is_quad], axis=1)  # [P, 2]
    return stacked[keep]


def _load_folder(folder: Path) -> IctFaceKit:
    neutral_path = folder / "generic_neutral_mesh.obj"
    index_path = folder / "vertex_indices.json"
    for p in (neutral_path, index_path):
        if not p.is_file():
            raise InputError(f"{folder}: not an ICT-FaceKit FaceXModel folder, missing {p.name}")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        expression_names = tuple(str(s) for s in index["expressions"])
        landmarks = np.asarray(index["idx_to_landmark_verts"], dtype=np.int64)
        rigid = np.asarray(index["idx_to_rigid_verts"], dtype=np.int64)
        fitting = np.asarray(index["idx_to_fitting_verts"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{index_path}: malformed vertex_indices.json ({type(exc).__name__}: {exc})") from None

    neutral_obj = _read_obj(neutral_path, with_faces=True)
    neutral = neutral_obj.vertices  # [V, 3] float64

    id_files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _IDENTITY_OBJ.match(p.name)))
    if not id_files:
        raise InputError(f"{folder}: no identityNNN.obj files")
    if [i for i, _ in id_files] != list(range(len(id_files))):
        raise InputError(f"{folder}: identity OBJs must be numbered identity000.obj .. consecutively")

    def mode(p: Path) -> np.ndarray:
        if not p.is_file():
            raise InputError(f"{folder}: missing {p.name} (listed in vertex_indices.json)")
        v = _read_obj(p, with_faces=False).vertices
        if v.shape != neutral.shape:
            raise InputError(f"{p}: has {v.shape[0]} vertices, generic_neutral_mesh.obj has {neutral.shape[0]}")
        return (v - neutral).astype(np.float32)

    identity_modes = np.stack([mode(p) for _, p in id_files])
    expression_modes = (np.stack([mode(folder / f"{n}.obj") for n in expression_names]) if expression_names
                        else np.zeros((0,) + neutral.shape, np.float32))
    material_names = tuple(sorted(set(neutral_obj.materials)))
    mat_index = {n: i for i, n in enumerate(material_names)}
    kit = IctFaceKit(
        neutral=neutral.astype(np.float32),
        identity_modes=identity_modes,
        expression_modes=expression_modes,
        identity_names=tuple(p.stem for _, p in id_files),
        expression_names=expression_names,
        triangles=_split_triangles(neutral_obj.polygons),
        polygons=neutral_obj.polygons,
        uv=neutral_obj.uv.astype(np.float32),
        polygon_uv=neutral_obj.polygon_uv,
        polygon_material=np.array([mat_index[m] for m in neutral_obj.materials], dtype=np.int64),
        material_names=material_names,
        landmarks68=landmarks,
        rigid_vertices=rigid,
        fitting_vertices=fitting,
        source=str(folder),
    )
    _validate(kit, folder)
    return kit
