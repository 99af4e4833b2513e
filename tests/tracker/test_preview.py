"""Tests of tracker/preview.py: rasteriser against analytic projections, shading, overlay, labels, mp4 writer."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import trimesh

from model.errors import InputError
from tracker.crop import apply_affine, crop_affine
from tracker.preview import (CLAY, PreviewConfig, PreviewWriter, frame_intrinsics, overlay_text, rasterize,
                             render_overlay, shade_headlight)


def sphere(radius: float, centre, subdivisions: int = 4):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(m.vertices) + np.asarray(centre, dtype=np.float64), np.asarray(m.faces)


def pixel_grid(H: int, W: int):
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return u, v


# ------------------------------------------------------------------------------------------------ rasteriser

@pytest.mark.parametrize("cull,cx,cy", [(False, 60.0, 70.0), (True, 60.0, 70.0), (True, 5.0, 150.0)])
def test_sphere_covers_its_analytic_silhouette(cull, cx, cy):
    # A sphere on the optical axis projects to the ellipse ((u-cx)/fx)^2 + ((v-cy)/fy)^2 <= r^2 / (d^2 - r^2);
    # the last case puts its centre near a corner, so the image borders cut it.
    r, d, H, W = 1.0, 4.0, 144, 128
    K = np.array([[300.0, 0, cx], [0, 260.0, cy], [0, 0, 1]])
    verts, faces = sphere(r, [0, 0, d])
    ras = rasterize(verts, faces, K, H, W, cull_back_faces=cull)
    u, v = pixel_grid(H, W)
    rho = np.sqrt(((u - cx) / 300.0) ** 2 + ((v - cy) / 260.0) ** 2) / (r / np.sqrt(d * d - r * r))
    px_per_rho = 260.0 * r / np.sqrt(d * d - r * r)  # silhouette radius in pixels along the shorter axis
    inner, outer = rho < 1 - 1.0 / px_per_rho, rho > 1 + 1.0 / px_per_rho
    assert ras.mask[inner].all(), "pixels well inside the silhouette must be covered"
    assert not ras.mask[outer].any(), "pixels well outside the silhouette must be empty"
    assert abs(ras.mask.sum() - (rho <= 1).sum()) < 0.02 * (rho <= 1).sum()
    assert (ras.face[~ras.mask] == -1).all() and np.isinf(ras.depth[~ras.mask]).all()


def test_depth_and_barycentrics_are_perspective_correct():
    r, d, H, W = 1.0, 4.0, 96, 96
    K = np.array([[200.0, 0, 47.5], [0, 200.0, 47.5], [0, 0, 1]])
    verts, faces = sphere(r, [0, 0, d])
    ras = rasterize(verts, faces, K, H, W)
    u, v = pixel_grid(H, W)
    x, y = (u - 47.5) / 200.0, (v - 47.5) / 200.0  # ray (x, y, 1)
    # Front intersection of the ray s * (x, y, 1) with the sphere |p - (0, 0, d)| = r; depth z = s.
    a, b, c = x * x + y * y + 1, d, d * d - r * r
    disc = b * b - a * c
    well_inside = disc > 0.2 * r * r  # away from the silhouette, where depth is ill-conditioned
    s = (b - np.sqrt(np.maximum(disc, 0))) / a
    assert well_inside.sum() > 500
    np.testing.assert_allclose(ras.depth[well_inside], s[well_inside], atol=3e-3)
    # Barycentrics: weights sum to one and reproduce the surface point's position.
    m = ras.mask
    np.testing.assert_allclose(ras.bary[m].sum(1), 1.0, atol=1e-5)
    p = (verts[faces[ras.face[m]]] * ras.bary[m][:, :, None]).sum(1)  # [P, 3]
    np.testing.assert_allclose(p[:, 2], ras.depth[m], rtol=1e-5)
    np.testing.assert_allclose(p[:, 0] / p[:, 2], x[m], atol=1e-5)
    np.testing.assert_allclose(p[:, 1] / p[:, 2], y[m], atol=1e-5)


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_occludes_farther(near_first):
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 31.5], [0, 0, 1]])
    near = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]])  # covers the centre
    far = np.array([[-3.0, -3.0, 4.0], [3.0, -3.0, 4.0], [0.0, 3.0, 4.0]])  # 2x larger on screen
    verts = np.concatenate([near, far] if near_first else [far, near])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    near_id = 0 if near_first else 1
    ras = rasterize(verts, faces, K, 64, 64)
    assert ras.face[31, 31] == near_id and ras.depth[31, 31] == pytest.approx(2.0, rel=1e-5)
    assert ras.face[4, 31] == 1 - near_id and ras.depth[4, 31] == pytest.approx(4.0, rel=1e-5)
    # Every pixel the near triangle covers on its own is won by it.
    alone = rasterize(near, np.array([[0, 1, 2]]), K, 64, 64).mask
    assert alone.sum() > 100 and (ras.face[alone] == near_id).all()


def test_back_face_culling_follows_winding():
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 31.5], [0, 0, 1]])
    tri = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]])
    # (v1 - v0) x (v2 - v0) has z > 0: normal along +z, away from the camera -> a back face.
    back, front = np.array([[0, 1, 2]]), np.array([[0, 2, 1]])
    assert rasterize(tri, back, K, 64, 64, cull_back_faces=True).mask.sum() == 0
    assert rasterize(tri, front, K, 64, 64, cull_back_faces=True).mask.sum() > 100
    assert rasterize(tri, back, K, 64, 64).mask.sum() == rasterize(tri, front, K, 64, 64).mask.sum()


def test_large_faces_are_tiled_and_faces_behind_camera_dropped():
    K = np.array([[100.0, 0, 99.5], [0, 100.0, 79.5], [0, 0, 1]])
    quad = np.array([[-3.0, -3.0, 1.0], [3.0, -3.0, 1.0], [3.0, 3.0, 1.0], [-3.0, 3.0, 1.0]])  # fills the view
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    ras = rasterize(quad, faces, K, 160, 200)
    assert ras.mask.all()
    np.testing.assert_allclose(ras.depth, 1.0, rtol=1e-5)
    behind = quad * [1, 1, -1]
    assert rasterize(behind, faces, K, 160, 200).mask.sum() == 0


def test_rasterize_rejects_bad_input():
    K = np.eye(3)
    with pytest.raises(InputError, match=r"\[V, 3\]"):
        rasterize(np.zeros((4, 2)), np.array([[0, 1, 2]]), K, 8, 8)
    with pytest.raises(InputError, match="faces"):
        rasterize(np.zeros((3, 3)), np.array([[0, 1, 3]]), K, 8, 8)
    with pytest.raises(InputError, match="last row"):
        rasterize(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.ones((3, 3)), 8, 8)


# --------------------------------------------------------------------------------------------------- shading

def test_shading_is_brightest_where_the_surface_faces_the_camera():
    K = np.array([[200.0, 0, 47.5], [0, 200.0, 47.5], [0, 0, 1]])
    verts, faces = sphere(1.0, [0, 0, 4.0])
    ras = rasterize(verts, faces, K, 96, 96)
    shade = shade_headlight(ras, verts, faces, ambient=0.25)
    u, v = pixel_grid(96, 96)
    dist = np.hypot(u - 47.5, v - 47.5)
    centre = shade[(dist < 4) & ras.mask]
    rim = shade[(dist > 0.92 * dist[ras.mask].max()) & ras.mask]
    assert centre.min() > 0.98  # normal along the view ray: full light
    assert rim.max() < centre.min() - 0.3
    assert shade[ras.mask].min() >= 0.25 - 1e-6 and shade[~ras.mask].max() == 0


def test_tilted_plane_gets_cosine_light():
    K = np.array([[200.0, 0, 31.5], [0, 200.0, 31.5], [0, 0, 1]])
    c, s = np.cos(np.radians(60)), np.sin(np.radians(60))
    corners = np.array([[-0.05, -0.05], [0.05, -0.05], [0.05, 0.05], [-0.05, 0.05]])
    quad = np.stack([corners[:, 0] * c, corners[:, 1], 3.0 + corners[:, 0] * s], 1)  # turned 60 deg about y
    faces = np.array([[0, 2, 1], [0, 3, 2]])
    ras = rasterize(quad, faces, K, 64, 64)
    shade = shade_headlight(ras, quad, faces, ambient=0.2)
    assert ras.mask.sum() > 20
    np.testing.assert_allclose(shade[ras.mask], 0.2 + 0.8 * 0.5, atol=0.02)


# --------------------------------------------------------------------------------------------------- overlay

def test_render_overlay_blends_only_covered_pixels():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)
    K = np.array([[150.0, 0, 39.5], [0, 150.0, 35.5], [0, 0, 1]])
    verts, faces = sphere(1.0, [0, 0, 5.0], subdivisions=3)
    mask = rasterize(verts, faces, K, 72, 80).mask
    out = render_overlay(frame, verts, faces, K, alpha=0.6)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    assert (out[~mask] == frame[~mask]).all() and mask.sum() > 300
    opaque = render_overlay(np.zeros_like(frame), verts, faces, K, alpha=1.0)
    centre = opaque[35, 39].astype(float)  # lit head-on: the clay colour itself
    np.testing.assert_allclose(centre, np.array(CLAY) * 255, atol=3)
    expected = 0.4 * frame[mask].astype(float) + 0.6 * opaque[mask].astype(float)
    assert np.abs(out[mask].astype(float) - expected).max() <= 1.5
    assert (render_overlay(frame, verts, faces, K, alpha=0.0) == frame).all()


def test_render_overlay_rejects_bad_frame_and_alpha():
    verts, faces = sphere(1.0, [0, 0, 5.0], subdivisions=1)
    K = np.array([[50.0, 0, 8], [0, 50.0, 8], [0, 0, 1]])
    with pytest.raises(InputError, match=r"uint8 RGB \[H, W, 3\]"):
        render_overlay(np.zeros((16, 16, 3), np.float32), verts, faces, K)
    with pytest.raises(InputError, match="alpha"):
        render_overlay(np.zeros((16, 16, 3), np.uint8), verts, faces, K, alpha=1.5)


def test_frame_intrinsics_matches_crop_projection_mapped_by_the_affine():
    rng = np.random.default_rng(1)
    K_crop = np.array([[600.0, 0, 255.5], [0, 600.0, 255.5], [0, 0, 1]])
    pts = rng.normal(size=(20, 3)) * 0.3 + [0, 0, 4.0]
    proj = lambda K, p: (p @ K.T)[:, :2] / (p @ K.T)[:, 2:]  # noqa: E731
    A = crop_affine(np.array([700.0, 420.0, 380.0]), 512)  # scale + translation, as the tracker's crops
    np.testing.assert_allclose(proj(frame_intrinsics(K_crop, A), pts), apply_affine(A, proj(K_crop, pts)),
                               atol=1e-9)
    th = 0.3  # a general (rotated, anisotropic) affine composes the same way
    A_rot = np.array([[1.2 * np.cos(th), -np.sin(th), 30.0], [np.sin(th), 0.9 * np.cos(th), -12.0]])
    np.testing.assert_allclose(proj(frame_intrinsics(K_crop, A_rot), pts), apply_affine(A_rot, proj(K_crop, pts)),
                               atol=1e-9)
    with pytest.raises(InputError, match=r"\[2, 3\]"):
        frame_intrinsics(K_crop, np.eye(3))


def test_overlay_text_draws_in_the_corner_only():
    frame = np.full((128, 160, 3), 200, np.uint8)
    out = overlay_text(frame, "   12 tracked", (90, 220, 90))
    changed = np.any(out != frame, axis=2)
    assert changed[:10, :40].mean() > 0.9  # the darkened box behind the text (its size varies by OpenCV version)
    assert not changed[40:].any() and (frame == 200).all()


# ---------------------------------------------------------------------------------------------------- writer

def smooth_frame(H: int, W: int, i: int) -> np.ndarray:
    u, v = pixel_grid(H, W)
    img = np.stack([u / W * 255, v / H * 255, np.full_like(u, 20.0 * i)], 2)
    return img.astype(np.uint8)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        return [f.to_ndarray(format="rgb24") for f in c.decode(stream)]


@pytest.mark.parametrize("size,expected", [((48, 64), (48, 64)), ((31, 45), (32, 46))])
def test_preview_writer_round_trip(tmp_path, size, expected):
    path = tmp_path / "preview.mp4"
    frames = [smooth_frame(*size, i) for i in range(5)]
    with PreviewWriter(path, 25.0, PreviewConfig(labels=False)) as w:
        for f in frames:
            w.write(f)
    assert w.result.n_frames == 5 and (w.result.height, w.result.width) == expected
    decoded = decode(path)
    assert len(decoded) == 5 and decoded[0].shape == (*expected, 3)
    for f, g in zip(frames, decoded):
        assert np.abs(g[: size[0], : size[1]].astype(int) - f).mean() < 6
    assert sorted(os.listdir(tmp_path)) == ["preview.mp4"]  # no temporary left


def test_preview_writer_side_by_side_and_mesh(tmp_path):
    path = tmp_path / "sbs.mp4"
    frame = smooth_frame(64, 64, 0)
    verts, faces = sphere(1.0, [0, 0, 5.0], subdivisions=2)
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    with PreviewWriter(path, 30.0, PreviewConfig(side_by_side=True)) as w:
        w.write_mesh(frame, verts, faces, K, index=0, status="tracked")
        w.write_mesh(frame, None, faces, K, index=1, status="gap")
    left, right = decode(path)[0][:, :64].astype(int), decode(path)[0][:, 64:].astype(int)
    assert np.abs(left - frame).mean() < 6  # the input, unlabelled
    assert np.abs(right[32, 32] - np.array(CLAY) * 255 * 0.6 - frame[32, 32] * 0.4).max() < 12  # the overlay


def test_exception_inside_with_leaves_no_file_and_keeps_old_target(tmp_path):
    path = tmp_path / "p.mp4"
    with pytest.raises(RuntimeError):
        with PreviewWriter(path, 25.0) as w:
            w.write(smooth_frame(32, 32, 0))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with PreviewWriter(path, 25.0) as w:
            w.write(smooth_frame(32, 32, 0))
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["p.mp4"]


def test_preview_writer_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        PreviewWriter(tmp_path / "nope" / "p.mp4", 25.0)
    with PreviewWriter(tmp_path / "p.mp4", 25.0) as w:
        w.write(smooth_frame(32, 32, 0))
        with pytest.raises(InputError, match="expected 32x32"):
            w.write(smooth_frame(32, 48, 0))
    with pytest.raises(InputError, match="no frames"):
        PreviewWriter(tmp_path / "q.mp4", 25.0).close()
    assert sorted(os.listdir(tmp_path)) == ["p.mp4"]


def test_unwritable_folder_gives_one_line_input_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: use a folder the kernel refuses
            folder = Path("/sys")
            if not folder.is_dir() or os.access(folder / "x", os.F_OK):
                pytest.skip("no unwritable folder available to this user")
        target = folder / "p.mp4"
        with pytest.raises(InputError) as err:
            PreviewWriter(target, 25.0)
        msg = str(err.value)
        assert str(target) in msg and "\n" not in msg and "cannot write" in msg
    finally:
        (tmp_path / "ro").chmod(0o700)
