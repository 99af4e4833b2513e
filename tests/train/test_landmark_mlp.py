"""train/landmark_mlp.py: the held-out split and the shared training loop of the landmark readers."""

from __future__ import annotations

import pytest
import torch

from model.errors import InputError
from model.identity_prior import IdentityPrior, IdentityPriorConfig
from model.landmark_regressor import landmark_features
from train.landmark_mlp import fit_landmark_mlp, split_heldout


def test_the_loop_learns_a_target_the_landmarks_determine():
    g = torch.Generator().manual_seed(0)
    face = torch.rand(478, 2, generator=g) * 200 + 50
    lm = face + 3.0 * torch.randn(1000, 478, 2, generator=g)  # one face, its points jittered
    target = landmark_features(lm, 478)[:, :3] * 20.0  # [N, 3]: a function of the normalised landmarks
    tr_lm, tr_y, ho_lm, ho_y = split_heldout(lm, target, 100, 32, "synthetic")
    torch.manual_seed(0)
    model = IdentityPrior(IdentityPriorConfig(n_ict=3, rank=2, hidden=64, layers=2))
    before = float((model(ho_lm) - ho_y).square().mean())
    logged = []
    fit_landmark_mlp(model, tr_lm, tr_y, 300, 32, 3e-3, 0.0, 0.0, 0, 100,
                     lambda: float((model(ho_lm) - ho_y).square().mean()), logged.append)
    after = float((model(ho_lm) - ho_y).square().mean())
    assert after < 0.5 * before and not model.training
    assert [line.split(":")[0] for line in logged] == ["step 100", "step 200", "step 300"]


def test_too_few_samples_name_the_source():
    with pytest.raises(InputError, match="data_v9: 40 samples is too few for 30 held out"):
        split_heldout(torch.zeros(40, 478, 2), torch.zeros(40, 3), 30, 16, "data_v9")
