import numpy as np
import pytest
import trimesh

from train.camera import FRONT_CAMERA_ROTATION, HeadPose, ViewSamplerConfig, intrinsics_matrix, model_to_camera, \
    project, sample_view
from train.render import (PART_NAMES, RenderMesh, build_intersector, framing_points, head_vertices,
                          ict_render_mesh, raycast, render_geometry, render_head, vertex_normals)


@pytest.fixture(scope="module")
def mesh(kit):
    return ict_render_mesh(kit.triangles, kit.landmarks68)


def _sphere(radius: float, centre: np.ndarray) -> trimesh.Trimesh:
    s = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return trimesh.Trimesh(s.vertices + centre, s.faces, process=False)


def _sphere_render(radius=0.5, dist=3.0, f=40.0, size=32):
    sph = _sphere(radius, np.array([0.0, 0.0, dist]))
    K = intrinsics_matrix(f, f, (size - 1) / 2, (size - 1) / 2)
    rm = RenderMesh(triangles=sph.faces, part=np.ones(len(sph.faces)), face=np.zeros(len(sph.faces)),
                    landmarks=[0])
    return sph, K, render_geometry(sph.vertices, sph.vertices * 2.0, rm, K, size, size)


def test_embree_is_the_ray_caster():
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    sph = _sphere(1.0, np.zeros(3))
    assert isinstance(build_intersector(sph.vertices, sph.faces), RayMeshIntersector)


def test_sphere_mask_depth_normals_match_analytic():
    r, d = 0.5, 3.0
    sph, K, g = _sphere_render(r, d)
    c = np.array([0.0, 0.0, d])
    from train.camera import pixel_rays

    rays = pixel_rays(K, 32, 32)
    proj = rays @ c  # distance along the ray to the closest approach
    miss2 = d * d - proj ** 2  # squared distance of the centre from the ray
    inside = miss2 < (r * 0.985) ** 2
    outside = miss2 > (r * 1.001) ** 2
    assert g.mask[inside].all() and not g.mask[outside].any()
    assert 50 < g.mask.sum() < 32 * 32 / 2
    t = proj - np.sqrt(np.maximum(r * r - miss2, 0))
    depth_true = t * rays[..., 2]
    # the icosphere is inscribed in the sphere: hits are a sagitta behind it, more at grazing angles
    core = miss2 < (0.9 * r) ** 2
    np.testing.assert_allclose(g.depth[core], depth_true[core], atol=2e-3 * r)
    np.testing.assert_allclose(g.depth[inside], depth_true[inside], atol=1e-2 * r)
    assert (g.depth[inside] >= depth_true[inside] - 1e-9).all()
    assert (g.depth[~g.mask] == 0).all()
    p = g.depth[..., None] * rays / rays[..., 2:3]
    n_true = (p - c) / r
    cos = np.einsum("hwc,hwc->hw", g.normals, n_true)[inside]
    assert cos.min() > 0.999
    # canonical map interpolates the canonical vertices given (here 2 x posed): 2 x hit point
    np.testing.assert_allclose(g.canonical[g.mask], 2 * p[g.mask], atol=1e-9)
    assert g.part[g.mask].tolist() == [1] * int(g.mask.sum()) and (g.part[~g.mask] == 0).all()


def test_raycast_hits_are_barycentric_points_of_their_triangles():
    sph = _sphere(0.5, np.array([0.1, -0.05, 2.5]))
    hits = raycast(sph.vertices, sph.faces, intrinsics_matrix(30, 30, 11.5, 11.5), 24, 24)
    m = hits.mask
    assert m.any() and (hits.triangle[~m] == -1).all()
    np.testing.assert_allclose(hits.bary[m].sum(-1), 1.0, atol=1e-12)
    assert (hits.bary[m] > -1e-6).all()
    tri = sph.vertices[sph.faces[hits.triangle[m]]]  # [M, 3, 3]
    np.testing.assert_allclose(np.einsum("mk,mkc->mc", hits.bary[m], tri), hits.points[m], atol=1e-9)
    # the hit lies on the pixel's ray
    np.testing.assert_allclose(np.cross(hits.points[m], hits.rays[m]), 0.0, atol=1e-9)


