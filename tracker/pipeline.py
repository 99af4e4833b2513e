"""The streaming video tracker: ``nphm-track video.mp4 --out anim.usd``.

Frames flow one at a time (nothing holds the video in memory)::

    decode (tracker.decode) -> detect + crop, smoothed (tracker.crop)
      -> feed-forward codes and maps per frame (tracker.predict)
      -> identity, once: median of the first faces' feed-forward z_id, then a joint TTO of a few keyframes
      -> per frame: TTO of pose + z_ex, warm-started from the previous frame, temporal terms, early stop
      -> fixed-lag smoother (bounded delay)
      -> fixed-topology vertices (tracker.bake) -> exporter, preview video, track file

The varying policy (identity window, keyframes, re-initialisation, smoothing, the TTO stages) is the
:class:`tracker.strategy.TrackingStrategy`. Buffers are bounded: the identity window
(``strategy.identity_wait`` frames at most) and the smoother's ``2 * lag + 1`` frames.

Frames without a face: before the first face they are recorded in the track file as gaps and written to the
preview unchanged, and the animation starts at the first face (its start frame is that frame's number);
after it, a gap repeats the last solution (the animation keeps one sample per video frame, the track file
marks the frame ``"gap"`` with confidence 0). A face that returns after more than
``strategy.reinit_after`` gap frames restarts from the feed-forward prediction.

Camera: the video's focal length is unknown; it is taken as ``focal_factor * max(W, H)`` pixels (1.3: a
phone or webcam; the synthetic example's camera is 1.31), and every crop's intrinsics follow from its
crop box. Poses are model -> camera (OpenCV), in model units.

Confidence per frame: ``min(1, reference_loss / loss)`` with the keyframes' mean TTO loss as the reference,
halved for a held crop, 0 for a gap.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from exporters import ExportResult, open_writer
from model.errors import InputError
from tracker.arkit import CurveSolver, SolvePoints, track_curves, write_arkit
from tracker.background import InBackground, can_fork, topology_from_arrays, topology_to_arrays
from tracker.bake import RIGS, Baker, check_arkit_target, export_topology, pca_options
from tracker.crop import CropConfig, CropResult, crop_frames
from tracker.decode import open_video
from tracker.detect import import_backend
from tracker.landmark_tracker import FittedLandmarks, LandmarkStrategy, LandmarkTracker
from tracker.predict import Models, Prediction, predict, resize_intrinsics, start_topology
from tracker.strategy import FrameSolution, TrackingStrategy, repeat_as_gap
from tracker.trackfile import Track, save_track
from tracker.tto import axis_angle_to_matrix, init_pose_from_point_map, optimise, optimise_views

DETECTION_COLOR, FITTED_COLOR = (60, 220, 255), (255, 60, 60)
"""Preview dots: the detector's landmarks (cyan) and the fitted head's (red)."""

DEFAULT_FOCAL_FACTOR = 1.3
"""Assumed focal length of a video of unknown camera, in units of its longer side (module docstring)."""


@dataclass
class TrackConfig:
    """Settings of :func:`track_video` (the policy lives in :class:`TrackingStrategy`).

    Attributes:
        decoder: ``"pyav"`` (default) or ``"decord"``.
        device: torch device of the networks (``"cpu"``, ``"cuda"``).
        focal_factor: focal length in units of the frame's longer side (module docstring); ``focal_px``
            overrides it with a value in pixels.
        tto_resolution: marching-cubes resolution of the coarse canonical mesh the TTO optimises.
        export_resolution: marching-cubes resolution of the exported mesh.
        with_pose: export the head's rigid motion (camera frame, Y up) as the per-frame transform; default
            off: the head stays at the origin and only the expression animates.
        crop: the face cropper's settings.
        write_track: also write the track file beside the output (``<out>.track.npz``).
        max_frames: track only the first N frames (a quick look at a long video); None: all.
        rig: what a blend-shape export holds (``.usd*``, ``.glb``, ``.gltf``): ``None`` (default): the baked
            mesh per frame (time-sampled points in USD; glTF always encodes them as PCA morph targets);
            ``"pca"``: a PCA basis of the baked frames (:mod:`exporters.basis`); ``"arkit"``: the tracked
            identity's personalised ARKit rig (52 named targets) animated by the ARKit curves
            (:mod:`tracker.arkit`). A ``.csv`` output is a Live Link Face take of the curves.
        evidence: ``"landmarks"`` (default): the face landmarks of every frame drive the fit
            (:mod:`tracker.landmark_tracker`); ``"maps"``: the geometric encoders' normal and point maps
            (:class:`VideoTracker`; the earlier tracker, kept as an option: measured worse, see the README).
        mesh_in_background: compute the identity's export mesh and curve-solver points in a forked process
            while the frames are fitted, where that can pay (:mod:`tracker.background`: Linux, two threads or
            more, a CPU device, enough frames left); the output is the same either way.
    """

    decoder: str = "pyav"
    device: str = "cpu"
    focal_factor: float = DEFAULT_FOCAL_FACTOR
    focal_px: Optional[float] = None
    tto_resolution: int = 40
    export_resolution: int = 128
    with_pose: bool = False
    crop: CropConfig = field(default_factory=CropConfig)
    write_track: bool = True
    max_frames: Optional[int] = None
    evidence: str = "landmarks"
    rig: Optional[str] = None
    mesh_in_background: bool = True

    def __post_init__(self) -> None:
        if self.evidence not in EVIDENCE:
            raise InputError(f"evidence must be one of {', '.join(EVIDENCE)}, got {self.evidence!r}")
        if self.rig is not None and self.rig not in RIGS:
            raise InputError(f"rig must be one of {', '.join(RIGS)}, got {self.rig!r}")


EVIDENCE = ("landmarks", "maps")


@dataclass
class TrackResult:
    """What :func:`track_video` did."""

    out: Optional[Path]
    track_path: Optional[Path]
    preview: Optional[Path]
    track: Track
    frames: int
    tracked: int
    held: int
    gaps: int
    seconds: float
    stage_seconds: dict[str, float]
    export: Optional[ExportResult] = None
    background_seconds: Optional[float] = None
    """Seconds the forked child took for the export assets, beside the stages (:mod:`tracker.background`;
    its wait, if any, is the ``"mesh"`` stage); ``None``: they were made in this process."""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    @property
    def n_frames(self) -> int:
        return self.frames


def track_path_for(out: str | os.PathLike) -> Path:
    """The track file written beside an output: ``anim.usd -> anim.track.npz``, ``frames/ -> frames.track.npz``."""
    out = Path(out)
    stem = out.name.rstrip("/") if out.suffix == "" else out.stem
    return out.parent / f"{stem}.track.npz"


def frame_intrinsics(width: int, height: int, cfg: TrackConfig) -> np.ndarray:
    """``[3, 3]`` intrinsics of the video frame (pixels), principal point at the centre."""
    f = cfg.focal_px if cfg.focal_px is not None else cfg.focal_factor * max(width, height)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def crop_intrinsics(K_frame: np.ndarray, crop_to_frame: np.ndarray) -> np.ndarray:
    """Intrinsics in crop pixels of a crop whose affine crop -> frame is ``[2, 3]`` (scale + translation)."""
    A = np.vstack([crop_to_frame, [0.0, 0.0, 1.0]])
    return np.linalg.inv(A) @ K_frame


class _Clock:
    """Seconds spent per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now


