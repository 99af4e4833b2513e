"""Single-image cost of the shipped models (issue 5): feed-forward latency and TTO seconds per image.

Feed-forward (both encoders + the regressor, :func:`tracker.predict.predict`) for a batch of 1 and of 16 crops
(per-image milliseconds, best of ``--repeats``); test-time optimisation (:func:`tracker.predict.fit_image`,
``--steps`` steps on a ``--fit-resolution`` canonical mesh) on 1 image and on 16 images one after the other
(there is no batched TTO: each image has its own codes and pose); peak resident memory of the process.
The crops are frames of the shipped synthetic example clip, cropped by the tracker's front end.

    python tests/benchmarks/bench_single_image.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from _timing import best_time  # noqa: E402
from tracker.crop import CropConfig, crop_frames  # noqa: E402
from tracker.decode import open_video  # noqa: E402
from tracker.pipeline import TrackConfig, crop_intrinsics, frame_intrinsics  # noqa: E402
from tracker.predict import Models, fit_image, predict  # noqa: E402

EXAMPLE = ROOT / "examples" / "synthetic_head" / "video_0000.mp4"


def crops(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    stream = open_video(EXAMPLE)
    K = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
    out = []
    for crop in crop_frames(stream, CropConfig().setup(), str(EXAMPLE)):
        if crop.image is not None and crop.index % 4 == 0:
            out.append((crop.image, crop_intrinsics(K, crop.crop_to_frame)))
        if len(out) == n:
            break
    stream.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--fit-resolution", type=int, default=64)
    ap.add_argument("--tto-images", type=int, default=16)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = Models.load()
    data = crops(16)
    images = np.stack([c for c, _ in data])
    predict(models, images[:2])  # warm-up
    ff1 = best_time(lambda: predict(models, images[:1]), args.repeats)
    ff16 = best_time(lambda: predict(models, images), args.repeats) / len(images)
    tto_seconds, steps = [], []
    for crop, K in data[:args.tto_images]:
        t = time.perf_counter()
        fit = fit_image(models, crop, K, tto=True, steps=args.steps, mesh_resolution=args.fit_resolution)
        tto_seconds.append(time.perf_counter() - t)
        steps.append(fit.steps)
    print(json.dumps({
        "bench": "single_image", "threads": torch.get_num_threads(),
        "feed_forward_ms_per_image_batch1": round(ff1 * 1e3, 1),
        "feed_forward_ms_per_image_batch16": round(ff16 * 1e3, 1),
        "tto_seconds_first_image": round(tto_seconds[0], 2),
        "tto_seconds_per_image_over": {"images": len(tto_seconds), "mean": round(float(np.mean(tto_seconds)), 2)},
        "tto_steps_mean": round(float(np.mean(steps)), 1), "tto_fit_resolution": args.fit_resolution,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