def test_normals_face_camera_even_for_inward_winding():
    r, d = 0.5, 3.0
    sph = _sphere(r, np.array([0.0, 0.0, d]))
    K = intrinsics_matrix(40, 40, 15.5, 15.5)
    faces = sph.faces[:, ::-1]  # flipped winding: vertex normals point inward
    rm = RenderMesh(triangles=faces, part=np.ones(len(faces)), face=np.zeros(len(faces)), landmarks=[])
    g = render_geometry(sph.vertices, sph.vertices, rm, K, 32, 32)
    assert (g.normals[g.mask][:, 2] < 0).all()


def test_render_geometry_rejects_mismatched_vertices():
    sph = _sphere(1.0, np.array([0, 0, 3.0]))
    rm = RenderMesh(triangles=sph.faces, part=np.ones(len(sph.faces)), face=np.zeros(len(sph.faces)),
                    landmarks=[])
    with pytest.raises(ValueError, match=r"\[V, 3\]"):
        render_geometry(sph.vertices, sph.vertices[:-1], rm, np.eye(3), 8, 8)


def test_vertex_normals_of_sphere_are_radial():
    sph = _sphere(2.0, np.zeros(3))
    n = vertex_normals(sph.vertices, sph.faces)
    np.testing.assert_allclose(np.einsum("ij,ij->i", n, sph.vertices / 2.0), 1.0, atol=1e-3)


def test_ict_render_mesh_parts(kit, mesh):
    assert set(np.unique(mesh.part)) == set(range(1, len(PART_NAMES)))
    assert mesh.triangles.max() <= 24590  # no eyelashes, lacrimal fluid or eye shells
    assert (mesh.part[mesh.face] == 1).all()  # the face region is skin
    assert mesh.face.sum() > 15000 and len(mesh.landmarks) == 68


def _head_render(kit, mesh, seed, w_ex=None, size=32):
    from train.sampler import sample_expression, sample_identity

    rng = np.random.default_rng(seed)
    w_id = sample_identity(rng, 1)[0]
    if w_ex is None:
        w_ex = sample_expression(rng, 1, kit.expression_names)[0]
    head = head_vertices(kit, w_id, w_ex)
    view = sample_view(rng, ViewSamplerConfig(), framing_points(head.canonical), size, size)
    cam, pose = view.camera, view.pose
    return head, cam, pose, render_head(head, mesh, cam, pose)


def test_ict_normals_agree_with_face_normals(kit, mesh):
    head, cam, pose, g = _head_render(kit, mesh, 0)
    R, t = model_to_camera(cam, pose)
    V = head.posed @ R.T + t
    tri = V[mesh.triangles[g.triangle[g.mask]]]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    cos = np.abs(np.einsum("ij,ij->i", fn, g.normals[g.mask]))
    assert g.mask.sum() > 100
    assert np.median(cos) > 0.99 and np.mean(cos > 0.9) > 0.95
    np.testing.assert_allclose(np.linalg.norm(g.normals[g.mask], axis=1), 1.0, atol=1e-9)
    assert (np.einsum("hwc,hwc->hw", g.normals, g.depth[..., None] * np.ones(3))[g.mask] != 0).any()


def test_ict_canonical_map_without_expression_is_the_unposed_hit(kit, mesh):
    head, cam, pose, g = _head_render(kit, mesh, 1, w_ex=np.zeros(53))
    from train.camera import pixel_rays

    R, t = model_to_camera(cam, pose)
    rays = pixel_rays(cam.K, 32, 32)
    hit = (g.depth[..., None] * rays / rays[..., 2:3])[g.mask]
    np.testing.assert_allclose(g.canonical[g.mask] @ R.T + t, hit, atol=1e-6)


