"""Expression capture on real footage: does the fitted face move as much as the detected one?

Tracks each clip at default settings (or reads existing track files with ``--tracks``) and prints, per clip,
the measures of :mod:`train.expression_metrics` (feature spread ratio and correlation of the fitted against
the detected landmarks for mouth opening, eyes, brows and mouth width; lips and eyes reprojection p95), the
frames per second, and the targets of the expression issue. One JSON line::

    python tests/benchmarks/bench_expression_capture.py --out previews/ --threads 2
    python tests/benchmarks/bench_expression_capture.py --tracks previews/d6.track.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker.trackfile import load_track  # noqa: E402
from train.expression_metrics import track_expression_features  # noqa: E402

TARGETS = {"ratio": [0.8, 1.2], "corr": {"mouth_opening": 0.9, "eyes": 0.8, "brows": 0.8, "mouth_width": 0.9},
           "lips_and_eyes_reprojection_p95_pct": 3.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(os.environ.get("NPHM_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--clips", type=Path, default=shared / "real-video", help="folder of .mp4 clips")
    ap.add_argument("--tracks", type=Path, nargs="*", default=None, help="measure these track files instead")
    ap.add_argument("--out", type=Path, default=Path("previews"), help="folder for animations, tracks, previews")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--no-preview", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--identity-prior", default=None, choices=("regressed", "centre", "none"),
                    help="the landmark tracker's identity prior (LandmarkStrategy.identity_prior) [default: its own]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if args.tracks:
        for path in args.tracks:
            rows.append({"track": str(path), **track_expression_features(load_track(path))})
    else:
        from tracker.landmark_tracker import LandmarkStrategy
        from tracker.pipeline import TrackConfig, track_video
        from tracker.predict import Models

        clips = sorted(args.clips.glob("*.mp4"))
        if not clips:
            raise SystemExit(f"error: {args.clips}: no .mp4 clips")
        args.out.mkdir(parents=True, exist_ok=True)
        models = Models.load()
        strategy = LandmarkStrategy(identity_prior=args.identity_prior) if args.identity_prior else None
        for clip in clips:
            start = time.perf_counter()
            preview = None if args.no_preview else args.out / f"{clip.stem}_preview.mp4"
            res = track_video(clip, args.out / f"{clip.stem}.usd", TrackConfig(max_frames=args.max_frames),
                              models=models, strategy=strategy, preview=preview, progress=False)
            rows.append({"clip": clip.name, "frames": res.frames, "fps": round(res.fps, 2),
                         "seconds": round(time.perf_counter() - start, 1),
                         **track_expression_features(res.track), "preview": None if preview is None else str(preview)})
    print(json.dumps({"bench": "expression_capture", "threads": torch.get_num_threads(), "targets": TARGETS,
                      "clips": rows}))


if __name__ == "__main__":
    main()
