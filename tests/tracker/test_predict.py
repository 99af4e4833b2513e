"""tracker.predict: model bundle checks, image/camera conversions, feed-forward shapes, the single-image fit.

The head is the shipped trained checkpoint; encoders and regressor are tiny untrained networks (their
outputs are shape-correct but meaningless), so these tests check plumbing and conventions, not accuracy
(accuracy: ``nphm-train eval-single-view``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.regressor import Regressor, regressor_preset
from tracker.predict import (Models, default_crop_intrinsics, fit_image, predict, resize_intrinsics,
                             to_network_images)


def test_models_refuse_a_regressor_of_another_head(models):
    en, ep = models.normal_encoder.cfg, models.point_encoder.cfg
    other = regressor_preset("tiny", models.layer.cfg, en, ep, expr_dim=models.layer.cfg.expr_dim + 1)
    with pytest.raises(InputError, match="not trained together"):
        Models(models.layer, models.codes, models.head_meta, models.normal_encoder, models.point_encoder,
               Regressor(other))


def test_models_without_the_image_networks(models):
    """The landmark tracker's bundle: head and landmark assets, no encoders or regressor (and no half set)."""
    bare = Models.load(encoders=False)
    assert bare.normal_encoder is None and bare.point_encoder is None and bare.regressor is None
    assert bare.landmarks is not None and bare.device == torch.device("cpu")
    with pytest.raises(InputError, match="without the image encoders"):
        bare.image_size
    with pytest.raises(InputError, match="together"):
        Models(bare.layer, bare.codes, bare.head_meta, None, None, models.regressor)


def test_missing_default_weights_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.pt"):
        Models.load(head=None, normal_encoder=tmp_path / "nope.pt")


def test_network_images_resize_and_range():
    crops = np.zeros((2, 40, 40, 3), np.uint8)
    crops[:, :, :20] = 255
    x = to_network_images(crops, 16)
    assert x.shape == (2, 3, 16, 16)
    assert float(x[0, 0, 0, 0]) == pytest.approx(1.0) and float(x[0, 0, 0, -1]) == pytest.approx(0.0)
    with pytest.raises(InputError, match="RGB"):
        to_network_images(np.zeros((4, 4)), 16)


def test_resize_intrinsics_keeps_projections_consistent():
    K = default_crop_intrinsics(256)
    assert K[0, 0] == pytest.approx(2.4 * 256) and K[0, 2] == pytest.approx(127.5)
    K2 = resize_intrinsics(K, 256, 128)
    X = np.array([0.1, -0.05, 3.0])
    u256 = (K @ X)[:2] / X[2]
    u128 = (K2 @ X)[:2] / X[2]
    np.testing.assert_allclose(u128, (u256 + 0.5) * 0.5 - 0.5, atol=1e-9)


def test_predict_shapes_and_mask_probability(models):
    crops = np.random.default_rng(0).integers(0, 255, (3, 50, 50, 3), dtype=np.uint8)
    pred = predict(models, crops)
    S = models.image_size
    assert pred.z_id.shape == (3, models.layer.cfg.id_dim) and pred.z_ex.shape == (3, models.layer.cfg.expr_dim)
    assert pred.normals.shape == (3, S, S, 3) and pred.point_map.shape == (3, S, S, 3)
    assert pred.mask.shape == (3, S, S) and float(pred.mask.min()) >= 0 and float(pred.mask.max()) <= 1
    np.testing.assert_allclose(pred.normals.norm(dim=-1).numpy(), 1.0, atol=1e-4)
    assert pred.targets(1, np.eye(3)).normals.shape == (S, S, 3)


def test_predict_keeps_codes_within_the_training_codes_radius(models):
    from model.codes import whitened_radius

    crops = np.random.default_rng(1).integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    stats = models.code_statistics
    reg = models.regressor
    saved = reg.id_mean.clone()
    try:  # a regressor whose outputs drifted far out, as the first shipped one did
        reg.id_mean.add_(30 * stats.id_std)
        raw = predict(models, crops, plausible=False)
        out = predict(models, crops)
    finally:
        reg.id_mean.copy_(saved)
    assert (whitened_radius(raw.z_id, stats.id_mean, stats.id_std) > 20).all()
    r = whitened_radius(out.z_id, stats.id_mean, stats.id_std)
    assert torch.allclose(r, torch.full_like(r, stats.id_max_radius), rtol=1e-4)
    # expression codes inside the radius are untouched
    inside = whitened_radius(raw.z_ex, stats.ex_mean, stats.ex_std) <= stats.ex_max_radius
    assert torch.allclose(out.z_ex[inside], raw.z_ex[inside])
    # a head without code tables: nothing to project onto
    bare = Models(models.layer, {}, models.head_meta, models.normal_encoder, models.point_encoder, reg)
    assert bare.code_statistics is None
    assert torch.allclose(predict(bare, crops).z_id, predict(bare, crops, plausible=False).z_id)


def test_fit_image_without_and_with_tto(models):
    crop = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    pred = predict(models, crop)
    pred.mask[:] = 0
    pred.mask[0, 8:24, 8:24] = 1.0  # a face-sized mask so the pose can be estimated
    pred.point_map[0] = torch.tensor([0.0, 0.1, 0.3]) + 0.01 * torch.randn(models.image_size, models.image_size, 3)
    ff = fit_image(models, crop, tto=False, prediction=pred)
    assert ff.steps == 0 and torch.equal(ff.z_id, ff.ff_z_id) and ff.pose.shape == (6,)
    fit = fit_image(models, crop, tto=True, steps=4, mesh_resolution=24, prediction=pred)
    assert 1 <= fit.steps <= 4 and fit.z_ex.shape == ff.z_ex.shape
    assert torch.isfinite(fit.pose).all() and torch.isfinite(fit.z_id).all()


def test_fit_image_refuses_an_empty_mask(models):
    crop = np.zeros((32, 32, 3), np.uint8)
    pred = predict(models, crop)
    pred.mask[:] = 0
    with pytest.raises(InputError, match="no head"):
        fit_image(models, crop, tto=False, prediction=pred)