@dataclass
class _Pending:
    crop: CropResult
    frame: Optional[np.ndarray]  # the frame image, kept only for the preview
    prediction: Optional[Prediction] = None


class VideoTracker:
    """The per-video state of the tracker (identity, previous solution, smoother, writers).

    Use :func:`track_video`; this class exists so the stages stay small functions over explicit state.
    """

    def __init__(self, models: Models, strategy: TrackingStrategy, cfg: TrackConfig, K_frame: np.ndarray,
                 clock: _Clock):
        self.models, self.strategy, self.cfg, self.K_frame, self.clock = models, strategy, cfg, K_frame, clock
        self.z_id: Optional[torch.Tensor] = None
        self.topology = None
        self.reference_loss = float("nan")
        self.previous: Optional[FrameSolution] = None
        self.x_warm: Optional[torch.Tensor] = None
        self.gap_frames = 0

    # --- identity ---------------------------------------------------------------------------------------
    def targets(self, pred: Prediction, i: int, crop: CropResult):
        K_crop = crop_intrinsics(self.K_frame, crop.crop_to_frame)
        K_net = resize_intrinsics(K_crop, crop.image.shape[1], self.models.image_size)
        return pred.targets(i, K_net), K_crop

    def estimate_identity(self, window: list[_Pending]) -> None:
        """Identity from the buffered face frames: median feed-forward code, then joint keyframe TTO."""
        t = time.perf_counter()
        faces = [p for p in window if p.crop.image is not None]
        pred = predict(self.models, np.stack([p.crop.image for p in faces]))
        for i, p in enumerate(faces):
            p.prediction = _slice(pred, i)
        t = self.clock.add("regress", t)
        z_id = self.strategy.identity(pred.z_id)
        conf = pred.mask.flatten(1).mean(1)  # crude: share of the crop the encoders see as head
        keys = self.strategy.select_keyframes(pred.z_ex, conf)
        topology = start_topology(self.models, z_id, self.cfg.tto_resolution)
        targets = [self.targets(pred, k, faces[k].crop)[0] for k in keys]
        poses = torch.stack([init_pose_from_point_map(tg) for tg in targets])
        res = optimise_views(self.models.layer, topology, targets, z_id, pred.z_ex[keys], poses,
                             self.strategy.identity_stages, snap=True, forward=self.models.forward)
        self.z_id = res.z_id
        self.topology = start_topology(self.models, self.z_id, self.cfg.tto_resolution)
        self.reference_loss = res.loss / len(keys)
        self.clock.add("identity", t)

    # --- one frame --------------------------------------------------------------------------------------
    def hold(self, item: _Pending) -> FrameSolution:
        """A gap: the previous solution repeated, confidence 0."""
        self.gap_frames += 1
        return repeat_as_gap(self.previous, item.crop.index, item.crop.time_s, item.frame)

    def solve(self, item: _Pending) -> FrameSolution:
        crop = item.crop
        if crop.image is None:
            return self.hold(item)
        t = time.perf_counter()
        pred = item.prediction if item.prediction is not None else predict(self.models, crop.image)
        t = self.clock.add("regress", t)
        targets, K_crop = self.targets(pred, 0, crop)
        layer, stages = self.models.layer, self.strategy.frame_stages
        ff_z_ex = pred.z_ex[:1]
        res = None
        if not self.strategy.reinitialise(self.previous, self.gap_frames):
            res = optimise(layer, self.topology, targets, self.z_id, self.previous.z_ex[None], self.previous.pose,
                           stages, snap=False, z_ex_prior=ff_z_ex, x_warm=self.x_warm, forward=self.models.forward)
        if res is None or self.strategy.retry(res.loss, self.reference_loss):
            if int(targets.mask.sum()) >= 6:
                cold = optimise(layer, self.topology, targets, self.z_id, ff_z_ex, init_pose_from_point_map(targets),
                                stages, snap=False, z_ex_prior=ff_z_ex, forward=self.models.forward)
                res = cold if res is None or cold.loss < res.loss else res
        self.clock.add("tto", t)
        self.gap_frames = 0
        if res is None:  # the encoders see no head although the detector found a face: treat as a gap
            if self.previous is None:
                raise InputError("the encoders see no head in the first face frame")
            return self.hold(item)
        conf = min(1.0, self.reference_loss / max(res.loss, 1e-12)) if np.isfinite(self.reference_loss) else 1.0
        status = "tracked" if crop.status == "detected" else "held"
        sol = FrameSolution(crop.index, crop.time_s, status, res.z_ex[0], res.pose, K_crop, crop.crop_to_frame,
                            conf * (1.0 if status == "tracked" else 0.5), res.loss, res.steps_run, item.frame)
        self.previous, self.x_warm = sol, res.x_warm
        return sol


