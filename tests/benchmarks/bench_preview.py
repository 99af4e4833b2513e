"""Speed of the tracker's preview video (tracker/preview.py) on this machine; prints ONE JSON line.

    python tests/benchmarks/bench_preview.py [--res 512] [--repeats 5] [--embree] [--ict PATH]

Figures (milliseconds per frame, best of ``--repeats`` after a warm-up; ``*_cpu_ms`` are CPU seconds of the
calling thread, steadier than wall time when other jobs share the machine):

- ``overlay_ms_10k`` / ``overlay_ms_40k``: :func:`render_overlay` (rasterise + shade + blend) of a closed
  head-sized ellipsoid (icosphere with 10,242 / 40,962 vertices, 16 x 23 x 20 cm, 60 cm from the camera)
  filling ~60 % of the height of a ``--res`` x ``--res`` frame; ``raster_ms_*``: the rasterisation alone.
- ``overlay_ms_ict``: the same for the ICT-FaceKit neutral head (26,719 vertices, 52,220 triangles, open
  mesh, all parts) when the shared data is there (``NPHM_SHARED`` or ``<repo>/../shared``), else null.
- ``encode_ms``: :class:`PreviewWriter` encoding one ``--res`` frame (H.264, preset veryfast, labels on);
  ``encode_sbs_ms``: the same side by side (twice the width).
- ``embree_hits_ms_10k`` / ``_40k`` (with ``--embree``): the alternative considered, Embree ray casting
  (``trimesh.ray.ray_pyembree``, scene rebuilt per frame, one ray per pixel of the mesh's screen box, first
  hits only: no shading or blending), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from _timing import best_time

from tracker.preview import PreviewConfig, PreviewWriter, rasterize, render_overlay


def head_ellipsoid(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Head-sized ellipsoid (metres) in OpenCV camera space, 0.6 m in front of the camera."""
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    v = np.asarray(m.vertices) * [0.08, 0.115, 0.10] + [0.0, 0.0, 0.6]
    return v, np.asarray(m.faces)


def ict_head(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """ICT neutral head (cm, +Y up, face towards +Z) turned to face an OpenCV camera 60 cm away, or None."""
    if not path.is_file():
        return None
    kit = np.load(path)
    v = kit["neutral"].astype(np.float64)
    v = v - (v.min(0) + v.max(0)) / 2
    v = v * [1.0, -1.0, -1.0] + [0.0, 0.0, 60.0]  # rotate 180 deg about x: y down, face towards -z
    return v, kit["triangles"].astype(np.int64)


def camera_for(vertices: np.ndarray, res: int, fill: float = 0.6) -> np.ndarray:
    """Intrinsics ``[3, 3]`` that make the mesh ``fill`` of the frame height, centred."""
    h = np.ptp(vertices[:, 1] / vertices[:, 2])
    f = fill * res / h
    c = (res - 1) / 2
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def embree_hits(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, res: int) -> np.ndarray:
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    inter = RayMeshIntersector(trimesh.Trimesh(vertices, faces, process=False))
    uvw = vertices @ K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    lo = np.clip(np.floor(uv.min(0)), 0, res - 1).astype(int)
    hi = np.clip(np.ceil(uv.max(0)), 0, res - 1).astype(int)
    uu, vv = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    d = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)], 1) @ np.linalg.inv(K).T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return inter.intersects_first(np.zeros_like(d), d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=512, help="frame width = height")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (best is reported)")
    ap.add_argument("--embree", action="store_true", help="also time the Embree ray-casting alternative")
    ap.add_argument("--ict", default=None, help="ICT-FaceKit npz (default: the shared one)")
    args = ap.parse_args()
    res, n = args.res, args.repeats

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
    out: dict[str, object] = {"res": res}
    for label, sub in (("10k", 5), ("40k", 6)):
        v, f = head_ellipsoid(sub)
        K = camera_for(v, res)
        out[f"n_vertices_{label}"] = len(v)
        out[f"covered_fraction_{label}"] = round(float(rasterize(v, f, K, res, res).mask.mean()), 3)
        out[f"overlay_ms_{label}"] = round(1e3 * best_time(lambda: render_overlay(frame, v, f, K), n), 1)
        out[f"overlay_cpu_ms_{label}"] = round(
            1e3 * best_time(lambda: render_overlay(frame, v, f, K), n, clock=time.thread_time), 1)
        out[f"raster_ms_{label}"] = round(
            1e3 * best_time(lambda: rasterize(v, f, K, res, res, cull_back_faces=True), n), 1)
        if args.embree:
            out[f"embree_hits_ms_{label}"] = round(1e3 * best_time(lambda: embree_hits(v, f, K, res), n), 1)

    shared = Path(os.environ.get("NPHM_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
    ict = ict_head(Path(args.ict) if args.ict else shared / "ict-facekit" / "ict_facekit_light.npz")
    out["overlay_ms_ict"] = None
    if ict is not None:
        v, f = ict
        K = camera_for(v, res)
        out["overlay_ms_ict"] = round(1e3 * best_time(lambda: render_overlay(frame, v, f, K), n), 1)
        out["overlay_cpu_ms_ict"] = round(
            1e3 * best_time(lambda: render_overlay(frame, v, f, K), n, clock=time.thread_time), 1)

    frames = 30
    with tempfile.TemporaryDirectory() as tmp:
        for key, sbs in (("encode_ms", False), ("encode_sbs_ms", True)):
            with PreviewWriter(Path(tmp) / f"{key}.mp4", 30.0, PreviewConfig(side_by_side=sbs)) as w:
                w.write(frame, frame, 0, "tracked")  # opens the encoder
                t0 = time.perf_counter()
                for i in range(frames):
                    w.write(np.roll(frame, i, axis=1), None, i, "tracked")
                t_write = time.perf_counter() - t0
                t0 = time.perf_counter()
            t_flush = time.perf_counter() - t0  # frames still buffered in the encoder
            out[key] = round(1e3 * (t_write + t_flush) / frames, 1)

    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    out["cpu_count"] = os.cpu_count()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
