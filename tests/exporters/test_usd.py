"""USD export (exporters/usd.py), read back with usd-core."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pxr import Sdf, Usd, UsdGeom, UsdSkel

import exporters.usd as usd_mod
from exporters import export_animation, open_writer
from exporters.usd import validate_usd
from model.errors import InputError

from .conftest import apply_transforms, make_anim

GOLDEN = Path(__file__).parent / "golden"


def _points(stage: Usd.Stage, frame: float) -> np.ndarray:
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Head/Mesh"))
    return np.asarray(mesh.GetPointsAttr().Get(Usd.TimeCode(frame)), np.float32)


@pytest.mark.parametrize("ext, magic", [(".usd", b"PXR-USDC"), (".usdc", b"PXR-USDC"), (".usda", b"#usda 1.0")])
def test_round_trip_points_times_and_metadata(tmp_path, anim, ext, magic):
    res = export_animation(tmp_path / f"a{ext}", anim.faces, anim.frames, anim.fps, start_frame=10)
    assert res.path.read_bytes().startswith(magic)  # crate by default, text when asked
    stage = Usd.Stage.Open(str(res.path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetTimeCodesPerSecond() == anim.fps and stage.GetFramesPerSecond() == anim.fps
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (10, 15)
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path("/Head")
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Head/Mesh"))
    assert mesh.GetPointsAttr().GetTimeSamples() == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    for i in (0, 2, 5):
        np.testing.assert_array_equal(_points(stage, 10 + i), anim.metres[i])
        ext_ = np.asarray(mesh.GetExtentAttr().Get(10 + i))
        np.testing.assert_array_equal(ext_, [anim.metres[i].min(0), anim.metres[i].max(0)])
    np.testing.assert_array_equal(np.asarray(mesh.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3), anim.faces)
    assert set(mesh.GetFaceVertexCountsAttr().Get()) == {3}
    assert mesh.GetOrientationAttr().Get() == UsdGeom.Tokens.rightHanded
    assert mesh.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    assert validate_usd(res.path) == []


def test_units_colors_and_transform(tmp_path, anim):
    res = export_animation(tmp_path / "a.usd", anim.faces, anim.frames, anim.fps, units="cm",
                           vertex_colors=anim.colors, transforms=anim.transforms)
    stage = Usd.Stage.Open(str(res.path))
    assert UsdGeom.GetStageMetersPerUnit(stage) == pytest.approx(0.01)
    color = UsdGeom.PrimvarsAPI(stage.GetPrimAtPath("/Head/Mesh")).GetPrimvar("displayColor")
    assert color.GetInterpolation() == UsdGeom.Tokens.vertex
    np.testing.assert_allclose(np.asarray(color.Get()), anim.colors, atol=1e-7)
    # Points stay in head space; the head transform is on /Head. World positions = T @ p, in cm.
    expected = apply_transforms(anim.frames, anim.transforms) * 25.0
    mesh = stage.GetPrimAtPath("/Head/Mesh")
    for i in (0, 3, 5):
        m = np.asarray(UsdGeom.Xformable(mesh).ComputeLocalToWorldTransform(Usd.TimeCode(1 + i)))
        world = _points(stage, 1 + i) @ m[:3, :3] + m[3, :3]  # USD: row vectors
        np.testing.assert_allclose(world, expected[i], atol=1e-4)
    assert validate_usd(res.path) == []


def test_crate_streams_with_periodic_saves(tmp_path, monkeypatch):
    # Force a save every 3 frames: the incremental crate saves must still give every sample back.
    monkeypatch.setattr(usd_mod, "SAVE_EVERY_BYTES", 3 * 12 * 42)
    anim = make_anim(n_frames=11)
    res = export_animation(tmp_path / "a.usd", anim.faces, anim.frames, anim.fps)
    stage = Usd.Stage.Open(str(res.path))
    assert stage.GetEndTimeCode() == 11
    for i in range(11):
        np.testing.assert_array_equal(_points(stage, 1 + i), anim.metres[i])


def test_blendshapes_reconstruct_within_stated_error(tmp_path):
    anim = make_anim(n_frames=12)
    res = export_animation(tmp_path / "a.usd", anim.faces, anim.frames, anim.fps, blendshapes=3,
                           transforms=anim.transforms)
    err = res.extras["max_reconstruction_error"]
    assert res.extras["blendshapes"] == 3 and 1e-4 < err < 0.05  # 4 modes, 3 shapes: lossy
    assert validate_usd(res.path) == []
    stage = Usd.Stage.Open(str(res.path))
    assert stage.GetPrimAtPath("/Head").IsA(UsdSkel.Root)
    assert stage.GetRootLayer().customLayerData["max_reconstruction_error"] == pytest.approx(err)
    weights = UsdSkel.Animation(stage.GetPrimAtPath("/Head/Anim")).GetBlendShapeWeightsAttr()
    w = np.stack([np.asarray(weights.Get(t)) for t in weights.GetTimeSamples()])
    assert w.shape == (12, 3) and w.min() >= 0 and w.max() <= 1  # DCC sliders clamp to 0..1
    # Pose with USD's own skinning and compare with the input (world space, transform included).
    UsdSkel.BakeSkinning(stage.Traverse())
    expected = apply_transforms(anim.frames, anim.transforms) / 4.0
    mesh = stage.GetPrimAtPath("/Head/Mesh")
    worst = 0.0
    for i in range(12):
        m = np.asarray(UsdGeom.Xformable(mesh).ComputeLocalToWorldTransform(Usd.TimeCode(1 + i)))
        world = _points(stage, 1 + i) @ m[:3, :3] + m[3, :3]
        worst = max(worst, float(np.abs(world - expected[i]).max()))
    assert worst <= err * 1.01 + 1e-6
    # Enough shapes make it exact up to float32 rounding.
    exact = export_animation(tmp_path / "b.usda", anim.faces, anim.frames, anim.fps, blendshapes=20)
    assert 4 <= exact.extras["blendshapes"] <= 11 and exact.extras["max_reconstruction_error"] < 1e-6


def test_blendshapes_smaller_than_points(tmp_path):
    anim = make_anim(n_frames=60, subdivisions=3)
    full = export_animation(tmp_path / "a.usd", anim.faces, anim.frames, anim.fps)
    skel = export_animation(tmp_path / "b.usd", anim.faces, anim.frames, anim.fps, blendshapes=4)
    assert skel.bytes_written * 4 < full.bytes_written
    assert skel.extras["max_reconstruction_error"] < 1e-5  # the test motion has 4 modes


def test_bad_blendshapes_option(tmp_path, anim):
    with pytest.raises(InputError, match="blendshapes must be >= 1"):
        open_writer(tmp_path / "a.usd", anim.faces, 42, 25, blendshapes=0)
    with pytest.raises(InputError, match="not supported by the PC2"):
        open_writer(tmp_path / "a.pc2", anim.faces, 42, 25, blendshapes=2)


def test_validation_reports_errors():
    # validate_usd must see real problems (a stage with no metadata), so an empty list means something.
    stage = Usd.Stage.CreateInMemory()
    UsdGeom.Mesh.Define(stage, "/A")
    from pxr import UsdValidation

    ctx = UsdValidation.ValidationContext(UsdValidation.ValidationRegistry().GetOrLoadAllValidators())
    names = {e.GetName() for e in ctx.Validate(stage)}
    assert {"MissingUpAxisMetadata", "MissingMetersPerUnitMetadata", "MissingDefaultPrim"} <= names


def test_golden_usda(tmp_path):
    # A tetrahedron (model units, 2 frames): the authored text from the first prim on is fixed.
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    res = export_animation(tmp_path / "tet.usda", faces, [verts, verts * 2], 24.0)
    text = res.path.read_text()
    golden = (GOLDEN / "tet.usda").read_text()
    assert text[text.index('def Xform "Head"'):] == golden[golden.index('def Xform "Head"'):]
    for line in ('defaultPrim = "Head"', "endTimeCode = 2", "framesPerSecond = 24", "metersPerUnit = 1",
                 "startTimeCode = 1", "timeCodesPerSecond = 24", 'upAxis = "Y"'):
        assert line in text
