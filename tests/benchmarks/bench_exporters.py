"""Benchmark of every exporter: 20k vertices x N frames, each format measured in a fresh subprocess.

Prints ONE JSON line. Per format and frame count: ``seconds`` (open + appends + close), ``mb_written``
(all files, 1e6 bytes), ``mb_per_s`` (MB of float32 positions, V*N*12 bytes, per second),
``cpu_seconds``/``mb_per_cpu_s`` (the same per CPU second of the writing process: steadier than wall time
on a shared machine; time the kernel spends flushing the page cache is not counted) and
``peak_rss_delta_mb`` (peak resident memory while writing minus resident memory just before opening the
writer, with the kernel's peak counter reset via /proc/self/clear_refs). Frames are synthesised one at a
time, so the input itself costs no memory. Streaming formats should show the same peak at 200 and 1000
frames.

    python tests/benchmarks/bench_exporters.py                      # all formats, 200 and 1000 frames
    python tests/benchmarks/bench_exporters.py --formats pc2,usd_crate --frames 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# format key -> (target name, writer options)
FORMATS = {
    "pc2": ("anim.pc2", {}),
    "mdd": ("anim.mdd", {}),
    "usd_crate": ("anim.usd", {}),
    "usda": ("anim.usda", {}),
    "usd_blendshapes32": ("anim_skel.usd", {"blendshapes": 32}),
    "alembic": ("anim.abc", {}),
    "npz": ("anim.npz", {}),
    "glb_morph32": ("anim.glb", {"morph_targets": 32}),
    "ply_sequence": ("ply/frame_####.ply", {}),
    "obj_sequence": ("obj/", {}),
}


def _rss_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def run_one(fmt: str, n_vertices: int, n_frames: int, folder: str) -> dict:
    """Write one format in this process and return its figures."""
    import numpy as np

    from exporters import open_writer

    rows = 100
    cols = n_vertices // rows
    gy, gx = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    base = np.stack([gx, gy, 0.2 * np.cos(2 * gx) * np.cos(2 * gy)], -1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    rng = np.random.default_rng(0)
    mode = rng.normal(size=base.shape).astype(np.float32) * 0.01  # [V, 3]
    frame = np.empty_like(base)
    name, options = FORMATS[fmt]
    target = os.path.join(folder, name)
    if fmt in ("ply_sequence", "obj_sequence"):
        os.makedirs(os.path.dirname(target.rstrip("/")), exist_ok=True)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter
    except OSError:
        pass
    rss0 = _rss_mb("VmRSS:")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with open_writer(target, faces, len(base), 30.0, units_per_metre=1.0, **options) as w:
        for i in range(n_frames):
            np.multiply(mode, np.float32(np.sin(0.05 * i) + 0.001 * i), out=frame)  # distinct every frame
            frame += base
            w.append(frame)
        res = w.close()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = _rss_mb("VmHWM:")
    pos_mb = n_vertices * n_frames * 12 / 1e6
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "mb_written": round(res.bytes_written / 1e6, 1), "mb_per_s": round(pos_mb / seconds, 1),
            "mb_per_cpu_s": round(pos_mb / cpu, 1), "peak_rss_delta_mb": round(peak - rss0, 1),
            **{k: v for k, v in res.extras.items() if k != "rest_mesh"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated keys: " + ", ".join(FORMATS))
    ap.add_argument("--frames", default="200,1000", help="comma-separated frame counts")
    ap.add_argument("--vertices", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest (by wall time) is kept")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a fresh temporary folder)")
    ap.add_argument("--child", nargs=3, metavar=("FORMAT", "FRAMES", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fmt, n, folder = args.child
        print(json.dumps(run_one(fmt, args.vertices, int(n), folder)))
        return
    repo = Path(__file__).resolve().parents[2]
    out: dict = {"bench": "exporters", "vertices": args.vertices, "cpus": os.cpu_count(), "formats": {}}
    for fmt in args.formats.split(","):
        out["formats"][fmt] = {}
        for n in args.frames.split(","):
            runs = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
                    proc = subprocess.run([sys.executable, __file__, "--vertices", str(args.vertices),
                                           "--child", fmt, n, folder], capture_output=True, text=True,
                                          cwd=repo)
                if proc.returncode != 0:
                    runs = [{"error": proc.stderr.strip().splitlines()[-1:]}]
                    break
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            out["formats"][fmt][n] = min(runs, key=lambda r: r.get("seconds", 0.0))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
