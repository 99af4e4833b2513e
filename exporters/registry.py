"""Pick a writer from the output path, and the two library entry points built on it.

- :func:`open_writer` returns the :class:`~exporters.base.AnimationWriter` for a path (format from the
  extension; a folder or a ``name_####.obj|ply`` pattern means a mesh sequence).
- :func:`export_animation` writes frames from an array or any iterable in one call.
- :func:`convert_animation` re-exports an animation NPZ (schema in :mod:`exporters.npz`) to any format;
  this is what ``nphm-track export`` runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from model.errors import InputError
from exporters.alembic import AlembicWriter
from exporters.base import METRES_PER_UNIT, NPHM_UNITS_PER_METRE, AnimationWriter, ExportResult
from exporters.gltf import GLTFWriter
from exporters.mdd import MDDWriter
from exporters.mesh_sequence import MeshSequenceWriter, split_sequence_target
from exporters.npz import NPZWriter, read_animation
from exporters.pc2 import PC2Writer
from exporters.usd import USDWriter

#: Writer classes by lower-case file extension (mesh sequences are chosen by folder/pattern, not here).
WRITERS: dict[str, type[AnimationWriter]] = {
    ext: cls for cls in (USDWriter, AlembicWriter, PC2Writer, MDDWriter, GLTFWriter, NPZWriter)
    for ext in cls.extensions
}


def known_targets() -> str:
    """Human-readable list of accepted output forms, for error messages and help."""
    return ", ".join(WRITERS) + ", a folder/ or name_####.obj|.ply (mesh sequence)"


def writer_class(path: str | os.PathLike) -> type[AnimationWriter]:
    """The writer class for ``path``; raises :class:`InputError` listing the known extensions."""
    if split_sequence_target(path) is not None:
        return MeshSequenceWriter
    ext = Path(path).suffix.lower()
    if ext in WRITERS:
        return WRITERS[ext]
    if ext in MeshSequenceWriter.extensions:
        raise InputError(f"{path}: an OBJ/PLY export is a sequence: give a folder ('out/') or a pattern "
                         f"('out/frame_####{ext}')")
    raise InputError(f"{path}: unknown output extension {ext or '(none)'!r}; known: {known_targets()}")


def open_writer(path: str | os.PathLike, faces: Any, n_vertices: int, fps: float, *, units: str = "m",
                units_per_metre: float = NPHM_UNITS_PER_METRE, vertex_colors: Any = None,
                start_frame: int = 1, **options: Any) -> AnimationWriter:
    """Open the writer for ``path`` (format from the extension). Use as a context manager::

        with open_writer("anim.usd", faces, V, fps=30) as w:   # faces [F, 3], CCW from outside
            for verts in frames:                              # [V, 3] in NPHM model units
                w.append(verts)

    Args are those of :class:`~exporters.base.AnimationWriter` (conventions and units there) plus
    format options: ``blendshapes`` (USD), ``morph_targets`` (glTF), ``n_frames`` (MDD). An option the
    format does not take raises :class:`InputError`.
    """
    cls = writer_class(path)
    try:
        return cls(path, faces, n_vertices, fps, units=units, units_per_metre=units_per_metre,
                   vertex_colors=vertex_colors, start_frame=start_frame, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise InputError(f"{path}: option not supported by the {cls.name} writer: {exc}") from None
        raise


def export_animation(path: str | os.PathLike, faces: Any, frames: np.ndarray | Iterable[np.ndarray],
                     fps: float, *, transforms: Iterable[Any] | None = None,
                     n_vertices: int | None = None, **kwargs: Any) -> ExportResult:
    """Write a whole animation in one call.

    Args:
        path: output file (format from the extension) or sequence folder/pattern.
        faces: ``[F, 3]`` vertex indices, counter-clockwise seen from outside.
        frames: ``[N, V, 3]`` array or an iterable of ``[V, 3]`` frames (consumed lazily).
        fps: frames per second.
        transforms: optional per-frame ``[4, 4]`` head transforms, same length as ``frames``.
        n_vertices: V, needed only when ``frames`` is an iterable whose first element is unknown.
        **kwargs: passed to :func:`open_writer` (units, units_per_metre, vertex_colors, format options).
    """
    it = iter(frames)
    try:
        first = np.asarray(next(it))
    except StopIteration:
        raise InputError(f"{path}: no frames to export") from None
    if first.ndim != 2 or first.shape[1] != 3:
        raise InputError(f"{path}: frames must be [N, V, 3] or [V, 3] each, got a frame of shape "
                         f"{list(first.shape)}")
    if isinstance(frames, np.ndarray) and MDDWriter is writer_class(path):
        kwargs.setdefault("n_frames", len(frames))
    t_it = iter(transforms) if transforms is not None else None
    with open_writer(path, faces, n_vertices or first.shape[0], fps, **kwargs) as w:
        for i, frame in enumerate(_chain(first, it)):
            t = None
            if t_it is not None:
                try:
                    t = next(t_it)
                except StopIteration:
                    raise InputError(f"{path}: fewer transforms than frames ({i})") from None
            w.append(frame, t)
        result = w.close()
    return result


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]):
    yield first
    yield from rest


def convert_animation(src: str | os.PathLike, out: str | os.PathLike, *, fps: float | None = None,
                      units: str | None = None, **options: Any) -> ExportResult:
    """Re-export an animation NPZ written by the NPZ exporter (schema in :mod:`exporters.npz`).

    Args:
        src: the ``.npz`` animation; its vertices are memory-mapped, so memory stays flat for streaming
            formats.
        out: output path (any known format).
        fps: override the file's fps.
        units: output units (``m``, ``cm``, ``mm``); default: the file's own unit if it is one of those,
            else metres.
        **options: format options (``blendshapes``, ``morph_targets``).
    """
    writer_class(out)  # unknown extensions fail before the input is read
    anim = read_animation(src)
    if units is None:
        units = next((u for u, m in METRES_PER_UNIT.items() if np.isclose(m, anim.metres_per_unit)), "m")
    return export_animation(out, anim.faces, anim.vertices, anim.fps if fps is None else fps,
                            transforms=anim.transforms, units=units,
                            units_per_metre=1.0 / anim.metres_per_unit, vertex_colors=anim.vertex_colors,
                            start_frame=anim.start_frame, **options)
