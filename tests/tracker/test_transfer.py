"""Expression transfer: a track's expressions on the identity of another track or of a face image."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from model.errors import InputError
from tests.tracker.test_trackfile import make_track
from tracker import predict
from tracker.crop import CropConfig
from tracker.detect import FaceBox
from tracker.trackfile import load_track, save_track
from tracker.transfer import transfer_expressions


def test_track_target_swaps_only_the_identity(tmp_path):
    source, target = make_track(seed=0), make_track(seed=1, gaps=())
    target_path = save_track(tmp_path / "target.track.npz", target)
    out = tmp_path / "moved.track.npz"
    result = transfer_expressions(source, target_path, out)
    np.testing.assert_array_equal(result.z_id, target.z_id)
    assert not np.array_equal(result.z_id, source.z_id)
    for name in ("z_ex", "pose", "K", "crop_to_frame", "frame_index", "time_s", "status", "confidence"):
        np.testing.assert_array_equal(getattr(result, name), getattr(source, name))
    assert result.source == source.source and result.meta["config"] == source.meta["config"]
    assert result.meta["transfer"] == {"expressions_from": "clip.mp4", "identity_from": str(target_path)}
    back = load_track(out)
    np.testing.assert_array_equal(back.z_id, target.z_id)
    assert back.meta["transfer"]["identity_from"] == str(target_path)
    assert "transfer" not in source.meta  # the source is not modified


def test_track_target_refusals(tmp_path):
    source = make_track()
    other_head = make_track(seed=1)
    other_head.head = str(tmp_path / "other_head.pt")
    with pytest.raises(InputError, match="codes of different head models cannot be mixed"):
        transfer_expressions(source, other_head)
    with pytest.raises(InputError, match="identity code has 6 values, the source track's 8"):
        transfer_expressions(source, make_track(d_id=6))
    with pytest.raises(InputError, match="nope.npz: no such track file"):
        transfer_expressions(source, tmp_path / "nope.npz")


class OneBoxDetector:
    name = "scripted"

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        return list(self.boxes)


def test_image_target_crops_and_fits_the_face(tmp_path, monkeypatch):
    image = tmp_path / "face.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(image)
    seen = {}

    def fake_fit(models, crop, K=None, tto=True, **kw):
        seen.update(crop_shape=crop.shape, tto=tto, models=models)
        return SimpleNamespace(z_id=torch.full((1, 8), 0.5))

    monkeypatch.setattr(predict, "fit_image", fake_fit)
    models = SimpleNamespace(head_path="default")
    source = make_track()
    result = transfer_expressions(source, image, models=models, tto=False, crop_config=CropConfig(size=32),
                                  detector=OneBoxDetector([FaceBox(20, 10, 44, 34, 1.0)]))
    assert seen == {"crop_shape": (32, 32, 3), "tto": False, "models": models}
    np.testing.assert_array_equal(result.z_id, np.full(8, 0.5, np.float32))
    np.testing.assert_array_equal(result.z_ex, source.z_ex)
    assert result.meta["transfer"]["identity_from"] == str(image)

    with pytest.raises(InputError, match="face.png: no face found"):
        transfer_expressions(source, image, models=models, detector=OneBoxDetector([]))
    with pytest.raises(InputError, match="codes of different head models cannot be mixed"):
        transfer_expressions(source, image, models=SimpleNamespace(head_path=str(tmp_path / "h.pt")),
                             detector=OneBoxDetector([FaceBox(20, 10, 44, 34, 1.0)]))


def test_image_target_through_the_real_fit(tmp_path, monkeypatch):
    """The image branch against the real Models / fit_image API (tiny untrained encoders and regressor,
    the shipped head): the fitted identity is the regressor's [1, D_id] output, written into the track."""
    from tests.tracker.conftest import tiny_models

    models = tiny_models()
    layer = models.layer
    real_predict = predict.predict
    outputs = []

    def predict_with_a_face_mask(models, crops):  # untrained encoders: force a face-sized mask
        pred = real_predict(models, crops)
        pred.mask[:] = 0
        pred.mask[0, 8:24, 8:24] = 1.0
        pred.point_map[0] = torch.tensor([0.0, 0.1, 0.3]) + 0.01 * torch.randn(*pred.point_map.shape[1:])
        outputs.append(pred)
        return pred

    monkeypatch.setattr(predict, "predict", predict_with_a_face_mask)
    image = tmp_path / "face.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    source = make_track(d_id=layer.cfg.id_dim, d_ex=layer.cfg.expr_dim)
    result = transfer_expressions(source, image, models=models, tto=False, crop_config=CropConfig(size=48),
                                  detector=OneBoxDetector([FaceBox(25, 15, 55, 45, 1.0)]))
    assert len(outputs) == 1
    np.testing.assert_array_equal(result.z_id, outputs[0].z_id[0].numpy())
    assert result.z_id.shape == (layer.cfg.id_dim,) and not np.array_equal(result.z_id, source.z_id)
