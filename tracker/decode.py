"""Streaming video decoding: one RGB frame at a time, never the whole video in memory.

``open_video(path)`` returns a :class:`VideoStream`, an iterable of :class:`Frame` (index, time in seconds,
RGB uint8 image ``[H, W, 3]``) with an :class:`VideoInfo` known as soon as it is opened. Backends:

- ``"pyav"`` (default): FFmpeg through PyAV. Any codec / pixel format FFmpeg decodes (yuv420p, yuvj420p,
  10-bit, gray, odd sizes) is converted to RGB uint8 by swscale.
- ``"decord"``: optional (``pip install "nphm-track[decord]"``); the same frames (decord rotates by the
  display matrix itself). decord 0.6 garbles some rotated frame sizes (e.g. 64x48 coded, 90 deg): that is
  detected at open and reported as an :class:`~model.errors.InputError` suggesting ``"pyav"``.
- A single image (``.jpg .jpeg .png .bmp .webp .tif .tiff``, read with Pillow, EXIF orientation applied) is
  a one-frame stream whatever the decoder, so the single-image path of the tracker shares this code.

Conventions
- Rotation: phone videos store the sensor image plus a display matrix (``rotate`` tag). Frames are returned
  as displayed: the coded image is rotated counter-clockwise by ``info.rotation`` degrees (FFmpeg's
  ``av_display_rotation_get`` convention, what PyAV's ``VideoFrame.rotation`` reads from the frame side
  data; the legacy ``rotate`` stream tag, a clockwise angle, is used when no display matrix is there).
  Flips in the display matrix are ignored. ``info.width`` / ``info.height`` are the displayed size.
- Time: ``Frame.time_s`` is the frame's presentation timestamp in seconds (``pts * time_base``) minus the
  stream's start time, so variable-frame-rate videos keep their true timing. ``info.fps`` is only an
  estimate (the container's average rate).

Damaged input
- Missing, empty, unreadable (e.g. a text file named ``.mp4``, an mp4 truncated before its index) or
  without a video stream: :class:`~model.errors.InputError` at ``open_video``, one line naming the file.
- Decodable in part (an mp4 truncated after its index, corrupt packets): the decodable frames are yielded,
  then a :class:`DecodeWarning` says how many frames were expected and how many came out; the counts are in
  ``VideoStream.report``. Zero decodable frames is an :class:`InputError` (raised at open: the first frame is
  decoded there to learn the rotation and displayed size).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from model.errors import InputError, MissingDependencyError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DECODERS = ("pyav", "decord")


class DecodeWarning(UserWarning):
    """A video was decodable only in part (truncated or corrupt); the decodable frames were returned."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a stream once it is open.

    Attributes:
        path: the file.
        width, height: displayed frame size in pixels (after rotation).
        fps: frame-rate estimate in frames per second (container average); ``None`` for a single image.
            Use ``Frame.time_s`` for timing, not ``index / fps``.
        frame_count: number of frames the container announces, ``None`` when it does not say (e.g. mkv).
        rotation: counter-clockwise degrees (0, 90, 180, 270) applied to the coded frames for display.
        codec: codec name (``"h264"``, ``"image"`` for a still).
        pix_fmt: pixel format of the coded frames (``"yuv420p"``, ``"yuvj420p"``, ``"gray"``, ``"RGB"``...).
        decoder: the backend used (``"pyav"``, ``"decord"`` or ``"pillow"``).
    """

    path: Path
    width: int
    height: int
    fps: float | None
    frame_count: int | None
    rotation: int
    codec: str
    pix_fmt: str
    decoder: str


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based position in decode order among the frames that decoded.
        time_s: presentation time in seconds since the stream start (see module docstring).
        image: ``[H, W, 3]`` uint8 RGB, C-contiguous, as displayed (rotation applied).
    """

    index: int
    time_s: float
    image: np.ndarray


@dataclass
class DecodeReport:
    """Counts filled in while a stream is read.

    Attributes:
        frames_decoded: frames yielded so far.
        frames_expected: frames the container announced (``None`` if unknown).
        packets_failed: packets the decoder rejected (corrupt data); their frames are missing.
        truncated: the demuxer stopped on an error before the announced end.
    """

    frames_decoded: int = 0
    frames_expected: int | None = None
    packets_failed: int = 0
    truncated: bool = False

    @property
    def partial(self) -> bool:
        """True when frames are known to be missing."""
        short = self.frames_expected is not None and self.frames_decoded < self.frames_expected
        return self.truncated or self.packets_failed > 0 or short


