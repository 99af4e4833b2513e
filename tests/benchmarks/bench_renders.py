"""Speed of the synthetic head world's renders and videos on this machine; prints ONE JSON line.

    python tests/benchmarks/bench_renders.py [--n 30] [--res 256] [--frames 50] [--video-res 512]

Figures: ``renders_per_s`` (complete dataset samples written by ``generate_renders``: ICT head, camera,
Embree ray casting, shading, degradations, compressed npz), ``render_geometry_s`` / ``shade_s`` (mean
seconds per sample of the two main stages), and ``video_frames_per_s`` (``generate_videos``: rendered,
shaded and H.264-encoded frames). ``*_cpu_s*`` are process CPU seconds (all threads) per item, a figure
less sensitive to other load on the machine. The first sample/video is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="renders to time")
    ap.add_argument("--res", type=int, default=256, help="render size")
    ap.add_argument("--frames", type=int, default=50, help="video frames to time")
    ap.add_argument("--video-res", type=int, default=512, help="video size")
    ap.add_argument("--ict", default=None, help="ICT-FaceKit path (default: the shared one)")
    args = ap.parse_args()

    from train.camera import ViewSamplerConfig, sample_view
    from train.ict import default_ict_path, load_ict
    from train.render import eye_centres, framing_points, head_vertices, ict_render_mesh, render_head
    from train.renders_data import generate_renders
    from train.sampler import sample_expression, sample_identity
    from train.shading import sample_appearance, shade
    from train.video import generate_videos

    ict = args.ict or default_ict_path()
    with tempfile.TemporaryDirectory() as tmp:
        generate_renders(f"{tmp}/warm", 1, args.res, seed=0, ict_path=ict, progress=False)
        t0, c0 = time.perf_counter(), time.process_time()
        generate_renders(f"{tmp}/r", args.n, args.res, seed=1, ict_path=ict, progress=False)
        renders_s, renders_cpu = time.perf_counter() - t0, time.process_time() - c0

        kit = load_ict(ict)
        mesh = ict_render_mesh(kit.triangles, kit.landmarks68)
        rng = np.random.default_rng(0)
        t_geom = t_shade = 0.0
        for _ in range(min(args.n, 10)):
            head = head_vertices(kit, sample_identity(rng, 1)[0], sample_expression(rng, 1, kit.expression_names)[0])
            view = sample_view(rng, ViewSamplerConfig(), framing_points(head.canonical), args.res, args.res)
            a = time.perf_counter()
            g = render_head(head, mesh, view.camera, view.pose)
            b = time.perf_counter()
            shade(g, sample_appearance(rng), head.canonical[mesh.landmarks], eye_centres(head.canonical, mesh), rng)
            t_geom += b - a
            t_shade += time.perf_counter() - b
        k = min(args.n, 10)

        generate_videos(f"{tmp}/vw", 1, frames=2, resolution=args.video_res, seed=0, ict_path=ict, progress=False)
        t0, c0 = time.perf_counter(), time.process_time()
        generate_videos(f"{tmp}/v", 1, frames=args.frames, resolution=args.video_res, seed=1, ict_path=ict,
                        progress=False)
        video_s, video_cpu = time.perf_counter() - t0, time.process_time() - c0

    print(json.dumps({
        "renders_per_s": round(args.n / renders_s, 2), "render_cpu_s": round(renders_cpu / args.n, 3),
        "render_res": args.res, "n_renders": args.n,
        "render_geometry_s": round(t_geom / k, 4), "shade_s": round(t_shade / k, 4),
        "video_frames_per_s": round(args.frames / video_s, 2),
        "video_cpu_s_per_frame": round(video_cpu / args.frames, 3), "video_res": args.video_res,
        "n_frames": args.frames, "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