def _has_face(crop: CropResult, on_landmarks: bool) -> bool:
    return crop.landmarks is not None if on_landmarks else crop.image is not None


def _slice(pred: Prediction, i: int) -> Prediction:
    return Prediction(pred.z_id[i:i + 1], pred.z_ex[i:i + 1], pred.normals[i:i + 1], pred.point_map[i:i + 1],
                      pred.mask[i:i + 1], pred.seconds / len(pred.z_id))


def _check_output_folder(path: Path) -> None:
    folder = path if path.suffix == "" else path.parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise InputError(f"{path}: the output folder {folder} cannot be written")


def track_video(video: str | os.PathLike, out: Optional[str | os.PathLike] = None,
                cfg: Optional[TrackConfig] = None, models: Optional[Models] = None,
                strategy: Optional[TrackingStrategy] = None, preview: Optional[str | os.PathLike] = None,
                progress: bool = True) -> TrackResult:
    """Track a face video and export the animation (format from ``out``'s extension).

    Args:
        video: the input video (or image) file.
        out: the animation to write (every format of :mod:`exporters`); ``None`` writes no animation (the
            track is still returned, and written when ``cfg.write_track`` and ``out`` are set).
        models: the networks (default: :meth:`Models.load` of the shipped weights on ``cfg.device``).
        preview: an mp4 path: the tracked mesh drawn over the input frames.
    Raises:
        InputError: unreadable video, no face anywhere, unknown output extension, unwritable folder. No
        partial output is left behind.
    """
    cfg = cfg or TrackConfig()
    if strategy is None:
        strategy = LandmarkStrategy() if cfg.evidence == "landmarks" else TrackingStrategy()
    on_landmarks = isinstance(strategy, LandmarkStrategy)
    out = Path(out) if out is not None else None
    arkit_out = False
    writer_options: dict = {}
    if out is not None:
        arkit_out = check_arkit_target(out, cfg.rig)
        if not arkit_out:
            writer_options = pca_options(out, cfg.rig)  # an unknown extension fails before any work
        _check_output_folder(out)
    if preview is not None:
        preview = Path(preview)
        if preview.is_dir():
            raise InputError(f"{preview}: is a folder; give a file name ending in .mp4")
        _check_output_folder(preview)
    import_backend(cfg.crop.detector)  # an import, as torch's: before the clock, like the caller's own
    start = time.perf_counter()
    clock = _Clock()
    stream = open_video(video, decoder=cfg.decoder)  # a bad input fails before the networks load
    models = models or Models.load(device=cfg.device, encoders=not on_landmarks)
    if arkit_out and (models.arkit_rig is None or models.forward is None):
        raise InputError(f"{models.head_path}: this head model has no ARKit rig asset and forward deformation "
                         "(`nphm-train arkit-rig`); write a mesh format instead")
    info = stream.info
    fps = info.fps or 25.0
    K_frame = frame_intrinsics(info.width, info.height, cfg)
    if on_landmarks:
        if models.landmarks is None:
            raise InputError(f"{models.head_path}: this head model has no landmark assets (build them with "
                             "`nphm-train landmarks`), or track with --evidence maps")
        tracker = LandmarkTracker(models.layer, models.codes, models.landmarks, strategy, K_frame, clock,
                                  forward=models.forward, identity_prior=models.identity_prior)
    else:
        tracker = VideoTracker(models, strategy, cfg, K_frame, clock)
    smoother = strategy.smoother()
    keep_frames = preview is not None
    records: list[FrameSolution] = []  # emitted solutions without payload (small: codes and pose per frame)
    fitted: list[Optional[FittedLandmarks]] = []  # the head's landmarks per emitted frame (landmark tracker)
    leading_gaps: list[CropResult] = []
    state: dict = {"writer": None, "baker": None, "preview": None, "export": None, "background": None,
                   "solve_points": None, "background_seconds": None}
    waiting: list[FrameSolution] = []  # released by the smoother while the mesh is extracted in the background

    def emit(sol: FrameSolution) -> None:
        if state["baker"] is None:
            waiting.append(sol)
            return
        t = time.perf_counter()
        baker: Baker = state["baker"]
        vertices = baker.vertices(sol.z_ex[None]) if not arkit_out or state["preview"] is not None else None
        if out is not None and not arkit_out:
            if state["writer"] is None:
                state["writer"] = open_writer(out, baker.faces, baker.n_vertices, fps, start_frame=sol.index + 1,
                                              **writer_options).__enter__()
            transform = Baker.transform(sol.pose.cpu().numpy()) if cfg.with_pose else None
            state["writer"].append(vertices, transform)
        t = clock.add("export", t)
        if on_landmarks:
            fitted.append(tracker.fitted_landmarks(sol) if sol.status != "gap" else None)
            t = clock.add("landmarks out", t)
        if state["preview"] is not None:
            from tracker.preview import frame_intrinsics

            cam = None if sol.status == "gap" else camera_vertices(vertices, sol.pose)
            points = []
            if on_landmarks and fitted[-1] is not None:
                points = [(sol.detections, DETECTION_COLOR), (fitted[-1].mediapipe, FITTED_COLOR)]
            state["preview"].write_mesh(sol.payload, cam, baker.faces, frame_intrinsics(sol.K, sol.crop_to_frame),
                                        sol.index, sol.status, points)
            clock.add("preview", t)
        records.append(FrameSolution(sol.index, sol.time_s, sol.status, sol.z_ex, sol.pose, sol.K,
                                     sol.crop_to_frame, sol.confidence, sol.loss, sol.steps,
                                     detections=sol.detections))

    def process(item: _Pending) -> None:
        for ready in smoother.push(tracker.solve(item)):
            emit(ready)

    def mesh_done(block: bool) -> None:
        """Take the background's mesh when it is there (or wait for it), build the baker, emit what waited."""
        background: Optional[InBackground] = state["background"]
        if background is None or not (block or background.ready()):
            return
        t = time.perf_counter()
        assets = background.result()  # None: the child failed, and the work is done here
        state["background"] = None
        topology = None
        if assets is None:
            warnings.warn(f"{video}: the background mesh failed, extracting it here: {background.error}")
        else:
            topology, state["solve_points"] = topology_from_arrays(assets[0]), assets[1]
            state["background_seconds"] = background.child_seconds
        state["baker"] = _baker(models, tracker, cfg, topology)
        clock.add("mesh", t)
        for sol in waiting:
            emit(sol)
        waiting.clear()

    window: list[_Pending] = []
    total = info.frame_count if cfg.max_frames is None else min(info.frame_count or cfg.max_frames, cfg.max_frames)
    bar = tqdm(total=total or None, desc=Path(video).name, unit="frame", disable=not progress)
    try:
        if preview is not None:
            from tracker.preview import PreviewWriter

            state["preview"] = PreviewWriter(preview, fps)
        t = clock.add("setup", start)  # the video opened, the models loaded, the tracker built
        latest: dict = {}
        frames = _counted(stream, bar, latest, cfg.max_frames)
        crop_cfg = dataclasses.replace(cfg.crop, images=False) if on_landmarks else cfg.crop  # detections only
        for crop in crop_frames(frames, crop_cfg.setup(), source=str(video)):
            t = clock.add("decode+detect", t)
            item = _Pending(crop, latest.get("image") if keep_frames else None)
            if tracker.z_id is None:
                if not _has_face(crop, on_landmarks) and not window:
                    leading_gaps.append(crop)
                    if state["preview"] is not None:
                        state["preview"].write(item.frame, None, crop.index, "gap")
                    t = time.perf_counter()
                    continue
                window.append(item)
                n_faces = sum(_has_face(p.crop, on_landmarks) for p in window)
                if n_faces >= strategy.identity_frames or len(window) >= strategy.identity_wait:
                    _start(tracker, window, state, models, cfg, clock, None if not total else total - crop.index - 1)
                    for p in window:
                        process(p)
                    window = []
            else:
                process(item)
            mesh_done(block=False)
            bar.set_postfix(fps=f"{bar.n / max(time.perf_counter() - start, 1e-9):.2f}")
            t = time.perf_counter()
        if tracker.z_id is None and window:
            _start(tracker, window, state, models, cfg, clock, 0)
            for p in window:
                process(p)
        mesh_done(block=True)
        for ready in smoother.flush():
            emit(ready)
        if state["writer"] is not None:
            t = time.perf_counter()
            state["export"] = state["writer"].close()
            clock.add("export", t)
        if state["preview"] is not None:
            state["preview"].close()
    except BaseException:
        if state["background"] is not None:
            state["background"].close()
        if state["writer"] is not None:
            state["writer"].abort()
        if state["preview"] is not None:
            state["preview"].abort()
        raise
    finally:
        bar.close()
    t = time.perf_counter()
    track = _build_track(records, leading_gaps, tracker, models, fps, str(video), (info.width, info.height),
                         fitted if on_landmarks else None)
    t = clock.add("track file", t)
    solver = None
    if models.arkit_rig is not None and models.forward is not None:
        solver = track_curves(track, CurveSolver(models.layer, models.forward, tracker.z_id, models.arkit_rig,
                                                 state["baker"].topology.canonical_vertices,
                                                 points=state["solve_points"]),
                              models.arkit_regressor)
    if arkit_out:
        state["export"] = write_arkit(out, track, solver.personal, state["baker"].faces, with_pose=cfg.with_pose,
                                      fps=fps)
    t = clock.add("arkit", t)
    track_path = None
    if out is not None and cfg.write_track:
        track_path = save_track(track_path_for(out), track)
    clock.add("track file", t)
    seconds = time.perf_counter() - start
    status = track.status
    return TrackResult(out=out, track_path=track_path, preview=preview, track=track, frames=len(status),
                       tracked=int((status == "tracked").sum()), held=int((status == "held").sum()),
                       gaps=int((status == "gap").sum()), seconds=seconds, stage_seconds=clock.seconds,
                       export=state["export"], background_seconds=state["background_seconds"])


