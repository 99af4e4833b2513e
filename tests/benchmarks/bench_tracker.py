"""Video tracking accuracy, jitter and speed on held-out synthetic videos with ground truth (issue 6).

For each video (``nphm-train data videos`` output: ``video_NNNN.mp4`` + ``video_NNNN.gt.npz``) three methods
are compared on the same frames:

- ``feed-forward``: per frame, the regressor's codes (identity and expression per frame);
- ``cold-tto``: per frame, single-image TTO from the feed-forward codes (``--cold-steps``), no temporal terms;
- ``tracker``: :func:`tracker.pipeline.track_video` with ``evidence="maps"`` (one identity, warm-started TTO,
  fixed-lag smoother).

Metrics (head frame, model space; mm):

- posed Chamfer L1 on every ``--every``-th frame: the mesh of the frame's codes against the ground-truth ICT
  head of that frame over the face region, after a similarity ICP (as ``nphm-train eval-single-view``);
- jitter: mean norm of the second difference ``x[t+1] - 2 x[t] + x[t-1]`` of the 68 landmark trajectories.
  Landmarks are fixed canonical points (the tracker identity's neutral mesh vertices nearest to the aligned
  ground-truth landmarks); each frame's 3D landmarks are those canonical points carried by the frame's
  deformation (inverted), so jitter measures the codes, not a per-frame alignment. The ground truth's own
  jitter (its true motion) is printed beside it;
- head pose (tracker and cold TTO): mean rotation error against the ground truth's model-to-camera rotation
  (degrees) and the ratio of the estimated to the true camera distance. The tracker assumes the default focal
  length (1.3 x the frame's longer side), so even a perfect tracker has the ratio ``focal_assumed_over_true``;
- speed: the tracker's frames per second end to end and seconds per stage.

Prints one JSON line. Example (the numbers in the README)::

    nphm-train data videos --out data/videos_eval -n 3 --frames 50 --res 512 --seed 9100
    python tests/benchmarks/bench_tracker.py --videos data/videos_eval --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model.topology import invert_deformation  # noqa: E402
from train import frame  # noqa: E402
from train.geometry import surface_topology  # noqa: E402
from train.ict import default_ict_path, load_ict  # noqa: E402
from train.metrics import MM_PER_UNIT  # noqa: E402
from train.single_view_eval import (evaluate_reconstruction, extract_head, ground_truth_surface,  # noqa: E402
                                    similarity_icp)
from tracker.bake import Baker  # noqa: E402
from tracker.crop import CropConfig, crop_frames  # noqa: E402
from tracker.decode import open_video  # noqa: E402
from tracker.pipeline import TrackConfig, crop_intrinsics, frame_intrinsics, track_video  # noqa: E402
from tracker.predict import Models, fit_image, predict  # noqa: E402
from tracker.tto import axis_angle_to_matrix  # noqa: E402


def posed_landmarks(models: Models, canonical: torch.Tensor, z_id: torch.Tensor, z_ex: torch.Tensor) -> np.ndarray:
    """``[68, 3]`` posed positions of canonical points for codes ``[1, D]`` (inverted deformation)."""
    layer = models.layer

    def canonical_fn(x: torch.Tensor) -> torch.Tensor:
        return x + layer.deform(x[None], z_id, z_ex).offsets[0]

    with torch.no_grad():
        return invert_deformation(canonical_fn, canonical, max_iter=50).x.numpy()


def jitter_mm(track: np.ndarray) -> float:
    """Mean norm of second differences of ``[T, L, 3]`` trajectories (model units -> mm)."""
    if len(track) < 3:
        return float("nan")
    return float(np.linalg.norm(track[2:] - 2 * track[1:-1] + track[:-2], axis=-1).mean() * MM_PER_UNIT)


def pose_error(pose, R_gt: np.ndarray, t_gt: np.ndarray) -> tuple[float, float]:
    """Rotation error (degrees) and ratio of the estimated to the true camera distance of a model-to-camera
    pose ``[6]`` (rotation vector, translation) against the ground truth's ``R [3, 3]``, ``t [3]``."""
    p = torch.as_tensor(pose).double().reshape(-1)
    R = axis_angle_to_matrix(p[:3]).numpy()
    cos = (np.trace(R.T @ R_gt) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))), float(np.linalg.norm(p[3:].numpy())
                                                                       / np.linalg.norm(t_gt))


