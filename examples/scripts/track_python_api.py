"""Track the shipped example clip from Python and look at what came back.

    python examples/scripts/track_python_api.py [VIDEO] [OUT]

The same library calls the `nphm-track` command makes: `tracker.pipeline.track_video` (video -> animation +
track file), `tracker.bake.export_track` (track -> another format), `tracker.predict` (the networks).
"""

import sys
from pathlib import Path

from tracker.bake import export_track
from tracker.pipeline import TrackConfig, track_video
from tracker.predict import Models

HERE = Path(__file__).resolve().parent
video = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "synthetic_head" / "video_0000.mp4"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("example_anim.usd")

models = Models.load()  # the shipped weights (model/weights/)
result = track_video(video, out, TrackConfig(), models=models, preview=out.with_suffix(".preview.mp4"))
print(f"{result.frames} frames ({result.tracked} tracked, {result.gaps} without a face), {result.fps:.2f} fps")
print("seconds per stage:", {k: round(v, 1) for k, v in result.stage_seconds.items()})
track = result.track  # codes per frame, identity, camera, pose, confidence
print("identity code", track.z_id.shape, "expressions", track.z_ex.shape, "mean confidence",
      float(track.confidence.mean()))
export_track(result.track_path, out.with_suffix(".pc2"))  # re-export without re-tracking
print("wrote", out, result.track_path, out.with_suffix(".pc2"), out.with_suffix(".preview.mp4"))
