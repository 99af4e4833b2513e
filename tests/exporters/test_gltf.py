"""glTF morph targets (exporters/gltf.py), read back with pygltflib."""

from __future__ import annotations

import numpy as np
import pygltflib as gl
import pytest

from exporters import export_animation, open_writer
from model.errors import InputError

from .conftest import make_anim


def _accessor(doc: gl.GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = doc.accessors[index]
    view = doc.bufferViews[acc.bufferView]
    dtype = {gl.FLOAT: "<f4", gl.UNSIGNED_INT: "<u4"}[acc.componentType]
    width = {gl.SCALAR: 1, gl.VEC3: 3}[acc.type]
    arr = np.frombuffer(blob, dtype, count=acc.count * width, offset=view.byteOffset + (acc.byteOffset or 0))
    return arr.reshape(acc.count, width) if width > 1 else arr


def _decode(path):
    doc = gl.GLTF2().load(str(path))
    blob = doc.binary_blob() if str(path).endswith(".glb") else (path.parent / doc.buffers[0].uri).read_bytes()
    prim = doc.meshes[0].primitives[0]
    base = _accessor(doc, blob, prim.attributes.POSITION)
    targets = np.stack([_accessor(doc, blob, t["POSITION"]) for t in prim.targets])
    sampler = doc.animations[0].samplers[0]
    times = _accessor(doc, blob, sampler.input)
    weights = _accessor(doc, blob, sampler.output).reshape(len(times), len(targets))
    faces = _accessor(doc, blob, prim.indices).reshape(-1, 3)
    return doc, base, targets, times, weights, faces


@pytest.mark.parametrize("name", ["a.glb", "a.gltf"])
def test_round_trip_exact_with_enough_targets(tmp_path, anim, name):
    res = export_animation(tmp_path / name, anim.faces, anim.frames, anim.fps, vertex_colors=anim.colors)
    doc, base, targets, times, weights, faces = _decode(res.path)
    np.testing.assert_array_equal(faces, anim.faces)
    np.testing.assert_allclose(times, np.arange(6) / anim.fps, rtol=1e-6)
    recon = base[None] + np.einsum("nk,kvc->nvc", weights, targets)
    err = res.extras["max_reconstruction_error"]
    assert err < 1e-6 and doc.asset.extras["max_reconstruction_error"] == pytest.approx(err)
    assert np.abs(recon - anim.metres).max() <= err * 1.01 + 1e-7
    channel = doc.animations[0].channels[0]
    assert (channel.target.node, channel.target.path) == (0, "weights")
    assert doc.animations[0].samplers[0].interpolation == "LINEAR"
    assert doc.asset.extras["fps"] == anim.fps
    assert weights.min() >= 0 and weights.max() <= 1  # DCC shape-key sliders clamp to 0..1
    for t in doc.meshes[0].primitives[0].targets:  # glTF requires min/max on POSITION accessors
        assert doc.accessors[t["POSITION"]].min is not None
    if name.endswith(".gltf"):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.gltf"]


def test_fewer_targets_state_their_error(tmp_path):
    anim = make_anim(n_frames=20)
    res = export_animation(tmp_path / "a.glb", anim.faces, anim.frames, anim.fps, morph_targets=2)
    doc, base, targets, times, weights, faces = _decode(res.path)
    assert len(targets) == 2 == res.extras["morph_targets"]
    recon = base[None] + np.einsum("nk,kvc->nvc", weights, targets)
    measured = np.abs(recon - anim.metres).max()
    assert measured > 1e-4  # lossy: the motion has 4 modes
    assert measured == pytest.approx(res.extras["max_reconstruction_error"], rel=1e-3, abs=1e-6)


def test_bad_morph_target_count(tmp_path, anim):
    with pytest.raises(InputError, match="morph_targets must be >= 1"):
        open_writer(tmp_path / "a.glb", anim.faces, 42, anim.fps, morph_targets=0)
