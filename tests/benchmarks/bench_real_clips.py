"""The tracker on real footage (../shared/real-video): frames tracked, identity spread, speed, a preview.

For each clip: the tracker at default settings with a preview video (kept in ``--out``, to look at), the
share of frames with a tracked (or held) face, and the spread of the per-frame feed-forward identity codes
(the regressor's z_id of every tracked crop): the mean over dimensions of their standard deviation across
frames, divided by the standard deviation of the head model's training identity codes (0 = the same
identity every frame; 1 = as different as two random training identities). The tracker itself keeps one
identity; this number says how stable the per-frame prediction it starts from is.

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

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker.crop import crop_frames  # noqa: E402
from tracker.decode import open_video  # noqa: E402
from tracker.pipeline import TrackConfig, track_video  # noqa: E402
from tracker.predict import Models, predict  # noqa: E402


def identity_spread(models: Models, video: Path, cfg: TrackConfig, every: int) -> dict:
    codes = []
    stream = open_video(video)
    for i, crop in enumerate(crop_frames(stream, cfg.crop.setup(), str(video))):
        if cfg.max_frames is not None and i >= cfg.max_frames:
            break
        if crop.image is not None and i % every == 0:
            codes.append(predict(models, crop.image).z_id[0])
    stream.close()
    z = torch.stack(codes)
    train_std = models.codes["z_id"].std(0).mean()
    return {"frames_used": len(codes), "relative_spread": round(float(z.std(0).mean() / train_std), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(os.environ.get("NPHM_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--clips", type=Path, default=shared / "real-video")
    ap.add_argument("--out", type=Path, required=True, help="folder for the previews and animations")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--every", type=int, default=3, help="identity spread from every k-th frame")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    models = Models.load()
    cfg = TrackConfig(max_frames=args.max_frames)
    rows = []
    for clip in sorted(args.clips.glob("*.mp4")):
        start = time.perf_counter()
        res = track_video(clip, args.out / f"{clip.stem}.usd", cfg, models=models,
                          preview=args.out / f"{clip.stem}_preview.mp4", progress=False)
        rows.append({"clip": clip.name, "frames": res.frames, "tracked_or_held": res.tracked + res.held,
                     "fraction_tracked": round((res.tracked + res.held) / res.frames, 4), "gaps": res.gaps,
                     "fps": round(res.fps, 3), "seconds": round(time.perf_counter() - start, 1),
                     "mean_confidence": round(float(res.track.confidence.mean()), 3),
                     "identity_spread": identity_spread(models, clip, cfg, args.every),
                     "preview": str(res.preview)})
    print(json.dumps({"bench": "real_clips", "threads": torch.get_num_threads(), "clips": rows}))


if __name__ == "__main__":
    main()
