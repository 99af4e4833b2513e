"""Where the regressor's codes lie relative to the head model's training codes (issue 5 diagnosis).

Runs the encoders and the regressor (:func:`tracker.predict.predict`) on held-out renders of a
``nphm-train data renders`` folder (or on the shipped example clip's crops without ``--data``) and prints,
for the identity and the expression code separately:

- ``raw_radius_mean``: the mean whitened radius of the raw regressor codes (:func:`model.codes.whitened_radius`;
  a training code has about 1), and ``training_max_radius``, the largest radius among the training codes;
- ``raw_spread`` / ``projected_spread``: the mean per-dimension std of the codes across the images, relative to
  the training codes' std (1 = as varied as the training set, 0 = the same code for every image), before and
  after the projection onto the training radius the tracker applies.

    python tests/benchmarks/bench_regressor_codes.py --data data/renders_small --max-images 40 --threads 2
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

from model.codes import whitened_radius  # noqa: E402
from tracker.predict import Models, predict  # noqa: E402


def images(data: Path | None, n: int) -> list[np.ndarray]:
    if data is None:
        from bench_single_image import crops

        return [c for c, _ in crops(n)]
    from train.renders_data import load_sample, read_manifest

    _, entries = read_manifest(data, "heldout", n)
    return [load_sample(data / f)["rgb"] for _, f in entries]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="renders folder (its held-out split)")
    ap.add_argument("--max-images", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = Models.load()
    stats = models.code_statistics
    imgs = images(args.data, args.max_images)
    raw = [predict(models, imgs[i:i + 16], plausible=False) for i in range(0, len(imgs), 16)]
    out = {"bench": "regressor_codes", "images": len(imgs), "source": str(args.data or "example clip")}
    for part, mean, std, r_max in (("z_id", stats.id_mean, stats.id_std, stats.id_max_radius),
                                   ("z_ex", stats.ex_mean, stats.ex_std, stats.ex_max_radius)):
        z = torch.cat([getattr(p, part) for p in raw])  # [N, D]
        zp = torch.cat([stats.project(p.z_id, p.z_ex)[0 if part == "z_id" else 1] for p in raw])
        out[part] = {"raw_radius_mean": round(float(whitened_radius(z, mean, std).mean()), 3),
                     "training_max_radius": round(r_max, 3),
                     "raw_spread": round(float((z.std(0) / std).mean()), 5),
                     "projected_spread": round(float((zp.std(0) / std).mean()), 5)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