def pose_errors(poses: list, R_gt: np.ndarray, t_gt: np.ndarray) -> dict:
    """Mean :func:`pose_error` over the frames with a pose (``None`` elsewhere), against ``R [T, 3, 3]``,
    ``t [T, 3]``: rotation error (degrees) and distance ratio (1 = right; with an assumed focal length the
    expected ratio is ``focal_assumed_over_true``)."""
    errors = [pose_error(p, R_gt[i], t_gt[i]) for i, p in enumerate(poses) if p is not None]
    rot, ratio = [e[0] for e in errors], [e[1] for e in errors]
    return {"rotation_error_deg": float(np.mean(rot)) if rot else float("nan"),
            "distance_ratio": float(np.mean(ratio)) if ratio else float("nan")}


def evaluate_video(video: Path, models: Models, kit, topo, args) -> dict:
    gt = np.load(video.with_suffix("").with_suffix(".gt.npz"))
    n = min(args.frames, len(gt["w_ex"]))
    # --- the tracker (its own decode; timed end to end)
    with tempfile.TemporaryDirectory() as tmp:
        res = track_video(video, Path(tmp) / "anim.npz", TrackConfig(evidence="maps"), models=models, progress=False)
    track = res.track
    z_id_track = torch.from_numpy(track.z_id)[None]
    # --- per-frame feed-forward and cold TTO on the same crops
    stream = open_video(video)
    K_frame = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
    ff, cold, ff_seconds, cold_seconds = [], [], 0.0, 0.0
    cold_poses: list = []
    for i, crop in enumerate(crop_frames(stream, CropConfig().setup(), str(video))):
        if i >= n:
            break
        if crop.image is None:
            ff.append(None)
            cold.append(None)
            cold_poses.append(None)
            continue
        pred = predict(models, crop.image)
        ff_seconds += pred.seconds
        ff.append((pred.z_id, pred.z_ex))
        fit = fit_image(models, crop.image, crop_intrinsics(K_frame, crop.crop_to_frame), tto=True,
                        steps=args.cold_steps, mesh_resolution=48, prediction=pred)
        cold_seconds += fit.seconds_tto
        cold.append((fit.z_id, fit.z_ex))
        cold_poses.append(fit.pose)
    stream.close()
    rows = {"feed-forward": ff, "cold-tto": cold,
            "tracker": [(z_id_track, torch.from_numpy(track.z_ex[i])[None]) if track.status[i] != "gap" else None
                        for i in range(n)]}
    # --- canonical landmarks from the tracker's neutral mesh aligned to the ground-truth neutral head
    neutral_gt, region = ground_truth_surface(kit, topo, gt["w_id"], np.zeros_like(gt["w_ex"][0]))
    baker = Baker(models.layer, z_id_track, models.neutral_expression(), *models.bbox, resolution=args.resolution)
    neutral_v = baker.topology.neutral_vertices.numpy()
    sim = similarity_icp(neutral_v, neutral_gt.vertices, neutral_gt.triangles, target_region=region)
    lm_gt_neutral = frame.ict_to_model(kit.vertices(gt["w_id"], np.zeros_like(gt["w_ex"][0]))[kit.landmarks68])
    nearest = np.linalg.norm(sim.apply(neutral_v)[None] - lm_gt_neutral[:, None], axis=-1).argmin(1)
    canonical = baker.topology.canonical_vertices[nearest].clone()  # [68, 3]
    gt_lm = np.stack([frame.ict_to_model(kit.vertices(gt["w_id"], gt["w_ex"][i])[kit.landmarks68])
                      for i in range(n)])
    out = {"video": video.name, "frames": n, "tracker_fps": res.fps,
           "tracker_stage_seconds": {k: round(v, 2) for k, v in res.stage_seconds.items()},
           "tracked": res.tracked, "held": res.held, "gaps": res.gaps,
           "feed_forward_seconds_per_frame": ff_seconds / max(1, n), "cold_tto_seconds_per_frame": cold_seconds / max(1, n),
           "jitter_gt_mm": jitter_mm(gt_lm), "methods": {}}
    poses = {"cold-tto": cold_poses,
             "tracker": [torch.from_numpy(track.pose[i]) if track.status[i] != "gap" else None for i in range(n)]}
    out["focal_assumed_over_true"] = float(K_frame[0, 0] / gt["K"][0, 0])
    for name, codes in rows.items():
        valid = [c is not None for c in codes]
        lms = np.stack([posed_landmarks(models, canonical, *c) if c is not None else np.full((68, 3), np.nan)
                        for c in codes])
        lms_aligned = np.stack([sim.apply(x) for x in lms])
        chamfers = []
        for i in range(0, n, args.every):
            if codes[i] is None:
                continue
            gt_i, region_i = ground_truth_surface(kit, topo, gt["w_id"], gt["w_ex"][i])
            mesh = extract_head(models.layer, codes[i][0], codes[i][1], models.bbox, args.resolution)
            m = evaluate_reconstruction(mesh.vertices, mesh.faces, gt_i.vertices, gt_i.triangles, region_i,
                                        n_samples=args.samples)
            chamfers.append(m.chamfer.chamfer_l1_mm)
        ok = np.array(valid)
        out["methods"][name] = {
            "posed_chamfer_l1_mm": float(np.mean(chamfers)) if chamfers else float("nan"),
            "jitter_mm": jitter_mm(lms_aligned[ok]),
            "landmark_error_mm": float(np.linalg.norm(lms_aligned[ok] - gt_lm[ok], axis=-1).mean() * MM_PER_UNIT),
        }
        if name in poses:
            out["methods"][name].update(pose_errors(poses[name], gt["model_to_camera_R"][:n],
                                                    gt["model_to_camera_t"][:n]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, required=True, help="folder of video_NNNN.mp4 + .gt.npz")
    ap.add_argument("--max-videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=50, help="first N frames of each video are evaluated")
    ap.add_argument("--every", type=int, default=10, help="Chamfer on every k-th frame")
    ap.add_argument("--cold-steps", type=int, default=30, help="single-image TTO steps per frame (cold-tto)")
    ap.add_argument("--resolution", type=int, default=96, help="marching cubes of the evaluated meshes")
    ap.add_argument("--samples", type=int, default=30_000, help="Chamfer samples each way")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kit = load_ict(default_ict_path())
    topo = surface_topology(kit.triangles, kit.n_vertices)
    models = Models.load()
    start = time.perf_counter()
    videos = sorted(args.videos.glob("video_*.mp4"))[:args.max_videos]
    per_video = [evaluate_video(v, models, kit, topo, args) for v in videos]
    summary = {}
    for name in ("feed-forward", "cold-tto", "tracker"):
        keys = ("posed_chamfer_l1_mm", "jitter_mm", "landmark_error_mm", "rotation_error_deg", "distance_ratio")
        summary[name] = {k: round(float(np.nanmean([v["methods"][name][k] for v in per_video])), 4)
                         for k in keys if k in per_video[0]["methods"][name]}
    print(json.dumps({
        "bench": "tracker", "videos": len(per_video), "threads": torch.get_num_threads(),
        "summary": summary,
        "jitter_gt_mm": round(float(np.mean([v["jitter_gt_mm"] for v in per_video])), 4),
        "focal_assumed_over_true": round(float(np.mean([v["focal_assumed_over_true"] for v in per_video])), 3),
        "tracker_fps": round(float(np.mean([v["tracker_fps"] for v in per_video])), 3),
        "feed_forward_seconds_per_frame": round(float(np.mean([v["feed_forward_seconds_per_frame"] for v in per_video])), 3),
        "cold_tto_seconds_per_frame": round(float(np.mean([v["cold_tto_seconds_per_frame"] for v in per_video])), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - start, 1), "per_video": per_video}))


if __name__ == "__main__":
    main()
