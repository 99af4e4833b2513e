"""Streaming decoding: frames, timing, rotation, pixel formats and damaged input (videos made here with PyAV)."""

import sys
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from model.errors import InputError, MissingDependencyError
from tracker.decode import DecodeWarning, open_video, rotate_image


def write_video(path, images, *, codec="libx264", pix_fmt="yuv420p", fmt=None, pts_ms=None, rotation=None,
                options=None, container_options=None, in_format="rgb24"):
    """Encode ``images`` (list of [H, W, 3] or [H, W] uint8) to ``path``; optional explicit pts in ms."""
    h, w = images[0].shape[:2]
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as c:
        s = c.add_stream(codec, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format=in_format)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def flat(value, h=48, w=64):
    return np.full((h, w, 3), value, np.uint8)


def read_all(path, **kw):
    with open_video(path, **kw) as stream:
        return stream.info, list(stream)


# ---------------------------------------------------------------------------------------- good input

def test_frames_are_rgb_uint8_in_order_with_times(tmp_path):
    values = [20, 80, 140, 200, 240]
    path = write_video(tmp_path / "v.mp4", [flat(v) for v in values], options={"crf": "0"})
    info, frames = read_all(path)
    assert (info.width, info.height, info.frame_count, info.rotation) == (64, 48, 5, 0)
    assert info.fps == pytest.approx(25.0)
    assert [f.index for f in frames] == list(range(5))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(5) / 25.0, atol=1e-6)
    for f, v in zip(frames, values):
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert abs(float(f.image.mean()) - v) < 4


def test_decoding_is_lazy(tmp_path):
    path = write_video(tmp_path / "v.mp4", [flat(10 * i) for i in range(12)])
    with open_video(path) as stream:
        it = iter(stream)
        next(it)
        assert stream.report.frames_decoded == 1
    with pytest.raises(RuntimeError, match="iterated once"):
        list(stream)


def test_one_frame_video(tmp_path):
    info, frames = read_all(write_video(tmp_path / "one.mp4", [flat(128)]))
    assert len(frames) == 1 and frames[0].time_s == 0.0 and info.frame_count == 1


def test_variable_frame_rate_keeps_true_timestamps(tmp_path):
    pts = [0, 40, 120, 130, 300]
    path = write_video(tmp_path / "vfr.mp4", [flat(40 * i) for i in range(5)], pts_ms=pts)
    _, frames = read_all(path)
    np.testing.assert_allclose([f.time_s for f in frames], np.array(pts) / 1000.0, atol=1e-3)


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    coded = np.zeros((32, 64, 3), np.uint8)
    coded[:8, :8] = 255                                   # white block at the coded top-left
    path = write_video(tmp_path / f"rot{rotation}.mp4", [coded] * 2, rotation=rotation, options={"crf": "0"})
    info, frames = read_all(path)
    assert info.rotation == rotation % 360
    # Counter-clockwise by `rotation`: the coded top-left corner moves to bottom-left (90),
    # bottom-right (180) or top-right (270).
    expect_shape = (64, 32, 3) if rotation % 180 else (32, 64, 3)
    corner = {90: (slice(-8, None), slice(None, 8)), 180: (slice(-8, None), slice(-8, None)),
              270: (slice(None, 8), slice(-8, None))}[rotation % 360]
    img = frames[0].image
    assert img.shape == expect_shape and (info.height, info.width) == expect_shape[:2]
    assert img[corner].mean() > 200
    mask = np.ones(img.shape[:2], bool)
    mask[corner] = False
    assert img[mask].mean() < 30


def test_rotate_image_matches_numpy_ccw():
    a = np.arange(6).reshape(2, 3)
    assert np.array_equal(rotate_image(a, 90), np.array([[2, 5], [1, 4], [0, 3]]))
    assert rotate_image(a, 0) is a and np.array_equal(rotate_image(a, -270), rotate_image(a, 90))


def test_grayscale_video_becomes_rgb(tmp_path):
    greys = [np.full((21, 33), v, np.uint8) for v in (100, 150)]
    path = write_video(tmp_path / "g.mkv", greys, codec="ffv1", pix_fmt="gray", in_format="gray")
    info, frames = read_all(path)
    assert info.pix_fmt == "gray" and info.frame_count is None       # mkv announces no count
    for f, v in zip(frames, (100, 150)):
        assert f.image.shape == (21, 33, 3)
        assert np.abs(f.image.astype(int) - v).max() <= 2


def test_odd_frame_size(tmp_path):
    img = np.zeros((83, 97, 3), np.uint8)
    img[:, 50:] = 255
    path = write_video(tmp_path / "odd.mp4", [img] * 2, pix_fmt="yuv444p", options={"crf": "0"})
    info, frames = read_all(path)
    assert (info.width, info.height) == (97, 83) and frames[1].image.shape == (83, 97, 3)
    assert frames[1].image[:, :48].mean() < 10 and frames[1].image[:, 52:].mean() > 245


