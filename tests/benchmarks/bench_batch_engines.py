"""Folder tracking on the local process pool vs on a local Ray: Ray's overhead and its per-task start-up cost.

Cuts ``--clips`` short clips (``--frames`` frames each, from different points of the shipped synthetic
example) into a temporary folder and tracks the folder twice with the default settings into USD files, as
``nphm-track clips/ --out out/ --format .usd`` does: with ``--engine local`` (``--workers`` processes) and
with ``--engine ray`` (a local Ray with ``--workers`` CPUs, one CPU per task, started and shut down by the
run, as the command does). Both give every task one thread per CPU. Then times the pieces of a task's
start-up on each engine with a no-op task: a cold worker (a fresh process: Ray's or the pool's) and a warm
one, and Ray's own start and shut-down.

Prints one JSON line::

    python tests/benchmarks/bench_batch_engines.py --clips 4 --frames 20 --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker.batch import track_folder  # noqa: E402
from tracker.local_engine import LocalEngine  # noqa: E402
from tracker.pipeline import TrackConfig, track_video_quietly  # noqa: E402
from tracker.ray_engine import RayEngine, import_ray  # noqa: E402

EXAMPLE = ROOT / "examples" / "synthetic_head" / "video_0000.mp4"


def make_clips(folder: Path, clips: int, frames: int) -> list[Path]:
    """``clips`` clips of ``frames`` frames, clip i starting at frame ``i * 10`` of the example (wrapping)."""
    with av.open(str(EXAMPLE)) as c:
        stream = c.streams.video[0]
        rate = stream.average_rate or 25
        images = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    paths = []
    for i in range(clips):
        path = folder / f"clip_{i}.mp4"
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=rate, options={"crf": "20"})
            s.width, s.height, s.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
            for k in range(frames):
                for p in s.encode(av.VideoFrame.from_ndarray(images[(i * 10 + k) % len(images)], format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
        paths.append(path)
    return paths


def noop() -> int:
    return os.getpid()


def pool_task_startup(workers: int, repeats: int) -> tuple[float, float]:
    """(first no-op task on a fresh spawn pool, s; median warm no-op, ms) — the local engine's own cost."""
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pool.submit(noop).result()
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            t = time.perf_counter()
            pool.submit(noop).result()
            warm.append(time.perf_counter() - t)
    return cold, 1e3 * statistics.median(warm)


def ray_task_startup(num_cpus: int, repeats: int) -> dict:
    """Ray's start, first (cold worker) and warm no-op task, and shut-down on a fresh local Ray."""
    ray = import_ray()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    remote = ray.remote(noop).options(num_cpus=1)
    t = time.perf_counter()
    ray.get(remote.remote())
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        ray.get(remote.remote())
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    ray.shutdown()
    return {"ray_start_s": round(start, 2), "ray_task_cold_s": round(cold, 3),
            "ray_task_warm_ms": round(1e3 * statistics.median(warm), 2),
            "ray_shutdown_s": round(time.perf_counter() - t, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="pool processes = local Ray CPUs")
    ap.add_argument("--repeats", type=int, default=20, help="warm no-op tasks timed")
    args = ap.parse_args()
    result: dict = {"clips": args.clips, "frames": args.frames, "workers": args.workers, "cpus": os.cpu_count()}
    cfg = TrackConfig()
    with tempfile.TemporaryDirectory() as tmp:
        clips = Path(tmp) / "clips"
        clips.mkdir()
        make_clips(clips, args.clips, args.frames)
        engines = {"local": LocalEngine(workers=args.workers),
                   "ray": RayEngine(num_cpus=args.workers, cpus_per_task=1)}
        for name, engine in engines.items():
            t = time.perf_counter()
            report = track_folder(clips, Path(tmp) / f"out_{name}", ext=".usd", engine=engine, progress=False,
                                  track_fn=track_video_quietly, cfg=cfg)
            wall = time.perf_counter() - t
            if report.failed:
                raise SystemExit(f"{name}: {[(f.input, f.error) for f in report.files if f.error]}")
            result[f"{name}_wall_s"] = round(wall, 2)
            result[f"{name}_task_mean_s"] = round(statistics.mean(f.seconds for f in report.files), 2)
    result["ray_over_local"] = round(result["ray_wall_s"] / result["local_wall_s"], 3)
    cold, warm = pool_task_startup(args.workers, args.repeats)
    result.update({"pool_task_cold_s": round(cold, 3), "pool_task_warm_ms": round(warm, 2)})
    result.update(ray_task_startup(args.workers, args.repeats))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
