"""ARKit-52 curves against the truth on held-out synthetic videos (the strong-expression set).

The synthetic head world is ICT-FaceKit, whose expression weights are ARKit's (:mod:`model.arkit`), so each
video's ``w_ex`` is a ground-truth ARKit curve. Each video is tracked at default settings (or its track is
read from ``--track-dir``); the track's ``arkit`` curves (:mod:`tracker.arkit`) are compared with the truth:

- per shape, over the shapes that move (the truth reaches ``--moves`` at least once): Pearson correlation
  over all frames of all videos, and the mean absolute error;
- the reference that does nothing: a still face (every curve 0), whose mean absolute error is the truth's
  mean; its correlation is undefined (reported as 0);
- jitter on still stretches: the mean absolute second difference of the tracked curves of the moving shapes,
  over frames where no true curve changes (``|second difference| < 1e-3`` for every shape), against the same
  figure over all frames of the truth (its motion);
- the rig's residual: the median and 95th percentile of the per-frame solve residual (mm RMS per point);
- with ``--still`` (``nphm-train data videos --still``: a neutral face, no blink, while the head turns; every
  true curve is 0): the jitter of the curves (mean absolute second difference over frames, all 52), their
  mean (false activation) and the largest weight any shape reaches.

One JSON line. The README's figures::

    nphm-train data videos --out data/videos_strong -n 3 --frames 100 --res 512 --seed 9300 --yaw 30 --strong
    nphm-train data videos --out data/videos_still -n 2 --frames 100 --res 512 --seed 9400 --yaw 30 --still
    python tests/benchmarks/bench_arkit_curves.py --videos data/videos_strong --still data/videos_still \
        --save-tracks runs/tracks_arkit
    # the same tracks, curves made again: by the solve of the tracked expression, or by another regressor
    python tests/benchmarks/bench_arkit_curves.py --videos data/videos_strong --still data/videos_still \
        --track-dir runs/tracks_arkit --resolve solve
    python tests/benchmarks/bench_arkit_curves.py --videos data/videos_strong --still data/videos_still \
        --track-dir runs/tracks_arkit --resolve regressor --regressor runs/arkit/regressor_v2.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model.arkit import ARKIT_NAMES, arkit_from_ict  # noqa: E402
from tracker.trackfile import load_track, save_track  # noqa: E402

TARGETS = {"mean_corr": 0.85, "mean_mae": 0.08}


def curve_scores(pred: np.ndarray, truth: np.ndarray, moves: float) -> dict:
    """Per-shape correlation and MAE of ``pred`` against ``truth`` (``[T, 52]``) over the moving shapes."""
    per = {}
    for j, name in enumerate(ARKIT_NAMES):
        t, p = truth[:, j], pred[:, j]
        if t.max() < moves:
            continue
        corr = float(np.corrcoef(t, p)[0, 1]) if p.std() > 1e-8 and t.std() > 1e-8 else 0.0
        per[name] = {"corr": round(corr, 3), "mae": round(float(np.abs(p - t).mean()), 4),
                     "still_face_mae": round(float(t.mean()), 4), "truth_max": round(float(t.max()), 3),
                     "pred_max": round(float(p.max()), 3)}
    return per


def jitter(pred: list[np.ndarray], truth: list[np.ndarray], cols: list[int]) -> dict:
    """Second-difference magnitude of the tracked curves on still frames vs the truth's over all frames."""
    still, moving = [], []
    for p, t in zip(pred, truth):
        d2t = np.abs(np.diff(t, 2, axis=0))  # [T-2, 52]
        d2p = np.abs(np.diff(p[:, cols], 2, axis=0))
        mask = d2t.max(1) < 1e-3
        still.append(d2p[mask])
        moving.append(d2t[:, cols])
    s = np.concatenate(still) if still else np.zeros((0, len(cols)))
    m = np.concatenate(moving)
    return {"still_frames": int(len(s)), "tracked_on_still": round(float(s.mean()), 5) if len(s) else None,
            "truth_all_frames": round(float(m.mean()), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, default=ROOT / "data" / "videos_strong")
    ap.add_argument("--track-dir", type=Path, default=None,
                    help="read <video folder name>/<video stem>.track.npz from here (as --save-tracks writes them)")
    ap.add_argument("--save-tracks", type=Path, default=None,
                    help="write the tracks made here, as <video folder name>/<video stem>.track.npz")
    ap.add_argument("--still", type=Path, default=None, help="folder of still-face videos for the jitter")
    ap.add_argument("--moves", type=float, default=0.2, help="a shape counts when its truth reaches this")
    ap.add_argument("--resolve", choices=["regressor", "solve"], default=None,
                    help="with --track-dir: make the curves again: with the landmark regressor (--regressor), or by "
                         "the bounded solve of the tracked expression")
    ap.add_argument("--regressor", type=Path, default=None,
                    help="--resolve regressor: this checkpoint [default: the shipped one]")
    ap.add_argument("--ridge", type=float, default=None, help="--resolve solve: its relative ridge")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from model.arkit_regressor import default_arkit_regressor, load_arkit_regressor
    from tracker.bake import add_arkit_curves

    regressor = load_arkit_regressor(args.regressor)[0] if args.regressor else default_arkit_regressor()
    from tracker.pipeline import TrackConfig, track_video

    videos = sorted(args.videos.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"{args.videos}: no videos (make them with `nphm-train data videos --strong`)")
    seconds = [0.0]

    def tracked(video: Path):
        if args.track_dir is not None:
            track = load_track(args.track_dir / video.parent.name / f"{video.stem}.track.npz")
            if track.arkit is None or args.resolve is not None:
                options = {} if args.ridge is None else {"ridge": args.ridge}
                add_arkit_curves(track, None if args.resolve == "solve" else regressor, **options)
            return track
        t0 = time.perf_counter()
        track = track_video(video, None, TrackConfig(), progress=False).track
        seconds[0] += time.perf_counter() - t0
        if args.save_tracks is not None:
            (args.save_tracks / video.parent.name).mkdir(parents=True, exist_ok=True)
            save_track(args.save_tracks / video.parent.name / f"{video.stem}.track.npz", track)
        return track

    preds, truths, residuals = [], [], []
    for video in videos:
        gt = np.load(video.with_suffix(".gt.npz"))
        truth = arkit_from_ict(gt["w_ex"], [str(n) for n in gt["expression_names"]])
        track = tracked(video)
        usable = track.usable
        preds.append(track.arkit[usable])
        truths.append(truth[track.frame_index[usable]])
        residuals.append(track.arkit_residual_mm[usable])
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    per = curve_scores(pred, truth, args.moves)
    cols = [ARKIT_NAMES.index(n) for n in per]
    corr = [v["corr"] for v in per.values()]
    mae = [v["mae"] for v in per.values()]
    order = sorted(per, key=lambda n: per[n]["corr"])
    res = np.concatenate(residuals)
    still = None
    if args.still is not None:
        curves = [tracked(v).arkit for v in sorted(args.still.glob("*.mp4"))]
        if not curves:
            raise SystemExit(f"{args.still}: no videos (make them with `nphm-train data videos --still`)")
        still = {"videos": len(curves), "frames": int(sum(len(c) for c in curves)),
                 "jitter": round(float(np.mean([np.abs(np.diff(c, 2, axis=0)).mean() for c in curves])), 5),
                 "mean_weight": round(float(np.mean([c.mean() for c in curves])), 4),
                 "largest_weight": round(float(max(c.max() for c in curves)), 3),
                 "largest_shape": ARKIT_NAMES[int(np.argmax(np.max([c.max(0) for c in curves], 0)))]}
    print(json.dumps({
        "bench": "arkit_curves", "videos": len(videos), "frames": int(len(pred)), "moving_shapes": len(per),
        "mean_corr": round(float(np.mean(corr)), 3), "mean_mae": round(float(np.mean(mae)), 4),
        "still_face_mean_mae": round(float(np.mean([v["still_face_mae"] for v in per.values()])), 4),
        "targets": TARGETS, "weakest": order[:8], "strongest": order[-8:][::-1],
        "jitter": jitter(preds, truths, cols), "still": still,
        "residual_mm": {"median": round(float(np.median(res)), 3), "p95": round(float(np.percentile(res, 95)), 3)},
        "track_seconds": round(seconds[0], 1), "per_shape": per}))


if __name__ == "__main__":
    main()
