"""train/identity_prior.py: identity weights re-derived from a data folder's seed, the ICT -> coordinates map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.arkit import arkit_from_ict
from model.errors import InputError
from train.arkit_regressor import sample_expression_mix
from train.identity_prior import data_identities, ict_to_alpha
from train.sampler import sample_identity


def _folder(tmp_path, kit, samples: int, missed: set[int], seed: int = 3, squint_share: float = 0.5):
    """A data folder as generate_arkit_data writes it, without renders: sample ``i`` in ``missed`` is
    skipped (the detector found no face)."""
    (tmp_path / "config.json").write_text(json.dumps({"samples": samples, "seed": seed, "squint_share": squint_share}))
    ids, arkit = [], []
    for i in range(samples):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 31, i]))
        w_id = sample_identity(rng, 1, 1.0, kit.n_identity)[0]
        w_ex = sample_expression_mix(rng, kit.expression_names, squint_share)
        if i not in missed:
            ids.append(w_id)
            arkit.append(arkit_from_ict(w_ex, kit.expression_names))
    np.savez(tmp_path / "chunk_0000.npz", landmarks=np.zeros((len(ids), 478, 2), np.float32), arkit=np.stack(arkit))
    return np.stack(ids)


def test_identities_are_re_derived_past_missed_renders(tmp_path, kit):
    truth = _folder(tmp_path, kit, samples=12, missed={2, 7})
    (got,) = data_identities(tmp_path, kit)
    assert got.shape == (10, kit.n_identity)
    np.testing.assert_array_equal(got, truth)


def test_a_folder_from_another_seed_is_refused(tmp_path, kit):
    _folder(tmp_path, kit, samples=6, missed=set())
    (tmp_path / "config.json").write_text(json.dumps({"samples": 6, "seed": 4, "squint_share": 0.5}))
    with pytest.raises(InputError, match="re-derived"):
        data_identities(tmp_path, kit)


def test_ict_to_alpha_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 10))
    M = rng.normal(size=(10, 4))
    centre = rng.normal(size=4)
    np.testing.assert_allclose(ict_to_alpha(w, centre + w @ M, centre, ridge=1e-9), M, atol=1e-6)
    # the ridge shrinks towards the centre
    assert np.linalg.norm(ict_to_alpha(w, centre + w @ M, centre, ridge=1e4)) < np.linalg.norm(M)


def test_registered_identities_resume_from_their_cache(tmp_path, kit, monkeypatch):
    """The pairs of a longer run extend a shorter one's cache: the first identities are not registered again."""
    import train.identity_prior as ip
    from tracker.predict import Models

    models = Models.load(encoders=False)
    lmap, z_ex = models.landmarks.landmark_map, models.neutral_expression()
    calls = []
    real = ip.register_centre

    def counted(*args, **kw):
        calls.append(kw["seed"])
        return real(*args, **kw)

    monkeypatch.setattr(ip, "register_centre", counted)
    cache = tmp_path / "pairs.npz"
    quiet = dict(steps=2, batch=64, cache=cache, log=lambda m: None)
    w2, a2 = ip.registered_identities(models.layer, lmap, z_ex, kit, 2, **quiet)
    w3, a3 = ip.registered_identities(models.layer, lmap, z_ex, kit, 3, **quiet)
    assert calls == [0, 1, 2]  # identity k registered once, with seed k
    assert a2.shape == (2, lmap.rank) and a3.shape == (3, lmap.rank) and w3.shape == (3, kit.n_identity)
    np.testing.assert_array_equal(w3[:2], w2)
    np.testing.assert_array_equal(a3[:2], a2)
    assert np.isfinite(a3).all() and not np.allclose(a3[0], a3[1])
    with pytest.raises(InputError, match="other identities"):
        ip.registered_identities(models.layer, lmap, z_ex, kit, 3, steps=2, batch=64, seed=5, cache=cache)


def test_the_linear_reader_is_the_ridge_regression_of_the_normalised_landmarks():
    import torch

    from model.identity_prior import IdentityPrior, IdentityPriorConfig
    from model.landmark_regressor import landmark_features
    from train.identity_prior import fit_linear_reader

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 400, (478, 2))
    landmarks = torch.as_tensor(base + rng.normal(0, 2.0, (300, 478, 2)), dtype=torch.float32)
    x = landmark_features(landmarks, 478).double().numpy()
    M = rng.normal(size=(x.shape[1], 4))
    targets = torch.as_tensor((x - x.mean(0)) @ M * 10 + 1.0, dtype=torch.float32)
    model = IdentityPrior(IdentityPriorConfig(n_ict=4, rank=3, layers=0))
    fit_linear_reader(model, landmarks, targets, ridge=1e-6)
    with torch.no_grad():
        pred = model(landmarks)
    assert pred.shape == (300, 4)
    np.testing.assert_allclose(pred.numpy(), targets.numpy(), atol=0.05 * float(targets.std()))
    fit_linear_reader(model, landmarks, targets, ridge=1e10)  # a huge ridge reads the mean
    with torch.no_grad():
        np.testing.assert_allclose(model(landmarks).numpy(), targets.mean(0).expand(300, 4).numpy(), atol=0.05)
    with pytest.raises(InputError, match="layers=0"):
        fit_linear_reader(IdentityPrior(IdentityPriorConfig(n_ict=4, rank=3, hidden=8, layers=1)), landmarks,
                          targets, 1.0)
