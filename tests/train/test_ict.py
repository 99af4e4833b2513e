"""Tests for train/ict.py: the ICT-FaceKit reader (npz and FaceXModel folder forms)."""

import json
from pathlib import Path

import numpy as np
import pytest

from model.errors import InputError
from train.ict import IctFaceKit, default_ict_path, load_ict

EXPRESSIONS = ("eyeBlink_L", "jawOpen", "mouthFunnel", "noseSneer_R")


# ----------------------------------------------------------------- a tiny writer of the original layout


def _write_obj(path: Path, vertices: np.ndarray, kit: IctFaceKit | None = None, fmt: str = "%.17g") -> None:
    """OBJ as ICT ships it: a comment header, mtllib, v lines, vt lines, usemtl groups, f v/vt lines."""
    lines = ["# ICT FaceKit test copy", "mtllib ICTFaceModelMaterial.mtl"]
    lines += [f"v {fmt % x} {fmt % y} {fmt % z}" for x, y, z in np.asarray(vertices, np.float64)]
    if kit is not None:
        lines += [f"vt {u:.9g} {v:.9g}" for u, v in kit.uv.astype(np.float64)]
        current = None
        for poly, puv, mat in zip(kit.polygons, kit.polygon_uv, kit.polygon_material):
            if mat != current:
                lines.append(f"usemtl {kit.material_names[mat]}")
                current = mat
            corners = [f"{a + 1}/{b + 1}" for a, b in zip(poly, puv) if a >= 0]
            lines.append("f " + " ".join(corners))
    path.write_text("\n".join(lines) + "\n")


def _write_folder(folder: Path, kit: IctFaceKit, n_identity: int, expressions: tuple[str, ...]) -> None:
    folder.mkdir(parents=True)
    neutral64 = kit.neutral.astype(np.float64)
    _write_obj(folder / "generic_neutral_mesh.obj", neutral64, kit, fmt="%.9g")
    for k in range(n_identity):
        _write_obj(folder / f"identity{k:03d}.obj", neutral64 + kit.identity_modes[k].astype(np.float64))
    for name in expressions:
        e = kit.expression_index(name)
        _write_obj(folder / f"{name}.obj", neutral64 + kit.expression_modes[e].astype(np.float64))
    # an OBJ the release has but the 53-expression list does not name: must be ignored
    _write_obj(folder / "PupilDilate_L.obj", neutral64[:10])
    (folder / "vertex_indices.json").write_text(json.dumps({
        "expressions": list(expressions),
        "idx_to_landmark_verts": kit.landmarks68.tolist(),
        "idx_to_rigid_verts": kit.rigid_vertices.tolist(),
        "idx_to_fitting_verts": kit.fitting_vertices.tolist(),
    }))


def _tiny_kit() -> IctFaceKit:
    """A 5-vertex model (a quad and a triangle) to test the folder reader without the shared data."""
    neutral = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], np.float32)
    polygons = np.array([[0, 1, 2, 3], [0, 1, 4, -1]], np.int64)
    rng = np.random.default_rng(0)
    return IctFaceKit(
        neutral=neutral, identity_modes=rng.normal(size=(2, 5, 3)).astype(np.float32),
        expression_modes=rng.normal(size=(2, 5, 3)).astype(np.float32),
        identity_names=("identity000", "identity001"), expression_names=("jawOpen", "eyeBlink_L"),
        triangles=np.array([[0, 1, 2], [0, 2, 3], [0, 1, 4]], np.int64), polygons=polygons,
        uv=rng.random((6, 2)).astype(np.float32), polygon_uv=np.array([[0, 1, 2, 3], [0, 4, 5, -1]], np.int64),
        polygon_material=np.array([1, 0], np.int64), material_names=("M_BackHead", "M_Face"),
        landmarks68=np.arange(68, dtype=np.int64) % 5, rigid_vertices=np.array([0, 1], np.int64),
        fitting_vertices=np.array([2, 3, 4], np.int64))


