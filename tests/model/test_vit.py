import math

import pytest
import torch
import torch.nn.functional as F

from model.errors import InputError
from model.vit import (EncoderConfig, EncoderOutput, NormalEncoder, PointMapEncoder, build_encoder,
                       encoder_preset, interpolate_pos_embed, load_encoder, multi_head_attention, save_encoder)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny_normals():
    torch.manual_seed(1)
    return build_encoder(encoder_preset("tiny", "normals")).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_over_batch_and_targets(batch, tiny_normals):
    cfg = tiny_normals.cfg
    x = torch.rand(batch, 3, 32, 32)
    out = tiny_normals(x)
    assert isinstance(out, EncoderOutput) and out.points is None
    assert out.tokens.shape == (batch, (32 // cfg.patch_size) ** 2, cfg.width)
    assert out.normals.shape == (batch, 3, 32, 32) and out.mask_logits.shape == (batch, 32, 32)
    torch.testing.assert_close(out.normals.norm(dim=1), torch.ones(batch, 32, 32))
    torch.testing.assert_close(tiny_normals.encode(x), out.tokens)
    points = build_encoder(encoder_preset("tiny", "points")).eval()
    assert isinstance(points, PointMapEncoder)
    p = points(x)
    assert p.normals is None and p.points.shape == (batch, 3, 32, 32) and p.prediction is p.points


def test_batch_items_are_independent(tiny_normals):
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        full = tiny_normals(x).normals
        one = tiny_normals(x[1:2]).normals
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)


def test_other_resolution_interpolates_position_embeddings(tiny_normals):
    out = tiny_normals(torch.rand(2, 3, 48, 64))  # grid 6 x 8 instead of 4 x 4
    assert out.tokens.shape == (2, 48, tiny_normals.cfg.width) and out.normals.shape == (2, 3, 48, 64)
    pos = torch.randn(1, 16, 5)
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    const = torch.full((1, 16, 5), 0.7)
    torch.testing.assert_close(interpolate_pos_embed(const, (6, 8)), torch.full((1, 48, 5), 0.7))
    # a 2x upsampling keeps the coarse pattern: the mean of each 2x2 block is close to the original cell
    smooth = torch.linspace(0, 1, 4)[:, None].expand(4, 4).reshape(1, 16, 1)
    up = interpolate_pos_embed(smooth, (8, 8)).reshape(1, 1, 8, 8)
    torch.testing.assert_close(F.avg_pool2d(up, 2).reshape(1, 16, 1), smooth, atol=0.05, rtol=0)
    with pytest.raises(InputError, match="square"):
        interpolate_pos_embed(torch.zeros(1, 15, 5), (3, 5))


def test_bad_inputs(tiny_normals):
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        tiny_normals(torch.rand(2, 4, 32, 32))
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        tiny_normals(torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="multiples of the patch size 8"):
        tiny_normals(torch.rand(1, 3, 30, 32))
    with pytest.raises(InputError, match="float"):
        tiny_normals(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="target"):
        EncoderConfig(target="depth")
    with pytest.raises(InputError, match="power of two"):
        EncoderConfig(patch_size=12, image_size=120)
    with pytest.raises(InputError, match="divisible"):
        EncoderConfig(width=100, heads=3)
    with pytest.raises(InputError, match="unknown encoder preset"):
        encoder_preset("huge")
    with pytest.raises(InputError, match="must be 'points'"):
        PointMapEncoder(encoder_preset("tiny", "normals"))


def test_attention_matches_reference_and_gradcheck():
    C, heads = 8, 2
    qkv, proj = torch.nn.Linear(C, 3 * C).double(), torch.nn.Linear(C, C).double()
    x = torch.randn(2, 5, C, dtype=torch.float64, requires_grad=True)
    out = multi_head_attention(x, qkv, proj, heads)
    q, k, v = qkv(x).view(2, 5, 3, heads, C // heads).unbind(2)  # [B, T, h, d]
    att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(C // heads)
    ref = proj(torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(2, 5, C))
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(lambda t: multi_head_attention(t, qkv, proj, heads), (x,))


def test_presets_sizes():
    d = encoder_preset("default")
    assert (d.image_size, d.patch_size, d.width, d.depth, d.heads) == (128, 8, 192, 6, 3)
    large = encoder_preset("large", "points")
    assert large.target == "points" and large.grid == 16 and large.width == 768
    assert isinstance(NormalEncoder(), NormalEncoder)  # default preset builds


def test_checkpoint_round_trip(tmp_path, tiny_normals):
    path = save_encoder(tmp_path / "enc.pt", tiny_normals, {"note": "test", "step": 3})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "nphm-track.encoder" and payload["format_version"] == 1
    assert payload["config"] == tiny_normals.cfg.to_dict()
    enc, meta = load_encoder(path)
    assert meta == {"note": "test", "step": 3} and not enc.training and isinstance(enc, NormalEncoder)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).normals, tiny_normals(x).normals, rtol=0, atol=0)
    payload["format"] = "nphm-track.head"
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an nphm-track.encoder checkpoint"):
        load_encoder(tmp_path / "other.pt")
    payload["format"] = "nphm-track.encoder"
    payload["state_dict"].pop("pos_embed")
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(InputError, match="missing keys: pos_embed"):
        load_encoder(tmp_path / "broken.pt")
