"""How well the head pose is initialised from a canonical point map: ground-truth maps vs the encoder's (issue 6).

On held-out renders of a ``nphm-train data renders`` folder, :func:`tracker.tto.init_pose_from_point_map`
(PnP from the canonical point map and mask) is run twice per render: on the render's ground-truth canonical
map and head mask, and on the shipped encoders' predicted map and mask (:func:`tracker.predict.predict`),
both with the render's true intrinsics. Printed: mean and median rotation error against the render's
model-to-camera rotation (degrees), the mean ratio of the estimated to the true camera distance, and the
spread (norm of the per-axis std over the face pixels both masks keep) of the predicted canonical points
relative to the ground truth's (1 = right, below 1 = shrunk towards the mean).

    python tests/benchmarks/bench_pose_init.py --data data/renders_small --max-images 12 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from train.renders_data import load_sample, read_manifest  # noqa: E402
from tracker.predict import Models, predict  # noqa: E402
from bench_tracker import pose_error  # noqa: E402
from tracker.tto import TTOTargets, init_pose_from_point_map  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="renders folder (its held-out split)")
    ap.add_argument("--max-images", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = Models.load()
    _, entries = read_manifest(args.data, "heldout", args.max_images)
    gt_err, pred_err, spread = [], [], []
    for _, f in entries:
        s = load_sample(args.data / f)
        K = torch.as_tensor(s["K"], dtype=torch.float32)
        truth = TTOTargets(normals=torch.from_numpy(s["normals"].astype(np.float32)),
                           point_map=torch.from_numpy(s["canonical"].astype(np.float32)),
                           mask=torch.from_numpy(s["mask"]), K=K)
        camera = (s["model_to_camera_R"], s["model_to_camera_t"])
        gt_err.append(pose_error(init_pose_from_point_map(truth), *camera))
        pred = predict(models, s["rgb"])
        pred_err.append(pose_error(init_pose_from_point_map(pred.targets(0, s["K"])), *camera))
        both = s["face_mask"] & (pred.mask[0].numpy() > 0.5)
        if both.sum() >= 10:
            P, G = pred.point_map[0].numpy()[both], s["canonical"].astype(np.float32)[both]
            spread.append(float(np.linalg.norm(P.std(0)) / np.linalg.norm(G.std(0))))
    out = {"bench": "pose_init", "images": len(entries)}
    for name, e in (("ground_truth_map", np.array(gt_err)), ("predicted_map", np.array(pred_err))):
        out[name] = {"rotation_error_deg_mean": round(float(e[:, 0].mean()), 2),
                     "rotation_error_deg_median": round(float(np.median(e[:, 0])), 2),
                     "distance_ratio_mean": round(float(e[:, 1].mean()), 3)}
    out["predicted_point_spread_over_true"] = round(float(np.mean(spread)), 3) if spread else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
