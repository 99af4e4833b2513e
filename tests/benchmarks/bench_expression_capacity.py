"""Where is expression motion lost before any detector? The head model and the landmark fit on exact targets.

Two measures, each a feature ratio (the model's motion of a MediaPipe landmark pair over the truth's, both
relative to the neutral face; 1 = all of it; features as in :mod:`train.expression_metrics`):

- ``codes``: the head at its own training codes. For the training heads with the strongest ``jawOpen``,
  ``eyeBlink_L``, ``browInnerUp_L``, ``mouthPucker`` and ``mouthSmile_L``, the posed landmarks (the
  identity's exact ICT canonical landmarks, the backward field inverted from the start in use) against
  ICT's truth. It tells whether the head model and its inversion can show the motion at all.
- ``fit``: the landmark fit from exact targets. The model's mean identity's neutral posed landmarks plus
  the ICT displacement of one blendshape at weight 1 (``jawOpen``, ``eyeBlink`` both sides, ``mouthPucker``,
  ``browInnerUp`` + ``browOuterUp``, ``browInnerUp`` alone, ``browDown``, ``mouthSmile``), projected by a 1000 px camera 0.5 m away, fitted from
  PnP with the default start stages. It tells whether the fit reaches strong expressions with no detector.

``--no-forward`` poses by inverting the backward field from the canonical points (the tracker before the
forward model); the ``codes`` rows then also give ``ratio_from_truth_start``, the same inversion started at
the true posed landmarks (a root near the truth that the canonical start misses). ``--huber`` sets the fit's
expression-stage Huber scale.
Prints one JSON line::

    python tests/benchmarks/bench_expression_capacity.py --threads 2
    python tests/benchmarks/bench_expression_capacity.py --threads 2 --huber 0.03
    python tests/benchmarks/bench_expression_capacity.py --threads 2 --head runs/head_v1.pt --no-forward
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker.landmark_fit import Observation, Shared, fit, newton_refine, project, start_state  # noqa: E402
from tracker.landmark_tracker import LandmarkStrategy, build_rig  # noqa: E402
from tracker.predict import Models  # noqa: E402
from train.landmark_assets import head_expressions  # noqa: E402
from train.frame import UNITS_PER_CM, ict_to_model  # noqa: E402
from train.ict import default_ict_path, load_ict  # noqa: E402

PAIRS = {"mouth_opening": (13, 14), "eye_L": (386, 374), "eye_R": (159, 145), "brow_L": (334, 263),
         "brow_R": (105, 33), "brow_inner_L": (336, 362), "brow_inner_R": (107, 133), "mouth_width": (61, 291)}
"""MediaPipe pairs; ``_L`` is the face's own left (ICT's ``_L``), image right in a frontal view."""
CODE_SHAPES = {"jawOpen": "mouth_opening", "eyeBlink_L": "eye_L", "browInnerUp_L": "brow_L",
               "mouthPucker": "mouth_width", "mouthSmile_L": "mouth_width"}
FIT_CASES = {"jawOpen": {"jawOpen": 1.0}, "eyeBlink": {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0},
             "mouthPucker": {"mouthPucker": 1.0},
             "browsUp": {"browInnerUp_L": 1.0, "browInnerUp_R": 1.0, "browOuterUp_L": 1.0, "browOuterUp_R": 1.0},
             "browInnerUp": {"browInnerUp_L": 1.0, "browInnerUp_R": 1.0}, "browDown": {"browDown_L": 1.0, "browDown_R": 1.0},
             "mouthSmile": {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0}}


def distance(x, a: int, b: int) -> float:
    return float(np.linalg.norm(np.asarray(x[a]) - np.asarray(x[b])))


def feature_ratios(fitted, truth, neutral, eye: float, min_motion: float = 0.015) -> dict:
    """``{feature: fitted motion / true motion, feature_true_pct_eye: the true motion in % of the eye
    distance}`` for features the truth moves by >= ``min_motion`` eye distances (points ``[L, 2 or 3]``)."""
    out = {}
    for name, (a, b) in PAIRS.items():
        true = (distance(truth, a, b) - distance(neutral, a, b)) / eye
        if abs(true) >= min_motion:
            out[name] = round((distance(fitted, a, b) - distance(neutral, a, b)) / eye / true, 3)
            out[f"{name}_true_pct_eye"] = round(100 * true, 1)
    return out


def code_capacity(models: Models, rig, kit, data_seed: int, identities: int, expressions: int) -> dict:
    w_id, ident, w_ex = head_expressions(models.codes, models.head_meta, kit, data_seed, identities, expressions)
    names = list(kit.expression_names)
    emb = models.landmarks.mediapipe
    out = {}
    for shape, feature in CODE_SHAPES.items():
        rows = []
        for k in np.argsort(-w_ex[:, names.index(shape)])[:3]:
            i = ident[k]
            can = torch.as_tensor(ict_to_model(emb.points(kit.vertices(w_id[i], 0 * w_ex[k]))), dtype=torch.float32)
            truth = ict_to_model(emb.points(kit.vertices(w_id[i], w_ex[k])))
            x, _ = newton_refine(rig, can, models.codes["z_id"][i], models.codes["z_ex"][k], None, steps=8)
            eye = distance(can, 33, 263)
            a, b = PAIRS[feature]
            true = distance(truth, a, b) - distance(can, a, b)
            row = {"weight": round(float(w_ex[k, names.index(shape)]), 2),
                   "ratio": round((distance(x.numpy(), a, b) - distance(can, a, b)) / true, 3),
                   "true_motion_pct_eye": round(100 * true / eye, 1)}
            if rig.forward is None:  # the same inversion started at the truth: is there a root near it?
                xt, _ = newton_refine(rig, can, models.codes["z_id"][i], models.codes["z_ex"][k],
                                      torch.as_tensor(truth, dtype=torch.float32), steps=8)
                row["ratio_from_truth_start"] = round((distance(xt.numpy(), a, b) - distance(can, a, b)) / true, 3)
            rows.append(row)
        out[shape] = {"feature": feature, "heads": rows, "mean_ratio": round(float(np.mean([r["ratio"] for r in rows])), 3)}
    return out


def fit_capacity(models: Models, rig, strategy: LandmarkStrategy, kit) -> dict:
    emb = models.landmarks.mediapipe
    names = list(kit.expression_names)
    zero_id = np.zeros(kit.n_identity, np.float32)
    V0 = kit.vertices(zero_id, np.zeros(kit.n_expression, np.float32))
    K = torch.tensor([[1000.0, 0, 256], [0, 1000.0, 256], [0, 0, 1]])
    shared = Shared(torch.zeros(rig.landmark_map.rank), torch.tensor(0.0), K)
    neutral3 = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
    x0, _ = newton_refine(rig, neutral3, rig.z_id(shared.alpha), rig.z_ex(rig.ex_start), None, steps=6)
    R, t = torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.tensor([0.0, 0.0, 2.0])
    uv0 = project(x0 @ R.T + t, K)
    eye = distance(uv0, 33, 263)
    out = {}
    for case, weights in FIT_CASES.items():
        w = np.zeros(kit.n_expression, np.float32)
        for n, v in weights.items():
            w[names.index(n)] = v
        d = torch.as_tensor((emb.points(kit.vertices(zero_id, w)) - emb.points(V0)) * UNITS_PER_CM, dtype=torch.float32)
        uv = project((x0 + d) @ R.T + t, K)
        obs = Observation(uv)
        _, (st,), report = fit(rig, [obs], shared, [start_state(rig, shared, obs)], strategy.start_stages)
        fitted = project(st.x @ st.R.T + st.t, K)
        out[case] = {**feature_ratios(fitted.numpy(), uv.numpy(), uv0.numpy(), eye),
                     "beta_norm": round(float(st.beta.norm()), 2), "iterations": report.iterations}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", default=None, help="head checkpoint [default: the shipped one]")
    ap.add_argument("--forward", default=None, help="forward deformation [default: the head's]")
    ap.add_argument("--no-forward", action="store_true", help="start inversions at the canonical points")
    ap.add_argument("--data-seed", type=int, default=1, help="the head's data seed (shipped head: 1)")
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--expressions", type=int, default=8)
    ap.add_argument("--huber", type=float, default=None,
                    help="Huber scale of the expression stages of the fit [default: the tracker's]")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = Models.load(head=args.head, landmarks=None if args.head is None else
                         ROOT / "model" / "weights" / "landmarks_default.npz")
    if args.forward:
        from model.forward_deformation import load_forward_deformation

        models.forward = load_forward_deformation(args.forward)[0]
    if args.no_forward:
        models.forward = None
    kit = load_ict(default_ict_path())
    strategy = LandmarkStrategy()
    if args.huber is not None:
        strategy.start_stages = [replace(st, huber=args.huber) if "z_ex" in st.params else st
                                 for st in strategy.start_stages]
    rig = build_rig(models.layer, models.codes, models.landmarks, strategy, models.forward)
    print(json.dumps({"bench": "expression_capacity", "head": args.head or "default",
                      "forward": None if models.forward is None else (args.forward or "the head's"),
                      "codes": code_capacity(models, rig, kit, args.data_seed, args.identities, args.expressions),
                      "fit": fit_capacity(models, rig, strategy, kit)}))


if __name__ == "__main__":
    main()
