"""Tests of model/mesh.py: marching cubes over an SDF with chunked, coarse-to-fine evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.mesh import EmptySurfaceError, Mesh, extract_mesh

CENTER = torch.tensor([0.07, -0.05, 0.03])
RADIUS = 0.55


def sphere(points: torch.Tensor) -> torch.Tensor:
    return (points - CENTER).norm(dim=-1) - RADIUS


class CountingSdf:
    """Wraps an SDF and records the size of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[int] = []

    def __call__(self, points):
        self.calls.append(len(points))
        return self.fn(points)


def test_sphere_within_half_a_voxel():
    res = 48
    mesh = extract_mesh(sphere, [-1, -1, -1], [1, 1, 1], res)
    assert isinstance(mesh, Mesh)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert mesh.vertices.shape[1] == 3 and mesh.faces.shape[1] == 3 and len(mesh.faces) > 1000
    voxel = 2.0 / (res - 1)
    radius = np.linalg.norm(mesh.vertices - CENTER.numpy(), axis=1)
    assert np.abs(radius - RADIUS).max() < 0.5 * voxel
    # A closed surface: every edge is shared by exactly two faces.
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)


def test_faces_point_outside():
    mesh = extract_mesh(sphere, [-1, -1, -1], [1, 1, 1], 32)
    outward = mesh.vertices[mesh.faces].mean(axis=1) - CENTER.numpy()  # [F, 3]
    assert np.all(np.sum(mesh.face_normals() * outward, axis=1) > 0)
    # Inverting the SDF (positive inside) must flip every face.
    flipped = extract_mesh(lambda p: -sphere(p), [-1, -1, -1], [1, 1, 1], 32)
    outward = flipped.vertices[flipped.faces].mean(axis=1) - CENTER.numpy()
    assert np.all(np.sum(flipped.face_normals() * outward, axis=1) < 0)


def test_narrow_band_matches_dense_and_evaluates_little():
    band = CountingSdf(sphere)
    sparse = extract_mesh(band, [-1, -1, -1], [1, 1, 1], 128)
    dense = extract_mesh(sphere, [-1, -1, -1], [1, 1, 1], 128, coarse_resolution=128, chunk_size=2**20)
    assert dense.info.evaluated_fraction == 1.0 and dense.info.coarse_step == 1
    assert sparse.info.evaluated_fraction < 0.25
    assert sum(band.calls) == sparse.info.evaluated_points  # the reported count is what was evaluated
    # Exact, not approximate: every crossed cell had all eight corners evaluated.
    assert np.array_equal(sparse.faces, dense.faces)
    assert np.abs(sparse.vertices - dense.vertices).max() <= 1e-6


def test_narrow_band_exact_on_an_uneven_grid_and_box():
    """Resolution not of the form 2**k + 1 (clipped last cells) and a non-cubic box."""

    def ellipsoid(p):
        q = p / torch.tensor([0.6, 0.35, 0.45])
        return (q.norm(dim=-1) - 1.0) * 0.35  # |grad| <= 1

    lo, hi = [-0.7, -0.5, -0.6], [0.75, 0.4, 0.5]
    sparse = extract_mesh(ellipsoid, lo, hi, 53, coarse_resolution=6)
    dense = extract_mesh(ellipsoid, lo, hi, 53, coarse_resolution=53)
    assert sparse.info.evaluated_fraction < 0.6
    assert np.array_equal(sparse.faces, dense.faces)
    assert np.abs(sparse.vertices - dense.vertices).max() <= 1e-6


def test_band_finds_a_small_shape_inside_one_coarse_cell():
    """A sphere far smaller than the coarse cells: the band is what makes the octree look inside."""
    center = torch.tensor([0.31, 0.29, -0.33])
    small = lambda p: (p - center).norm(dim=-1) - 0.04  # noqa: E731
    mesh = extract_mesh(small, [-1, -1, -1], [1, 1, 1], 129, coarse_resolution=9)  # 16-voxel cells
    assert mesh.info.coarse_step == 16 and mesh.info.evaluated_fraction < 0.01
    radius = np.linalg.norm(mesh.vertices - center.numpy(), axis=1)
    assert np.abs(radius - 0.04).max() < 0.5 * 2.0 / 128
    with pytest.raises(EmptySurfaceError):  # a band far below the Lipschitz bound misses it
        extract_mesh(small, [-1, -1, -1], [1, 1, 1], 129, coarse_resolution=9, band=0.05)


