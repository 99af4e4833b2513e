"""Synthetic face videos with per-frame ground truth: the tracker's benchmark.

A video shows one fixed identity under a fixed camera, light, look and background, with

- **expression trajectories**: random sparse expressions (:func:`train.sampler.sample_expression`) as
  keyframes every 0.4-1.2 s, joined by monotone cubic interpolation (PCHIP: smooth, no overshoot, stays in
  [0, 1]); **blinks** (both eyes, 0.15-0.3 s raised-cosine pulses at random times, ~0.3 Hz); **speech**:
  talking segments where ``jawOpen`` follows syllable pulses at 3-6 Hz with the lips following
  (``mouthLowerDown``, some ``mouthFunnel``/``mouthPucker`` on rounded syllables);
- **head-pose trajectories**: yaw, pitch, roll and translation as sums of three low-frequency sinusoids
  (0.05-0.5 Hz) within the configured ranges; the camera's focal length and the head's offset are chosen
  so the head stays in frame over the whole clip.

Frames are rendered and encoded one at a time (never all held) to H.264 mp4 (yuv420p) with PyAV, and the
ground truth of every frame goes to ``<name>.gt.npz`` beside the video (:data:`GT_KEYS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from model.errors import InputError, MissingDependencyError
from train.camera import FRONT_CAMERA_ROTATION, HeadPose, euler_to_matrix, frame_head, model_to_camera
from train.render import RenderMesh, eye_centres, framing_points, head_vertices, ict_render_mesh, render_head
from train.renders_data import write_json_atomic, write_npz_atomic
from train.shading import AppearanceConfig, sample_appearance, shade

GT_KEYS = {
    "w_id": "[K_id] float32 ICT identity weights (fixed over the clip)",
    "w_ex": "[F, K_ex] float32 ICT expression weights per frame",
    "expression_names": "[K_ex] str",
    "K": "[3, 3] float64 intrinsics in pixels (OpenCV; pixel centres at integers)",
    "camera_R": "[3, 3] float64 world-to-camera rotation (fixed)",
    "camera_t": "[3] float64 world-to-camera translation, model units (fixed)",
    "pose_angles": "[F, 3] float64 head yaw, pitch, roll in degrees (R = R_y(yaw) R_x(pitch) R_z(roll))",
    "pose_R": "[F, 3, 3] float64 head rotation canonical -> world",
    "pose_t": "[F, 3] float64 head translation canonical -> world, model units",
    "model_to_camera_R": "[F, 3, 3] float64, x_cam = R x_canonical + t",
    "model_to_camera_t": "[F, 3] float64",
    "landmarks2d": "[F, 68, 2] float32 projected Multi-PIE landmarks in pixels",
    "landmarks_visible": "[F, 68] bool",
    "fps": "float frames per second",
    "width": "int", "height": "int",
    "units_per_cm": "float model units per ICT centimetre",
}


@dataclass
class VideoConfig:
    """Everything that decides one synthetic video (all ranges uniform)."""

    frames: int = 75
    """Number of frames."""
    resolution: int = 512
    """Width = height in pixels (even, for yuv420p)."""
    fps: float = 25.0
    """Frames per second."""
    identity_scale: float = 1.0
    """Std of the identity weights."""
    keyframe_gap_s: tuple[float, float] = (0.4, 1.2)
    """Time between expression keyframes, seconds."""
    blink_rate_hz: float = 0.3
    """Mean blinks per second (Poisson)."""
    blink_duration_s: tuple[float, float] = (0.15, 0.3)
    speech_probability: float = 0.6
    """Chance that the clip contains a talking segment."""
    syllable_rate_hz: tuple[float, float] = (3.0, 6.0)
    jaw_amplitude: tuple[float, float] = (0.15, 0.5)
    """Peak jawOpen of a syllable."""
    expression_gain: tuple[float, float] = (0.4, 1.0)
    """Each random expression keyframe is scaled by a gain from this range (calmer than the samples)."""
    strong_keyframes: float = 0.0
    """Share of keyframes replaced by one strong expression of :data:`STRONG_EXPRESSIONS` at 0.7-1.0."""
    yaw_deg: float = 35.0
    pitch_deg: float = 15.0
    roll_deg: float = 10.0
    translation: float = 0.04
    """Largest head translation along each axis, model units (0.04 = 1 cm)."""
    pose_freq_hz: tuple[float, float] = (0.05, 0.5)
    distance: tuple[float, float] = (2.0, 5.0)
    """Camera distance, model units."""
    fill: tuple[float, float] = (0.6, 0.85)
    """Share of the image the head covers over the clip (largest 2D box side / image side)."""
    crf: int = 23
    """x264 constant rate factor (lower = better quality, bigger file)."""
    appearance: AppearanceConfig = field(default_factory=lambda: AppearanceConfig(
        noise_std=(0.0, 0.012), jpeg_probability=0.0, blur_sigma=(0.0, 0.8)))
    """Look ranges; the H.264 encoder adds its own compression artefacts, so no JPEG here."""

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise InputError(f"--frames: need at least 1 frame, got {self.frames}")
        if self.resolution < 16 or self.resolution % 2:
            raise InputError(f"--res: need an even size >= 16 (H.264 yuv420p), got {self.resolution}")
        if not self.fps > 0:
            raise InputError(f"--fps: need a positive frame rate, got {self.fps}")


def smooth_keyframes(times: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Monotone cubic (PCHIP) interpolation of keyframes ``values`` [N, C] at ``times`` [N] to ``t`` [F]."""
    from scipy.interpolate import PchipInterpolator

    if len(times) == 1:
        return np.repeat(values[:1], len(t), axis=0)
    return PchipInterpolator(times, values, axis=0, extrapolate=True)(t)


