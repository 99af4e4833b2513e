"""The one writer interface shared by every format: open, append frames, close; atomic on disk.

Conventions (every format, unless its module says otherwise):

- **Input positions** come in NPHM *model units*: 1 cm = 0.04 units, i.e. 1 unit = 0.25 m, so the default
  ``units_per_metre`` is 4.0. Pass ``units_per_metre=1.0`` for positions already in metres.
- **Output units** are metres by default (``units="m"``); ``"cm"`` and ``"mm"`` are accepted. Formats that
  carry a unit (USD ``metersPerUnit``, NPZ ``metres_per_unit``) record it.
- **Frame**: Y-up, right-handed (the face looks along +Z, +X is the head's left). Axes are never swapped:
  importers of Z-up tools (Blender) convert on import.
- **Winding**: faces are counter-clockwise seen from outside (outward normals by the right-hand rule).
  Alembic is the one format whose convention is clockwise; its writer reverses the order on disk.
- **Time**: frame ``i`` (0-based append order) is frame number ``start_frame + i`` (default 1, as in
  Blender, Maya and Houdini) and time ``i / fps`` seconds after the first frame.
- **Head transform**: ``append(vertices, transform)`` takes an optional 4x4 matrix (column vectors, model
  units, ``world = T @ [v, 1]``). Formats with a transform hierarchy (USD, Alembic, NPZ) store it apart from
  the points; the others bake it into the positions. Either all frames carry one or none does.

Atomicity: a writer writes to a hidden temporary name beside the target (same folder, so the final rename
is atomic) and renames it on :meth:`AnimationWriter.close`. :meth:`AnimationWriter.abort` (called by the
context manager on an exception) deletes the temporary output, so a failed export leaves no partial file
under the target name and an existing good file is untouched.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from model.errors import InputError

#: Size of one output unit in metres, by unit name.
METRES_PER_UNIT = {"m": 1.0, "cm": 0.01, "mm": 0.001}
#: Default input scale: NPHM model units per metre (1 cm = 0.04 units).
NPHM_UNITS_PER_METRE = 4.0


@dataclass
class ExportResult:
    """What a finished export wrote.

    Attributes:
        path: the target file or folder.
        n_frames: number of frames written.
        n_vertices: vertices per frame.
        bytes_written: total size on disk of everything written (companion files included).
        files: every file written (target first, then companions such as the rest-mesh OBJ).
        extras: format-specific facts, e.g. ``max_reconstruction_error`` (output units) of a basis encoding.
    """

    path: Path
    n_frames: int
    n_vertices: int
    bytes_written: int
    files: list[Path] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


def temp_name(target: Path, suffix: str | None = None) -> Path:
    """A hidden temporary path beside ``target`` that keeps its extension (libraries pick formats by it).

    ``anim.usd`` -> ``.anim.<random>.partial.usd`` in the same folder.
    """
    suffix = target.suffix if suffix is None else suffix
    stem = target.name[: len(target.name) - len(target.suffix)] if target.suffix else target.name
    return target.with_name(f".{stem}.{secrets.token_hex(4)}.partial{suffix}")


@contextmanager
def atomic_path(path: Path, what: str = "") -> Iterator[Path]:
    """A hidden temporary path beside ``path`` (:func:`temp_name`) for the block to write; renamed onto
    ``path`` when the block ends without an error, deleted otherwise. An :class:`OSError` becomes a one-line
    :class:`InputError` naming ``path`` (``what``: what could not be written, e.g. ``" the track file"``)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write{what}: {exc.strerror or exc}") from None
    finally:
        remove_path(tmp)


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists (used to discard temporary output)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def bounds(points: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds ``[[min x, y, z], [max x, y, z]]`` of ``points [V, 3]``; float32 ``[2, 3]``.

    (Reducing a contiguous copy of the transpose is ~20x faster than ``points.min(axis=0)``.)
    """
    t = np.ascontiguousarray(points.T)  # [3, V]
    return np.stack([t.min(axis=1), t.max(axis=1)]).astype(np.float32)


def check_faces(faces: Any, n_vertices: int, path: Path) -> np.ndarray:
    """Validate faces ``[F, 3]`` of integer vertex indices in ``[0, n_vertices)``; returns int32 ``[F, 3]``."""
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise InputError(f"{path}: faces must have shape [F, 3] with F >= 1, got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: faces must be integer vertex indices, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_vertices:
        raise InputError(f"{path}: face indices out of range [0, {n_vertices}): min {lo}, max {hi}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_colors(colors: Any, n_vertices: int, path: Path) -> np.ndarray | None:
    """Validate vertex colours ``[V, 3]`` (float in [0, 1] or uint8); returns float32 ``[V, 3]`` or None."""
    if colors is None:
        return None
    arr = np.asarray(colors)
    if arr.shape != (n_vertices, 3):
        raise InputError(f"{path}: vertex_colors must have shape [{n_vertices}, 3], got {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise InputError(f"{path}: vertex_colors must be finite and in [0, 1] (or uint8)")
    return arr


class AnimationWriter:
    """Base class of every format writer: validation, unit conversion, atomic temp-and-rename.

    Args:
        path: target file (or folder/pattern for sequences).
        faces: ``[F, 3]`` integer vertex indices, counter-clockwise seen from outside.
        n_vertices: vertices per frame ``V``; every appended frame must have shape ``[V, 3]``.
        fps: frames per second (> 0).
        units: output units, one of ``"m"``, ``"cm"``, ``"mm"``.
        units_per_metre: input units per metre (default 4.0 = NPHM model units).
        vertex_colors: optional ``[V, 3]`` colours (float in [0, 1] or uint8), constant over time.
        start_frame: frame number of the first appended frame (default 1).

    Subclasses implement ``_open``, ``_write`` and ``_finish`` (and may override ``_discard``), write only
    to ``self.tmp`` (and companions registered with :meth:`_companion`), and set the class attributes
    ``extensions``, ``streaming`` (memory independent of frame count) and ``stores_transform``.
    """

    name: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()
    streaming: ClassVar[bool] = True
    stores_transform: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike, faces: Any, n_vertices: int, fps: float, *,
                 units: str = "m", units_per_metre: float = NPHM_UNITS_PER_METRE,
                 vertex_colors: Any = None, start_frame: int = 1) -> None:
        self.path = Path(path)
        if int(n_vertices) < 1:
            raise InputError(f"{self.path}: n_vertices must be >= 1, got {n_vertices}")
        self.n_vertices = int(n_vertices)
        if not (np.isfinite(fps) and fps > 0):
            raise InputError(f"{self.path}: fps must be a positive number, got {fps}")
        self.fps = float(fps)
        if units not in METRES_PER_UNIT:
            raise InputError(f"{self.path}: unknown units {units!r}; known: {', '.join(METRES_PER_UNIT)}")
        if not (np.isfinite(units_per_metre) and units_per_metre > 0):
            raise InputError(f"{self.path}: units_per_metre must be positive, got {units_per_metre}")
        self.units = units
        self.metres_per_unit = METRES_PER_UNIT[units]
        self.units_per_metre = float(units_per_metre)
        #: input units -> output units
        self.scale = 1.0 / (self.units_per_metre * self.metres_per_unit)
        self.start_frame = int(start_frame)
        self.faces = check_faces(faces, self.n_vertices, self.path)  # [F, 3] int32
        self.vertex_colors = check_colors(vertex_colors, self.n_vertices, self.path)  # [V, 3] or None
        self.n_frames = 0
        self.closed = False
        self.result: ExportResult | None = None  # set by close()
        self._has_transform: bool | None = None
        self._companions: list[tuple[Path, Path]] = []  # (temporary, final)
        self._check_target()
        self.tmp = self._make_temp()
        self._buf = np.empty((self.n_vertices, 3), np.float32)
        try:
            self._probe()
            self._open()
        except OSError as exc:
            self._discard_all()
            raise InputError(f"{self.path}: cannot write in {self.path.parent}: "
                             f"{exc.strerror or exc}") from None
        except BaseException:
            self._discard_all()
            raise

    # ----------------------------------------------------------------------------------------- subclass API
    def _open(self) -> None:
        """Create the temporary output ``self.tmp``."""

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        """Write frame ``self.n_frames``: ``points`` float32 ``[V, 3]`` in output units (a reused buffer:
        copy it to keep it); ``transform`` float64 ``[4, 4]`` in output units or None."""
        raise NotImplementedError

    def _finish(self) -> dict[str, Any]:
        """Complete and close the temporary output; return format-specific extras."""
        return {}

    def _discard(self) -> None:
        """Release open handles before the temporary output is deleted."""

    def _check_target(self) -> None:
        """Refuse targets that cannot be written (overridden by folder formats)."""
        parent = self.path.parent
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a folder; give a file name ending in {self.extensions[0]}")
        if not parent.is_dir():
            raise InputError(f"{self.path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{self.path}: folder {parent} is not writable")

    def _make_temp(self) -> Path:
        return temp_name(self.path)

    def _probe(self) -> None:
        """Create the empty temporary output, so an unwritable place fails early with an OSError."""
        open(self.tmp, "xb").close()

    def _companion(self, final: Path) -> Path:
        """Register a companion file written next to the target; returns its temporary path."""
        tmp = temp_name(final)
        self._companions.append((tmp, final))
        return tmp

    # ------------------------------------------------------------------------------------------- public API
    def append(self, vertices: Any, transform: Any = None) -> None:
        """Add one frame.

        Args:
            vertices: ``[V, 3]`` positions in input units (``units_per_metre`` per metre).
            transform: optional ``[4, 4]`` head transform (model units, column vectors).
        """
        if self.closed:
            raise InputError(f"{self.path}: append after close")
        v = np.asarray(vertices)
        if v.shape != (self.n_vertices, 3):
            raise InputError(f"{self.path}: frame {self.n_frames} has shape {list(v.shape)}, "
                             f"expected [{self.n_vertices}, 3] (vertex count must not change)")
        np.multiply(v, self.scale, out=self._buf, casting="unsafe")
        if not np.isfinite(self._buf).all():
            raise InputError(f"{self.path}: frame {self.n_frames} has NaN or infinite positions")
        has_t = transform is not None
        if self._has_transform is None:
            self._has_transform = has_t
        elif has_t != self._has_transform:
            raise InputError(f"{self.path}: frame {self.n_frames} "
                             f"{'has' if has_t else 'lacks'} a transform; give one for all frames or none")
        t = None
        if has_t:
            t = np.array(transform, dtype=np.float64)
            if t.shape != (4, 4) or not np.isfinite(t).all():
                raise InputError(f"{self.path}: frame {self.n_frames} transform must be a finite [4, 4] "
                                 f"matrix, got shape {list(t.shape)}")
            t[:3, 3] *= self.scale  # translation to output units; rotation/scale unchanged
            if not self.stores_transform:
                self._buf[:] = self._buf @ t[:3, :3].T.astype(np.float32) + t[:3, 3].astype(np.float32)
                t = None
        self._write(self._buf, t)
        self.n_frames += 1

    def close(self) -> ExportResult:
        """Finish the file(s) and rename them into place; returns an :class:`ExportResult`."""
        if self.closed:
            raise InputError(f"{self.path}: already closed")
        if self.n_frames == 0:
            self.abort()
            raise InputError(f"{self.path}: no frames were appended")
        try:
            extras = self._finish()
        except BaseException:
            self.abort()
            raise
        self.closed = True
        files = []
        for tmp, final in self._companions:
            os.replace(tmp, final)
            files.append(final)
        self._replace(self.tmp, self.path)
        files.insert(0, self.path)
        size = sum(_size_of(f) for f in files)
        self.result = ExportResult(self.path, self.n_frames, self.n_vertices, size, files, extras)
        return self.result

    def abort(self) -> None:
        """Discard everything written so far; the target (and any old file there) is left untouched."""
        if self.closed:
            return
        self.closed = True
        self._discard_all()

    def _discard_all(self) -> None:
        try:
            self._discard()
        finally:
            remove_path(self.tmp)
            for tmp, _ in self._companions:
                remove_path(tmp)

    def _replace(self, tmp: Path, final: Path) -> None:
        os.replace(tmp, final)

    def __enter__(self) -> AnimationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size
