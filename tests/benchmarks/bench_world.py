"""Speed of the synthetic head world's SDF ground truth on this machine; prints ONE JSON line.

    python tests/benchmarks/bench_world.py [--heads 6] [--points 24576] [--ict PATH]

Figures:
``load_ict_s`` (reading the npz), ``outer_surface_s`` (building one head's outer surface: vertices,
mouth/eye/neck handling, union of shells), ``sdf_points_per_s`` (``geometry.signed_distance`` on
``--points`` points, 2/3 near the surface and 1/3 uniform in the box, as in a training sample),
``surface_points_per_s`` (``geometry.sample_surface``), and ``heads_per_s`` / ``cpu_s_per_head``
(``generate_heads_dataset`` with the default sample sizes, complete npz files written; wall-clock and
process CPU time, since the machine may be shared). Each figure is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=6, help="heads to generate for heads_per_s")
    ap.add_argument("--points", type=int, default=24576, help="SDF query points per timing")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the per-call timings")
    ap.add_argument("--ict", default=None, help="ICT-FaceKit path (default: the shared one)")
    args = ap.parse_args()

    from train.frame import ict_to_model
    from train.geometry import outer_surface, sample_surface, sample_volume, signed_distance, surface_topology
    from train.heads_data import HeadsDataConfig, generate_heads_dataset
    from train.ict import default_ict_path, load_ict
    from train.sampler import sample_expression, sample_identity

    t = time.perf_counter()
    kit = load_ict(args.ict or default_ict_path())
    load_s = time.perf_counter() - t
    topology = surface_topology(kit.triangles, kit.n_vertices)
    rng = np.random.default_rng(0)

    surface_s, sdf_rate, surf_rate = [], [], []
    for _ in range(args.repeats):
        w_id = sample_identity(rng, 1)[0]
        w_ex = sample_expression(rng, 1, kit.expression_names)[0]
        vertices = ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))
        t = time.perf_counter()
        surface = outer_surface(vertices, topology)
        surface_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        base = sample_surface(surface, rng, args.points).points
        surf_rate.append(args.points / (time.perf_counter() - t))
        n_near = 2 * args.points // 3
        points = np.concatenate([base[:n_near] + rng.normal(0, 0.01, (n_near, 3)),
                                 sample_volume(rng, args.points - n_near)])
        t = time.perf_counter()
        signed_distance(surface, points)
        sdf_rate.append(args.points / (time.perf_counter() - t))

    with tempfile.TemporaryDirectory() as tmp:
        config = HeadsDataConfig(heldout_identities=0, heldout_expressions=0, extreme_eval=False)
        c0, t0 = time.process_time(), time.perf_counter()
        result = generate_heads_dataset(tmp, 1, args.heads, seed=0, kit=kit, config=config, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_head = config.n_surface + config.n_near + config.n_space

    print(json.dumps({
        "load_ict_s": round(load_s, 3),
        "outer_surface_s": round(statistics.median(surface_s), 3),
        "sdf_points_per_s": round(statistics.median(sdf_rate)),
        "surface_points_per_s": round(statistics.median(surf_rate)),
        "heads_per_s": round(result.n_written / wall, 3),
        "cpu_s_per_head": round(cpu / result.n_written, 3),
        "points_per_head": per_head,
        "sdf_query_points": args.points,
        "heads": result.n_written,
    }))


if __name__ == "__main__":
    main()
