"""Format choice and the library entry points (exporters/registry.py)."""

from __future__ import annotations

import numpy as np
import pytest

from exporters import WRITERS, convert_animation, export_animation, read_animation, writer_class
from exporters.mesh_sequence import MeshSequenceWriter
from exporters.usd import USDWriter
from model.errors import InputError


def test_extension_picks_writer(tmp_path):
    assert writer_class("x/ANIM.USDA") is USDWriter
    assert writer_class(f"{tmp_path}/frames/") is MeshSequenceWriter
    assert writer_class(tmp_path) is MeshSequenceWriter  # an existing folder
    assert writer_class("out/f_####.ply") is MeshSequenceWriter
    assert {".usd", ".usdc", ".usda", ".abc", ".pc2", ".mdd", ".glb", ".gltf", ".npz"} == set(WRITERS)


def test_unknown_extension_lists_known_ones():
    with pytest.raises(InputError) as info:
        writer_class("anim.fbx")
    msg = str(info.value)
    assert "anim.fbx" in msg and "'.fbx'" in msg and "\n" not in msg
    for ext in (".usd", ".abc", ".pc2", ".mdd", ".glb", ".npz", "####.obj"):
        assert ext in msg


def test_export_from_generator_and_transform_count(tmp_path, anim):
    res = export_animation(tmp_path / "a.npz", anim.faces, (f for f in anim.frames), anim.fps)
    assert res.n_frames == 6
    with pytest.raises(InputError, match="fewer transforms"):
        export_animation(tmp_path / "b.npz", anim.faces, anim.frames, anim.fps, transforms=anim.transforms[:2])
    with pytest.raises(InputError, match="no frames"):
        export_animation(tmp_path / "c.npz", anim.faces, [], anim.fps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_convert_keeps_units_times_and_transforms(tmp_path, anim):
    src = export_animation(tmp_path / "a.npz", anim.faces, anim.frames, anim.fps, units="cm",
                           transforms=anim.transforms, start_frame=5).path
    again = read_animation(convert_animation(src, tmp_path / "b.npz").path)
    original = read_animation(src)
    np.testing.assert_array_equal(again.vertices, original.vertices)  # no second unit conversion
    np.testing.assert_allclose(again.transforms, original.transforms)
    assert (again.metres_per_unit, again.start_frame, again.fps) == (0.01, 5, anim.fps)
    metres = read_animation(convert_animation(src, tmp_path / "c.npz", units="m", fps=50).path)
    np.testing.assert_allclose(metres.vertices, anim.metres, rtol=1e-6)
    assert metres.fps == 50
