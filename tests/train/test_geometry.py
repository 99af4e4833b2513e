"""Tests for train/geometry.py (outer surface, signed distance, samples) and train/frame.py."""

import igl
import numpy as np
import pytest
import trimesh

from train.frame import BOX_MAX, BOX_MIN, NECK_CUT_Y, UNITS_PER_CM, ict_to_model, ict_to_model_matrix, model_to_ict
from train.geometry import (HeadSurface, SurfaceConfig, face_normals, landmark_positions, outer_surface,
                            sample_surface, sample_volume, signed_distance, surface_topology, winding_number)
from train.sampler import extreme_expression, sample_identity


@pytest.fixture(scope="module")
def topology(kit):
    return surface_topology(kit.triangles, kit.n_vertices)


def _head(kit, topology, w_id=None, w_ex=None, config=SurfaceConfig()) -> tuple[np.ndarray, HeadSurface]:
    w_id = np.zeros(kit.n_identity) if w_id is None else w_id
    w_ex = np.zeros(kit.n_expression) if w_ex is None else w_ex
    vertices = ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))
    return vertices, outer_surface(vertices, topology, config)


@pytest.fixture(scope="module")
def neutral(kit, topology):
    return _head(kit, topology)


# --------------------------------------------------------------------------------------------- frame


def test_frame_is_scale_and_translation_and_inverts():
    p = np.array([[0.0, -1.5, 5.0], [10.0, -1.5, 5.0]])
    m = ict_to_model(p)
    np.testing.assert_allclose(m[0], 0.0, atol=1e-12)                 # HEAD_CENTRE_CM is the origin
    np.testing.assert_allclose(m[1], [10 * UNITS_PER_CM, 0, 0], atol=1e-12)  # 10 cm = 0.4 units along +X
    np.testing.assert_allclose(model_to_ict(m), p, atol=1e-12)
    np.testing.assert_allclose((ict_to_model_matrix() @ np.append(p[1], 1.0))[:3], m[1], atol=1e-12)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        ict_to_model(np.zeros((4, 2)))


def test_random_heads_fit_the_box(kit, topology):
    rng = np.random.default_rng(0)
    for w_id in sample_identity(rng, 3, 1.0):
        _, surface = _head(kit, topology, w_id)
        pts = sample_surface(surface, rng, 2000).points
        assert np.all(pts >= BOX_MIN) and np.all(pts <= BOX_MAX)
        assert pts[:, 1].min() >= NECK_CUT_Y - 1e-9


# --------------------------------------------------------------------------------- signed distance


def test_sign_inside_and_outside(kit, neutral):
    vertices, surface = neutral
    centre = ict_to_model(np.array([[0.0, 5.0, -1.0]]))           # middle of the skull, above the ears
    nose = vertices[kit.landmarks68[30]]
    outside = np.stack([nose + [0, 0, 0.1], [0, 0, 2.0], BOX_MAX, BOX_MIN])
    d_in, d_out = signed_distance(surface, centre), signed_distance(surface, outside)
    assert d_in[0] < -0.2                                          # > 5 cm deep
    assert np.all(d_out > 0)
    assert 0.05 < d_out[0] <= 0.1 + 1e-9                           # 2.5 cm in front of the nose tip
    assert abs(d_out[1] - np.linalg.norm(outside[1] - vertices[kit.landmarks68[30]])) < 0.05


def test_neck_is_cut_flat(neutral):
    _, surface = neutral
    below = np.array([[0.0, NECK_CUT_Y - 0.05, -0.15]])  # inside the neck tube, under the cut
    above = np.array([[0.0, NECK_CUT_Y + 0.01, -0.15]])  # just above the cut
    assert winding_number(surface, below)[0] > 0.9          # the mesh alone (capped below) calls it inside
    np.testing.assert_allclose(signed_distance(surface, below), 0.05, atol=1e-9)
    np.testing.assert_allclose(signed_distance(surface, above), -0.01, atol=1e-9)


def test_sdf_vanishes_on_samples_and_grows_along_the_normal(neutral):
    _, surface = neutral
    s = sample_surface(surface, np.random.default_rng(1), 400)
    assert np.abs(signed_distance(surface, s.points)).max() < 1e-6
    step = 0.004  # 1 mm
    d_out = signed_distance(surface, s.points + step * s.normals)
    d_in = signed_distance(surface, s.points - step * s.normals)
    assert np.mean(np.abs(d_out - step) < 0.2 * step) > 0.95
    assert np.mean(np.abs(d_in + step) < 0.2 * step) > 0.95


