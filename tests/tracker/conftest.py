"""Shared tracker fixtures: the model bundle with the shipped trained head and tiny untrained networks."""

from __future__ import annotations

import pytest
import torch

from model.arkit import rig_for_head
from model.arkit_regressor import default_arkit_regressor
from model.checkpoint import default_weights, load_checkpoint
from model.forward_deformation import forward_for_head
from model.landmarks import load_landmark_assets
from model.regressor import Regressor, regressor_preset
from model.vit import NormalEncoder, PointMapEncoder, encoder_preset
from tracker.predict import Models


def tiny_models() -> Models:
    """The shipped head and landmark assets with tiny, untrained encoders and regressor (outputs start at the
    mean codes): real code paths at test speed; the map-based tracker's accuracy is not what these tests
    check (the landmark tracker needs no encoders)."""
    torch.manual_seed(0)
    layer, codes, meta = load_checkpoint(default_weights("head_default"))
    en, ep = encoder_preset("tiny", "normals"), encoder_preset("tiny", "points")
    reg = Regressor(regressor_preset("tiny", layer.cfg, en, ep))
    reg.set_code_statistics(codes["z_id"], codes["z_ex"])
    return Models(layer=layer, codes=codes, head_meta=meta, normal_encoder=NormalEncoder(en),
                  point_encoder=PointMapEncoder(ep), regressor=reg,
                  landmarks=load_landmark_assets(default_weights("landmarks_default", ".npz")),
                  forward=forward_for_head(None), arkit_rig=rig_for_head(None),
                  arkit_regressor=default_arkit_regressor()).to("cpu")


@pytest.fixture(scope="module")
def models() -> Models:
    return tiny_models()
