"""MDD point cache (LightWave, read by Blender's Mesh Cache modifier), streamed to disk.

Layout (big-endian), as described in the LightWave MDD notes and implemented by Blender's Mesh Cache
modifier reader (``MOD_meshcache_mdd.cc``) and its ``io_export_mdd`` add-on::

    offset            type       field
    0                 int32      totalFrames
    4                 int32      totalPoints
    8                 float32    times[totalFrames]   (seconds)
    8 + 4*frames      float32    [totalFrames][totalPoints][3]  x y z per point per frame

Frame ``i`` has time ``i / fps``. The header holds the frame count and the time table, which precede the
point data, so when the frame count is not known up front (``n_frames=None``) the points stream to a
temporary data file and close writes header + times and copies the data in 8 MB chunks (memory stays
flat, the bytes are written twice). When ``n_frames`` is given, the header is written first and points go
straight to the file; close then checks that exactly ``n_frames`` frames came. The rest mesh (first frame)
is written as an OBJ beside the cache. Positions are in output units, Y-up; a head transform is baked in.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import InputError
from exporters.base import AnimationWriter, remove_path, temp_name
from exporters.mesh_sequence import mesh_file_bytes

MDD_HEADER = struct.Struct(">ii")
COPY_CHUNK = 8 << 20


class MDDWriter(AnimationWriter):
    """Stream a ``.mdd`` point cache plus the rest mesh ``.obj`` beside it (see the module docstring).

    Extra args:
        n_frames: the number of frames that will be appended, if known (saves one copy of the data).
    """

    name = "MDD point cache"
    extensions = (".mdd",)
    streaming = True

    def __init__(self, *args: Any, n_frames: int | None = None, **kwargs: Any) -> None:
        self._expected = None if n_frames is None else int(n_frames)
        super().__init__(*args, **kwargs)

    def _open(self) -> None:
        self._rest_tmp = self._companion(self.path.with_suffix(".obj"))
        if self._expected is not None:
            self._data_path: Path | None = None
            self._f = open(self.tmp, "wb")
            self._f.write(self._header(self._expected))
        else:
            self._data_path = temp_name(self.path, suffix=".data")
            self._f = open(self._data_path, "wb")

    def _header(self, n: int) -> bytes:
        times = np.arange(n, dtype=np.float64) / self.fps
        return MDD_HEADER.pack(n, self.n_vertices) + times.astype(">f4").tobytes()

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        if self.n_frames == 0:
            self._rest_tmp.write_bytes(mesh_file_bytes(points, self.faces, self.vertex_colors, ".obj"))
        if self._expected is not None and self.n_frames >= self._expected:
            raise InputError(f"{self.path}: more frames appended than n_frames={self._expected}")
        self._f.write(points.astype(">f4").tobytes())

    def _finish(self) -> dict[str, Any]:
        self._f.close()
        if self._data_path is None:
            if self.n_frames != self._expected:
                raise InputError(f"{self.path}: {self.n_frames} frames appended, n_frames={self._expected}")
        else:
            with open(self.tmp, "wb") as out, open(self._data_path, "rb") as src:
                out.write(self._header(self.n_frames))
                shutil.copyfileobj(src, out, COPY_CHUNK)
            os.remove(self._data_path)
        return {"rest_mesh": str(self.path.with_suffix(".obj"))}

    def _discard(self) -> None:
        if hasattr(self, "_f"):
            self._f.close()
        if getattr(self, "_data_path", None) is not None:
            remove_path(self._data_path)
