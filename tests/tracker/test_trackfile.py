"""Track files: round trip through save/load, and every refusal of load_track."""

import json
import os

import numpy as np
import pytest

from model.errors import InputError
from tracker.trackfile import FORMAT, Track, hold_over_gaps, is_track_file, load_track, save_track


def make_track(T: int = 5, d_id: int = 8, d_ex: int = 4, seed: int = 0, gaps=(2,)) -> Track:
    """A small track with varied values; the rows in ``gaps`` are gaps holding NaN."""
    rng = np.random.default_rng(seed)
    status = np.array(["tracked"] * T, dtype=object)
    status[1] = "held"
    z_ex = rng.normal(size=(T, d_ex))
    pose = np.concatenate([rng.normal(scale=0.1, size=(T, 3)), rng.normal(size=(T, 3)) + [0, 0, 4]], 1)
    K = np.repeat(np.array([[600.0, 0, 127.5], [0, 600.0, 127.5], [0, 0, 1]])[None], T, 0)
    c2f = np.repeat(np.array([[2.0, 0, 100], [0, 2.0, 50]])[None], T, 0)
    for g in gaps:
        status[g] = "gap"
        z_ex[g] = pose[g] = K[g] = c2f[g] = np.nan
    return Track(z_id=rng.normal(size=d_id), z_ex=z_ex, pose=pose, K=K, crop_to_frame=c2f,
                 frame_index=np.arange(T) * 2 + 3, time_s=np.arange(T) * 2 / 30.0 + 0.1,
                 status=status.tolist(), confidence=np.linspace(0, 1, T), fps=30.0, source="clip.mp4",
                 frame_size=(640, 480), head="default", meta={"config": {"steps": 3}, "note": "é"})


def test_round_trip_keeps_every_field_and_dtype(tmp_path):
    track = make_track()
    path = save_track(tmp_path / "a.track.npz", track)
    assert [p.name for p in tmp_path.iterdir()] == ["a.track.npz"]  # no temporary left behind
    back = load_track(path)
    for name in ("z_id", "z_ex", "pose", "K", "crop_to_frame", "frame_index", "time_s", "confidence"):
        a, b = getattr(track, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b)  # NaN in gap rows compare equal
    assert back.status.tolist() == ["tracked", "held", "gap", "tracked", "tracked"]
    assert (back.fps, back.source, back.frame_size, back.head) == (30.0, "clip.mp4", (640, 480), "default")
    assert back.meta == {"config": {"steps": 3}, "note": "é"}
    assert back.usable.tolist() == [True, True, False, True, True]
    # plain numpy reads it without pickle
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["format"]) == FORMAT and int(npz["format_version"]) == 1
        assert json.loads(str(npz["meta"]))["config"]["steps"] == 3
    assert is_track_file(path)


def test_post_init_checks_shapes_and_values():
    good = make_track(gaps=())
    fields = dict(vars(good))
    with pytest.raises(InputError, match=r"pose must be \[T, 6\] = \[5, 6\].*got \[4, 6\]"):
        Track(**{**fields, "pose": good.pose[:4]})
    with pytest.raises(InputError, match=r"K must be \[T, 3, 3\]"):
        Track(**{**fields, "K": good.K[:, :2]})
    with pytest.raises(InputError, match="unknown status"):
        Track(**{**fields, "status": ["tracked"] * 4 + ["trackedX"]})  # not truncated to "tracked"
    with pytest.raises(InputError, match="NaN"):
        Track(**{**fields, "z_ex": np.where(np.arange(5)[:, None] == 1, np.nan, good.z_ex)})
    with pytest.raises(InputError, match="strictly increasing"):
        Track(**{**fields, "frame_index": [0, 1, 1, 2, 3]})
    with pytest.raises(InputError, match=r"confidence must be in \[0, 1\]"):
        Track(**{**fields, "confidence": [0, 0, 2, 0, 0]})
    with pytest.raises(InputError, match=r"z_id must be \[D_id\]"):
        Track(**{**fields, "z_id": good.z_id[None]})


def test_load_refusals_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.npz: no such track file"):
        load_track(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(InputError, match="text.npz: not a track file"):
        load_track(text)
    anim = tmp_path / "anim.npz"
    np.savez(anim, vertices=np.zeros((1, 3, 3), np.float32), faces=np.zeros((1, 3), np.int32))
    with pytest.raises(InputError, match="anim.npz: not an nphm-track track file .an animation NPZ"):
        load_track(anim)
    assert not is_track_file(anim) and not is_track_file(text)

    path = save_track(tmp_path / "t.npz", make_track())
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(tmp_path / "v2.npz", **{**arrays, "format_version": np.array(2)})
    with pytest.raises(InputError, match="v2.npz: unsupported track format_version 2"):
        load_track(tmp_path / "v2.npz")
    np.savez(tmp_path / "short.npz", **{**arrays, "time_s": arrays["time_s"][:3]})
    with pytest.raises(InputError, match=r"short.npz: Track: time_s must be \[T\] = \[5\].*got \[3\]"):
        load_track(tmp_path / "short.npz")
    np.savez(tmp_path / "lacking.npz", **{k: v for k, v in arrays.items() if k != "K"})
    with pytest.raises(InputError, match="lacking.npz: track file lacks arrays: K"):
        load_track(tmp_path / "lacking.npz")
    np.savez(tmp_path / "obj.npz", **{**arrays, "meta": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(InputError, match="obj.npz: not a track file"):
        load_track(tmp_path / "obj.npz")  # pickled objects are refused, not unpickled


def test_save_is_atomic_and_refuses_missing_folder(tmp_path, monkeypatch):
    path = save_track(tmp_path / "t.npz", make_track(seed=1))
    before = path.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(InputError, match="t.npz: cannot write the track file: No space left"):
        save_track(path, make_track(seed=2))
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["t.npz"]
    bad = make_track(seed=2)
    bad.meta = {"x": object()}
    with pytest.raises(InputError, match="meta must hold JSON types"):
        save_track(path, bad)
    with pytest.raises(InputError, match="does not exist"):
        save_track(tmp_path / "nope" / "t.npz", make_track())


def test_hold_over_gaps():
    v = np.arange(6, dtype=float)[:, None] * [1.0, 10.0]  # [6, 2]
    usable = np.array([False, True, False, False, True, False])
    out = hold_over_gaps(v, usable)
    np.testing.assert_array_equal(out[:, 0], [1, 1, 1, 1, 4, 4])
    with pytest.raises(InputError, match="every frame is a gap"):
        hold_over_gaps(v, np.zeros(6, bool))
