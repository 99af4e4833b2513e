"""MDD point cache (exporters/mdd.py), parsed by a reader written here from the format description."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import trimesh

from exporters import export_animation, open_writer
from model.errors import InputError


def read_mdd(path):
    """Reader from the LightWave MDD description: big-endian int32 frames, int32 points, float32 times,
    then float32 xyz per point per frame."""
    buf = path.read_bytes()
    n_frames, n_points = struct.unpack_from(">ii", buf, 0)
    times = np.frombuffer(buf, ">f4", count=n_frames, offset=8)
    assert len(buf) == 8 + 4 * n_frames + n_frames * n_points * 12
    pts = np.frombuffer(buf, ">f4", offset=8 + 4 * n_frames).reshape(n_frames, n_points, 3)
    return times, pts


@pytest.mark.parametrize("known_count", [False, True])
def test_round_trip(tmp_path, anim, known_count):
    frames = anim.frames if known_count else iter(anim.frames)  # an array lets it write the header first
    res = export_animation(tmp_path / "a.mdd", anim.faces, frames, anim.fps)
    times, pts = read_mdd(res.path)
    np.testing.assert_allclose(times, np.arange(6) / anim.fps, rtol=1e-6)
    np.testing.assert_array_equal(pts, anim.metres)
    rest = trimesh.load(tmp_path / "a.obj", process=False)
    np.testing.assert_allclose(rest.vertices, anim.metres[0], atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mdd", "a.obj"]


def test_wrong_frame_count_fails_cleanly(tmp_path, anim):
    with pytest.raises(InputError, match="n_frames=7"):
        with open_writer(tmp_path / "a.mdd", anim.faces, 42, anim.fps, n_frames=7) as w:
            for f in anim.frames:
                w.append(f)
    assert list(tmp_path.iterdir()) == []
