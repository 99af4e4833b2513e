"""One mesh, one file: the single-image reconstruction's output (``nphm-track face.jpg --out face.obj``).

``.obj``, ``.ply`` and ``.stl`` are written by trimesh; every animation format of
:mod:`exporters.registry` (``.usd``, ``.abc``, ``.glb``, ...) takes the mesh as a one-frame animation. Units,
frame and winding follow :mod:`exporters.base` (input in NPHM model units, metres out by default, Y up,
counter-clockwise). Written to a temporary name beside the target and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from exporters.base import METRES_PER_UNIT, NPHM_UNITS_PER_METRE, ExportResult, check_faces, remove_path, temp_name
from exporters.registry import known_targets, open_writer, writer_class
from model.errors import InputError

#: Extensions written as a single static mesh file.
STATIC_EXTENSIONS = (".obj", ".ply", ".stl")


def check_mesh_target(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` (before any work) when ``path``'s extension is not a known mesh target."""
    path = Path(path)
    if path.suffix.lower() in STATIC_EXTENSIONS:
        return
    try:
        writer_class(path)
    except InputError:
        raise InputError(f"{path}: unknown output extension {path.suffix or '(none)'!r}; a mesh can be written "
                         f"as {', '.join(STATIC_EXTENSIONS)} or any animation format ({known_targets()})") from None


def write_mesh(path: str | os.PathLike, vertices: Any, faces: Any, *, units: str = "m",
               units_per_metre: float = NPHM_UNITS_PER_METRE) -> ExportResult:
    """Write one mesh ``vertices [V, 3]`` (model units) / ``faces [F, 3]`` to ``path`` (format from the extension)."""
    path = Path(path)
    check_mesh_target(path)
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise InputError(f"{path}: vertices must be a finite [V, 3] array, got {v.shape}")
    if path.suffix.lower() not in STATIC_EXTENSIONS:
        with open_writer(path, faces, len(v), 1.0, units=units, units_per_metre=units_per_metre) as writer:
            writer.append(v)
        return writer.result
    import trimesh

    if units not in METRES_PER_UNIT:
        raise InputError(f"units must be one of {', '.join(METRES_PER_UNIT)}, got {units!r}")
    f = check_faces(faces, len(v), path)
    scale = 1.0 / (units_per_metre * METRES_PER_UNIT[units])
    mesh = trimesh.Trimesh(v * scale, f, process=False)
    if not path.parent.is_dir():
        raise InputError(f"{path}: the output folder {path.parent} does not exist")
    tmp = temp_name(path)
    try:
        mesh.export(tmp, file_type=path.suffix.lower().lstrip("."))
        os.replace(tmp, path)
    except OSError as exc:
        remove_path(tmp)
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        remove_path(tmp)
        raise
    return ExportResult(path=path, n_frames=1, n_vertices=len(v), bytes_written=path.stat().st_size, files=[path])
