"""Opt-in: import USD, Alembic, PC2 and glTF exports and the named blend-shape rigs into Blender (bpy 4.5)
and compare positions (and, for the rigs, the shape-key names).

Needs ``NPHM_BPY_PYTHON``: a Python with ``bpy`` 4.5 in its own virtual environment (bpy pins numpy<2),
e.g. ``python3.11 -m venv /tmp/bpyenv && /tmp/bpyenv/bin/pip install "bpy==4.5.*"``; then
``NPHM_BPY_PYTHON=/tmp/bpyenv/bin/python pytest -m slow tests/exporters/test_blender.py``.

Blender is Z-up: its importers map our Y-up (x, y, z) to (x, -z, y). Its default scene rate is 24 fps, so
the probe sets the scene to the file's 25 fps first; frame numbers then line up as checked below.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from exporters import export_animation

from .conftest import make_anim

PROBE = Path(__file__).with_name("blender_probe.py")
BPY = os.environ.get("NPHM_BPY_PYTHON")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BPY, reason="NPHM_BPY_PYTHON is not set (a Python with bpy 4.5; see the module "
                                       "docstring)"),
]

# format key, file name, options, Blender frame that shows our first frame
CASES = [
    ("usd", "a.usd", {}, 1),
    ("usd", "skel.usd", {"blendshapes": 8}, 1),
    ("abc", "a.abc", {}, 1),
    ("pc2", "a.pc2", {}, 1),
    ("gltf", "a.glb", {}, 0),  # glTF time starts at 0 s, which Blender's importer puts on frame 0
]


@pytest.mark.parametrize("fmt, name, options, first", CASES, ids=[c[1] for c in CASES])
def test_blender_sees_our_positions(tmp_path, fmt, name, options, first):
    anim = make_anim(n_frames=8, subdivisions=2)
    path = export_animation(tmp_path / name, anim.faces, anim.frames, anim.fps, **options).path
    samples = [0, 3, 7]
    proc = subprocess.run([BPY, str(PROBE), fmt, str(path), str(anim.fps), *[str(first + i) for i in samples]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["default_fps"] == 24 and result["fps"] == 25
    zup = np.stack([anim.metres[..., 0], -anim.metres[..., 2], anim.metres[..., 1]], axis=-1)  # [N, V, 3]
    got = {int(k): np.asarray(v) for k, v in result["frames"].items()}
    # Importers may reorder vertices: find the order once, at the first frame, then hold it fixed.
    dist, perm = cKDTree(got[first]).query(zup[0])
    assert len(set(perm.tolist())) == zup.shape[1] and dist.max() < 1e-5
    for i in samples:
        np.testing.assert_allclose(got[first + i][perm], zup[i], atol=1e-5, err_msg=f"frame {i}")


RIG_CASES = [("usd", "rig.usd", 1), ("gltf", "rig.glb", 0)]


@pytest.mark.parametrize("fmt, name, first", RIG_CASES, ids=[c[1] for c in RIG_CASES])
def test_blender_plays_the_named_rig(tmp_path, fmt, name, first):
    from exporters.rig import BlendShapeRig, write_rig

    anim = make_anim(n_frames=8, subdivisions=2)
    base = anim.frames[0]
    names = ["jawOpen", "eyeBlink_L", "mouthSmile_R"]
    rig = BlendShapeRig(base, anim.frames[1:4] - base, names)
    w = np.random.default_rng(1).uniform(size=(8, 3)).astype(np.float32)
    path = write_rig(tmp_path / name, anim.faces, rig, w, anim.fps).path
    samples = [0, 3, 7]
    proc = subprocess.run([BPY, str(PROBE), fmt, str(path), str(anim.fps), *[str(first + i) for i in samples]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [n for n in result["shape_keys"] if n != "Basis"] == names
    expected = (rig.base[None] + np.einsum("nk,kvc->nvc", w, rig.offsets)) / 4.0  # metres, Y up
    zup = np.stack([expected[..., 0], -expected[..., 2], expected[..., 1]], axis=-1)
    got = {int(k): np.asarray(v) for k, v in result["frames"].items()}
    dist, perm = cKDTree(got[first]).query(zup[0])
    assert dist.max() < 1e-5
    for i in samples:
        np.testing.assert_allclose(got[first + i][perm], zup[i], atol=1e-5, err_msg=f"frame {i}")