def track_video_quietly(video: str | os.PathLike, out: str | os.PathLike, **kwargs) -> TrackResult:
    """:func:`track_video` without its per-frame progress bar (the folder tracker's workers)."""
    return track_video(video, out, progress=False, **kwargs)


def _counted(stream, bar, latest: dict, max_frames: Optional[int] = None):
    """The stream's frames (the first ``max_frames``), counted on the progress bar; ``latest["image"]`` is the
    current frame's image."""
    for frame in stream:
        if max_frames is not None and frame.index >= max_frames:
            break
        latest["image"] = frame.image
        bar.update(1)
        yield frame


def camera_vertices(vertices: np.ndarray, pose: torch.Tensor) -> np.ndarray:
    """Head-frame vertices ``[V, 3]`` -> camera space with a model -> camera pose ``[6]``."""
    R = axis_angle_to_matrix(pose[:3].double()).cpu().numpy()
    return vertices.astype(np.float64) @ R.T + pose[3:].double().cpu().numpy()


def _start(tracker: VideoTracker, window: list[_Pending], state: dict, models: Models, cfg: TrackConfig,
           clock: _Clock, frames_left: Optional[int]) -> None:
    """The identity from the window, then its export assets (:func:`_export_assets`, once): in a forked
    process while the frames are fitted where that can pay (:mod:`tracker.background`; ``frames_left`` after
    the window, ``None``: unknown), else the mesh here and the curve solver's points at the end."""
    tracker.estimate_identity(window)
    t = time.perf_counter()
    if cfg.mesh_in_background and torch.device(cfg.device).type == "cpu" and can_fork(frames_left):
        z_id = tracker.z_id
        state["background"] = InBackground(lambda: _export_assets(models, z_id, cfg))
    else:
        state["baker"] = _baker(models, tracker, cfg)
    clock.add("mesh", t)


