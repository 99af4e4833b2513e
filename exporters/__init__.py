"""File formats for fixed-topology animated meshes: USD, Alembic, point caches, mesh sequences, glTF.

One interface for every format (conventions and units in :mod:`exporters.base`)::

    from exporters import open_writer, export_animation
    with open_writer("anim.usd", faces, n_vertices, fps=30) as w:
        for verts in frames:          # [V, 3] in NPHM model units (1 unit = 0.25 m)
            w.append(verts)
    export_animation("anim.abc", faces, frames_array, fps=30)   # [N, V, 3] in one call

The format follows the extension (``.usd .usdc .usda .abc .pc2 .mdd .glb .gltf .npz``); a folder or a
``name_####.obj|ply`` pattern writes a mesh sequence.
"""

from exporters.base import AnimationWriter, ExportResult
from exporters.npz import Animation, read_animation
from exporters.registry import (WRITERS, convert_animation, export_animation, known_targets,
                                open_writer, writer_class)

__all__ = ["AnimationWriter", "ExportResult", "Animation", "read_animation", "WRITERS",
           "convert_animation", "export_animation", "known_targets", "open_writer", "writer_class"]
