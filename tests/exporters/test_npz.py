"""NPZ arrays (exporters/npz.py): plain numpy reads it; read_animation memory-maps it."""

from __future__ import annotations

import numpy as np
import pytest

from exporters import export_animation, read_animation
from model.errors import InputError


def test_schema_readable_by_plain_numpy(tmp_path, anim):
    res = export_animation(tmp_path / "a.npz", anim.faces, anim.frames, anim.fps,
                           vertex_colors=anim.colors, transforms=anim.transforms, start_frame=3)
    with np.load(res.path) as z:
        assert z["vertices"].dtype == np.float32 and z["vertices"].shape == (6, 42, 3)
        np.testing.assert_array_equal(z["vertices"], anim.metres)
        np.testing.assert_array_equal(z["faces"], anim.faces)
        assert z["faces"].dtype == np.int32
        assert float(z["fps"]) == anim.fps and int(z["start_frame"]) == 3
        assert float(z["metres_per_unit"]) == 1.0 and str(z["up_axis"]) == "Y"
        np.testing.assert_allclose(z["vertex_colors"], anim.colors)
        t = anim.transforms.copy()
        t[:, :3, 3] /= 4.0  # translations in the file's units (metres)
        np.testing.assert_allclose(z["transforms"], t)


def test_read_animation_memory_maps(tmp_path, anim):
    export_animation(tmp_path / "a.npz", anim.faces, anim.frames, anim.fps)
    back = read_animation(tmp_path / "a.npz")
    assert isinstance(back.vertices, np.memmap)
    np.testing.assert_array_equal(back.vertices, anim.metres)
    assert back.transforms is None and back.vertex_colors is None and back.start_frame == 1


def test_read_animation_accepts_compressed_and_rejects_bad_files(tmp_path, anim):
    np.savez_compressed(tmp_path / "c.npz", vertices=anim.metres, faces=anim.faces, fps=30.0)
    back = read_animation(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.vertices, anim.metres)
    np.savez(tmp_path / "bad.npz", vertices=anim.metres, fps=30.0)
    with pytest.raises(InputError, match="missing key 'faces'"):
        read_animation(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", vertices=anim.metres[0], faces=anim.faces, fps=30.0)
    with pytest.raises(InputError, match=r"'vertices' must have shape \[N, V, 3\]"):
        read_animation(tmp_path / "bad2.npz")
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not an NPZ"):
        read_animation(tmp_path / "x.npz")
