"""Alembic (``.abc``, Ogawa) export via ``alembic3d`` (PyAlembic bindings; optional extra ``alembic``).

Archive layout::

    /Head        Xform; a matrix sample per frame when head transforms are given (else identity, static)
    /Head/Mesh   PolyMesh: topology in the first sample, animated P (float32) one sample per frame,
                 self bounds per sample; optional vertex colours as ``arbGeomParams/Cd`` (C3f, vertex scope)

Time: one uniform time sampling at the video's fps; frame ``i`` is at ``(start_frame + i) / fps`` seconds,
so a reader that maps time to frames by ``t * fps`` (Blender, Maya) lands on the frame numbers. Readers'
sample selectors take seconds, not frames.

Conventions: Y-up, right-handed, positions in output units (Alembic records no unit; metres by default).
Alembic's polygon winding is **clockwise** seen from outside (Maya's convention; Blender and Houdini
reverse it on import), so each face ``(a, b, c)`` of the counter-clockwise input is written as
``(c, b, a)``. Streaming: Ogawa writes each sample as it is set; memory stays flat. The archive is
finalised (header "frozen" byte set) when the writer releases it at close.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.errors import MissingDependencyError
from exporters.base import AnimationWriter

INSTALL_HINT = 'pip install "nphm-track[alembic]"'


def _alembic():
    """Import ``alembic3d`` and its bundled ``imath``, or raise :class:`MissingDependencyError`."""
    try:
        import imath
        from alembic3d import Abc, AbcCoreAbstract, AbcGeom
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise MissingDependencyError(
            f"Alembic export needs the optional extra 'alembic' (alembic3d): {INSTALL_HINT}") from exc
    return imath, Abc, AbcCoreAbstract, AbcGeom


class AlembicWriter(AnimationWriter):
    """Write an Ogawa ``.abc`` archive with one animated PolyMesh (see the module docstring)."""

    name = "Alembic"
    extensions = (".abc",)
    streaming = True
    stores_transform = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _alembic()  # fail before touching the disk when the extra is missing
        super().__init__(*args, **kwargs)

    def _open(self) -> None:
        imath, Abc, AbcCoreAbstract, AbcGeom = _alembic()
        self._archive = Abc.OArchive(str(self.tmp), True)
        dt = 1.0 / self.fps
        ts = AbcCoreAbstract.TimeSampling(dt, self.start_frame * dt)
        index = self._archive.addTimeSampling(ts)
        self._xform = AbcGeom.OXform(self._archive.getTop(), "Head", index)
        self._mesh = AbcGeom.OPolyMesh(self._xform, "Mesh", index)
        self._schema = self._mesh.getSchema()
        cw = np.ascontiguousarray(self.faces[:, ::-1]).reshape(-1)  # clockwise on disk
        self._indices = imath.IntArrayFromBuffer(cw)
        self._counts = imath.IntArrayFromBuffer(np.full(len(self.faces), 3, np.int32))
        self._colors = None
        if self.vertex_colors is not None:
            arb = self._schema.getArbGeomParams()
            self._colors = AbcGeom.OC3fGeomParam(arb, "Cd", False, AbcGeom.GeometryScope.kVertexScope, 1)

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        imath, Abc, AbcCoreAbstract, AbcGeom = _alembic()
        positions = imath.V3fArrayFromBuffer(points)
        if self.n_frames == 0:
            sample = AbcGeom.OPolyMeshSchemaSample(positions, self._indices, self._counts)
            if self._colors is not None:
                colors = imath.C3fArray(self.n_vertices)  # no buffer constructor for C3f: fill once
                for i, (r, g, b) in enumerate(self.vertex_colors.tolist()):
                    colors[i] = imath.Color3f(r, g, b)
                self._colors.set(AbcGeom.OC3fGeomParamSample(colors, AbcGeom.GeometryScope.kVertexScope))
        else:
            sample = AbcGeom.OPolyMeshSchemaSample()
            sample.setPositions(positions)
        self._schema.set(sample)
        if transform is not None:
            xs = AbcGeom.XformSample()
            xs.setMatrix(imath.M44d(*transform.T.reshape(-1).tolist()))  # Imath: row vectors
            self._xform.getSchema().set(xs)

    def _finish(self) -> dict[str, Any]:
        self._release()  # destroying the archive writes the index and sets the frozen byte
        return {}

    def _release(self) -> None:
        for attr in ("_colors", "_schema", "_mesh", "_xform", "_indices", "_counts", "_archive"):
            if hasattr(self, attr):
                delattr(self, attr)

    def _discard(self) -> None:
        self._release()