def _pulse(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Raised-cosine bump of height 1 and total width ``width`` centred at ``centre``."""
    x = np.clip((t - centre) / width, -0.5, 0.5)
    return 0.5 * (1 + np.cos(2 * np.pi * x))


STRONG_EXPRESSIONS: tuple[tuple[str, ...], ...] = (
    ("jawOpen", "mouthLowerDown_L", "mouthLowerDown_R"), ("mouthSmile_L", "mouthSmile_R"), ("mouthPucker",),
    ("mouthFunnel", "jawOpen"), ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
    ("browDown_L", "browDown_R"), ("eyeBlink_L", "eyeBlink_R"), ("mouthSmile_L",), ("eyeBlink_R",),
    ("browOuterUp_L",), ("eyeWide_L", "eyeWide_R", "browInnerUp_L", "browInnerUp_R"), ("mouthStretch_L", "mouthStretch_R"),
)
"""Strong expressions of the strong-expression benchmark set (one-sided ones included): the listed
blendshapes set together."""


def strong_video_config(cfg: VideoConfig) -> VideoConfig:
    """``cfg`` with strong expressions (``nphm-train data videos --strong``): random keyframes at 0.7-1 of the
    sampler's strength, half the keyframes one of :data:`STRONG_EXPRESSIONS`, speech with the jaw at 0.5-1,
    blinks at 0.5 Hz."""
    return dataclasses.replace(cfg, expression_gain=(0.7, 1.0), strong_keyframes=0.5, jaw_amplitude=(0.5, 1.0),
                               blink_rate_hz=0.5)


def still_video_config(cfg: VideoConfig) -> VideoConfig:
    """``cfg`` with a still face (``nphm-train data videos --still``): neutral throughout, no blinks, no speech;
    the head still turns as ``cfg`` says. Anything a tracker's expression or curves do on it is noise."""
    return dataclasses.replace(cfg, expression_gain=(0.0, 0.0), strong_keyframes=0.0, blink_rate_hz=0.0,
                               speech_probability=0.0)


def strong_expression(rng: np.random.Generator, names) -> np.ndarray:
    """``[K_ex]`` one of :data:`STRONG_EXPRESSIONS` at intensity U(0.7, 1) (``jawOpen`` with a funnel at half)."""
    names = list(names)
    w = np.zeros(len(names))
    group = STRONG_EXPRESSIONS[rng.integers(len(STRONG_EXPRESSIONS))]
    a = rng.uniform(0.7, 1.0)
    for n in group:
        if n in names:
            w[names.index(n)] = a * (0.5 if n == "jawOpen" and "mouthFunnel" in group else 1.0)
    return w


def expression_trajectory(rng: np.random.Generator, cfg: VideoConfig, names) -> np.ndarray:
    """``[F, K_ex]`` float32 smooth expression weights in [0, 1] (keyframes + blinks + speech)."""
    from train.sampler import sample_expression

    names = list(names)
    idx = {n: i for i, n in enumerate(names)}
    duration = cfg.frames / cfg.fps
    t = np.arange(cfg.frames) / cfg.fps
    times = [0.0]
    while times[-1] < duration:
        times.append(times[-1] + rng.uniform(*cfg.keyframe_gap_s))
    keys = sample_expression(rng, len(times), names).astype(np.float64)
    keys *= rng.uniform(*cfg.expression_gain, (len(times), 1))  # calmer than the independent samples
    for k in range(len(times)):
        if rng.uniform() < cfg.strong_keyframes:
            keys[k] = strong_expression(rng, names)
    for n in ("eyeBlink_L", "eyeBlink_R"):  # blinks come as pulses below
        if n in idx:
            keys[:, idx[n]] *= 0.3
    w = np.clip(smooth_keyframes(np.array(times), keys, t), 0.0, 1.0)
    n_blinks = rng.poisson(cfg.blink_rate_hz * duration)
    for _ in range(n_blinks):
        b = _pulse(t, rng.uniform(0, duration), rng.uniform(*cfg.blink_duration_s))
        strength = rng.uniform(0.85, 1.0)
        for side in ("L", "R"):
            if f"eyeBlink_{side}" in idx:
                j = idx[f"eyeBlink_{side}"]
                w[:, j] = np.maximum(w[:, j], b * strength * rng.uniform(0.9, 1.0))
    if "jawOpen" in idx and rng.uniform() < cfg.speech_probability:
        start = rng.uniform(0, 0.5 * duration)
        end = min(duration, start + rng.uniform(0.4, 1.0) * duration)
        jaw = np.zeros_like(t)
        rounded = np.zeros_like(t)
        s = start
        while s < end:
            gap = 1.0 / rng.uniform(*cfg.syllable_rate_hz)
            bump = _pulse(t, s + gap / 2, gap) * rng.uniform(*cfg.jaw_amplitude)
            jaw = np.maximum(jaw, bump)
            if rng.uniform() < 0.3:
                rounded = np.maximum(rounded, bump * rng.uniform(0.5, 1.5))
            s += gap
        envelope = np.clip(np.minimum(t - start, end - t) / 0.15, 0, 1)  # fade in and out
        jaw, rounded = jaw * envelope, rounded * envelope
        w[:, idx["jawOpen"]] = np.maximum(w[:, idx["jawOpen"]], jaw)
        for n, gain in (("mouthLowerDown_L", 0.4), ("mouthLowerDown_R", 0.4), ("mouthFunnel", 0.8),
                        ("mouthPucker", 0.4)):
            if n in idx:
                src = jaw if n.startswith("mouthLowerDown") else rounded
                w[:, idx[n]] = np.maximum(w[:, idx[n]], gain * src)
    return np.clip(w, 0.0, 1.0).astype(np.float32)


def pose_trajectory(rng: np.random.Generator, cfg: VideoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Smooth head pose: ``[F, 3]`` (yaw, pitch, roll) degrees and ``[F, 3]`` translation (model units)."""
    t = np.arange(cfg.frames) / cfg.fps

    def wave(limit: float) -> np.ndarray:
        freq = rng.uniform(*cfg.pose_freq_hz, 3)
        amp = rng.dirichlet(np.ones(3)) * limit * rng.uniform(0.5, 1.0)  # sum of |amp| <= limit
        phase = rng.uniform(0, 2 * np.pi, 3)
        return (amp * np.sin(2 * np.pi * freq * t[:, None] + phase)).sum(1)

    angles = np.stack([wave(cfg.yaw_deg), wave(cfg.pitch_deg), wave(cfg.roll_deg)], 1)
    translation = np.stack([wave(cfg.translation) for _ in range(3)], 1)
    return angles, translation


class Mp4Writer:
    """Streams RGB frames into an H.264 mp4 (yuv420p) with PyAV; use as a context manager."""

    def __init__(self, path: Path, width: int, height: int, fps: float, crf: int = 23):
        try:
            import av
        except ImportError as exc:  # pragma: no cover - av is a declared dependency
            raise MissingDependencyError(f"writing mp4 needs PyAV: pip install av ({exc})") from exc
        if width % 2 or height % 2:
            raise InputError(f"{path}: H.264 yuv420p needs even sizes, got {width}x{height}")
        self._av = av
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "medium"}

    def write(self, rgb: np.ndarray) -> None:
        """Encode one ``[H, W, 3]`` uint8 frame."""
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_video(kit, mesh: RenderMesh, path: str | Path, cfg: VideoConfig, rng: np.random.Generator,
               progress=None) -> Path:
    """Render one synthetic video to ``path`` (mp4) and its ground truth to ``<path stem>.gt.npz``.

    Both files are written under temporary names and renamed when complete. Returns the gt path.
    ``progress``: optional callable run after every frame (e.g. a tqdm ``update``).
    """
    from train.frame import UNITS_PER_CM
    from train.sampler import sample_identity

    path = Path(path)
    gt_path = path.with_name(path.stem + ".gt.npz")
    res = cfg.resolution
    w_id = sample_identity(rng, 1, cfg.identity_scale, kit.n_identity)[0].astype(np.float32)
    w_ex = expression_trajectory(rng, cfg, kit.expression_names)  # [F, K_ex]
    angles, trans = pose_trajectory(rng, cfg)  # [F, 3], [F, 3]
    pose_R = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])  # [F, 3, 3]
    canonical = head_vertices(kit, w_id, np.zeros(kit.n_expression), None).canonical
    frame_pts = framing_points(canonical)
    step = max(1, cfg.frames // 25)
    posed = np.concatenate([frame_pts @ pose_R[f].T + trans[f] for f in range(0, cfg.frames, step)])
    camera, shift = frame_head(posed, FRONT_CAMERA_ROTATION, rng.uniform(*cfg.distance), res, res,
                               rng.uniform(*cfg.fill), margin_px=2.0)
    trans = trans + shift
    app = sample_appearance(rng, cfg.appearance)
    lm_canonical, eyes = canonical[mesh.landmarks], eye_centres(canonical, mesh)
    F = cfg.frames
    out = dict(R=np.zeros((F, 3, 3)), t=np.zeros((F, 3)), lm=np.zeros((F, len(mesh.landmarks), 2), np.float32),
               vis=np.zeros((F, len(mesh.landmarks)), bool))
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with Mp4Writer(tmp, res, res, cfg.fps, cfg.crf) as writer:
        for f in range(F):
            pose = HeadPose(*angles[f], translation=trans[f])
            geom = render_head(head_vertices(kit, w_id, w_ex[f], canonical), mesh, camera, pose)
            writer.write(shade(geom, app, lm_canonical, eyes, rng))
            out["R"][f], out["t"][f] = model_to_camera(camera, pose)
            out["lm"][f], out["vis"][f] = geom.landmarks2d, geom.landmarks_visible
            if progress is not None:
                progress()
    os.replace(tmp, path)
    write_npz_atomic(gt_path, dict(
        w_id=w_id, w_ex=w_ex, expression_names=np.array(kit.expression_names), K=camera.K,
        camera_R=camera.R, camera_t=camera.t, pose_angles=angles, pose_R=pose_R, pose_t=trans,
        model_to_camera_R=out["R"], model_to_camera_t=out["t"], landmarks2d=out["lm"],
        landmarks_visible=out["vis"], fps=np.float64(cfg.fps), width=np.int64(res), height=np.int64(res),
        units_per_cm=np.float64(UNITS_PER_CM)))
    return gt_path


def video_path(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / f"video_{index:04d}.mp4"


def generate_videos(out_dir: str | Path, n: int, frames: int = 75, resolution: int = 512, fps: float = 25.0,
                    seed: int = 0, ict_path: str | Path | None = None, cfg: VideoConfig | None = None,
                    progress: bool = True) -> Path:
    """Generate (or finish) ``n`` synthetic videos in ``out_dir``; returns the manifest path.

    Video ``i`` uses its own generator ``SeedSequence([seed, i])``: deterministic and resumable (a video
    whose mp4 and gt files both exist is skipped). Settings other than ``frames``, ``resolution``, ``fps``
    come from ``cfg`` (defaults of :class:`VideoConfig`).
    """
    from tqdm import tqdm

    from train.ict import default_ict_path, load_ict

    if n < 0:
        raise InputError(f"-n: need a non-negative number of videos, got {n}")
    cfg = dataclasses.replace(cfg or VideoConfig(), frames=frames, resolution=resolution, fps=fps)
    ict_path = Path(ict_path) if ict_path is not None else default_ict_path()
    kit = load_ict(ict_path)
    mesh = ict_render_mesh(kit.triangles, kit.landmarks68)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    settings = json.loads(json.dumps({"seed": seed, "config": dataclasses.asdict(cfg)}))
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if {"seed": old.get("seed"), "config": old.get("config")} != settings:
            raise InputError(f"{manifest_path}: the folder holds videos made with other settings; "
                             "use a new --out folder")
    manifest = {"kind": "nphm-track synthetic videos", "seed": seed, "config": dataclasses.asdict(cfg),
                "ict": str(ict_path), "gt_keys": GT_KEYS, "videos": []}
    bar = tqdm(total=n * cfg.frames, desc="video frames", disable=not progress, unit="frame")
    for i in range(n):
        path = video_path(out_dir, i)
        gt = path.with_name(path.stem + ".gt.npz")
        if path.exists() and gt.exists():
            bar.update(cfg.frames)
        else:
            rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
            make_video(kit, mesh, path, cfg, rng, progress=lambda: bar.update(1))
        manifest["videos"].append({"video": path.name, "gt": gt.name})
    bar.close()
    write_json_atomic(manifest_path, manifest)
    return manifest_path
