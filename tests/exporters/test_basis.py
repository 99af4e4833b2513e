"""PCA basis with [0, 1] weights (exporters/basis.py)."""

from __future__ import annotations

import numpy as np

from exporters.basis import pca_basis, reconstruction_error

from .conftest import make_anim


def _brute_force_error(frames, base, offsets, weights):
    return float(np.abs(base[None] + np.einsum("nk,kvc->nvc", weights, offsets) - frames).max())


def test_exact_with_full_rank_and_weights_in_unit_range():
    frames = make_anim(n_frames=9).frames
    base, offsets, weights = pca_basis(frames, 50)
    assert offsets.shape[1:] == (42, 3) and weights.shape == (9, len(offsets)) and len(offsets) <= 8
    assert weights.min() >= 0.0 and weights.max() <= 1.0
    assert np.allclose(weights.min(0), 0.0) and np.allclose(weights.max(0), 1.0)  # each spans [0, 1]
    err = reconstruction_error(frames, base, offsets, weights)
    assert err < 1e-6 and err == _brute_force_error(frames, base, offsets, weights)


def test_truncation_error_matches_dropped_energy_order():
    frames = make_anim(n_frames=30).frames
    errs = [reconstruction_error(frames, *pca_basis(frames, k)) for k in (1, 2, 3, 4)]
    assert errs[0] > errs[1] > errs[2] > errs[3] and errs[3] < 1e-5  # 4 modes in the motion
    base, offsets, weights = pca_basis(frames, 2)
    np.testing.assert_allclose(errs[1], _brute_force_error(frames, base, offsets, weights), rtol=1e-6)


def test_static_clip_gives_one_constant_shape():
    frames = np.repeat(make_anim(n_frames=1).frames, 4, axis=0)
    base, offsets, weights = pca_basis(frames, 5)
    assert len(offsets) == 1
    assert reconstruction_error(frames, base, offsets, weights) < 1e-6
