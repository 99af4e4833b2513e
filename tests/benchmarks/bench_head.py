"""Benchmark of the head network on this CPU; prints ONE JSON line.

Per preset: parameter counts; posed SDF points/s (forward with deformation, no grad, ``--points`` random
points in the head box evaluated in chunks of ``--chunk``); deformation-only points/s; the time of one
deformation-with-Jacobian pass over 20k vertices (what one Newton step of the fixed-topology solver costs);
and, on ``--compare-points`` points, SDF points/s of both ensemble evaluations (``knn`` vs ``dense``).
Throughput is the best of ``--repeats`` runs (the machine is shared; the load average is reported).
With ``--cpu-time`` the run uses one thread and measures CPU seconds of that thread (``time.thread_time``),
which time-slicing by other processes on a shared machine does not inflate: figures are per core.

    python tests/benchmarks/bench_head.py [--points 100000] [--chunk 8192] [--threads 2] [--cpu-time]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch
from _timing import best_time

from model.config import preset
from model.head import HeadLayer






def bench_preset(name: str, points: int, chunk: int, compare_points: int, repeats: int,
                 clock=time.perf_counter) -> dict:
    torch.manual_seed(0)
    cfg = preset(name)
    layer = HeadLayer(cfg).eval()
    z_id = torch.randn(cfg.id_dim) * 0.05
    z_ex = torch.randn(cfg.expr_dim) * 0.05
    x = (torch.rand(points, 3) - 0.5) * 1.2
    chunks = x.split(chunk)
    out: dict = {"params_total": sum(p.numel() for p in layer.parameters()),
                 "params_sdf_ensemble": sum(p.numel() for p in layer.sdf_ensemble.parameters()),
                 "params_deformation": sum(p.numel() for p in layer.deformation.parameters()),
                 "id_dim": cfg.id_dim, "expr_dim": cfg.expr_dim, "evaluation": cfg.evaluation}
    with torch.no_grad():
        t = best_time(lambda: [layer(c, z_id, z_ex) for c in chunks], repeats, clock)
        out["sdf_points_per_s"] = round(points / t)
        t = best_time(lambda: [layer.deform(c, z_id, z_ex) for c in chunks], repeats, clock)
        out["deform_points_per_s"] = round(points / t)
        v = x[:20000]
        t = best_time(lambda: layer.deform_with_jacobian(v, z_id, z_ex), repeats, clock)
        out["deform_jacobian_20k_s"] = round(t, 4)
        xc = x[:compare_points].split(chunk)
        for mode in ("knn", "dense"):
            other = HeadLayer(dataclasses.replace(cfg, evaluation=mode)).eval()
            other.load_state_dict(layer.state_dict())
            t = best_time(lambda: [other(c, z_id, z_ex) for c in xc], max(1, repeats - 1), clock)
            out[f"sdf_points_per_s_{mode}"] = round(compare_points / t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--compare-points", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default="default,mononphm")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, CPU-time clock (per-core figures)")
    args = ap.parse_args()
    if args.cpu_time:
        args.threads = 1
    torch.set_num_threads(args.threads)
    result = {"bench": "head", "threads": args.threads, "points": args.points, "chunk": args.chunk,
              "clock": "thread_time" if args.cpu_time else "wall",
              "load_avg_1min_before": round(os.getloadavg()[0], 2)}
    for name in args.presets.split(","):
        result[name] = bench_preset(name, args.points, args.chunk, args.compare_points, args.repeats,
                                    time.thread_time if args.cpu_time else time.perf_counter)
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
