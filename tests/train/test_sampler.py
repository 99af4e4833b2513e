"""Tests for train/sampler.py: identity and structured expression weights."""

import numpy as np
import pytest

from train.sampler import (ExpressionPrior, HeadSample, extreme_expression, sample_expression, sample_heads,
                           sample_identity)

# a subset of ICT's 53 blendshape names that exercises every coupling of the process
NAMES = ("browDown_L", "browDown_R", "eyeBlink_L", "eyeBlink_R", "eyeWide_L", "eyeWide_R",
         "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R",
         "eyeLookDown_L", "eyeLookDown_R", "jawOpen", "jawLeft", "jawRight", "mouthClose", "mouthFunnel",
         "mouthPucker", "mouthLeft", "mouthRight", "mouthLowerDown_L", "mouthLowerDown_R",
         "mouthUpperUp_L", "mouthUpperUp_R", "mouthSmile_L", "mouthSmile_R", "noseSneer_L", "noseSneer_R")
IDX = {n: i for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return sample_expression(np.random.default_rng(0), 3000, NAMES)


def test_identity_is_normal_with_the_given_scale():
    w = sample_identity(np.random.default_rng(1), 4000, scale=0.5)
    assert w.shape == (4000, 100) and w.dtype == np.float32
    assert abs(w.std() - 0.5) < 0.01 and abs(w.mean()) < 0.01
    assert sample_identity(np.random.default_rng(1), 2, n_modes=7).shape == (2, 7)
    with pytest.raises(ValueError):
        sample_identity(np.random.default_rng(1), 2, scale=-1.0)


def test_same_seed_same_weights():
    a = sample_expression(np.random.default_rng(5), 10, NAMES)
    b = sample_expression(np.random.default_rng(5), 10, NAMES)
    c = sample_expression(np.random.default_rng(6), 10, NAMES)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_expressions_are_sparse_and_in_range(weights):
    assert weights.shape == (3000, len(NAMES)) and weights.dtype == np.float32
    assert weights.min() >= 0.0 and weights.max() <= 1.0
    assert np.median(weights) < 0.05                   # most weights near zero
    active = (weights > 0.15).sum(1)
    assert 1.0 < active.mean() < 8.0                    # a few active per expression
    assert (weights.max(1) > 0.5).mean() > 0.3          # but real activity, not only noise


def test_left_right_pairs_are_correlated(weights):
    for pair in ("eyeBlink", "mouthSmile", "browDown"):
        r = np.corrcoef(weights[:, IDX[pair + "_L"]], weights[:, IDX[pair + "_R"]])[0, 1]
        assert r > 0.6, (pair, r)
    # ... yet sometimes one-sided (a wink)
    l, r = weights[:, IDX["eyeBlink_L"]], weights[:, IDX["eyeBlink_R"]]
    assert np.any(np.abs(l - r) > 0.3)


def test_jaw_and_lips_move_together(weights):
    jaw = weights[:, IDX["jawOpen"]]
    assert np.corrcoef(jaw, weights[:, IDX["mouthLowerDown_L"]])[0, 1] > 0.3
    assert np.all(weights[:, IDX["mouthClose"]] <= jaw + 1e-6)  # mouthClose only with an open jaw
    funnel = np.maximum(weights[:, IDX["mouthFunnel"]], weights[:, IDX["mouthPucker"]])
    assert np.all(jaw >= 0.3 * funnel - 1e-6)
    for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")):
        assert not np.any((weights[:, IDX[a]] > 0.15) & (weights[:, IDX[b]] > 0.15))


def test_gaze_moves_both_eyes_the_same_way(weights):
    out_l, out_r = weights[:, IDX["eyeLookOut_L"]], weights[:, IDX["eyeLookOut_R"]]
    assert not np.any((out_l > 0.15) & (out_r > 0.15))      # never both looking outward
    looking_left = out_l > 0.15
    assert looking_left.any()
    np.testing.assert_allclose(weights[looking_left, IDX["eyeLookIn_R"]], out_l[looking_left])


def test_blink_excludes_wide_eyes(weights):
    blink = weights[:, IDX["eyeBlink_L"]] > 0.3
    assert blink.any() and np.all(weights[blink, IDX["eyeWide_L"]] == 0.0)


def test_neutral_and_extreme_options():
    rng = np.random.default_rng(2)
    assert not sample_expression(rng, 4, NAMES, neutral=True).any()
    prior = ExpressionPrior(neutral_fraction=0.3, extreme_fraction=0.3)
    w = sample_expression(rng, 1000, NAMES, prior)
    neutral = ~w.any(1)
    extreme = ((w == 1.0).sum(1) == 1) & ((w > 0).sum(1) == 1)
    assert 0.25 < neutral.mean() < 0.35 and 0.25 < extreme.mean() < 0.35
    chosen = {NAMES[i] for i in w[extreme].argmax(1)}
    assert chosen == {"jawOpen", "mouthFunnel", "eyeBlink_L", "eyeBlink_R"}
    e = extreme_expression(NAMES, "mouthFunnel", 0.7)
    assert e[IDX["mouthFunnel"]] == np.float32(0.7) and e.sum() == np.float32(0.7)
    with pytest.raises(ValueError, match="unknown ICT expression"):
        extreme_expression(NAMES, "notAShape")
    with pytest.raises(ValueError, match="not among the expression names"):
        sample_expression(rng, 2, ("browDown_L", "browDown_R"), prior)


def test_sample_heads_returns_typed_samples():
    heads = sample_heads(np.random.default_rng(3), 3, NAMES, n_identity_modes=10)
    assert len(heads) == 3 and all(isinstance(h, HeadSample) for h in heads)
    assert heads[0].w_id.shape == (10,) and heads[0].w_ex.shape == (len(NAMES),)