def test_chunking_bounds_every_call():
    sdf = CountingSdf(sphere)
    small = extract_mesh(sdf, [-1, -1, -1], [1, 1, 1], 40, chunk_size=1000)
    assert max(sdf.calls) <= 1000 and len(sdf.calls) > 5
    whole = extract_mesh(sphere, [-1, -1, -1], [1, 1, 1], 40, chunk_size=10**7)
    assert np.array_equal(small.faces, whole.faces) and np.array_equal(small.vertices, whole.vertices)


def test_empty_surface_is_a_clear_error():
    with pytest.raises(EmptySurfaceError, match="no zero crossing"):
        extract_mesh(lambda p: p.norm(dim=-1) + 1.0, [-1, -1, -1], [1, 1, 1], 32)
    with pytest.raises(EmptySurfaceError, match="no zero crossing"):  # surface entirely outside the box
        extract_mesh(lambda p: (p - 5.0).norm(dim=-1) - 0.5, [-1, -1, -1], [1, 1, 1], 32)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="bbox_min < bbox_max"):
        extract_mesh(sphere, [1, -1, -1], [-1, 1, 1], 16)
    with pytest.raises(InputError, match="3 coordinates"):
        extract_mesh(sphere, [-1, -1], [1, 1], 16)
    with pytest.raises(InputError, match="resolution"):
        extract_mesh(sphere, [-1, -1, -1], [1, 1, 1], 1)
    with pytest.raises(InputError, match=r"shape \[N\]"):
        extract_mesh(lambda p: sphere(p)[:, None], [-1, -1, -1], [1, 1, 1], 16)
    with pytest.raises(InputError, match="non-finite"):
        extract_mesh(lambda p: sphere(p) / 0.0 * 0.0, [-1, -1, -1], [1, 1, 1], 16)


def test_level_and_float64_points():
    seen = []

    def sdf(p):
        seen.append(p.dtype)
        return sphere(p)

    mesh = extract_mesh(sdf, [-1, -1, -1], [1, 1, 1], 40, level=0.1, dtype=torch.float64)
    radius = np.linalg.norm(mesh.vertices - CENTER.numpy(), axis=1)
    assert np.abs(radius - (RADIUS + 0.1)).max() < 0.5 * 2.0 / 39
    assert set(seen) == {torch.float64}


def test_largest_component_drops_stray_surfaces():
    # a big sphere and a small one far away: only the big one is kept
    def two_spheres(p: torch.Tensor) -> torch.Tensor:
        big = p.norm(dim=-1) - 0.5
        small = (p - p.new_tensor([0.8, 0.8, 0.8])).norm(dim=-1) - 0.1
        return torch.minimum(big, small)

    both = extract_mesh(two_spheres, [-1.0] * 3, [1.0] * 3, 64)
    kept = extract_mesh(two_spheres, [-1.0] * 3, [1.0] * 3, 64, largest_component=True)
    assert len(kept.faces) < len(both.faces)
    assert np.abs(np.linalg.norm(kept.vertices, axis=1) - 0.5).max() < 2.0 / 63
    assert kept.faces.max() == len(kept.vertices) - 1 and kept.faces.min() == 0


@pytest.mark.parametrize("band", [0.5, 1.0])
def test_refined_band_gives_the_same_mesh_from_fewer_calls(band):
    """The far-corner split test and the finest level's implied signs (refine=True, the default): the same
    mesh as the plain band test and as the dense grid, from fewer SDF calls."""

    def ellipsoid(p):
        q = p / torch.tensor([0.6, 0.35, 0.45])
        return (q.norm(dim=-1) - 1.0) * 0.35  # |grad| <= 1

    lo, hi = [-0.7, -0.5, -0.6], [0.75, 0.4, 0.5]
    calls = CountingSdf(ellipsoid)
    refined = extract_mesh(calls, lo, hi, 97, band=band)
    plain = extract_mesh(ellipsoid, lo, hi, 97, band=band, refine=False)
    dense = extract_mesh(ellipsoid, lo, hi, 97, coarse_resolution=97)
    for mesh in (refined, plain):
        assert np.array_equal(mesh.faces, dense.faces)
        assert np.abs(mesh.vertices - dense.vertices).max() <= 1e-6
    assert sum(calls.calls) == refined.info.evaluated_points  # re-evaluated fills are counted too
    assert refined.info.evaluated_points < 0.8 * plain.info.evaluated_points
