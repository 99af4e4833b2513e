"""Baker (codes -> fixed-topology vertices) and export_track (track file -> animation file)."""

import numpy as np
import pytest
import torch

from exporters.npz import read_animation
from model.checkpoint import default_weights, load_checkpoint
from model.errors import InputError
from tracker.bake import CV_TO_GL, Baker, export_track, head_bbox, neutral_expression
from tracker.trackfile import Track, save_track
from tracker.tto import apply_pose

RES = 40  # marching-cubes resolution: coarse, enough for the behaviour tested here


@pytest.fixture(scope="module")
def head():
    return load_checkpoint(default_weights("head_default"))


@pytest.fixture(scope="module")
def baker(head):
    layer, codes, meta = head
    z_neutral = neutral_expression(codes, layer.cfg.expr_dim)
    return Baker(layer, codes["z_id"].mean(0, keepdim=True), z_neutral[None], *head_bbox(meta), resolution=RES)


def test_neutral_expression_is_the_mean_of_neutral_codes():
    codes = {"z_ex": torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0]]),
             "is_neutral": torch.tensor([True, True, False])}
    torch.testing.assert_close(neutral_expression(codes, 2), torch.tensor([2.0, 3.0]))
    assert neutral_expression({}, 3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(InputError, match=r"z_ex must be \[N, 5\]"):
        neutral_expression(codes, 5)


def test_baker_poses_the_fixed_topology(baker, head):
    layer, codes, _ = head
    faces, V = baker.faces, baker.n_vertices
    assert faces.ndim == 2 and faces.shape[1] == 3 and faces.min() >= 0 and faces.max() < V
    baker.reset()
    z_neutral = neutral_expression(codes, layer.cfg.expr_dim)[None]
    v0 = baker.vertices(z_neutral)
    assert v0.dtype == np.float32 and v0.shape == (V, 3)
    # at the neutral expression the mesh is where it was extracted
    np.testing.assert_allclose(v0, baker.topology.neutral_vertices.numpy(), atol=1e-4)
    # an expressive code moves the face by millimetres, not the whole head
    z = codes["z_ex"][~codes["is_neutral"].bool()][:1]
    v1 = baker.vertices(z)
    moved = np.linalg.norm(v1 - v0, axis=1)
    assert 0.002 < moved.max() < 0.2 and np.median(moved) < 0.01
    # the warm-started answer agrees with a cold solve of the same code
    with torch.no_grad():
        cold = baker.topology.posed_vertices(layer, baker.z_id, z).x[0].numpy()
    np.testing.assert_allclose(v1, cold, atol=2e-4)
    with pytest.raises(InputError, match=r"z_ex must be \[1, D_ex\]"):
        baker.vertices(z[0])


def test_transform_is_the_pose_in_a_y_up_camera_frame():
    pose = np.array([0.1, -0.4, 0.2, 0.05, -0.1, 4.0])
    raw = Baker.transform(pose, y_up=False)
    pts = np.random.default_rng(0).normal(size=(7, 3))
    expected = apply_pose(torch.tensor(pts), torch.tensor(pose)).numpy()
    np.testing.assert_allclose(pts @ raw[:3, :3].T + raw[:3, 3], expected, atol=1e-12)
    m = Baker.transform(pose)
    np.testing.assert_allclose(m, CV_TO_GL @ raw)
    # identity rotation, head 4 units in front of the camera: at z = -4, facing +Z (towards the camera)
    front = Baker.transform(np.array([0, 0, 0, 0, 0, 4.0]))
    np.testing.assert_allclose(front[:3, 3], [0, 0, -4])
    with pytest.raises(InputError, match=r"pose must be a finite \[6\]"):
        Baker.transform(np.zeros(5))


def make_head_track(codes, T=4, head="default") -> Track:
    """A track of the default head: mean identity, training expressions, frame 2 a gap."""
    z_ex = codes["z_ex"][:T].numpy().astype(np.float64)
    pose = np.tile([0.0, 0.2, 0.0, 0.0, 0.0, 4.0], (T, 1)) + np.arange(T)[:, None] * [0, 0.05, 0, 0.01, 0, 0]
    status = ["tracked"] * T
    status[2] = "gap"
    z_ex[2] = pose[2] = np.nan
    return Track(z_id=codes["z_id"].mean(0).numpy(), z_ex=z_ex, pose=pose,
                 K=np.tile(np.eye(3), (T, 1, 1)), crop_to_frame=np.tile([[1.0, 0, 0], [0, 1.0, 0]], (T, 1, 1)),
                 frame_index=np.arange(T), time_s=np.arange(T) / 25.0, status=status,
                 confidence=np.ones(T), fps=25.0, source="clip.mp4", frame_size=(64, 48), head=head)


def test_export_track_holds_gaps_and_carries_pose(tmp_path, head):
    layer, codes, _ = head
    track = make_head_track(codes)
    path = save_track(tmp_path / "clip.track.npz", track)
    res = export_track(path, tmp_path / "anim.npz", resolution=RES, with_pose=True, progress=False)
    assert res.n_frames == 4 and res.extras["gap_frames"] == 1
    anim = read_animation(tmp_path / "anim.npz")
    v = np.asarray(anim.vertices)  # metres
    assert v.shape == (4, res.n_vertices, 3) and np.isfinite(v).all()
    np.testing.assert_array_equal(v[2], v[1])  # the gap holds the last tracked expression
    assert np.abs(v[3] - v[1]).max() > 1e-4  # other frames move
    assert anim.fps == 25.0
    t = np.asarray(anim.transforms)  # translation in metres (1 model unit = 0.25 m)
    expected = Baker.transform(track.pose[1])
    expected[:3, 3] *= 0.25
    np.testing.assert_allclose(t[2], expected, atol=1e-6)
    np.testing.assert_allclose(t[3][:3, 3], [0.03 * 0.25, 0, -1.0], atol=1e-6)


def test_export_track_refusals(tmp_path, head):
    layer, codes, _ = head
    # an unknown extension fails before the (missing) track is read
    with pytest.raises(InputError, match="unknown output extension"):
        export_track(tmp_path / "missing.npz", tmp_path / "anim.xyz", progress=False)
    small = make_head_track(codes)
    small = Track(**{**vars(small), "z_id": np.zeros(8)})
    with pytest.raises(InputError, match="made with another head model"):
        export_track(small, tmp_path / "anim.npz", progress=False)
    gone = make_head_track(codes, head=str(tmp_path / "gone.pt"))
    with pytest.raises(InputError, match="gone.pt: the head checkpoint the track was made with is missing"):
        export_track(gone, tmp_path / "anim.npz", progress=False)
    assert not (tmp_path / "anim.npz").exists()


def test_forward_posing_bakes_the_forward_pass(head):
    """With the head's forward deformation the baked vertices are one pass of it (no inversion); "forward"
    without a forward model is refused."""
    from model.forward_deformation import forward_for_head, forward_posed

    layer, codes, meta = head
    forward = forward_for_head(None)
    z_id = codes["z_id"][:1]
    z_neutral = neutral_expression(codes, layer.cfg.expr_dim)[None]
    fwd = Baker(layer, z_id, z_neutral, *head_bbox(meta), resolution=RES, forward=forward)
    assert fwd.posing == "forward"
    assert Baker(layer, z_id, z_neutral, *head_bbox(meta), resolution=RES).posing == "inverse"
    z = codes["z_ex"][5:6]
    v = fwd.vertices(z)
    with torch.no_grad():
        ref = forward_posed(forward, layer, fwd.topology.canonical_vertices[None].float(), z_id, z)[0].numpy()
    np.testing.assert_allclose(v, ref, atol=1e-6)
    assert np.abs(v - fwd.vertices(z_neutral)).max() > 1e-3  # the expression moves the mesh
    with pytest.raises(InputError, match="posing"):
        Baker(layer, z_id, z_neutral, *head_bbox(meta), resolution=RES, posing="forward")


@pytest.mark.slow
def test_the_narrow_band_of_the_bake_gives_the_full_band_mesh():
    """MESH_BAND (0.5) against the marching cubes' conservative default (1.0) on the shipped head."""
    from model.mesh import extract_mesh
    from tracker.bake import MESH_BAND
    from tracker.predict import Models

    m = Models.load()
    z, ne = m.codes["z_id"][5:6], m.neutral_expression()

    def sdf(p):
        return m.layer(p[None], z, ne).sdf[0]

    tight = extract_mesh(sdf, *m.bbox, 96, band=MESH_BAND, largest_component=True)
    full = extract_mesh(sdf, *m.bbox, 96, band=1.0, largest_component=True)
    assert tight.info.evaluated_points < full.info.evaluated_points
    np.testing.assert_array_equal(tight.faces, full.faces)
    np.testing.assert_array_equal(tight.vertices, full.vertices)
