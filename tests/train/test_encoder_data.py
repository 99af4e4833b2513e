import numpy as np
import pytest
import torch

from model.errors import InputError
from train.encoder_data import (AugmentConfig, EncoderBatch, augment_batch, downscale_sample, flip_batch,
                                zoom_shift)


def _random_batch(B=3, S=16, seed=0) -> EncoderBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, S, S, generator=g) > 0.3
    target = torch.nn.functional.normalize(torch.randn(B, 3, S, S, generator=g), dim=1) * mask[:, None]
    return EncoderBatch(rgb=torch.rand(B, 3, S, S, generator=g), target=target, mask=mask,
                        face_mask=mask & (torch.rand(B, S, S, generator=g) > 0.5),
                        yaw=torch.tensor([10.0, -40.0, 70.0])[:B])


def _equal(a: EncoderBatch, b: EncoderBatch, rgb_atol: float = 0.0) -> None:
    for name in ("rgb", "target", "mask", "face_mask", "yaw"):
        atol = rgb_atol if name == "rgb" else 0.0
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=atol, msg=name)


def test_flip_twice_is_identity_and_mirrors_x():
    b = _random_batch()
    f = flip_batch(b)
    _equal(flip_batch(f), b)
    torch.testing.assert_close(f.target[:, 0], -b.target[:, 0].flip(-1))
    torch.testing.assert_close(f.target[:, 1:], b.target[:, 1:].flip(-1))
    torch.testing.assert_close(f.yaw, -b.yaw)
    which = torch.tensor([True, False, True])
    part = flip_batch(b, which)
    torch.testing.assert_close(part.rgb[1], b.rgb[1])
    torch.testing.assert_close(part.rgb[0], b.rgb[0].flip(-1))
    _equal(flip_batch(part, which), b)


def _asymmetric_mesh():
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3)
    v = m.vertices * np.array([0.3, 0.22, 0.18])
    v = v + 0.06 * np.sin(3 * v[:, [1]]) * np.array([1.0, 0.0, 0.5])  # bumpy, no mirror symmetry
    a = np.deg2rad(35.0)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return v @ R.T, np.asarray(m.faces)


def test_flipped_maps_agree_with_the_mirrored_geometry():
    """Render a mesh and its mirror image x -> -x (camera space; canonical coordinates mirrored alike): the
    flipped normal and canonical maps of the first render are the maps of the second."""
    from train.camera import intrinsics_matrix
    from train.render import RenderMesh, render_geometry

    verts, faces = _asymmetric_mesh()
    canonical = verts * 1.7 + np.array([0.05, -0.02, 0.01])  # any per-vertex field with x mirrored alike
    S = 32
    K = intrinsics_matrix(40.0, 40.0, (S - 1) / 2, (S - 1) / 2)
    cam = verts + np.array([0.07, 0.03, 1.5])  # off-centre, in front of the camera
    mesh = RenderMesh(triangles=faces, part=np.ones(len(faces)), face=np.ones(len(faces), bool),
                      landmarks=np.zeros(0, np.int64))
    mir = RenderMesh(triangles=faces[:, ::-1], part=mesh.part, face=mesh.face, landmarks=mesh.landmarks)
    sign = np.array([-1.0, 1.0, 1.0])
    a = render_geometry(cam, canonical, mesh, K, S, S)
    b = render_geometry(cam * sign, canonical * sign, mir, K, S, S)

    def batch(g, field):
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
        return EncoderBatch(rgb=torch.zeros(1, 3, S, S), target=t(getattr(g, field)).permute(2, 0, 1)[None],
                            mask=torch.from_numpy(g.mask)[None], face_mask=torch.from_numpy(g.face_mask)[None],
                            yaw=torch.zeros(1))

    for field in ("normals", "canonical"):
        fa, fb = flip_batch(batch(a, field)), batch(b, field)
        both = fa.mask & fb.mask
        assert both.sum() > 0.9 * fb.mask.sum() > 100
        torch.testing.assert_close(fa.target.permute(0, 2, 3, 1)[both], fb.target.permute(0, 2, 3, 1)[both],
                                   atol=1e-4, rtol=0, msg=field)
        # and the unflipped map does not agree (the test can fail)
        assert (batch(a, field).target - fb.target).abs().permute(0, 2, 3, 1)[both].max() > 0.1


def test_zoom_shift_identity_and_pixel_shift():
    b = _random_batch(S=16)
    _equal(zoom_shift(b, torch.ones(3), torch.zeros(3, 2)), b, rgb_atol=1e-5)
    moved = zoom_shift(b, torch.ones(3), torch.tensor([[2 / 16, 0.0]] * 3))  # 2 pixels to the right
    torch.testing.assert_close(moved.target[..., 2:], b.target[..., :-2])
    torch.testing.assert_close(moved.rgb[..., 2:], b.rgb[..., :-2], atol=1e-5, rtol=0)
    assert not moved.mask[..., :2].any()


def test_augment_is_seeded_and_keeps_targets_consistent():
    b = _random_batch()
    cfg = AugmentConfig()
    x = augment_batch(b, cfg, torch.Generator().manual_seed(5))
    _equal(x, augment_batch(b, cfg, torch.Generator().manual_seed(5)))
    assert x.rgb.min() >= 0 and x.rgb.max() <= 1
    assert not torch.equal(x.rgb, b.rgb)
    unit = x.target.norm(dim=1)[x.mask]  # targets moved with the mask, values untouched (nearest)
    torch.testing.assert_close(unit, torch.ones_like(unit))
    assert (x.target[~x.mask[:, None].expand_as(x.target)] == 0).all()
    colour_only = augment_batch(b, AugmentConfig(scale=0, shift=0, flip=0), torch.Generator().manual_seed(1))
    torch.testing.assert_close(colour_only.target, b.target, rtol=0, atol=0)


def test_downscale_weights_by_mask():
    S = 8
    rgb = np.full((S, S, 3), 100, np.uint8)
    mask = np.zeros((S, S), bool)
    mask[:, :5] = True  # column block 2..3 of a 4-wide output: cells 2 (cols 4,5) have 1 of 2 cols set
    normals = np.zeros((S, S, 3), np.float32)
    normals[mask] = [0.0, 0.6, -0.8]
    r, n, m, fm = downscale_sample(rgb, normals, mask, mask, 4, normalize=True)
    assert r.shape == (3, 4, 4) and (r == 100).all()
    assert m[:, :2].all() and not m[:, 2:].any()  # cell 2 is half covered: not > 0.5
    torch.testing.assert_close(n[:, :, :2].float(), torch.tensor([0.0, 0.6, -0.8])[:, None, None].expand(3, 4, 2),
                               atol=1e-3, rtol=0)
    assert (n[:, :, 2:] == 0).all()
    with pytest.raises(InputError, match="target"):
        EncoderBatch(rgb=torch.zeros(1, 3, 4, 4), target=torch.zeros(1, 3, 4, 5), mask=torch.zeros(1, 4, 4, dtype=bool),
                     face_mask=torch.zeros(1, 4, 4, dtype=bool), yaw=torch.zeros(1))
