import numpy as np
import pytest

from model.errors import InputError
from train.expression_metrics import expression_features, feature_series


def hand_made(T: int = 40, mouth_gain: float = 0.5, seed: int = 0):
    """Detected landmarks whose mouth opens and closes; fitted ones that open by ``mouth_gain`` of it."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 100, (478, 2))
    base[33], base[263] = (0.0, 0.0), (100.0, 0.0)  # eye distance 100 px
    base[13], base[14] = (50.0, 60.0), (50.0, 62.0)
    opening = 30.0 * np.sin(np.linspace(0, 2 * np.pi, T)) ** 2  # up to 0.3 eye distances
    det = np.repeat(base[None], T, 0)
    fit = det.copy()
    det[:, 14, 1] += opening
    fit[:, 14, 1] += mouth_gain * opening
    return fit, det


def test_ratio_and_corr_of_a_hand_made_track():
    fit, det = hand_made()
    out = expression_features(fit, det)
    m = out["mouth_opening"]
    assert m["detected_spread"] == pytest.approx(0.3, abs=0.01)
    assert m["ratio"] == pytest.approx(0.5, abs=0.01)
    assert m["corr"] == pytest.approx(1.0, abs=1e-6)
    # nothing else moves: no correlation is reported where the detected spread is below 5 %
    assert out["eyes"]["corr"] is None and out["brows"]["corr"] is None
    # lips reprojection: the lower inner lip is off by half the opening on one of 40 lip points
    assert out["lips_reprojection_p95_pct"] > 0 and out["eyes_reprojection_p95_pct"] == 0


def test_a_fit_that_does_not_move_has_ratio_zero_and_no_corr():
    fit, det = hand_made(mouth_gain=0.0)
    m = expression_features(fit, det)["mouth_opening"]
    assert m["ratio"] == 0 and m["corr"] is None


def test_features_are_in_eye_distances():
    fit, det = hand_made(T=3)
    s = feature_series(det * 3.0, ((13, 14),))  # scale free
    assert np.allclose(s, feature_series(det, ((13, 14),)))


def test_bad_input():
    fit, det = hand_made(T=5)
    with pytest.raises(InputError, match="differ"):
        expression_features(fit[:4], det)
    with pytest.raises(InputError, match="2 frames"):
        expression_features(fit[:1], det[:1])
    with pytest.raises(InputError, match=r"\[T, 478, 2\]"):
        feature_series(det[:, :10], ((1, 2),))
