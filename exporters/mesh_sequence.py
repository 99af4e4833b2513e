"""OBJ / PLY mesh sequences: one file per frame in a folder, written with trimesh.

Target forms:

- a folder (an existing folder, or a path ending in ``/``): OBJ files ``frame_0001.obj``, ``frame_0002.obj``...
- a pattern whose file name holds a run of ``#``: ``out/head_####.ply`` writes ``out/head_0001.ply``...;
  the extension (``.obj`` or ``.ply``) picks the format and the run length the zero padding.

Frame numbers start at ``start_frame`` (default 1). OBJ positions are written with 6 fixed decimals (1 um
in metres); PLY is binary little-endian float32. Vertex order is kept exactly (no merging), so every file
has the same topology; faces are counter-clockwise seen from outside. Vertex colours, when given, go into
the OBJ ``v x y z r g b`` extension and the PLY ``red green blue alpha`` properties.

The whole sequence is written into a hidden temporary folder beside the target and renamed on close. An
existing target folder is replaced only if it is empty or holds nothing but files of the same pattern (a
previous export); otherwise opening fails, so unrelated files are never deleted. Streaming: one frame in
memory at a time.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from model.errors import InputError
from exporters.base import AnimationWriter, remove_path, temp_name

OBJ_DECIMALS = 6
DEFAULT_PATTERN = "frame_####.obj"


def split_sequence_target(path: str | os.PathLike) -> tuple[Path, str] | None:
    """``(folder, file pattern)`` when ``path`` names a sequence, else None."""
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir():
        return p, DEFAULT_PATTERN
    if "#" in p.name:
        return p.parent, p.name
    return None


def mesh_file_bytes(points: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, fmt: str) -> bytes:
    """Encode one mesh (``points [V, 3]``, ``faces [F, 3]``, ``colors [V, 3]`` or None) as OBJ or PLY."""
    mesh = trimesh.Trimesh(vertices=points, faces=faces, vertex_colors=colors, process=False,
                           validate=False)
    if fmt == ".obj":
        text = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_texture=False,
                                               include_color=colors is not None, digits=OBJ_DECIMALS,
                                               header=None)
        return text.encode("ascii")
    return trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False,
                                           include_attributes=False)


class MeshSequenceWriter(AnimationWriter):
    """One OBJ or PLY file per frame in a folder (see the module docstring). Streaming."""

    name = "mesh sequence"
    extensions = (".obj", ".ply")
    streaming = True

    def __init__(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        split = split_sequence_target(path)
        if split is None:
            raise InputError(f"{path}: an OBJ/PLY export is a sequence: give a folder ('out/') or a pattern "
                             f"('out/frame_####.obj')")
        folder, pattern = split
        m = re.fullmatch(r"(.*?)(#+)([^#]*)", pattern)
        if m is None or Path(pattern).suffix.lower() not in self.extensions:
            raise InputError(f"{path}: sequence pattern must hold one run of '#' and end in .obj or .ply")
        self._prefix, self._pad, self._suffix = m.group(1), len(m.group(2)), m.group(3)
        self.fmt = Path(pattern).suffix.lower()
        self._pattern_re = re.compile(re.escape(self._prefix) + r"-?\d+" + re.escape(self._suffix))
        super().__init__(folder, *args, **kwargs)

    def frame_name(self, index: int) -> str:
        """File name of the frame appended at position ``index`` (0-based)."""
        return f"{self._prefix}{self.start_frame + index:0{self._pad}d}{self._suffix}"

    def _check_target(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise InputError(f"{self.path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{self.path}: folder {parent} is not writable")
        if self.path.exists():
            if not self.path.is_dir():
                raise InputError(f"{self.path}: exists and is not a folder")
            others = [p.name for p in self.path.iterdir() if not self._pattern_re.fullmatch(p.name)]
            if others:
                raise InputError(f"{self.path}: folder holds other files ({others[0]}, ...); refusing to "
                                 f"replace it: use an empty or new folder")

    def _make_temp(self) -> Path:
        return temp_name(self.path, suffix="")

    def _probe(self) -> None:
        self.tmp.mkdir()

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        data = mesh_file_bytes(points, self.faces, self.vertex_colors, self.fmt)
        with open(self.tmp / self.frame_name(self.n_frames), "wb") as f:
            f.write(data)

    def _replace(self, tmp: Path, final: Path) -> None:
        if not final.exists():
            os.replace(tmp, final)
            return
        old = temp_name(final, suffix=".old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def _discard(self) -> None:
        remove_path(self.tmp)
