"""The tracker on real footage (../shared/real-video): frames tracked, landmark reprojection, pose jitter on
still segments, identity spread across keyframes, speed, and a preview to look at.

For each clip, the tracker at default settings (landmarks) with a preview video (kept in ``--out``):

- ``frames_with_face`` / ``tracked``: frames where the detector found landmarks, and frames tracked;
- ``reprojection_pct``: per tracked frame, the mean distance between the fitted head's 478 landmarks and the
  detections, in % of the detected outer-eye-corner distance (MediaPipe 33-263); mean, 95th percentile, and
  the share of frames within 2.5 %;
- ``still_pose_jitter``: on still segments (runs of >= 5 frames whose detections move less than 0.5 % of
  the eye distance per frame, median over the points), the mean frame-to-frame change of the tracked head
  rotation (degrees) and translation (mm);
- ``identity_spread``: the identity fitted to each keyframe alone (same stages as the joint fit), the mean
  distance (mm) of their canonical landmarks from the joint fit's, and the same for the training
  identities around their mean (the scale of "a different person").

Prints one JSON line::

    python tests/benchmarks/bench_real_clips.py --out previews/ --max-frames 300 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker.landmark_fit import Observation, Shared, fit, rotation_distance, start_state  # noqa: E402
from tracker.landmark_tracker import LandmarkStrategy, build_rig  # noqa: E402
from tracker.pipeline import TrackConfig, track_video  # noqa: E402
from tracker.predict import Models  # noqa: E402
from tracker.tto import axis_angle_to_matrix  # noqa: E402
from train.metrics import MM_PER_UNIT  # noqa: E402

EYE_CORNERS = (33, 263)


def still_segments(detections: np.ndarray, ok: np.ndarray, eye: np.ndarray, tol: float = 0.005,
                   min_len: int = 5) -> list[tuple[int, int]]:
    """``[start, end)`` runs of frames whose detections move less than ``tol`` eye distances per frame."""
    step = np.full(len(detections), np.inf)
    step[1:] = np.median(np.linalg.norm(np.diff(detections, axis=0), axis=-1), axis=1) / eye[1:]
    still = ok & np.concatenate([[False], ok[:-1]]) & (step < tol)
    runs, start = [], None
    for i, s in enumerate(np.append(still, False)):
        if s and start is None:
            start = i - 1
        elif not s and start is not None:
            if i - start >= min_len:
                runs.append((start, i))
            start = None
    return runs


def identity_spread(models: Models, track, strategy: LandmarkStrategy) -> dict:
    rig = build_rig(models.layer, models.codes, models.landmarks, strategy)
    K0 = torch.as_tensor(track.K_frame, dtype=torch.float32)
    joint = rig.landmark_map(torch.from_numpy(track.z_id)[None])[0]
    index = {int(f): i for i, f in enumerate(track.frame_index)}
    dists = []
    for key in track.meta.get("keyframes", []):
        obs = Observation(torch.as_tensor(track.detections_px[index[key]], dtype=torch.float32))
        shared = Shared(torch.zeros(rig.landmark_map.rank), torch.tensor(0.0), K0)
        shared, _, _ = fit(rig, [obs], shared, [start_state(rig, shared, obs)], strategy.identity_stages)
        single = rig.landmark_map.from_coordinates(shared.alpha)
        dists.append(float((single - joint).norm(dim=-1).mean()) * MM_PER_UNIT)
    train = rig.landmark_map(models.codes["z_id"])
    spread_train = float((train - train.mean(0)).norm(dim=-1).mean()) * MM_PER_UNIT
    return {"keyframes": len(dists), "keyframe_vs_joint_mm": round(float(np.mean(dists)), 3) if dists else None,
            "training_identities_vs_mean_mm": round(spread_train, 3)}


def clip_figures(res, models: Models, strategy: LandmarkStrategy) -> dict:
    track = res.track
    det, fit_ = track.detections_px, track.landmarks_px
    ok = np.isfinite(det).all((1, 2)) & np.isfinite(fit_).all((1, 2))
    eye = np.linalg.norm(det[:, EYE_CORNERS[0]] - det[:, EYE_CORNERS[1]], axis=-1)
    rep = np.linalg.norm(fit_ - det, axis=-1).mean(1)[ok] / eye[ok] * 100
    R = axis_angle_to_matrix(torch.from_numpy(track.pose[:, :3]).double()).numpy()
    rot, trans = [], []
    runs = still_segments(det, ok, eye)
    for a, b in runs:
        rot += [rotation_distance(R[i], R[i - 1]) for i in range(a + 1, b)]
        trans += [float(np.linalg.norm(track.pose[i, 3:] - track.pose[i - 1, 3:])) * MM_PER_UNIT for i in range(a + 1, b)]
    return {
        "frames": res.frames, "frames_with_face": int(np.isfinite(det).all((1, 2)).sum()), "tracked": res.tracked,
        "gaps": res.gaps, "fps": round(res.fps, 3),
        "reprojection_pct": {"mean": round(float(rep.mean()), 3), "p95": round(float(np.percentile(rep, 95)), 3),
                             "within_2.5pct": round(float((rep <= 2.5).mean()), 4)},
        "still_pose_jitter": {"segments": len(runs), "frames": len(rot),
                              "rotation_deg": round(float(np.mean(rot)), 4) if rot else None,
                              "translation_mm": round(float(np.mean(trans)), 4) if trans else None},
        "focal_over_longer_side": round(float(track.K_frame[0, 0] / max(track.frame_size)), 3),
        "identity_spread": identity_spread(models, track, strategy),
        "stage_seconds": {k: round(v, 2) for k, v in res.stage_seconds.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(os.environ.get("NPHM_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--clips", type=Path, default=shared / "real-video")
    ap.add_argument("--out", type=Path, required=True, help="folder for the previews and animations")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    models = Models.load()
    cfg = TrackConfig(max_frames=args.max_frames)
    strategy = LandmarkStrategy()
    rows = []
    for clip in sorted(args.clips.glob("*.mp4")):
        start = time.perf_counter()
        res = track_video(clip, args.out / f"{clip.stem}.usd", cfg, models=models, strategy=strategy,
                          preview=args.out / f"{clip.stem}_preview.mp4", progress=False)
        row = {"clip": clip.name, **clip_figures(res, models, strategy), "preview": str(res.preview),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
    print(json.dumps({"bench": "real_clips", "threads": torch.get_num_threads(), "clips": rows}))


if __name__ == "__main__":
    main()
