"""NPZ animation: the raw arrays for Python users, and the input of ``nphm-track export``.

Schema (a standard ``.npz``, readable with ``numpy.load``; stored uncompressed so ``vertices`` can be
memory-mapped by :func:`read_animation`):

    key               dtype    shape        meaning
    vertices          float32  [N, V, 3]    positions per frame, in the file's units (see metres_per_unit)
    faces             int32    [F, 3]       vertex indices, counter-clockwise seen from outside
    fps               float64  []           frames per second
    start_frame       int64    []           frame number of vertices[0]
    metres_per_unit   float64  []           size of one unit in metres (1.0 = metres, the default)
    up_axis           str      []           "Y" (right-handed, Y-up, face looking along +Z)
    format_version    int64    []           1
    vertex_colors     float32  [V, 3]       optional, in [0, 1]
    transforms        float64  [N, 4, 4]    optional head transform per frame (column vectors, translation
                                            in the file's units); world = T @ [v, 1]; vertices are NOT
                                            transformed

Writing streams: positions go to a hidden temporary data file as they come, and close assembles the zip
(``vertices.npy`` header + a chunked copy), so memory stays flat (the bytes are written twice).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import InputError
from exporters.base import AnimationWriter, remove_path, temp_name

FORMAT_VERSION = 1
COPY_CHUNK = 8 << 20


@dataclass
class Animation:
    """A fixed-topology animation as stored in an NPZ file (see the module docstring for units)."""

    vertices: np.ndarray  # [N, V, 3] float32, possibly a read-only memory map
    faces: np.ndarray  # [F, 3] int32
    fps: float
    start_frame: int = 1
    metres_per_unit: float = 1.0
    vertex_colors: np.ndarray | None = None  # [V, 3] float32
    transforms: np.ndarray | None = None  # [N, 4, 4] float64


class NPZWriter(AnimationWriter):
    """Stream an ``.npz`` of the raw arrays (see the module docstring for the schema)."""

    name = "NPZ arrays"
    extensions = (".npz",)
    streaming = True
    stores_transform = True

    def _open(self) -> None:
        self._data_path = temp_name(self.path, suffix=".data")
        self._f = open(self._data_path, "wb")
        self._transforms: list[np.ndarray] = []

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        self._f.write(points.astype("<f4", copy=False).tobytes())
        if transform is not None:
            self._transforms.append(transform)

    def _finish(self) -> dict[str, Any]:
        self._f.close()
        small = {
            "faces": self.faces, "fps": np.float64(self.fps), "start_frame": np.int64(self.start_frame),
            "metres_per_unit": np.float64(self.metres_per_unit), "up_axis": np.str_("Y"),
            "format_version": np.int64(FORMAT_VERSION),
        }
        if self.vertex_colors is not None:
            small["vertex_colors"] = self.vertex_colors
        if self._transforms:
            small["transforms"] = np.stack(self._transforms)
        with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("vertices.npy", "w", force_zip64=True) as member, open(self._data_path, "rb") as src:
                header = {"descr": "<f4", "fortran_order": False, "shape": (self.n_frames, self.n_vertices, 3)}
                np.lib.format.write_array_header_1_0(member, header)
                shutil.copyfileobj(src, member, COPY_CHUNK)
            for key, arr in small.items():
                with zf.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
        os.remove(self._data_path)
        return {}

    def _discard(self) -> None:
        if hasattr(self, "_f"):
            self._f.close()
        if hasattr(self, "_data_path"):
            remove_path(self._data_path)


def _memmap_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of a zip; None when it is compressed."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if fortran or dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_animation(path: str | os.PathLike) -> Animation:
    """Read an animation NPZ (schema in the module docstring); ``vertices`` is memory-mapped when stored
    uncompressed. Raises :class:`InputError` naming the file and key when something is missing or wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not an NPZ (zip) file") from None
    with zf:
        names = set(zf.namelist())
        for key in ("vertices", "faces", "fps"):
            if f"{key}.npy" not in names:
                raise InputError(f"{path}: missing key {key!r} (an animation NPZ needs vertices, faces, fps)")
        vertices = _memmap_member(path, zf, "vertices.npy")

        def load(key: str) -> np.ndarray | None:
            if f"{key}.npy" not in names:
                return None
            with zf.open(f"{key}.npy") as member:
                return np.lib.format.read_array(io.BytesIO(member.read()), allow_pickle=False)

        if vertices is None:
            vertices = load("vertices")
        faces, fps = load("faces"), load("fps")
        start, mpu = load("start_frame"), load("metres_per_unit")
        colors, transforms = load("vertex_colors"), load("transforms")
    if vertices.ndim != 3 or vertices.shape[2] != 3 or vertices.shape[0] == 0:
        raise InputError(f"{path}: key 'vertices' must have shape [N, V, 3] with N >= 1, "
                         f"got {list(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise InputError(f"{path}: key 'faces' must have shape [F, 3], got {list(faces.shape)}")
    if transforms is not None and transforms.shape != (vertices.shape[0], 4, 4):
        raise InputError(f"{path}: key 'transforms' must have shape [{vertices.shape[0]}, 4, 4], "
                         f"got {list(transforms.shape)}")
    return Animation(vertices=vertices, faces=faces.astype(np.int32), fps=float(fps),
                     start_frame=1 if start is None else int(start),
                     metres_per_unit=1.0 if mpu is None else float(mpu), vertex_colors=colors,
                     transforms=transforms)
