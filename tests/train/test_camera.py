import numpy as np
import pytest
import torch

from train.camera import (FRONT_CAMERA_ROTATION, Camera, HeadPose, ViewSamplerConfig, euler_to_matrix,
                          frame_head, intrinsics_matrix, matrix_to_euler, model_to_camera, pixel_rays, project,
                          sample_view)


@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_euler_is_rotation_over_batch_dims(batch):
    rng = np.random.default_rng(0)
    a = rng.uniform(-80, 80, batch + (3,))
    R = euler_to_matrix(a[..., 0], a[..., 1], a[..., 2])
    assert R.shape == batch + (3, 3)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(R), a, atol=1e-9)


def test_euler_order_and_signs():
    z = np.float64(0.0)
    # yaw > 0 turns the face (+Z) toward the head's left (+X)
    np.testing.assert_allclose(euler_to_matrix(np.float64(90.0), z, z) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    # pitch > 0 tips the face down
    np.testing.assert_allclose(euler_to_matrix(z, np.float64(90.0), z) @ [0, 0, 1], [0, -1, 0], atol=1e-12)
    # roll > 0 lifts the head's left side
    np.testing.assert_allclose(euler_to_matrix(z, z, np.float64(90.0)) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # order: R_y(yaw) @ R_x(pitch) @ R_z(roll)
    y, p, r = (np.float64(v) for v in (30.0, 20.0, 10.0))
    expect = euler_to_matrix(y, z, z) @ euler_to_matrix(z, p, z) @ euler_to_matrix(z, z, r)
    np.testing.assert_allclose(euler_to_matrix(y, p, r), expect, atol=1e-12)


def test_euler_torch_matches_numpy():
    a = np.array([[12.0, -40.0, 7.0], [-70.0, 5.0, -20.0]])
    R_np = euler_to_matrix(a[:, 0], a[:, 1], a[:, 2])
    at = torch.tensor(a)
    R_t = euler_to_matrix(at[:, 0], at[:, 1], at[:, 2])
    assert isinstance(R_t, torch.Tensor)
    np.testing.assert_allclose(R_t.numpy(), R_np, atol=1e-12)


def test_project_known_point_and_front_camera_handedness():
    K = intrinsics_matrix(100.0, 110.0, 15.5, 15.5)
    cam = Camera(K=K, R=FRONT_CAMERA_ROTATION, t=[0, 0, 4.0], width=32, height=32)
    uv, z = cam.project(np.array([[0.0, 0.0, 0.0], [0.4, 0.4, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(uv[0], [15.5, 15.5])
    np.testing.assert_allclose(z, [4.0, 4.0, 3.0])
    # the head's left (+X) appears on the image's right, up (+Y) at the image top
    np.testing.assert_allclose(uv[1], [15.5 + 100 * 0.1, 15.5 - 110 * 0.1])


@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_project_numpy_torch_agree_over_batch_dims(batch):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=batch + (5, 3))
    K = np.broadcast_to(intrinsics_matrix(50, 60, 16, 14), batch + (3, 3)).copy()
    a = rng.uniform(-30, 30, batch + (3,))
    R = euler_to_matrix(a[..., 0], a[..., 1], a[..., 2])
    t = rng.normal(size=batch + (3,)) + np.array([0, 0, 8.0])
    uv, z = project(pts, K, R, t)
    assert uv.shape == batch + (5, 2) and z.shape == batch + (5,)
    uv_t, z_t = project(*(torch.tensor(x) for x in (pts, K, R, t)))
    np.testing.assert_allclose(uv_t.numpy(), uv, atol=1e-10)
    np.testing.assert_allclose(z_t.numpy(), z, atol=1e-12)


def test_project_gradcheck_and_bad_shapes():
    pts = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    K = torch.tensor(intrinsics_matrix(40, 40, 8, 8), requires_grad=True)
    R = torch.eye(3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.0, 6.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, k, tt: project(p, k, R, tt)[0], (pts, K, t))
    with pytest.raises(ValueError, match=r"points \[\.\.\., N, 3\]"):
        project(np.zeros((4, 2)), np.eye(3), np.eye(3), np.zeros(3))


def test_pixel_rays_pass_through_pixel_centres():
    K = intrinsics_matrix(30, 35, 7.5, 5.5)
    rays = pixel_rays(K, 16, 12)
    assert rays.shape == (12, 16, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0)
    uv, _ = project(rays.reshape(-1, 3) * 3.0, K, np.eye(3), np.zeros(3))
    u, v = np.meshgrid(np.arange(16), np.arange(12))
    np.testing.assert_allclose(uv, np.stack([u, v], -1).reshape(-1, 2), atol=1e-9)


def test_model_to_camera_composes_pose_and_extrinsics():
    cam = Camera(K=np.eye(3), R=euler_to_matrix(*(np.float64(v) for v in (5, 6, 7))), t=[0.1, 0.2, 3.0],
                 width=8, height=8)
    pose = HeadPose(yaw=20, pitch=-10, roll=5, translation=np.array([0.05, -0.02, 0.1]))
    R, t = model_to_camera(cam, pose)
    p = np.array([0.3, -0.2, 0.1])
    np.testing.assert_allclose(R @ p + t, cam.R @ (pose.R @ p + pose.translation) + cam.t, atol=1e-12)


def test_sample_view_keeps_head_in_frame_and_covers_yaw():
    rng = np.random.default_rng(3)
    # a head-sized blob of points (model units): 0.6 wide, 0.9 tall, 0.8 deep
    pts = rng.uniform(-1, 1, (400, 3)) * np.array([0.3, 0.45, 0.4])
    cfg = ViewSamplerConfig()
    yaws, fills = [], []
    for _ in range(60):
        view = sample_view(rng, cfg, pts, 48, 40)
        cam, pose = view.camera, view.pose
        R, t = view.model_to_camera()
        uv, z = project(pts, cam.K, R, t)
        assert (z > 0).all()
        assert uv[:, 0].min() >= 0.99 and uv[:, 0].max() <= 47 - 0.99
        assert uv[:, 1].min() >= 0.99 and uv[:, 1].max() <= 39 - 0.99
        yaws.append(pose.yaw)
        fills.append(max(np.ptp(uv[:, 0]), np.ptp(uv[:, 1])) / 40)
        assert cfg.distance[0] <= cam.t[2] <= cfg.distance[1]
    assert min(yaws) < -60 and max(yaws) > 60
    assert 0.3 < min(fills) and max(fills) <= 0.86


def test_sample_view_is_deterministic():
    pts = np.random.default_rng(0).normal(size=(50, 3)) * 0.2
    a = sample_view(np.random.default_rng(9), ViewSamplerConfig(), pts, 32, 32)
    b = sample_view(np.random.default_rng(9), ViewSamplerConfig(), pts, 32, 32)
    np.testing.assert_array_equal(a.camera.K, b.camera.K)
    np.testing.assert_array_equal(a.pose.translation, b.pose.translation)


def test_frame_head_rejects_points_behind_camera():
    with pytest.raises(ValueError, match="behind the camera"):
        frame_head(np.array([[0, 0, 5.0], [0, 0.1, 0]]), FRONT_CAMERA_ROTATION, 2.0, 32, 32, 0.5)
