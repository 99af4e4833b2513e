"""Benchmark of the tracker's front end on this CPU; prints ONE JSON line.

Figures, each the best of ``--repeats`` passes over the clip (the machine is shared; the load average is
reported): PyAV decode to RGB frames per second; face detection (OpenCV Haar, default config) ms per
frame; crop ms per frame (smoothing + resampling to ``--size``, detection excluded); the whole front end
(decode + detect + crop) frames per second. Default clip: the bundled 512x512 example.

    python tests/benchmarks/bench_frontend.py [--video examples/synthetic_head/video_0000.mp4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tracker.crop import (CropConfig, FaceCropper, OneEuroSmoother, crop_affine, crop_frames, crop_square,
                          square_from_box)
from tracker.decode import open_video
from tracker.detect import build_detector

from _timing import best_time

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="crop side in pixels")
    args = ap.parse_args()

    with open_video(args.video) as stream:
        info = stream.info
        frames = list(stream)                        # kept only to time detection and crop apart
    n = len(frames)

    def decode() -> None:
        with open_video(args.video) as s:
            for _ in s:
                pass

    detector = build_detector("auto")
    boxes = [detector.detect(f.image) for f in frames]

    def detect() -> None:
        for f in frames:
            detector.detect(f.image)

    config = CropConfig(size=args.size)
    squares = [square_from_box(b[0], config.scale, config.shift_y) if b else None for b in boxes]

    def crop() -> None:
        smoother = OneEuroSmoother()
        last = None
        for f, sq in zip(frames, squares):
            last = smoother(f.time_s, sq) if sq is not None else last
            if last is not None:
                crop_square(f.image, last, args.size)
                crop_affine(last, args.size)

    def front_end() -> None:
        cropper = FaceCropper(detector, config, OneEuroSmoother())
        for _ in crop_frames(open_video(args.video), cropper, str(args.video)):
            pass

    t_decode = best_time(decode, args.repeats, warmup=False)
    t_detect = best_time(detect, args.repeats, warmup=False)
    t_crop = best_time(crop, args.repeats, warmup=False)
    t_all = best_time(front_end, args.repeats, warmup=False)
    import cv2

    print(json.dumps({
        "bench": "frontend", "video": str(args.video), "size": [info.width, info.height], "frames": n,
        "decode_fps_pyav": round(n / t_decode, 1),
        "detect_ms_per_frame": round(1000 * t_detect / n, 2),
        "detect_found_fraction": round(sum(bool(b) for b in boxes) / n, 4),
        "crop_ms_per_frame": round(1000 * t_crop / n, 3),
        "frontend_fps": round(n / t_all, 1),
        "detector": detector.name, "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(),
        "crop_size": args.size, "repeats": args.repeats, "loadavg_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
