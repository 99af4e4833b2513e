"""OBJ / PLY sequences (exporters/mesh_sequence.py), read back by trimesh; golden OBJ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from exporters import export_animation
from model.errors import InputError

GOLDEN = Path(__file__).parent / "golden"


def test_obj_folder_round_trip(tmp_path, anim):
    res = export_animation(f"{tmp_path}/seq/", anim.faces, anim.frames, anim.fps, vertex_colors=anim.colors)
    names = sorted(p.name for p in res.path.iterdir())
    assert names == [f"frame_{i:04d}.obj" for i in range(1, 7)]
    for i in (0, 5):
        mesh = trimesh.load(res.path / names[i], process=False)
        np.testing.assert_allclose(mesh.vertices, anim.metres[i], atol=5e-7)  # 6 decimals
        np.testing.assert_array_equal(mesh.faces, anim.faces)
        assert mesh.volume > 0  # counter-clockwise from outside
        np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255.0, anim.colors, atol=1 / 255)


def test_ply_pattern_round_trip(tmp_path, anim):
    res = export_animation(tmp_path / "out" / "head_##.ply", anim.faces, anim.frames, anim.fps,
                           start_frame=0, vertex_colors=anim.colors)
    assert res.path == tmp_path / "out"
    names = sorted(p.name for p in res.path.iterdir())
    assert names == [f"head_{i:02d}.ply" for i in range(6)]
    mesh = trimesh.load(res.path / "head_03.ply", process=False)
    np.testing.assert_array_equal(np.asarray(mesh.vertices, np.float32), anim.metres[3])  # float32 exact
    np.testing.assert_array_equal(mesh.faces, anim.faces)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255.0, anim.colors, atol=1 / 255)


def test_refuses_folder_with_other_files_and_replaces_previous_export(tmp_path, anim):
    out = tmp_path / "seq"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds other files"):
        export_animation(f"{out}/", anim.faces, anim.frames, anim.fps)
    (out / "notes.txt").unlink()
    export_animation(f"{out}/", anim.faces, anim.frames, anim.fps)
    export_animation(f"{out}/", anim.faces, anim.frames[:2], anim.fps)  # a shorter re-export
    assert sorted(p.name for p in out.iterdir()) == ["frame_0001.obj", "frame_0002.obj"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]


def test_plain_obj_path_is_rejected_with_hint(tmp_path, anim):
    with pytest.raises(InputError, match="sequence: give a folder"):
        export_animation(tmp_path / "a.obj", anim.faces, anim.frames, anim.fps)


def test_golden_obj(tmp_path):
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) * 0.3
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    res = export_animation(f"{tmp_path}/tet/", faces, [verts, verts * 2], 24.0)
    assert (res.path / "frame_0002.obj").read_text() == (GOLDEN / "tet_frame_0002.obj").read_text()
