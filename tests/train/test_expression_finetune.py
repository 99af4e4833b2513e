"""train/expression_finetune.py and train/forward_deformation_training.py: widening, and both loops end to end
on a few steps (the shipped head's original 504 training heads; needs ICT-FaceKit)."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import default_weights, load_checkpoint, save_checkpoint
from model.errors import InputError
from model.forward_deformation import load_forward_deformation
from train.expression_finetune import ExpressionFinetuneConfig, finetune_expressions, widen_deformation
from train.forward_deformation_training import ForwardTrainConfig, train_forward_deformation


def test_widening_keeps_the_function():
    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    wide = widen_deformation(layer, layer.cfg.deform_hidden + 32)
    assert wide.cfg.deform_hidden == layer.cfg.deform_hidden + 32
    x = torch.randn(1, 50, 3) * 0.3
    zi, ze = codes["z_id"][:1], codes["z_ex"][:1]
    a, b = layer.deform(x, zi, ze), wide.deform(x, zi, ze)
    assert torch.allclose(a.offsets, b.offsets, atol=1e-6) and torch.allclose(a.hyper, b.hyper, atol=1e-6)
    assert torch.allclose(layer(x, zi, ze).sdf, wide(x, zi, ze).sdf, atol=1e-6)
    with pytest.raises(InputError, match="narrower"):
        widen_deformation(layer, 8)


@pytest.fixture()
def original_head(tmp_path, kit):
    """The shipped head restricted to its original training heads (as `nphm-train head` wrote it)."""
    layer, codes, meta = load_checkpoint(default_weights("head_default"))
    n = len([f for f in meta["train_files"] if f.endswith(".npz")])
    codes = {"z_id": codes["z_id"], "z_ex": codes["z_ex"][:n], "identity_of_head": codes["identity_of_head"][:n],
             "is_neutral": codes["is_neutral"][:n]}
    meta = {k: v for k, v in meta.items() if k != "expression_finetune"}
    meta["train_files"] = meta["train_files"][:n]
    return save_checkpoint(tmp_path / "head.pt", layer, codes, meta), n


def test_finetune_then_forward_end_to_end(tmp_path, original_head):
    head, n = original_head
    cfg = ExpressionFinetuneConfig(head_path=str(head), out_dir=str(tmp_path / "ft"), new_per_identity=1, steps=2,
                                   heads_per_step=2, points_per_head=30, checkpoint_every=1)
    report = finetune_expressions(cfg, log=lambda *_: None)
    assert report["steps"] == 2 and report["new_heads"] == 72
    layer, codes, meta = load_checkpoint(tmp_path / "ft" / "head.pt")
    assert len(codes["z_ex"]) == len(codes["ict_w_ex"]) == len(codes["identity_of_head"]) == n + 72
    assert int(codes["is_neutral"].sum()) == 72  # the original neutral slots only
    assert len(meta["train_files"]) == n + 72 and "expression_finetune" in meta
    with pytest.raises(InputError, match="already fine-tuned"):  # the new head is not a start
        finetune_expressions(ExpressionFinetuneConfig(head_path=str(tmp_path / "ft" / "head.pt"),
                                                      out_dir=str(tmp_path / "again"), steps=1))
    fcfg = ForwardTrainConfig(head_path=str(tmp_path / "ft" / "head.pt"), out_dir=str(tmp_path / "fw"), steps=2,
                              heads_per_step=2, points_per_head=40, hidden=16, layers=2, checkpoint_every=1)
    rep = train_forward_deformation(fcfg, log=lambda *_: None)
    assert rep["heldout"]["heads"] > 0 and rep["heldout"]["face_zero_offset_mm"] > 0
    module, meta = load_forward_deformation(tmp_path / "fw" / "forward.pt")
    assert module.cfg.hidden == 16 and meta["report"]["steps"] == 2
    assert json.loads((tmp_path / "fw" / "report.json").read_text())["steps"] == 2
