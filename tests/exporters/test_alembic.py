"""Alembic export (exporters/alembic.py): read back with alembic3d and by a tiny Ogawa walker."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from exporters import export_animation, open_writer
from model.errors import MissingDependencyError

from .conftest import apply_transforms

abc = pytest.importorskip("alembic3d", reason="Alembic extra not installed: pip install 'nphm-track[alembic]'")
from alembic3d import Abc, AbcGeom  # noqa: E402


def _read(path):
    archive = Abc.IArchive(str(path))
    head = archive.getTop().getChild("Head")
    mesh = AbcGeom.IPolyMesh(head.getChild("Mesh"), Abc.WrapExistingFlag.kWrapExisting)
    xform = AbcGeom.IXform(head, Abc.WrapExistingFlag.kWrapExisting)
    return archive, mesh.getSchema(), xform.getSchema()


def test_round_trip_with_alembic3d(tmp_path, anim):
    res = export_animation(tmp_path / "a.abc", anim.faces, anim.frames, anim.fps, start_frame=1)
    archive, schema, xform = _read(res.path)
    assert schema.getNumSamples() == len(anim.frames)
    ts = schema.getTimeSampling()
    for i in range(len(anim.frames)):
        assert ts.getSampleTime(i) == pytest.approx((1 + i) / anim.fps)
    for i in (0, 2, 5):
        sample = schema.getValue(Abc.ISampleSelector((1 + i) / anim.fps))  # selectors take seconds
        np.testing.assert_array_equal(np.asarray(sample.getPositions()), anim.metres[i])
        bounds = sample.getSelfBounds()
        assert bounds.min().y == pytest.approx(anim.metres[i][:, 1].min())
    sample = schema.getValue(Abc.ISampleSelector(0))
    assert set(np.asarray(sample.getFaceCounts())) == {3}
    # Alembic winding is clockwise: every face is stored reversed.
    np.testing.assert_array_equal(np.asarray(sample.getFaceIndices()).reshape(-1, 3), anim.faces[:, ::-1])
    assert xform.getNumSamples() <= 1  # no head transform given: static identity


def test_colors_and_transform(tmp_path, anim):
    res = export_animation(tmp_path / "a.abc", anim.faces, anim.frames, anim.fps,
                           vertex_colors=anim.colors, transforms=anim.transforms)
    archive, schema, xform = _read(res.path)
    cd = AbcGeom.IC3fGeomParam(schema.getArbGeomParams(), "Cd")
    assert cd.getScope() == AbcGeom.GeometryScope.kVertexScope
    np.testing.assert_allclose(np.asarray(cd.getExpandedValue().getVals()), anim.colors, atol=1e-7)
    world = apply_transforms(anim.frames, anim.transforms) / 4.0
    assert xform.getNumSamples() == len(anim.frames)
    for i in (1, 4):
        sel = Abc.ISampleSelector((1 + i) / anim.fps)
        m = xform.getValue(sel).getMatrix()
        m = np.array([[m[r][c] for c in range(4)] for r in range(4)])  # Imath: row vectors
        p = np.asarray(schema.getValue(sel).getPositions())
        np.testing.assert_allclose(p @ m[:3, :3] + m[3, :3], world[i], atol=1e-5)


# ---------------------------------------------------------------------------------------- Ogawa walker
# Ogawa layout: "Ogawa" (5 bytes), frozen flag (1 byte, 0xff once finalised), version (uint16),
# root group offset (uint64). A group is uint64 n + n uint64 child offsets; a child offset with the top
# bit set is a data block (uint64 size + bytes), otherwise a group. Offset 0 is an empty group/data.
DATA_BIT = 1 << 63


def _data_blocks(buf: bytes):
    magic, frozen, version, root = struct.unpack_from("<5sBHQ", buf, 0)
    seen, stack = set(), [root]
    while stack:
        off = stack.pop()
        if off == 0 or off in seen:
            continue
        seen.add(off)
        (n,) = struct.unpack_from("<Q", buf, off)
        for child in struct.unpack_from(f"<{n}Q", buf, off + 8):
            if child & DATA_BIT:
                pos = child & ~DATA_BIT
                if pos:
                    (size,) = struct.unpack_from("<Q", buf, pos)
                    yield buf[pos + 8: pos + 8 + size]
            else:
                stack.append(child)


def test_ogawa_structure(tmp_path, anim):
    w = open_writer(tmp_path / "a.abc", anim.faces, 42, anim.fps)
    for f in anim.frames:
        w.append(f)
    head = w.tmp.read_bytes()[:6]
    w.close()
    assert head == b"Ogawa\x00"  # frozen byte still 0 while the archive is open
    buf = (tmp_path / "a.abc").read_bytes()
    magic, frozen, version, root = struct.unpack_from("<5sBHQ", buf, 0)
    assert magic == b"Ogawa" and frozen == 0xFF and 0 < root < len(buf)
    # Every frame's positions appear exactly once as a data block (16-byte digest + float32 xyz).
    frames = {anim.metres[i].astype("<f4").tobytes(): i for i in range(len(anim.frames))}
    found = [frames[b[16:]] for b in _data_blocks(buf) if len(b) == 16 + 42 * 12 and b[16:] in frames]
    assert sorted(found) == list(range(len(anim.frames)))


def test_missing_extra_gives_install_command(tmp_path, anim, monkeypatch):
    monkeypatch.setitem(sys.modules, "alembic3d", None)  # makes `import alembic3d` fail
    with pytest.raises(MissingDependencyError, match=r'pip install "nphm-track\[alembic\]"'):
        open_writer(tmp_path / "a.abc", anim.faces, 42, anim.fps)
    assert list(tmp_path.iterdir()) == []
