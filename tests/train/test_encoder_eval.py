import math

import pytest
import torch
import torch.nn.functional as F

from model.errors import InputError
from train.encoder_eval import MM_PER_UNIT, angular_error_deg, mask_iou, point_l1_mm, summarize


def _normals(B=2, S=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = F.normalize(torch.randn(B, 3, S, S, generator=g, dtype=torch.float64), dim=1)
    mask = torch.rand(B, S, S, generator=g) > 0.4
    return n, mask


def _rotation(axis: torch.Tensor, deg: float) -> torch.Tensor:
    """Rodrigues: rotation by ``deg`` about unit ``axis`` [3]."""
    a = math.radians(deg)
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def test_angular_error_zero_and_exact_rotation():
    n, mask = _normals()
    torch.testing.assert_close(angular_error_deg(n, n, mask), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    R = _rotation(F.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64), dim=0), 10.0)
    # a rotation by 10 degrees moves only vectors perpendicular to its axis by 10 degrees: use those
    axis = R.new_tensor([0.3, -0.5, 0.8]) / R.new_tensor([0.3, -0.5, 0.8]).norm()
    perp = F.normalize(n - (n * axis.view(1, 3, 1, 1)).sum(1, keepdim=True) * axis.view(1, 3, 1, 1), dim=1)
    rotated = torch.einsum("ij,bjhw->bihw", R, perp)
    torch.testing.assert_close(angular_error_deg(rotated, perp, mask), torch.full((2,), 10.0, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    # scaled predictions are renormalised; masked-out pixels do not count
    far = perp.clone()
    far[:, :, ~mask[0]] = -perp[:, :, ~mask[0]]
    torch.testing.assert_close(angular_error_deg(3 * rotated, far, mask)[0], torch.tensor(10.0, dtype=torch.float64))


def test_point_l1_mm_zero_and_known_offset():
    p = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 0.3
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(point_l1_mm(p, p, mask), torch.zeros(2, dtype=torch.float64))
    offset = torch.tensor([0.004, -0.004, 0.004], dtype=torch.float64).view(1, 3, 1, 1)  # 1 mm per coordinate
    torch.testing.assert_close(point_l1_mm(p + offset, p, mask), torch.ones(2, dtype=torch.float64))
    assert MM_PER_UNIT == 250.0
    mask[1] = False
    assert math.isnan(float(point_l1_mm(p + offset, p, mask)[1]))
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        point_l1_mm(p, p, mask[:, :4])
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        angular_error_deg(p[:, :2], p[:, :2], mask)


def test_mask_iou():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2] = True  # 8 pixels
    logits = torch.full((1, 4, 4), -1.0)
    logits[0, :3] = 1.0  # 12 pixels, 8 shared
    torch.testing.assert_close(mask_iou(logits, gt), torch.tensor([8 / 12], dtype=torch.float64))


def test_summarize_bins_by_abs_yaw():
    errors = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")], dtype=torch.float64)
    ious = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=torch.float64)
    yaw = torch.tensor([5.0, -14.0, 20.0, -50.0, 75.0, 1.0])
    m = summarize(errors, ious, yaw, "normals", 32)
    assert list(m.by_yaw) == ["0-15", "15-30", "30-45", "45-60", "60+"]
    assert m.by_yaw["0-15"].n_images == 2 and m.by_yaw["0-15"].error == pytest.approx(1.5)
    assert m.by_yaw["30-45"].n_images == 0 and math.isnan(m.by_yaw["30-45"].error)
    assert m.by_yaw["60+"].error == 5.0 and m.by_yaw["45-60"].mask_iou == pytest.approx(0.6)
    assert m.overall.n_images == 5 and m.overall.error == pytest.approx(3.0)
    assert m.error_name == "angular_error_deg" and "0-15" in m.summary()