class _Backend(Protocol):
    info: VideoInfo
    report: DecodeReport

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class VideoStream:
    """An open video: iterate it once to get its frames; use it as a context manager to close it.

    ``info`` is available right after opening; ``report`` fills in while iterating. Only the current frame
    (and the decoder's own few reference frames) are in memory.
    """

    def __init__(self, backend: _Backend):
        self._backend = backend
        self.info: VideoInfo = backend.info
        self._started = False

    @property
    def report(self) -> DecodeReport:
        return self._backend.report

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError(f"{self.info.path}: a VideoStream can be iterated once; open the video again")
        self._started = True
        try:
            yield from self._backend.frames()
        finally:
            self.close()
        rep = self.report
        if rep.partial:
            expected = "unknown" if rep.frames_expected is None else str(rep.frames_expected)
            warnings.warn(f"{self.info.path}: damaged video, decoded {rep.frames_decoded} of {expected} frames "
                          f"({rep.packets_failed} corrupt packets, truncated={rep.truncated})",
                          DecodeWarning, stacklevel=2)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str | Path, decoder: str = "pyav", *, threads: int = 0) -> VideoStream:
    """Open a video (or a single image) for streaming decoding.

    Args:
        path: video file (anything FFmpeg reads) or an image (``IMAGE_SUFFIXES``, one-frame stream).
        decoder: ``"pyav"`` or ``"decord"`` (optional dependency). Ignored for images.
        threads: decoder threads, 0 = FFmpeg's choice.

    Raises:
        InputError: the file is missing, empty, not a video, has no video stream or no decodable frame.
        MissingDependencyError: ``decoder="decord"`` without decord installed.
    """
    path = Path(path)
    if decoder not in DECODERS:
        raise InputError(f"decoder: unknown decoder {decoder!r}, expected one of {', '.join(DECODERS)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file (a folder?)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return VideoStream(_ImageBackend(path))
    if decoder == "decord":
        return VideoStream(_DecordBackend(path, threads))
    return VideoStream(_PyAVBackend(path, threads))


def rotate_image(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate ``image`` ``[H, W, ...]`` counter-clockwise by ``rotation`` degrees (a multiple of 90)."""
    k = (int(round(rotation / 90.0))) % 4
    if k == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k))


def _normalise_rotation(ccw_degrees: float) -> int:
    """Nearest multiple of 90 in [0, 360); warns when the angle is not one."""
    k = int(round(ccw_degrees / 90.0))
    if abs(ccw_degrees - 90.0 * k) > 1.0:
        warnings.warn(f"display rotation {ccw_degrees:.1f} deg is not a multiple of 90; using {90 * k % 360}",
                      DecodeWarning, stacklevel=3)
    return (90 * k) % 360


def _displayed_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation % 180 == 90 else (width, height)


class _PyAVBackend:
    """FFmpeg via PyAV: demux packet by packet, decode, skip corrupt packets, stop on a truncated file."""

    def __init__(self, path: Path, threads: int):
        import av

        self._av = av
        self.path = path
        try:
            self._container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: not a readable video ({_ffmpeg_reason(e)})") from None
        try:
            self._init_stream(threads)
        except BaseException:
            self._container.close()
            raise

    def _init_stream(self, threads: int) -> None:
        container, path = self._container, self.path
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise InputError(f"{path}: no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"   # frame threading drops the frames buffered before a corrupt packet
        if threads:
            stream.codec_context.thread_count = threads
        self._stream = stream
        time_base = stream.time_base or Fraction(1, 1)
        self._t0 = float(stream.start_time * time_base) if stream.start_time is not None else None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self._fps = float(rate) if rate else None
        self.report = DecodeReport(frames_expected=int(stream.frames) if stream.frames else None)
        self._tag_rotation = -float(stream.metadata.get("rotate", 0) or 0)   # the tag is clockwise
        self._packets = container.demux(stream)
        self._pending: list = []
        first = self._next_av_frame()
        if first is None:
            raise InputError(f"{path}: no decodable video frame ({self._describe_damage()})")
        self._first = first
        rotation = _normalise_rotation(first.rotation if first.rotation else self._tag_rotation)
        self._rotation = rotation
        width, height = _displayed_size(first.width, first.height, rotation)
        self.info = VideoInfo(path=path, width=width, height=height, fps=self._fps,
                              frame_count=self.report.frames_expected, rotation=rotation,
                              codec=stream.codec_context.name, pix_fmt=first.format.name, decoder="pyav")

    def _describe_damage(self) -> str:
        rep = self.report
        parts = []
        if rep.truncated:
            parts.append("the file ends early")
        if rep.packets_failed:
            parts.append(f"{rep.packets_failed} corrupt packets")
        return ", ".join(parts) or "the stream holds no frames"

    def _next_av_frame(self):
        """The next decoded ``av.VideoFrame`` or None at the end; corrupt packets are counted and skipped."""
        av = self._av
        while not self._pending:
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            except av.error.FFmpegError:
                self.report.truncated = True
                return None
            try:
                self._pending.extend(packet.decode())
            except av.error.FFmpegError:
                self.report.packets_failed += 1
        return self._pending.pop(0)

    def frames(self) -> Iterator[Frame]:
        av_frame, index, last_t = self._first, 0, None
        self._first = None
        while av_frame is not None:
            t = self._frame_time(av_frame, last_t)
            rgb = av_frame.to_ndarray(format="rgb24")   # [h, w, 3] uint8, swscale does any pix_fmt
            image = rotate_image(rgb, self._rotation)
            self.report.frames_decoded += 1
            yield Frame(index=index, time_s=t, image=image)
            index, last_t = index + 1, t
            av_frame = self._next_av_frame()

    def _frame_time(self, av_frame, last_t: float | None) -> float:
        if av_frame.pts is None or av_frame.time_base is None:
            step = 1.0 / self._fps if self._fps else 0.0
            return 0.0 if last_t is None else last_t + step
        t = float(av_frame.pts * av_frame.time_base)
        if self._t0 is None:
            self._t0 = t
        return t - self._t0

    def close(self) -> None:
        self._container.close()


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's error text without the errno prefix and file name."""
    text = getattr(error, "strerror", None) or str(error)
    return text.rstrip(".")


def probe_info(path: str | Path) -> VideoInfo:
    """A video's :class:`VideoInfo` read with PyAV (decodes its first frame only)."""
    with VideoStream(_PyAVBackend(Path(path), 0)) as stream:
        return stream.info


class _DecordBackend:
    """decord's VideoReader. decord (0.6) applies the display rotation itself (checked: same frames as the
    PyAV backend); the PyAV probe validates the file and reports ``info.rotation``."""

    def __init__(self, path: Path, threads: int):
        try:
            import decord
        except ImportError:
            raise MissingDependencyError(
                'decoder "decord" needs the decord package: pip install "nphm-track[decord]"') from None
        self.path = path
        probe = probe_info(path)                 # also raises InputError for unreadable files
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        except decord.DECORDError as e:
            raise InputError(f"{path}: decord cannot read it ({str(e).splitlines()[0]})") from None
        n = len(self._reader)
        if n == 0:
            raise InputError(f"{path}: no decodable video frame")
        shape, expected = tuple(self._reader[0].shape), (probe.height, probe.width, 3)
        if shape != expected:
            # decord 0.6 returns garbage (4 "channels") for some rotated sizes, e.g. 64x48 coded at 90 deg.
            raise InputError(f"{path}: decord decodes this video ({probe.rotation} deg rotation) wrongly "
                             f"(frame shape {shape}, expected {expected}); use decoder 'pyav'")
        fps = float(self._reader.get_avg_fps()) or None
        self.report = DecodeReport(frames_expected=n)
        self.info = VideoInfo(path=path, width=probe.width, height=probe.height, fps=fps, frame_count=n,
                              rotation=probe.rotation, codec=probe.codec, pix_fmt=probe.pix_fmt,
                              decoder="decord")
        self._decord = decord

    def frames(self) -> Iterator[Frame]:
        for i in range(len(self._reader)):
            try:
                rgb = self._reader[i].asnumpy()      # [h, w, 3] uint8; sequential reads do not seek
            except self._decord.DECORDError:
                self.report.truncated = True
                return
            t = float(self._reader.get_frame_timestamp(i)[0])
            self.report.frames_decoded += 1
            yield Frame(index=i, time_s=t, image=rgb)

    def close(self) -> None:
        self._reader = None


class _ImageBackend:
    """A still image as a one-frame stream (Pillow; EXIF orientation applied; any mode to RGB uint8)."""

    def __init__(self, path: Path):
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                self._image = _pil_to_rgb8(im)
                codec, mode = (im.format or "image").lower(), im.mode
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise InputError(f"{path}: not a readable image ({e.__class__.__name__})") from None
        h, w = self._image.shape[:2]
        self.report = DecodeReport(frames_expected=1)
        self.info = VideoInfo(path=path, width=w, height=h, fps=None, frame_count=1, rotation=0,
                              codec=codec, pix_fmt=mode, decoder="pillow")

    def frames(self) -> Iterator[Frame]:
        self.report.frames_decoded = 1
        yield Frame(index=0, time_s=0.0, image=self._image)

    def close(self) -> None:
        pass


def _pil_to_rgb8(im) -> np.ndarray:
    """Any Pillow image to ``[H, W, 3]`` uint8 RGB (16-bit and float modes are scaled, alpha dropped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