def test_ict_canonical_map_lies_on_neutral_mesh(kit, mesh):
    w_ex = np.zeros(53, np.float32)
    w_ex[kit.expression_names.index("jawOpen")] = 0.8
    w_ex[kit.expression_names.index("mouthSmile_L")] = 0.6
    head, cam, pose, g = _head_render(kit, mesh, 2, w_ex=w_ex)
    import igl

    pts = g.canonical[g.mask]
    d2, _, _ = igl.point_mesh_squared_distance(pts, head.canonical, mesh.triangles)
    assert len(pts) >= 100 and np.sqrt(d2).max() < 1e-6
    # while the posed (expression) surface, brought back by the inverse pose, is not the canonical one
    R, t = model_to_camera(cam, pose)
    from train.camera import pixel_rays

    rays = pixel_rays(cam.K, 32, 32)
    hit = (g.depth[..., None] * rays / rays[..., 2:3])[g.mask]
    unposed = (hit - t) @ R  # R^T (x - t)
    d2_posed, _, _ = igl.point_mesh_squared_distance(unposed, head.canonical, mesh.triangles)
    assert np.sqrt(d2_posed).max() > 0.01


def test_ict_landmarks_project_where_the_camera_says(kit, mesh):
    head, cam, pose, g = _head_render(kit, mesh, 3, size=48)
    R, t = model_to_camera(cam, pose)
    V = head.posed @ R.T + t
    lm = V[mesh.landmarks]
    uv, z = project(head.posed[mesh.landmarks], cam.K, R, t)
    np.testing.assert_allclose(g.landmarks2d, uv, atol=1e-9)
    np.testing.assert_allclose(g.landmarks_depth, lm[:, 2], atol=1e-9)
    vis = g.landmarks_visible
    assert 10 <= vis.sum() <= 68
    # cast a ray through each landmark's projection: a visible one is hit there (within a pixel's
    # footprint) unless the ray grazes the silhouette and slips behind it; nothing is in front of it.
    # An occluded one is hit well in front of it.
    d = np.concatenate([uv, np.ones((68, 1))], 1) @ np.linalg.inv(cam.K).T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    locs, idx, _ = build_intersector(V, mesh.triangles).intersects_location(np.zeros_like(d), d,
                                                                            multiple_hits=False)
    first = np.full(68, np.inf)
    first[idx] = np.linalg.norm(locs, axis=1)
    err = np.full(68, np.inf)
    err[idx] = np.linalg.norm(locs - lm[idx], axis=1)
    dist = np.linalg.norm(lm, axis=1)
    footprint = lm[:, 2] / cam.K[0, 0]
    assert (first[vis] >= dist[vis] - footprint[vis]).all()
    assert np.mean(err[vis] < footprint[vis]) > 0.85
    assert (first[~vis] < dist[~vis] - 1e-4).all()
    # and the per-pixel render agrees: the pixel under a visible landmark is head, at about its depth
    ij = np.round(uv[vis]).astype(int)
    assert g.mask[ij[:, 1], ij[:, 0]].all()
    near = np.abs(g.depth[ij[:, 1], ij[:, 0]] - lm[vis, 2]) < 0.05
    assert near.mean() > 0.8


def test_ict_landmark_hidden_on_profile(kit, mesh):
    from train.render import HeadVertices

    from train.sampler import sample_identity

    w_id = sample_identity(np.random.default_rng(5), 1)[0]
    head = head_vertices(kit, w_id, np.zeros(53))
    from train.camera import Camera

    cam = Camera(K=intrinsics_matrix(60, 60, 31.5, 31.5), R=FRONT_CAMERA_ROTATION, t=[0, 0, 3.0], width=64,
                 height=64)
    g = render_head(HeadVertices(head.posed, head.canonical), mesh, cam, HeadPose(yaw=-85.0))
    # the face turns toward the head's right (-X): the camera sees the left cheek (+X, Multi-PIE jaw
    # points 12..16 in ICT) while the right jaw line (0..4, x < 0) is hidden behind the face
    assert (kit.neutral[kit.landmarks68[0:5], 0] < 0).all() and (kit.neutral[kit.landmarks68[12:17], 0] > 0).all()
    assert g.landmarks_visible[12:17].sum() >= 3 and g.landmarks_visible[0:5].sum() == 0
    assert g.face_mask.sum() > 0 and (g.face_mask <= g.mask).all()
