"""The landmark tracker against the constant mean head and the map tracker on held-out synthetic videos.

Methods, on the same frames of each video (``nphm-train data videos`` output with ground truth):

- ``mean-head``: no tracking at all: the head model's mean identity code and mean neutral expression on
  every frame (the no-tracking reference);
- ``maps``: :func:`tracker.pipeline.track_video` with ``evidence="maps"`` (the geometric encoders; the
  tracker before the landmarks);
- ``landmarks``: the default tracker (MediaPipe Face Mesh landmarks).

Metrics (mm unless said otherwise):

- ``posed_chamfer_l1_mm``: every ``--every``-th frame, the mesh of the frame's codes against the ground-truth
  ICT head of that frame over the face area, after a per-frame similarity ICP (``nphm-train
  eval-single-view``'s protocol);
- ``neutral_chamfer_l1_mm``: the tracked identity at the neutral expression against the true neutral head;
  ``neutral_over_ict_mean_head``: that over the same figure of ICT-FaceKit's constant mean head (the population
  average; per video ``ict_mean_head_neutral_chamfer_l1_mm``), mean and largest over the videos (the identity
  issue's figure: it must stay under 0.95 on every video);
- ``rotation_error_deg``, ``distance_ratio``: the model-to-camera pose against the truth (the ratio of the
  estimated to the true camera distance; 1 is right);
- ``focal_ratio``: estimated / true focal length (the landmark tracker estimates it);
- ``landmark2d_error_pct``: the track file's fitted iBUG-68 landmarks (``landmarks68_px``) against the
  ground-truth projected ones, visible points only, in % of the true outer-eye-corner distance;
- ``expression_error_ratio``: the expression displacement error: at 1,500 points of ICT's narrow face area
  (the true identity's neutral vertices, model units), the tracked displacement (the tracked identity's
  backward field inverted at the frame's expression minus at the neutral expression) against the true one
  (``ICT(w_id, w_ex) - ICT(w_id, 0)``); the mean distance between the two (``expression_error_mm``) over
  the mean true displacement (the error of predicting no motion). Both live in the head's canonical frame
  (the head model's canonical space is ICT's, :mod:`train.frame`), so no alignment is applied;
- ``landmark_expression_error_ratio``: the same at corresponding points, no alignment: the 478 MediaPipe
  landmarks of the tracked identity's own canonical landmarks (:mod:`model.landmarks`), posed as the
  export poses them, against ICT's truth at the same landmarks (``expression_error_ratio`` evaluates the
  tracked field at the *true* identity's vertices, off the tracked surface by the identity error);
- ``accel_ratio``: the mean norm of the second difference over frames of those tracked points, over the
  truth's (the still export's vertex acceleration; 1 = as much motion as the truth);
- ``jitter_mm`` and ``jitter_ratio``: mean norm of the second difference of the 68 landmark trajectories in
  the head frame (each method's own iBUG-68 canonical points posed by each frame's expression), and its
  ratio to the ground truth's (its true motion; in the summary the ratio of the means over the videos).

Prints one JSON line. Example (the README's figures)::

    nphm-train data videos --out data/videos_lm -n 3 --frames 100 --res 512 --seed 9200 --yaw 40
    python tests/benchmarks/bench_landmark_tracker.py --videos data/videos_lm --threads 2

The strong-expression set of the expression issue and the tracker before it (its tracks, its head)::

    nphm-train data videos --out data/videos_strong -n 3 --frames 100 --res 512 --seed 9300 --yaw 30 --strong
    python tests/benchmarks/bench_landmark_tracker.py --videos data/videos_strong --methods mean-head,landmarks
    python tests/benchmarks/bench_landmark_tracker.py --videos data/videos_strong --methods mean-head,landmarks \
        --head runs/head_v1.pt --no-forward --track-dir runs/tracks_v1   # tracks made at commit 18a6a99
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

from model.landmarks import posed_landmarks  # noqa: E402
from tests.benchmarks.bench_tracker import jitter_mm, pose_error  # noqa: E402
from train import frame  # noqa: E402
from train.geometry import surface_topology  # noqa: E402
from train.ict import default_ict_path, load_ict  # noqa: E402
from train.metrics import MM_PER_UNIT  # noqa: E402
from train.single_view_eval import evaluate_reconstruction, extract_head, ground_truth_surface  # noqa: E402
from tracker.pipeline import TrackConfig, track_video  # noqa: E402
from tracker.predict import Models  # noqa: E402

METHODS = ("mean-head", "maps", "landmarks")


def pose_points(models: Models, canonical: torch.Tensor, z_id: torch.Tensor, z_ex: torch.Tensor) -> torch.Tensor:
    """Posed points ``[1, N, 3]`` of canonical points ``[1, N, 3]`` as the tracker's export poses them: the
    head's forward deformation, or (a head without one) the backward field inverted from the canonical
    points, as the tracker before the forward model did."""
    from model.forward_deformation import forward_posed

    if models.forward is not None:
        return forward_posed(models.forward, models.layer, canonical, z_id, z_ex)
    return posed_landmarks(models.layer, canonical, z_id, z_ex, canonical.clone(), max_iter=50).x


def ibug_trajectories(models: Models, z_id: torch.Tensor, z_ex: np.ndarray) -> np.ndarray:
    """``[T, 68, 3]`` head-frame iBUG-68 landmarks of one identity ``[1, D]`` posed by expressions ``[T, D]``."""
    lmap, n_mp = models.landmarks.landmark_map, len(models.landmarks.mediapipe)
    canonical = lmap(z_id)[:, n_mp:]  # [1, 68, 3]
    out = []
    with torch.no_grad():
        for z in z_ex:
            ze = torch.as_tensor(z, dtype=torch.float32)[None]
            out.append(pose_points(models, canonical, z_id, ze)[0].numpy())
    return np.stack(out)


def face_points(models: Models, kit, w_id: np.ndarray, w_ex: np.ndarray, z_id: torch.Tensor, z_ex: np.ndarray,
                n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """``(tracked [T, n, 3], true [T, n, 3])`` posed face points (model units) and their displacements are
    what ``expression_error_ratio`` compares; the tracked ones posed as the exported mesh is
    (:func:`pose_points`)."""
    ids = np.random.default_rng(0).choice(6706, n, replace=False)
    truth = np.stack([frame.ict_to_model(kit.vertices(w_id, w)[ids]) for w in w_ex])  # [T, n, 3]
    can = torch.as_tensor(frame.ict_to_model(kit.vertices(w_id, np.zeros_like(w_ex[0]))[ids]), dtype=torch.float32)[None]
    out = []
    with torch.no_grad():
        for z in z_ex:
            ze = torch.as_tensor(z, dtype=torch.float32)[None]
            out.append(pose_points(models, can, z_id, ze)[0].numpy())
    return np.stack(out), truth


def expression_errors(models: Models, kit, gt, z_id: torch.Tensor, z_ex: np.ndarray, usable: np.ndarray) -> dict:
    neutral = models.neutral_expression().numpy()
    w = gt["w_ex"][:len(z_ex)][usable]
    tracked, truth = face_points(models, kit, gt["w_id"], np.concatenate([w[:1] * 0, w]), z_id,
                                 np.concatenate([neutral, z_ex[usable]]))
    d_track, d_true = tracked[1:] - tracked[:1], truth[1:] - truth[:1]
    err = float(np.linalg.norm(d_track - d_true, axis=-1).mean()) * MM_PER_UNIT
    still = float(np.linalg.norm(d_true, axis=-1).mean()) * MM_PER_UNIT
    acc = lambda p: float(np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean())  # noqa: E731
    # corresponding points: the tracked identity's own canonical MediaPipe landmarks vs ICT's
    n_mp = len(models.landmarks.mediapipe)
    can = models.landmarks.landmark_map(z_id)[:, :n_mp]
    with torch.no_grad():
        lm = np.stack([pose_points(models, can, z_id, torch.as_tensor(z, dtype=torch.float32)[None])[0].numpy()
                       for z in np.concatenate([neutral, z_ex[usable]])])
    emb = models.landmarks.mediapipe
    lm_true = np.stack([frame.ict_to_model(emb.points(kit.vertices(gt["w_id"], x))) for x in np.concatenate([w[:1] * 0, w])])
    dl, dlt = lm[1:] - lm[:1], lm_true[1:] - lm_true[:1]
    lm_err = float(np.linalg.norm(dl - dlt, axis=-1).mean()) / float(np.linalg.norm(dlt, axis=-1).mean())
    return {"expression_error_mm": err, "no_motion_error_mm": still, "expression_error_ratio": err / still,
            "landmark_expression_error_ratio": lm_err, "accel_ratio": acc(tracked[1:]) / acc(truth[1:])}


def chamfer(models: Models, kit, topo, z_id, z_ex, w_id, w_ex, args) -> float:
    gt, region = ground_truth_surface(kit, topo, w_id, w_ex)
    mesh = extract_head(models.layer, z_id, torch.as_tensor(z_ex, dtype=torch.float32)[None], models.bbox,
                        args.resolution)
    return evaluate_reconstruction(mesh.vertices, mesh.faces, gt.vertices, gt.triangles, region,
                                   n_samples=args.samples).chamfer.chamfer_l1_mm


def ict_mean_head_chamfer(kit, topo, w_id, args) -> float:
    """Face Chamfer L1 (mm) of ICT-FaceKit's mean head (identity weights 0, neutral) against the true neutral
    head, by the same protocol as :func:`chamfer`: the constant population average, the reference a tracked
    identity must beat (the identity issue)."""
    zero_ex = np.zeros(kit.n_expression, np.float32)
    mean, _ = ground_truth_surface(kit, topo, np.zeros(kit.n_identity, np.float32), zero_ex)
    gt, region = ground_truth_surface(kit, topo, w_id, zero_ex)
    return evaluate_reconstruction(mean.vertices, mean.triangles, gt.vertices, gt.triangles, region,
                                   n_samples=args.samples).chamfer.chamfer_l1_mm


def evaluate_video(video: Path, models: Models, kit, topo, args) -> dict:
    gt = np.load(video.with_suffix("").with_suffix(".gt.npz"))
    n = min(args.frames, len(gt["w_ex"]))
    neutral = models.neutral_expression()
    mean_id = models.codes["z_id"].mean(0, keepdim=True)
    tracks, out = {}, {"video": video.name, "frames": n, "methods": {}}
    for method in [m for m in args.methods if m != "mean-head"]:
        if args.track_dir is not None:  # tracks made elsewhere (e.g. by an earlier version of the tracker)
            from tracker.trackfile import load_track

            tracks[method] = load_track(args.track_dir / f"{video.stem}.track.npz")
            out["methods"][method] = {"tracked": int((tracks[method].status[:n] != "gap").sum())}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrackConfig(evidence=method, max_frames=n)
            res = track_video(video, Path(tmp) / "anim.npz", cfg, models=models, progress=False)
        tracks[method] = res.track
        out["methods"][method] = {"fps": round(res.fps, 3),
                                  "stage_seconds": {k: round(v, 2) for k, v in res.stage_seconds.items()},
                                  "tracked": res.tracked, "gaps": res.gaps}
    gt_lm = np.stack([frame.ict_to_model(kit.vertices(gt["w_id"], gt["w_ex"][i])[kit.landmarks68])
                      for i in range(n)])
    out["jitter_gt_mm"] = jitter_mm(gt_lm)
    eye = np.linalg.norm(gt["landmarks2d"][:n, 36] - gt["landmarks2d"][:n, 45], axis=-1)  # [T] px
    zero_ex = np.zeros_like(gt["w_ex"][0])
    for method in args.methods:
        m = out["methods"].setdefault(method, {})
        if method == "mean-head":
            z_id, z_ex, usable = mean_id, np.repeat(neutral.numpy(), n, 0), np.ones(n, bool)
        else:
            track = tracks[method]
            z_id, z_ex, usable = torch.from_numpy(track.z_id)[None], track.z_ex[:n], track.status[:n] != "gap"
        frames = [i for i in range(0, n, args.every) if usable[i]]
        m["posed_chamfer_l1_mm"] = float(np.mean([chamfer(models, kit, topo, z_id, z_ex[i], gt["w_id"],
                                                          gt["w_ex"][i], args) for i in frames]))
        m["neutral_chamfer_l1_mm"] = chamfer(models, kit, topo, z_id, neutral[0].numpy(), gt["w_id"], zero_ex, args)
        m.update(expression_errors(models, kit, gt, z_id, z_ex[:n], usable[:n]))
        traj = ibug_trajectories(models, z_id, z_ex[usable])
        m["jitter_mm"] = jitter_mm(traj)
        m["jitter_ratio"] = m["jitter_mm"] / out["jitter_gt_mm"]
        if method == "mean-head":
            continue
        track = tracks[method]
        errors = [pose_error(track.pose[i], gt["model_to_camera_R"][i], gt["model_to_camera_t"][i])
                  for i in range(n) if usable[i]]
        m["rotation_error_deg"] = float(np.mean([e[0] for e in errors]))
        m["distance_ratio"] = float(np.mean([e[1] for e in errors]))
        m["focal_ratio"] = (float(track.K_frame[0, 0] / gt["K"][0, 0]) if track.K_frame is not None
                            else float("nan"))
        if track.landmarks68_px is not None:
            vis = gt["landmarks_visible"][:n] & usable[:, None]
            err = np.linalg.norm(track.landmarks68_px[:n] - gt["landmarks2d"][:n], axis=-1) / eye[:, None]
            m["landmark2d_error_pct"] = float(err[vis].mean() * 100)
    out["focal_default_over_true"] = float(1.3 * max(int(gt["width"]), int(gt["height"])) / gt["K"][0, 0])
    out["ict_mean_head_neutral_chamfer_l1_mm"] = ict_mean_head_chamfer(kit, topo, gt["w_id"], args)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, required=True, help="folder of video_NNNN.mp4 + .gt.npz")
    ap.add_argument("--max-videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=100, help="first N frames of each video are tracked")
    ap.add_argument("--every", type=int, default=10, help="posed Chamfer on every k-th frame")
    ap.add_argument("--resolution", type=int, default=96, help="marching cubes of the evaluated meshes")
    ap.add_argument("--samples", type=int, default=30_000, help="Chamfer samples each way")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--head", type=Path, default=None,
                    help="evaluate with this head checkpoint (and the shipped landmark assets) [default: shipped]")
    ap.add_argument("--no-forward", action="store_true",
                    help="pose by inverting the backward field from the canonical points (a head without a forward model)")
    ap.add_argument("--track-dir", type=Path, default=None,
                    help="read <video>.track.npz from here instead of tracking (one non-mean method)")
    args = ap.parse_args()
    args.methods = [m for m in METHODS if m in args.methods.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    kit = load_ict(default_ict_path())
    topo = surface_topology(kit.triangles, kit.n_vertices)
    models = Models.load(head=args.head, landmarks=None if args.head is None else
                         ROOT / "model" / "weights" / "landmarks_default.npz")
    if args.no_forward:
        models.forward = None
    start = time.perf_counter()
    videos = sorted(args.videos.glob("video_*.mp4"))[:args.max_videos]
    if not videos:
        sys.exit(f"{args.videos}: no video_*.mp4")
    per_video = [evaluate_video(v, models, kit, topo, args) for v in videos]
    keys = ("expression_error_ratio", "landmark_expression_error_ratio", "expression_error_mm", "no_motion_error_mm", "accel_ratio",
            "posed_chamfer_l1_mm", "neutral_chamfer_l1_mm", "rotation_error_deg", "distance_ratio", "focal_ratio",
            "landmark2d_error_pct", "jitter_mm", "jitter_ratio", "fps")
    summary = {name: {k: round(float(np.nanmean([v["methods"][name][k] for v in per_video])), 4)
                      for k in keys if k in per_video[0]["methods"][name]} for name in args.methods}
    gt_jitter = float(np.mean([v["jitter_gt_mm"] for v in per_video]))
    for name in args.methods:  # ratio of the means: a per-video ratio explodes on a video that hardly moves
        summary[name]["jitter_ratio"] = round(summary[name]["jitter_mm"] / gt_jitter, 4)
    ref = summary.get("mean-head")
    for name in [m for m in args.methods if m != "mean-head" and ref is not None]:
        for k in ("posed_chamfer_l1_mm", "neutral_chamfer_l1_mm"):
            summary[name][k.replace("_mm", "_vs_mean_head_pct")] = round(100 * (summary[name][k] / ref[k] - 1), 1)
    ict_mean = [v["ict_mean_head_neutral_chamfer_l1_mm"] for v in per_video]
    for name in args.methods:  # the identity issue's figure: the tracked neutral over ICT's mean head's
        ratios = [v["methods"][name]["neutral_chamfer_l1_mm"] / c for v, c in zip(per_video, ict_mean)]
        summary[name]["neutral_over_ict_mean_head"] = {"mean": round(float(np.mean(ratios)), 3),
                                                       "max": round(float(np.max(ratios)), 3)}
    print(json.dumps({
        "bench": "landmark_tracker", "videos": len(per_video), "frames": args.frames,
        "ict_mean_head_neutral_chamfer_l1_mm": round(float(np.mean(ict_mean)), 4),
        "threads": torch.get_num_threads(), "summary": summary,
        "jitter_gt_mm": round(float(np.mean([v["jitter_gt_mm"] for v in per_video])), 4),
        "focal_default_over_true": round(float(np.mean([v["focal_default_over_true"] for v in per_video])), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - start, 1), "per_video": per_video}))


if __name__ == "__main__":
    main()
