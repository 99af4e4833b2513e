"""The landmark regressor (feed-forward codes from 478 detector landmarks) on held-out synthetic detections.

Methods, per held-out sample (:func:`train.landmark_regressor_training.synthetic_samples` with another seed:
new identities, poses, cameras and noise; the expressions are drawn the same way as in training, so training
expression codes plus fresh noise can recur):

- ``mean``: ``alpha = 0``, ``beta = rig.ex_start`` (the mean head);
- ``feed_forward``: the regressor's ``alpha``, ``beta``;
- ``ff_tto``: the tracker's single-frame landmark fit (:func:`tracker.landmark_fit.fit`,
  :func:`~tracker.landmark_fit.start_stages`: pose and expression; the focal length is the true one) started
  from the regressor's ``beta`` and with its ``alpha``;
- ``mean_tto``: the same fit from the mean head (``alpha = 0``, ``beta = ex_start``);
- ``ff_tto_id`` / ``mean_tto_id``: the single-frame fit of identity too (``identity_stages``: pose, focal,
  expression and identity) from the regressor / from the mean.

Metrics: ``alpha_rms``, ``beta_rms`` (whitened units, root mean square over dimensions and samples),
``canonical_mm`` (mean distance of the 546 canonical landmarks of ``alpha`` from the truth's, mm),
``posed_mm`` (mean distance of the 478 posed landmarks, head frame, of ``(alpha, beta)`` from the truth's,
mm), ``seconds_per_image`` for the fits; ``ff_images_per_s`` (batched feed-forward, one thread).

``--ict-renders N``: also the real detector (MediaPipe Face Mesh, static mode) on N ICT renders
(:func:`train.landmark_assets.embedding_render`) and the identity-landmark error (mm) of ``alpha`` against
the ICT truth's canonical landmarks, for the mean and the regressor.

Prints one JSON line. Example (the card's figures)::

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_landmark_regressor.py --n 400 --n-fit 40 --ict-renders 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model.landmark_regressor import load_landmark_regressor  # noqa: E402
from train.landmark_regressor_training import (MM_PER_UNIT, SyntheticConfig, load_rig, posed_batch,  # noqa: E402
                                               synthetic_samples)
from tracker.landmark_fit import (Observation, Shared, fit, identity_stages, start_stages,  # noqa: E402
                                  start_state)


def code_metrics(rig, alpha, beta, true_alpha, true_beta, true_posed) -> dict:
    lm = rig.landmark_map
    can = (lm.from_coordinates(alpha) - lm.from_coordinates(true_alpha)).norm(dim=-1).mean() * MM_PER_UNIT
    posed = []
    for i in range(0, len(alpha), 64):
        a, b = alpha[i:i + 64], beta[i:i + 64]
        x, _ = posed_batch(rig, lm.from_coordinates(a)[:, :rig.n_fit], rig.z_id(a), rig.z_ex(b))
        posed.append((x - true_posed[i:i + 64]).norm(dim=-1).mean(1))
    return {"alpha_rms": round(float((alpha - true_alpha).square().mean().sqrt()), 4),
            "beta_rms": round(float((beta - true_beta).square().mean().sqrt()), 4),
            "canonical_mm": round(float(can), 3),
            "posed_mm": round(float(torch.cat(posed).mean() * MM_PER_UNIT), 3)}


def single_frame_fit(rig, points, K, alpha, beta, stages) -> tuple[torch.Tensor, torch.Tensor]:
    shared = Shared(alpha=alpha.clone(), phi=torch.tensor(0.0), K0=K)
    obs = Observation(points)
    state = start_state(rig, shared, obs)
    state.beta, state.x, state.inv_jac = beta.clone(), None, None
    shared, (state,), _ = fit(rig, [obs], shared, [state], stages)
    return shared.alpha, state.beta


def ict_renders(rig, assets, model, n: int, seed: int) -> dict:
    from tracker.detect import FaceMeshConfig
    from train.ict import default_ict_path, load_ict
    from train.landmark_assets import EmbeddingConfig, canonical_landmarks, embedding_render
    from train.render import ict_render_mesh
    from train.sampler import sample_identity

    kit = load_ict(default_ict_path())
    mesh = ict_render_mesh(kit.triangles, kit.landmarks68)
    detector = FaceMeshConfig(static_image_mode=True).setup()
    cfg = EmbeddingConfig()
    lm = rig.landmark_map
    err = {"mean": [], "feed_forward": []}
    for i in range(n):
        seq = np.random.SeedSequence([seed, i])
        w_id = sample_identity(np.random.default_rng(seq), 1, 1.0, kit.n_identity)[0]  # embedding_render's first draw
        rgb, _, _ = embedding_render(kit, mesh, np.random.default_rng(seq), cfg, mild=bool(i % 2))
        found = detector.detect(rgb)
        if found is None:
            continue
        truth = torch.as_tensor(canonical_landmarks(kit, w_id[None], [assets.mediapipe, assets.ibug68])[0],
                                dtype=torch.float32)
        with torch.no_grad():
            out = model(torch.as_tensor(np.asarray(found.points)[None, :478], dtype=torch.float32))
        for name, a in (("mean", torch.zeros(1, lm.rank)), ("feed_forward", out.alpha)):
            err[name].append(float((lm.from_coordinates(a)[0] - truth).norm(dim=-1).mean() * MM_PER_UNIT))
    return {"renders": n, "detected": len(err["mean"]),
            **{f"{k}_identity_mm": round(float(np.mean(v)), 3) for k, v in err.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "runs/landmark_regressor/landmark_regressor.pt"),
                    help="trained regressor (nphm-train landmark-regressor --out runs/landmark_regressor)")
    ap.add_argument("--n", type=int, default=400, help="held-out samples for the code metrics")
    ap.add_argument("--n-fit", type=int, default=40, help="of them, samples for the (slow) landmark fits")
    ap.add_argument("--seed", type=int, default=1000, help="held-out data seed (training used 0)")
    ap.add_argument("--ict-renders", type=int, default=0)
    ap.add_argument("--ict-seed", type=int, default=777)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_landmark_regressor(args.weights)
    rig, codes, assets = load_rig()
    data = synthetic_samples(rig, codes, assets.mediapipe.spread_mm, SyntheticConfig(), args.n, args.seed)
    ta, tb = data["alpha"], data["beta"]
    true_posed, _ = posed_batch(rig, rig.landmark_map.from_coordinates(ta)[:, :rig.n_fit], rig.z_id(ta), rig.z_ex(tb))
    with torch.no_grad():
        pred = model(data["points"])
    mean_a, mean_b = torch.zeros_like(ta), rig.ex_start.expand_as(tb)
    report: dict = {"samples": args.n, "seed": args.seed, "threads": args.threads, "methods": {}}
    report["methods"]["mean"] = code_metrics(rig, mean_a, mean_b, ta, tb, true_posed)
    report["methods"]["feed_forward"] = code_metrics(rig, pred.alpha, pred.beta, ta, tb, true_posed)

    m = args.n_fit
    K = lambda i: torch.tensor([[float(data["focal"][i]), 0, 256.0], [0, float(data["focal"][i]), 256.0],  # noqa: E731
                                [0, 0, 1.0]])
    for name, (a0, b0), stages in (("ff_tto", (pred.alpha, pred.beta), start_stages()),
                                   ("mean_tto", (mean_a, mean_b), start_stages()),
                                   ("ff_tto_id", (pred.alpha, pred.beta), identity_stages()),
                                   ("mean_tto_id", (mean_a, mean_b), identity_stages())):
        t = time.perf_counter()
        fitted = [single_frame_fit(rig, data["points"][i], K(i), a0[i], b0[i], stages) for i in range(m)]
        dt = (time.perf_counter() - t) / m
        fa, fb = torch.stack([f[0] for f in fitted]), torch.stack([f[1] for f in fitted])
        report["methods"][name] = {**code_metrics(rig, fa, fb, ta[:m], tb[:m], true_posed[:m]),
                                   "samples": m, "seconds_per_image": round(dt, 3)}
    for name in ("mean", "feed_forward"):  # the same subset, for comparison with the fits
        a0, b0 = (mean_a, mean_b) if name == "mean" else (pred.alpha, pred.beta)
        report["methods"][f"{name}_fit_subset"] = code_metrics(rig, a0[:m], b0[:m], ta[:m], tb[:m], true_posed[:m])

    x = data["points"][:256].repeat(2, 1, 1)[:256]
    with torch.no_grad():
        model(x[:16])
        best = min(_timed(model, x) for _ in range(3))
    report["ff_images_per_s"] = round(256 / best, 1)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    if args.ict_renders:
        report["ict_real_detector"] = ict_renders(rig, assets, model, args.ict_renders, args.ict_seed)
    print(json.dumps(report))


def _timed(model, x) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