def test_open_mouth_is_capped_behind_the_lips(kit, topology):
    jaw = extreme_expression(kit.expression_names, "jawOpen")
    vertices, capped = _head(kit, topology, w_ex=jaw)
    _, deep = _head(kit, topology, w_ex=jaw, config=SurfaceConfig(mouth_depth_cm=1.0))
    between = vertices[kit.landmarks68[[62, 66]]].mean(0)[None]      # between the inner lips
    assert signed_distance(capped, between)[0] > 0                   # the open mouth is a recess...
    behind = between - [[0.0, 0.0, 1.5 * UNITS_PER_CM]]             # ...closed 1-1.5 cm behind the lips
    assert signed_distance(capped, behind)[0] < 0
    assert signed_distance(deep, behind)[0] > 0                      # unless part of the socket is kept
    throat = ict_to_model(np.array([[0.0, 0.0, 3.0]]))
    assert signed_distance(deep, throat)[0] < 0                      # never the whole oral cavity


def test_eyeballs_show_through_open_eyes_only(kit, topology, neutral):
    def cornea_apex(vertices):  # the most forward eyeball vertex on the head's left (+X)
        eye = vertices[21451:24591]
        eye = eye[eye[:, 0] > 0]
        return eye[np.argmax(eye[:, 2])]

    vertices, open_eyes = neutral
    apex = cornea_apex(vertices)
    step = np.array([[0.0, 0.0, 0.004]])                              # 1 mm along +Z
    assert abs(signed_distance(open_eyes, apex[None])[0]) < 1e-6      # the cornea is on the surface
    assert signed_distance(open_eyes, apex + step)[0] > 0
    assert signed_distance(open_eyes, apex - step)[0] < 0
    blink = np.zeros(kit.n_expression)
    blink[[kit.expression_index("eyeBlink_L"), kit.expression_index("eyeBlink_R")]] = 1.0
    closed_vertices, closed = _head(kit, topology, w_ex=blink)
    assert signed_distance(closed, cornea_apex(closed_vertices)[None])[0] < -0.001  # under the eyelid
    in_eyes = lambda s: ((s.triangles >= 21451) & (s.triangles < 24591)).all(1).sum()  # noqa: E731
    assert in_eyes(closed) < 0.3 * in_eyes(open_eyes)


def test_bad_shapes_are_rejected(kit, topology, neutral):
    _, surface = neutral
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        signed_distance(surface, np.zeros((5, 2)))
    with pytest.raises(ValueError, match=rf"\[{kit.n_vertices}, 3\]"):
        outer_surface(np.zeros((10, 3)), topology)


# ----------------------------------------------------------------------------------------- samples


def test_surface_normals_agree_with_mesh_face_normals(neutral):
    _, surface = neutral
    s = sample_surface(surface, np.random.default_rng(2), 500)
    on_cap = np.isclose(s.points[:, 1], NECK_CUT_Y) & (s.normals[:, 1] == -1.0)
    assert 0 < on_cap.sum() < 0.2 * len(on_cap)
    reference = trimesh.Trimesh(surface.vertices, surface.triangles, process=False)  # independent normals
    _, tri, _ = igl.point_mesh_squared_distance(s.points[~on_cap], surface.vertices, surface.triangles)
    dots = np.einsum("nd,nd->n", s.normals[~on_cap], reference.face_normals[tri])
    assert np.mean(dots > 0.99) > 0.98
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=1), 1.0, atol=1e-9)


def test_face_normals_point_outward(neutral):
    _, surface = neutral
    normals, areas = face_normals(surface.vertices, surface.triangles)
    centroids = surface.vertices[surface.triangles].mean(1)
    keep = (areas > 1e-7) & surface.is_face
    d = signed_distance(surface, centroids[keep] + 0.002 * normals[keep])
    assert np.mean(d > 0) > 0.97


def test_volume_samples_fill_the_box():
    p = sample_volume(np.random.default_rng(3), 2000)
    assert p.shape == (2000, 3) and np.all(p >= BOX_MIN) and np.all(p <= BOX_MAX)
    assert np.all(p.max(0) - p.min(0) > 0.9 * (BOX_MAX - BOX_MIN))


def test_landmarks_are_the_listed_vertices_on_the_surface(kit, neutral):
    vertices, surface = neutral
    lm = landmark_positions(vertices, kit.landmarks68)
    assert lm.shape == (68, 3)
    np.testing.assert_array_equal(lm, vertices[kit.landmarks68])
    assert np.abs(signed_distance(surface, lm)).max() < 0.004  # within 1 mm of the outer surface
    assert np.argmax(lm[:, 2]) == 30                            # nose tip in front (+Z)
