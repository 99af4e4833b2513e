"""Named blend-shape rigs (exporters/rig.py): glTF morph targets and UsdSkel blend shapes, read back."""

from __future__ import annotations

import numpy as np
import pygltflib as gl
import pytest

from exporters.rig import BlendShapeRig, write_rig
from exporters.usd import validate_usd
from model.errors import InputError

from .conftest import make_anim
from .test_gltf import _accessor


def _rig(n_frames=5):
    anim = make_anim(n_frames=n_frames)
    base = anim.frames[0]
    offsets = np.stack([anim.frames[1] - base, anim.frames[2] - base, np.zeros_like(base)])
    names = ["jawOpen", "eyeBlink_L", "tongueOut"]
    w = np.random.default_rng(0).uniform(size=(n_frames, 3)).astype(np.float32)
    return anim, BlendShapeRig(base, offsets, names), w


@pytest.mark.parametrize("name", ["r.glb", "r.gltf"])
def test_gltf_rig_names_weights_and_pose(tmp_path, name):
    anim, rig, w = _rig()
    res = write_rig(tmp_path / name, anim.faces, rig, w, anim.fps, transforms=anim.transforms)
    doc = gl.GLTF2().load(str(res.path))
    blob = doc.binary_blob() if name.endswith(".glb") else (tmp_path / doc.buffers[0].uri).read_bytes()
    assert doc.meshes[0].extras["targetNames"] == rig.names
    prim = doc.meshes[0].primitives[0]
    base = _accessor(doc, blob, prim.attributes.POSITION)
    np.testing.assert_allclose(base, rig.base / 4.0, atol=1e-7)  # metres
    off = _accessor(doc, blob, prim.targets[0]["POSITION"])
    np.testing.assert_allclose(off, rig.offsets[0] / 4.0, atol=1e-7)
    samplers = doc.animations[0].samplers
    weights = _accessor(doc, blob, samplers[0].output).reshape(len(w), 3)
    np.testing.assert_allclose(weights, w, atol=1e-7)
    paths = [c.target.path for c in doc.animations[0].channels]
    assert paths == ["weights", "translation", "rotation"]
    translation = np.frombuffer(blob, "<f4", count=3 * len(w),
                                offset=doc.bufferViews[doc.accessors[samplers[1].output].bufferView].byteOffset)
    np.testing.assert_allclose(translation.reshape(-1, 3), anim.transforms[:, :3, 3] / 4.0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_usd_rig_is_skel_blendshapes_with_names_and_weights(tmp_path):
    from pxr import Usd, UsdSkel

    anim, rig, w = _rig()
    res = write_rig(tmp_path / "r.usda", anim.faces, rig, w, anim.fps, transforms=anim.transforms, start_frame=1)
    assert validate_usd(res.path) == []
    stage = Usd.Stage.Open(str(res.path))
    mesh = stage.GetPrimAtPath("/Head/Mesh")
    binding = UsdSkel.BindingAPI(mesh)
    assert list(binding.GetBlendShapesAttr().Get()) == rig.names
    skel = UsdSkel.BindingAPI(stage.GetPrimAtPath("/Head/Skeleton"))
    anim_prim = skel.GetAnimationSourceRel().GetTargets()[0]
    sk_anim = UsdSkel.Animation(stage.GetPrimAtPath(anim_prim))
    assert list(sk_anim.GetBlendShapesAttr().Get()) == rig.names
    for i in range(len(w)):
        np.testing.assert_allclose(np.array(sk_anim.GetBlendShapeWeightsAttr().Get(1 + i)), w[i], atol=1e-7)
    offsets = np.array(UsdSkel.BlendShape(stage.GetPrimAtPath("/Head/Mesh/eyeBlink_L")).GetOffsetsAttr().Get())
    np.testing.assert_allclose(offsets, rig.offsets[1] / 4.0, atol=1e-7)
    xf = stage.GetPrimAtPath("/Head").GetAttribute("xformOp:transform").Get(3)
    np.testing.assert_allclose(np.array(xf)[3, :3], anim.transforms[2, :3, 3] / 4.0, atol=1e-6)


def test_formats_without_blend_shapes_are_refused_in_one_line(tmp_path):
    anim, rig, w = _rig()
    with pytest.raises(InputError, match=r"a.abc: a rig \(--rig arkit\) needs a format with named blend shapes"):
        write_rig(tmp_path / "a.abc", anim.faces, rig, w, anim.fps)
    with pytest.raises(InputError, match=r"weights must be \[N, 3\]"):
        write_rig(tmp_path / "a.glb", anim.faces, rig, w[:, :2], anim.fps)
    assert list(tmp_path.iterdir()) == []