@pytest.mark.parametrize("codec,pix_fmt", [("libx264", "yuv420p10le"), ("mjpeg", "yuvj420p")])
def test_high_bit_depth_and_full_range_become_uint8(tmp_path, codec, pix_fmt):
    path = write_video(tmp_path / f"{pix_fmt}.mp4", [flat(30), flat(200)], codec=codec, pix_fmt=pix_fmt)
    info, frames = read_all(path)
    assert info.pix_fmt == pix_fmt
    assert frames[1].image.dtype == np.uint8 and abs(float(frames[1].image.mean()) - 200) < 6


def test_single_image_is_a_one_frame_stream(tmp_path):
    grey = np.tile(np.arange(40, dtype=np.uint8)[None, :] * 5, (30, 1))       # [30, 40] 'L' image
    Image.fromarray(grey).save(tmp_path / "face.png")
    info, frames = read_all(tmp_path / "face.png")
    assert info.decoder == "pillow" and info.frame_count == 1 and info.fps is None
    assert len(frames) == 1 and frames[0].image.shape == (30, 40, 3)
    assert np.array_equal(frames[0].image[..., 1], grey)


def test_image_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6                                          # display rotated 90 deg clockwise
    Image.fromarray(img).save(tmp_path / "phone.jpg", exif=exif)
    info, frames = read_all(tmp_path / "phone.jpg")
    assert frames[0].image.shape == (40, 20, 3) and (info.width, info.height) == (20, 40)


# ----------------------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.mp4: no such file"):
        open_video(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mp4: the file is empty"):
        open_video(tmp_path / "empty.mp4")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("these are my notes, not a video\n" * 10)
    with pytest.raises(InputError, match=r"notes\.mp4: not a readable video") as e:
        open_video(tmp_path / "notes.mp4")
    assert "\n" not in str(e.value)


def test_folder_and_unknown_decoder(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        open_video(tmp_path)
    path = write_video(tmp_path / "v.mp4", [flat(0)])
    with pytest.raises(InputError, match="decoder: unknown decoder 'ffmpeg'"):
        open_video(path, decoder="ffmpeg")


def test_truncated_mp4_without_index_is_an_error(tmp_path):
    full = write_video(tmp_path / "full.mp4", [flat(10 * i) for i in range(20)])   # index (moov) at the end
    data = full.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mp4: not a readable video"):
        open_video(tmp_path / "cut.mp4")


def test_truncated_mp4_with_index_gives_partial_frames_and_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(20)]   # big frames
    full = write_video(tmp_path / "fs.mp4", images, container_options={"movflags": "faststart"})
    data = full.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    stream = open_video(tmp_path / "cut.mp4")
    with pytest.warns(DecodeWarning, match=r"cut\.mp4: damaged video, decoded \d+ of 20 frames"):
        frames = list(stream)
    assert 0 < len(frames) < 20 and stream.report.partial
    assert stream.report.frames_decoded == len(frames)
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(len(frames)) / 25.0, atol=1e-6)


def test_clean_video_gives_no_warning(tmp_path):
    path = write_video(tmp_path / "v.mp4", [flat(0)] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_all(path)[1]) == 3


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(InputError, match=r"audio\.mp4: no video stream \(streams found: audio\)"):
        open_video(path)


def test_unreadable_image(tmp_path):
    (tmp_path / "face.jpg").write_text("not a jpeg")
    with pytest.raises(InputError, match=r"face\.jpg: not a readable image"):
        open_video(tmp_path / "face.jpg")


def test_decord_missing_names_the_install_command(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", [flat(0)])
    monkeypatch.setitem(sys.modules, "decord", None)                  # import decord -> ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "nphm-track\[decord\]"'):
        open_video(path, decoder="decord")


def test_decord_backend_matches_pyav(tmp_path):
    pytest.importorskip("decord", reason="decord not installed (optional: pip install 'nphm-track[decord]')")
    coded = [flat(40 * i, 64, 64) for i in range(4)]
    for img in coded:
        img[:8, :8] = 255                                     # a corner that shows the rotation
    path = write_video(tmp_path / "rot.mp4", coded, rotation=90)
    info_a, frames_a = read_all(path)
    info_b, frames_b = read_all(path, decoder="decord")
    assert (info_b.width, info_b.height, info_b.rotation) == (info_a.width, info_a.height, 90)
    assert len(frames_a) == len(frames_b) == 4
    for a, b in zip(frames_a, frames_b):
        assert a.image.shape == b.image.shape and abs(a.time_s - b.time_s) < 1e-3
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 3
    # decord 0.6 garbles some rotated sizes; that is reported, not passed on.
    bad = write_video(tmp_path / "rot_6448.mp4", [flat(0)] * 2, rotation=90)
    with pytest.raises(InputError, match="use decoder 'pyav'"):
        open_video(bad, decoder="decord")
