"""Benchmark of single-image test-time optimisation (tracker/tto.py) on this CPU; prints ONE JSON line.

For each canonical-mesh resolution (marching-cubes grid, default 64 and 128): extract the mean identity's
fixed-topology mesh from the default head weights, ray-cast a 128 x 128 target image of a known
expression and pose (as in tests/tracker/test_tto.py), and time ``optimise`` with the default stages
(100 steps, early stopping disabled so every run does 100 steps). Reports seconds per TTO, per step,
the vertex count, and the mean vertex error (mm) before and after. One thread by default.

    python tests/benchmarks/bench_tto.py [--resolutions 64 128] [--threads 1] [--image 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the test's ray caster builds the targets: import tests.* as a script

from model.checkpoint import load_checkpoint  # noqa: E402
from model.topology import FixedTopology  # noqa: E402
from tests.tracker.test_tto import _raycast_targets  # noqa: E402
from tracker import tto  # noqa: E402
from train.camera import euler_to_matrix  # noqa: E402

WEIGHTS = REPO / "model" / "weights" / "head_default.pt"


def run(resolution: int, image: int, layer, codes, meta) -> dict:
    z_id = codes["z_id"].mean(0, keepdim=True)
    z_neutral = codes["z_ex"][codes["is_neutral"]].mean(0, keepdim=True)
    t = time.perf_counter()
    topology = FixedTopology.extract(layer, z_id, z_neutral, meta["bbox_min"], meta["bbox_max"], resolution)
    extract_s = time.perf_counter() - t
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ torch.as_tensor(
        euler_to_matrix(np.float64(20.0), np.float64(10.0), np.float64(-5.0)), dtype=torch.float32)
    pose_gt = torch.cat([tto.matrix_to_axis_angle(R), torch.tensor([0.02, -0.05, 4.0])])
    f = 150.0 * image / 64
    K = np.array([[f, 0.0, (image - 1) / 2], [0.0, f, (image - 1) / 2], [0.0, 0.0, 1.0]])
    z_gt = codes["z_ex"][10:11]
    with torch.no_grad():
        x_gt, _ = tto.posed_mesh(layer, topology, z_id, z_gt)
        cam_gt = tto.apply_pose(x_gt, pose_gt)
        n_cam = tto.vertex_normals(x_gt, topology.faces) @ R.T
    targets = _raycast_targets(cam_gt.double().numpy(), topology.faces.numpy(), n_cam.double().numpy(),
                               topology.canonical_vertices.double().numpy(), K, image)
    start = pose_gt + torch.tensor([0.08, -0.06, 0.05, 0.03, 0.02, 0.15])
    stages = [dataclasses.replace(s, patience=10**6) for s in tto.default_stages(100)]

    def err(z_ex, pose):
        with torch.no_grad():
            x, _ = tto.posed_mesh(layer, topology, z_id, z_ex)
            return float((tto.apply_pose(x, pose) - cam_gt).norm(dim=-1).mean()) * tto.MM_PER_UNIT

    t = time.perf_counter()
    pose0 = tto.init_pose_from_point_map(targets)
    init_s = time.perf_counter() - t
    res = tto.optimise(layer, topology, targets, z_id, z_neutral, start, stages)
    return {
        "resolution": resolution, "vertices": int(len(topology.canonical_vertices)), "image": image,
        "extract_s": round(extract_s, 3), "pose_init_s": round(init_s, 3),
        "pose_init_error_mm": round(err(z_neutral, pose0), 2),
        "tto_s": round(res.seconds, 3), "steps": res.steps_run, "s_per_step": round(res.seconds / res.steps_run, 4),
        "vertex_error_mm_start": round(err(z_neutral, start), 2), "vertex_error_mm_end": round(err(res.z_ex, res.pose), 2),
        "translation_error_mm_end": round(float((res.pose[3:] - pose_gt[3:]).norm()) * tto.MM_PER_UNIT, 2),
        "vertex_error_mm_end_at_true_pose": round(err(res.z_ex, pose_gt), 2),
        "vertex_error_mm_neutral_at_true_pose": round(err(z_neutral, pose_gt), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--image", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layer, codes, meta = load_checkpoint(WEIGHTS)
    rows = [run(r, args.image, layer, codes, meta) for r in args.resolutions]
    print(json.dumps({"bench": "tto", "threads": args.threads, "route": "fixed-topology vertex splatting",
                      "runs": rows}))


if __name__ == "__main__":
    main()
