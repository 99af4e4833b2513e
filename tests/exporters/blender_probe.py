"""Run by Blender's Python (``bpy``), not by pytest: import one exported file and print vertex positions.

    $NPHM_BPY_PYTHON blender_probe.py FORMAT PATH FPS FRAME [FRAME ...]

FORMAT is usd, abc, pc2 or gltf (pc2: PATH is the .pc2, its rest mesh .obj lies beside it). Prints one
JSON line ``{"frames": {FRAME: [[x, y, z], ...]}, "fps": ..., "frame_start": ..., "shape_keys": [names]}`` with
world-space positions in Blender's frame (Z-up) after evaluating modifiers, shape keys and animation at each frame.
"""

import json
import sys
from pathlib import Path

import bpy
import numpy as np


def _import(fmt: str, path: str) -> None:
    if fmt == "usd":
        bpy.ops.wm.usd_import(filepath=path)
    elif fmt == "abc":
        bpy.ops.wm.alembic_import(filepath=path, as_background_job=False)
    elif fmt == "gltf":
        bpy.ops.import_scene.gltf(filepath=path)
    elif fmt == "pc2":
        # The OBJ importer's Y-up -> Z-up conversion is an object rotation, so it also applies to the
        # cache's Y-up points; the modifier's axis options stay at their defaults (no conversion).
        bpy.ops.wm.obj_import(filepath=str(Path(path).with_suffix(".obj")))
        obj = bpy.context.selected_objects[0]
        mod = obj.modifiers.new("cache", "MESH_CACHE")
        mod.cache_format = "PC2"
        mod.filepath = path
        mod.frame_start = 1.0  # file frame 0 plays at scene frame 1
    else:
        raise SystemExit(f"unknown format {fmt}")


def main() -> None:
    fmt, path, fps = sys.argv[1], sys.argv[2], float(sys.argv[3])
    frames = [int(f) for f in sys.argv[4:]]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    default_fps = scene.render.fps
    scene.render.fps, scene.render.fps_base = int(round(fps)), 1.0
    _import(fmt, path)
    meshes = [o for o in scene.objects if o.type == "MESH"]
    assert len(meshes) == 1, [o.name for o in scene.objects]
    obj = meshes[0]
    out = {}
    for f in frames:
        scene.frame_set(f)
        dg = bpy.context.evaluated_depsgraph_get()
        ev = obj.evaluated_get(dg)
        mesh = ev.to_mesh()
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        m = np.array(ev.matrix_world, np.float64)
        pts = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
        out[f] = pts.tolist()
        ev.to_mesh_clear()
    keys = obj.data.shape_keys
    names = [k.name for k in keys.key_blocks] if keys is not None else []
    print(json.dumps({"frames": out, "fps": scene.render.fps, "default_fps": default_fps,
                      "frame_start": scene.frame_start, "shape_keys": names}))


if __name__ == "__main__":
    main()