def _export_assets(models: Models, z_id: torch.Tensor, cfg: TrackConfig) -> tuple[dict, Optional[SolvePoints]]:
    """What the export needs of identity ``z_id [1, D_id]`` alone, as numpy (it may cross processes): its mesh
    (:func:`tracker.background.topology_to_arrays` of :func:`tracker.bake.export_topology`) and the curve
    solver's points (``None`` without an ARKit rig)."""
    topology = export_topology(models.layer, z_id, models.neutral_expression(), *models.bbox, cfg.export_resolution)
    points = None
    if models.arkit_rig is not None and models.forward is not None:
        points = SolvePoints.choose(models.layer, models.forward, z_id, models.arkit_rig, topology.canonical_vertices)
    return topology_to_arrays(topology), points


def _baker(models: Models, tracker: VideoTracker, cfg: TrackConfig, topology=None) -> Baker:
    return Baker(models.layer, tracker.z_id, models.neutral_expression(), *models.bbox,
                 resolution=cfg.export_resolution, forward=models.forward, topology=topology)


def _build_track(records: list[FrameSolution], leading: list[CropResult], tracker,
                 models: Models, fps: float, source: str, size: tuple[int, int],
                 fitted: Optional[list[Optional[FittedLandmarks]]] = None) -> Track:
    first = records[0]
    lead = [FrameSolution(c.index, c.time_s, "gap", first.z_ex, first.pose, first.K, first.crop_to_frame, 0.0)
            for c in leading]
    rows = lead + records
    landmarks = {}
    if fitted is not None:
        n_mp, n_68 = len(models.landmarks.mediapipe), len(models.landmarks.ibug68)
        pad: list[Optional[FittedLandmarks]] = [None] * len(lead) + list(fitted)
        nan = np.full((n_mp, 2), np.nan)
        landmarks = dict(
            landmarks_px=np.stack([f.mediapipe if f is not None else nan for f in pad]),
            landmarks68_px=np.stack([f.ibug68 if f is not None else np.full((n_68, 2), np.nan) for f in pad]),
            detections_px=np.stack([r.detections if r.detections is not None and r.status != "gap" else nan
                                    for r in rows]),
            K_frame=tracker.K)
    return Track(z_id=tracker.z_id[0].cpu().numpy(), z_ex=torch.stack([r.z_ex for r in rows]).cpu().numpy(),
                 pose=torch.stack([r.pose for r in rows]).cpu().numpy(), K=np.stack([r.K for r in rows]),
                 crop_to_frame=np.stack([r.crop_to_frame for r in rows]),
                 frame_index=np.array([r.index for r in rows]), time_s=np.array([r.time_s for r in rows]),
                 status=np.array([r.status for r in rows]), confidence=np.array([r.confidence for r in rows]),
                 fps=fps, source=source, frame_size=size, head=models.head_path,
                 meta={"tto_steps": [int(r.steps) for r in rows], "reference_loss": tracker.reference_loss,
                       "evidence": "landmarks" if fitted is not None else "maps",
                       "keyframes": [int(k) for k in getattr(tracker, "keyframes", [])]},
                 **landmarks)
