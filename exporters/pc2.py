"""PC2 point cache (3ds Max Point Cache 2, read by Blender's Mesh Cache modifier), streamed to disk.

Layout (little-endian), as described by the 3ds Max "Point Cache 2" file format notes and implemented by
Blender's Mesh Cache modifier reader (``MOD_meshcache_pc2.cc``) and its ``io_export_pc2`` add-on::

    offset  type       field
    0       char[12]   signature  b"POINTCACHE2\\0"
    12      int32      fileVersion  (1)
    16      int32      numPoints
    20      float32    startFrame
    24      float32    sampleRate   (frames between samples: 1.0)
    28      int32      numSamples
    32      float32    [numSamples][numPoints][3]  x y z per point per sample

The header is written with ``numSamples = 0`` at open and patched at close, so frames stream straight to
disk and memory stays flat. The rest mesh (first frame, same vertex order) is written as an OBJ beside the
cache (``anim.pc2`` -> ``anim.obj``): import it, add a Mesh Cache modifier, pick the ``.pc2``.
Positions are in output units (metres by default), Y-up; the head transform, if any, is baked in.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from exporters.base import AnimationWriter
from exporters.mesh_sequence import mesh_file_bytes

PC2_HEADER = struct.Struct("<12siiffi")
PC2_SIGNATURE = b"POINTCACHE2\0"


class PC2Writer(AnimationWriter):
    """Stream a ``.pc2`` point cache plus the rest mesh ``.obj`` beside it (see the module docstring)."""

    name = "PC2 point cache"
    extensions = (".pc2",)
    streaming = True

    def _open(self) -> None:
        self._rest_tmp = self._companion(self.path.with_suffix(".obj"))
        self._f = open(self.tmp, "wb")
        self._f.write(self._header(0))

    def _header(self, n_samples: int) -> bytes:
        return PC2_HEADER.pack(PC2_SIGNATURE, 1, self.n_vertices, float(self.start_frame), 1.0, n_samples)

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        if self.n_frames == 0:
            self._rest_tmp.write_bytes(mesh_file_bytes(points, self.faces, self.vertex_colors, ".obj"))
        self._f.write(points.astype("<f4", copy=False).tobytes())

    def _finish(self) -> dict[str, Any]:
        self._f.seek(0)
        self._f.write(self._header(self.n_frames))
        self._f.close()
        return {"rest_mesh": str(self.path.with_suffix(".obj"))}

    def _discard(self) -> None:
        if hasattr(self, "_f"):
            self._f.close()
