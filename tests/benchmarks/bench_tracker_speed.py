"""End-to-end tracker speed per stage and memory against clip length (issue 6).

Builds a long 512x512 clip from the shipped synthetic example (its 75 frames played forwards and backwards,
so the face moves continuously), tracks it with the default settings into a USD file, and samples the
process's resident memory every 0.2 s. Memory must not grow with the clip's length: the figure printed is
the peak RSS and the RSS growth between 20 % and 100 % of the run. Stages (``TrackResult.stage_seconds``) are
printed per frame and in total: the once-only ones (setup, identity, mesh, track file) are in both, and
``seconds_outside_stages`` is the rest of the run. With two threads or more the identity's mesh and curve
points are made in a forked child while frames are fitted (:mod:`tracker.background`): its seconds and peak
memory are printed beside the stages (``background_seconds``, ``background_rss_mb_peak``).

Prints one JSON line::

    python tests/benchmarks/bench_tracker_speed.py --frames 300 --threads 2
    python tests/benchmarks/bench_tracker_speed.py --frames 300 --threads 1   # the one-thread figure
    python tests/benchmarks/bench_tracker_speed.py --frames 3000 --threads 2   # about 4 min on 2 cores at 9ab9b43
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker.pipeline import TrackConfig, track_video  # noqa: E402
from tracker.predict import Models  # noqa: E402

EXAMPLE = ROOT / "examples" / "synthetic_head" / "video_0000.mp4"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def make_clip(path: Path, frames: int) -> Path:
    with av.open(str(EXAMPLE)) as c:
        images = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    order = images + images[::-1][1:-1]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"crf": "20"})
        s.width, s.height, s.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(order[i % len(order)], format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preview", action="store_true", help="also write the preview video")
    ap.add_argument("--resolution", type=int, default=None,
                    help="export marching-cubes resolution [default: TrackConfig's]")
    args = ap.parse_args()
    cfg = TrackConfig(device=args.device)
    if args.resolution:
        cfg = dataclasses.replace(cfg, export_resolution=args.resolution)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", args.frames)
        models = Models.load(device=args.device)
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.perf_counter(), rss_mb()))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        res = track_video(clip, Path(tmp) / "anim.usd", cfg, models=models,
                          preview=Path(tmp) / "preview.mp4" if args.preview else None, progress=False)
        done.set()
        sampler.join()
        t = np.array([s[0] - start for s in samples])
        m = np.array([s[1] for s in samples])
        at = lambda q: float(m[np.searchsorted(t, q * t[-1]).clip(0, len(m) - 1)])  # noqa: E731
        print(json.dumps({
            "bench": "tracker_speed", "frames": res.frames, "device": args.device,
            "threads": torch.get_num_threads(), "preview": args.preview,
            "export_resolution": cfg.export_resolution,
            "vertices": res.export.n_vertices,
            "fps_end_to_end": round(res.fps, 3), "seconds": round(res.seconds, 1),
            "seconds_per_frame_by_stage": {k: round(v / res.frames, 4) for k, v in res.stage_seconds.items()},
            "seconds_by_stage": {k: round(v, 2) for k, v in res.stage_seconds.items()},
            "seconds_outside_stages": round(res.seconds - sum(res.stage_seconds.values()), 2),
            "tracked": res.tracked, "held": res.held, "gaps": res.gaps,
            "rss_mb_peak": round(float(m.max()), 1), "rss_mb_at_20pct": round(at(0.2), 1),
            "rss_mb_at_50pct": round(at(0.5), 1), "rss_mb_at_80pct": round(at(0.8), 1),
            "rss_mb_at_end": round(float(m[-1]), 1),
            "background_seconds": None if res.background_seconds is None else round(res.background_seconds, 2),
            "background_rss_mb_peak": (round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
                                       if res.background_seconds is not None else None),
            "output_mb": round(res.export.bytes_written / 1e6, 2)}))


if __name__ == "__main__":
    main()
