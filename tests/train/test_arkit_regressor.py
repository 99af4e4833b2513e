"""The ARKit regressor's data mixture, data files and training loop (train/arkit_regressor.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.arkit import ARKIT_NAMES
from model.arkit_regressor import load_arkit_regressor
from train.arkit_regressor import (SQUINTS, ArkitDataConfig, ArkitTrainConfig, generate_arkit_data, load_arkit_data,
                                   sample_expression_mix, train_arkit_regressor)


def test_mixture_is_bounded_and_squints_keep_the_eyes_open(kit):
    rng = np.random.default_rng(0)
    names = list(kit.expression_names)
    plain = np.stack([sample_expression_mix(rng, names) for _ in range(200)])
    assert plain.shape == (200, kit.n_expression) and plain.min() >= 0 and plain.max() <= 1
    assert (plain[:, names.index("eyeBlink_L")] > 0.5).mean() > 0.05  # blinks are there
    squints = np.stack([sample_expression_mix(rng, names, squint_share=1.0) for _ in range(100)])
    cols = [names.index(n) for n in SQUINTS]
    assert (squints[:, cols].max(1) >= 0.5).all()
    assert squints[:, names.index("eyeBlink_L")].max() <= 0.6


@pytest.mark.slow
def test_data_through_the_detector_resumes(tmp_path, ict_path):
    cfg = ArkitDataConfig(out_dir=str(tmp_path), samples=3, resolution=192, ict_path=str(ict_path))
    generate_arkit_data(cfg, progress=False)
    lm, w = load_arkit_data(tmp_path)
    assert lm.shape[1:] == (478, 2) and w.shape == (len(lm), 52) and 1 <= len(lm) <= 3
    before = (tmp_path / "chunk_0000.npz").stat().st_mtime_ns
    generate_arkit_data(cfg, progress=False)
    assert (tmp_path / "chunk_0000.npz").stat().st_mtime_ns == before


def test_training_loop_writes_a_loadable_regressor(tmp_path):
    rng = np.random.default_rng(0)
    lm = rng.uniform(100, 300, (160, 478, 2)).astype(np.float32)
    w = rng.uniform(0, 1, (160, 52)).astype(np.float32)
    w[:, ARKIT_NAMES.index("tongueOut")] = 0
    np.savez(tmp_path / "chunk_0000.npz", landmarks=lm, arkit=w)
    out = tmp_path / "r.pt"
    report = train_arkit_regressor(ArkitTrainConfig(data_dir=str(tmp_path), out_path=str(out), steps=5, batch_size=16,
                                                    heldout=32, hidden=16, layers=1), log=lambda *_: None)
    net, meta = load_arkit_regressor(out)
    assert report["samples"] == 160 and meta["report"]["heldout"] == 32
    assert net(__import__("torch").from_numpy(lm[:2])).shape == (2, 52)
    with pytest.raises(ValueError, match="too few"):
        train_arkit_regressor(ArkitTrainConfig(data_dir=str(tmp_path), out_path=str(out), heldout=150))