def _assert_same(a: IctFaceKit, b: IctFaceKit) -> None:
    np.testing.assert_array_equal(a.neutral, b.neutral)
    np.testing.assert_allclose(a.identity_modes, b.identity_modes, rtol=0, atol=2e-6)
    np.testing.assert_allclose(a.expression_modes, b.expression_modes, rtol=0, atol=2e-6)
    for name in ("triangles", "polygons", "polygon_uv", "polygon_material", "landmarks68", "rigid_vertices",
                 "fitting_vertices"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(a.uv, b.uv, atol=1e-6)
    assert a.expression_names == b.expression_names
    assert a.identity_names == b.identity_names
    assert a.material_names == b.material_names


# -------------------------------------------------------------------------------------------- tests


def test_npz_has_the_documented_arrays(kit):
    assert kit.neutral.shape == (26719, 3) and kit.neutral.dtype == np.float32
    assert kit.identity_modes.shape == (100, 26719, 3)
    assert kit.expression_modes.shape == (53, 26719, 3)
    assert kit.triangles.shape == (52220, 3) and kit.triangles.dtype == np.int64
    assert kit.expression_names[0] == "browDown_L" and "jawOpen" in kit.expression_names
    assert kit.landmarks68.shape == (68,) and kit.landmarks68.max() < kit.n_vertices
    assert len(kit.triangle_material()) == len(kit.triangles)
    # ICT axes: the nose tip (landmark 30) is the most forward landmark, the chin (8) below the eyes
    lm = kit.neutral[kit.landmarks68]
    assert np.argmax(lm[:, 2]) == 30 and lm[8, 1] < lm[36, 1]


def test_vertices_is_the_linear_model_over_batch_shapes(kit):
    w_id = np.zeros(100, np.float32)
    w_ex = np.zeros(53, np.float32)
    np.testing.assert_array_equal(kit.vertices(w_id, w_ex), kit.neutral)
    w_id[7], w_ex[kit.expression_index("jawOpen")] = 1.5, 0.5
    expected = kit.neutral + 1.5 * kit.identity_modes[7] + 0.5 * kit.expression_modes[26]
    np.testing.assert_allclose(kit.vertices(w_id, w_ex), expected, atol=1e-5)
    for batch in [(), (2,), (1, 2)]:
        out = kit.vertices(np.zeros(batch + (100,)), np.zeros(batch + (53,)))
        assert out.shape == batch + (kit.n_vertices, 3) and out.dtype == np.float32
    assert kit.vertices(np.zeros((2, 1, 100)), np.zeros((3, 53))).shape == (2, 3, kit.n_vertices, 3)


def test_vertices_rejects_wrong_weight_shapes(kit):
    with pytest.raises(ValueError, match=r"\[\.\.\., 100\]"):
        kit.vertices(np.zeros(99), np.zeros(53))
    with pytest.raises(ValueError, match=r"\[\.\.\., 53\]"):
        kit.vertices(np.zeros(100), np.zeros(52))


def test_folder_form_reads_back_the_npz_arrays(kit, tmp_path):
    sub = kit.select_modes(3, EXPRESSIONS)
    _write_folder(tmp_path / "FaceXModel", kit, 3, EXPRESSIONS)
    from_folder = load_ict(tmp_path / "FaceXModel")
    _assert_same(from_folder, sub)
    # the repository root (holding FaceXModel/) works too
    assert load_ict(tmp_path).n_identity == 3
    w_id, w_ex = np.linspace(-1, 1, 3), np.array([0.2, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(from_folder.vertices(w_id, w_ex), sub.vertices(w_id, w_ex), atol=1e-5)


def test_folder_reader_on_a_tiny_model(tmp_path):
    tiny = _tiny_kit()
    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    n64 = tiny.neutral.astype(np.float64)
    _write_obj(folder / "generic_neutral_mesh.obj", n64, tiny, fmt="%.9g")
    for k in range(2):
        _write_obj(folder / f"identity{k:03d}.obj", n64 + tiny.identity_modes[k])
    for e, name in enumerate(tiny.expression_names):
        _write_obj(folder / f"{name}.obj", n64 + tiny.expression_modes[e])
    (folder / "vertex_indices.json").write_text(json.dumps({
        "expressions": list(tiny.expression_names), "idx_to_landmark_verts": tiny.landmarks68.tolist(),
        "idx_to_rigid_verts": [0, 1], "idx_to_fitting_verts": [2, 3, 4]}))
    _assert_same(load_ict(folder), tiny)


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(InputError, match="nope.npz: no such ICT-FaceKit"):
        load_ict(missing)


def test_malformed_npz_names_the_problem(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, neutral=np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match=r"bad.npz: not an ICT-FaceKit npz, missing key\(s\) polygons"):
        load_ict(bad)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(InputError, match="garbage.npz: cannot read as an ICT-FaceKit npz"):
        load_ict(garbage)


def test_npz_with_bad_shapes_is_rejected(kit, tmp_path):
    arrays = dict(np.load(kit.source))
    arrays["landmarks_multipie68"] = arrays["landmarks_multipie68"][:60]
    bad = tmp_path / "short_landmarks.npz"
    np.savez(bad, **arrays)
    with pytest.raises(InputError, match=r"short_landmarks.npz: malformed ICT-FaceKit data, landmarks must be \[68\]"):
        load_ict(bad)


def test_malformed_folder_names_the_problem(tmp_path):
    tiny = _tiny_kit()
    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    _write_obj(folder / "generic_neutral_mesh.obj", tiny.neutral, tiny)
    with pytest.raises(InputError, match="missing vertex_indices.json"):
        load_ict(folder)
    (folder / "vertex_indices.json").write_text("{not json")
    with pytest.raises(InputError, match="malformed vertex_indices.json"):
        load_ict(folder)
    (folder / "vertex_indices.json").write_text(json.dumps({
        "expressions": ["jawOpen"], "idx_to_landmark_verts": [0] * 68, "idx_to_rigid_verts": [0],
        "idx_to_fitting_verts": [0]}))
    _write_obj(folder / "identity000.obj", tiny.neutral[:4])  # one vertex short
    _write_obj(folder / "jawOpen.obj", tiny.neutral)
    with pytest.raises(InputError, match="identity000.obj: has 4 vertices, generic_neutral_mesh.obj has 5"):
        load_ict(folder)
    _write_obj(folder / "identity000.obj", tiny.neutral)
    (folder / "jawOpen.obj").unlink()
    with pytest.raises(InputError, match="missing jawOpen.obj"):
        load_ict(folder)


def test_default_ict_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NPHM_ICT", raising=False)
    monkeypatch.setenv("NPHM_SHARED", str(tmp_path))
    assert default_ict_path() == tmp_path / "ict-facekit" / "ict_facekit_light.npz"
    monkeypatch.setenv("NPHM_ICT", str(tmp_path / "FaceXModel"))
    assert default_ict_path() == tmp_path / "FaceXModel"
