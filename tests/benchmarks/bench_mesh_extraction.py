"""The identity's neutral mesh, once per video (issue 18): the refined narrow band against the plain one.

For training identities of the shipped head, extracts the neutral mesh as the tracker does (128^3, band
``tracker.bake.MESH_BAND``, the largest component) three ways: the default (refined band: far-corner split
test and implied signs at the finest level, chunks of 16384 points), the plain band in the same chunks, and
the plain band in chunks of 65536 points (the extraction before the speed issue's second part). Checks that
the three meshes are identical (faces and vertices, bit for bit) and prints one JSON line with the SDF calls
and seconds of each (two threads; the first identity is extracted once before timing, to warm up)::

    python tests/benchmarks/bench_mesh_extraction.py --identities 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model.mesh import extract_mesh  # noqa: E402
from tracker.bake import MESH_BAND  # noqa: E402
from tracker.predict import Models  # noqa: E402

WAYS = {"refined_16384": dict(refine=True, chunk_size=16384),
        "plain_16384": dict(refine=False, chunk_size=16384),
        "plain_65536": dict(refine=False, chunk_size=65536)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--identities", type=int, default=6, help="training identities, spread over the table")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = Models.load(encoders=False)
    table = models.codes["z_id"].float()
    ids = np.linspace(0, len(table) - 1, args.identities).round().astype(int)
    z_ex = models.neutral_expression()
    rows = []
    with torch.no_grad():
        for n, i in enumerate(ids):
            z_id = table[i:i + 1]

            def sdf(points: torch.Tensor) -> torch.Tensor:
                return models.layer(points[None], z_id, z_ex).sdf[0]

            if n == 0:
                extract_mesh(sdf, *models.bbox, args.resolution, band=MESH_BAND, largest_component=True)
            meshes, row = {}, {"identity": int(i)}
            for name, options in WAYS.items():
                start = time.perf_counter()
                meshes[name] = extract_mesh(sdf, *models.bbox, args.resolution, band=MESH_BAND,
                                            largest_component=True, **options)
                row[f"{name}_seconds"] = round(time.perf_counter() - start, 3)
                row[f"{name}_sdf_calls"] = meshes[name].info.evaluated_points
            ref = meshes["plain_65536"]
            row["identical"] = all(np.array_equal(m.faces, ref.faces) and np.array_equal(m.vertices, ref.vertices)
                                   for m in meshes.values())
            row["vertices"] = len(ref.vertices)
            rows.append(row)
    summary = {"all_identical": all(r["identical"] for r in rows)}
    for name in WAYS:
        summary[f"{name}_seconds_median"] = round(statistics.median(r[f"{name}_seconds"] for r in rows), 3)
        summary[f"{name}_sdf_calls_median"] = int(statistics.median(r[f"{name}_sdf_calls"] for r in rows))
    print(json.dumps({"bench": "mesh_extraction", "resolution": args.resolution, "band": MESH_BAND,
                      "threads": args.threads, "summary": summary, "per_identity": rows}))


if __name__ == "__main__":
    main()
