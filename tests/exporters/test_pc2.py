"""PC2 point cache (exporters/pc2.py), parsed by a reader written here from the format description."""

from __future__ import annotations

import struct

import numpy as np
import trimesh

from exporters import export_animation, open_writer


def read_pc2(path):
    """Reader from the 3ds Max Point Cache 2 description: 32-byte little-endian header, float32 xyz."""
    buf = path.read_bytes()
    sig, version, n_points, start, rate, n_samples = struct.unpack_from("<12siiffi", buf, 0)
    assert sig == b"POINTCACHE2\0" and version == 1
    assert len(buf) == 32 + n_samples * n_points * 12
    pts = np.frombuffer(buf, "<f4", offset=32).reshape(n_samples, n_points, 3)
    return start, rate, pts


def test_round_trip_and_rest_mesh(tmp_path, anim):
    res = export_animation(tmp_path / "a.pc2", anim.faces, anim.frames, anim.fps, start_frame=7)
    start, rate, pts = read_pc2(res.path)
    assert (start, rate) == (7.0, 1.0)
    np.testing.assert_array_equal(pts, anim.metres)
    rest = trimesh.load(tmp_path / "a.obj", process=False)
    np.testing.assert_allclose(rest.vertices, anim.metres[0], atol=1e-6)  # same vertex order
    np.testing.assert_array_equal(rest.faces, anim.faces)
    assert rest.volume > 0  # counter-clockwise from outside: outward normals


def test_sample_count_is_patched_while_streaming(tmp_path, anim):
    w = open_writer(tmp_path / "a.pc2", anim.faces, 42, anim.fps)
    for f in anim.frames[:3]:
        w.append(f)
    w._f.flush()
    assert struct.unpack_from("<i", w.tmp.read_bytes(), 28)[0] == 0  # not yet known
    for f in anim.frames[3:]:
        w.append(f)
    w.close()
    assert read_pc2(tmp_path / "a.pc2")[2].shape == (6, 42, 3)
