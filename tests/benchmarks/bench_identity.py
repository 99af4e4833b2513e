"""The tracked identity against the average face (issue 19), and its spread on real clips.

For each held-out synthetic video (``nphm-train data videos``, identities drawn with ``identity_scale`` 1),
the landmark tracker's identity step (:meth:`tracker.landmark_tracker.LandmarkTracker.estimate_identity`,
default settings: the first 12 face frames, 5 keyframes) is run once per identity prior
(:data:`tracker.landmark_tracker.IDENTITY_PRIORS`), and the neutral head of the fitted code is compared with
the true neutral head: face Chamfer L1 (mm) after a similarity alignment, as ``bench_landmark_tracker.py``.
The reference is ICT-FaceKit's mean neutral head (the average face): ``ratio`` is the tracked error over
its error on the same video. Videos whose head turns at least ``--turn`` degrees of yaw either way within
the identity window are also summarised apart.

``--id-weights`` and ``--identity-frames`` compare variants of the strategy (the prior's weight in the joint
keyframe fit; the identity window's length in face frames, of the first ``--frames`` of each video).

``centre_vs_ict_mean_head_mm``: the Chamfer of the learned prior's centre code against ICT's mean head.

``--registered``: also the head model's own floor per video, the identity code registered in 3D to the true
neutral head's evaluated surface (:func:`train.registration.register_points`, the expression held at the
neutral code, started from the prior's centre): no tracker can do better with this head model, so a video
whose registered ratio misses a target says the head model, not the tracker, is short.

``--oracle``: also the true ICT identity weights through the prior's map to the head's codes
(:meth:`model.identity_prior.IdentityPrior.alpha_of`): what the prior would give were its regressor perfect.
``--prior PATH`` evaluates another identity prior checkpoint (``nphm-train identity-prior``) in place of the
shipped one.

``--real CLIP`` (repeatable): the identity fitted from ``--subsets`` windows spread over the clip
(``identity_frames`` frames each, starting at 0, 1/n, ... of its length); the spread is the mean distance
(mm) of each window's 478 canonical landmarks from their mean over windows.

    python tests/benchmarks/bench_identity.py --videos data/videos_identity --max-videos 8 \\
        --real ../shared/real-video/d0.mp4 --real ../shared/real-video/d6.mp4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from train.geometry import surface_topology  # noqa: E402
from train.ict import default_ict_path, load_ict  # noqa: E402
from train.metrics import MM_PER_UNIT, sample_on_mesh  # noqa: E402
from train.registration import RegisterConfig, register_points  # noqa: E402
from train.single_view_eval import evaluate_reconstruction, extract_head, ground_truth_surface  # noqa: E402
from tracker.crop import CropConfig, crop_frames  # noqa: E402
from tracker.decode import open_video  # noqa: E402
from tracker.landmark_fit import identity_stages  # noqa: E402
from tracker.landmark_tracker import IDENTITY_PRIORS, LandmarkStrategy, LandmarkTracker  # noqa: E402
from tracker.pipeline import TrackConfig, _Clock, frame_intrinsics  # noqa: E402
from tracker.predict import Models  # noqa: E402


def detected_frames(path: Path, max_frames: int | None) -> tuple[list, np.ndarray]:
    """The crops (with landmarks) of the first ``max_frames`` frames and the frame intrinsics."""
    with open_video(path) as stream:
        K = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
        crops = []
        for crop in crop_frames(stream, CropConfig().setup(), source=str(path)):
            crops.append(crop)
            if max_frames is not None and len(crops) >= max_frames:
                break
    return crops, K


def fitted_identity(models: Models, crops: list, K: np.ndarray, strategy: LandmarkStrategy) -> torch.Tensor:
    """``[1, D_id]`` the tracker's identity from the first ``identity_frames`` face frames of ``crops``."""
    faces = [SimpleNamespace(crop=c) for c in crops if c.landmarks is not None][:strategy.identity_frames]
    tracker = LandmarkTracker(models.layer, models.codes, models.landmarks, strategy, K, _Clock(),
                              forward=models.forward, identity_prior=models.identity_prior)
    tracker.estimate_identity(faces)
    return tracker.z_id


def with_id_weight(w: float) -> list:
    """The default identity stages with identity prior weight ``w`` wherever the identity is fitted."""
    return [replace(s, w_id_prior=w) if "z_id" in s.params else s for s in identity_stages()]


def chamfer(models: Models, z_id: torch.Tensor, truth, region, resolution: int, samples: int) -> float:
    mesh = extract_head(models.layer, z_id, models.neutral_expression(), models.bbox, resolution)
    return evaluate_reconstruction(mesh.vertices, mesh.faces, truth.vertices, truth.triangles, region,
                                   n_samples=samples).chamfer.chamfer_l1_mm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, default=None, help="folder of video_NNNN.mp4 + .gt.npz")
    ap.add_argument("--max-videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=50, help="frames read per synthetic video (the window comes first)")
    ap.add_argument("--priors", default=",".join(IDENTITY_PRIORS), help=f"comma-separated subset of {IDENTITY_PRIORS}")
    ap.add_argument("--id-weights", default=None,
                    help="comma-separated identity prior weights of the joint keyframe stage to compare, the same "
                         "for every prior (method names get '@w'); default: the strategy's own")
    ap.add_argument("--identity-frames", default=None,
                    help="comma-separated identity window lengths (face frames) to compare, the same for every prior "
                         "(method names get '/Nf'); default: the strategy's own")
    ap.add_argument("--turn", type=float, default=30.0, help="yaw (degrees, either way) of a 'turning' video")
    ap.add_argument("--real", type=Path, action="append", default=[], help="a real clip for the spread figure")
    ap.add_argument("--subsets", type=int, default=4, help="identity windows per real clip")
    ap.add_argument("--resolution", type=int, default=96, help="marching cubes of the evaluated heads")
    ap.add_argument("--samples", type=int, default=30_000, help="Chamfer samples each way")
    ap.add_argument("--registered", action="store_true", help="also the 3D-registered code: the head model's floor")
    ap.add_argument("--registered-steps", type=int, default=RegisterConfig().steps)
    ap.add_argument("--oracle", action="store_true", help="also the true ICT weights through the prior's map")
    ap.add_argument("--prior", type=Path, default=None, help="an identity prior checkpoint [default: shipped]")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    priors = [p for p in args.priors.split(",") if p]
    models = Models.load()
    if args.prior is not None:
        from model.identity_prior import load_identity_prior

        models.identity_prior = load_identity_prior(args.prior)[0]
        if not models.identity_prior.fits(models.landmarks.landmark_map):
            raise SystemExit(f"{args.prior}: made for another landmark map")
    strategies = {p: LandmarkStrategy(identity_prior=p) for p in priors}
    if args.id_weights:
        strategies = {f"{p}@{w}": LandmarkStrategy(identity_prior=p, identity_stages=with_id_weight(float(w)),
                                                   regressed_prior_gain=1.0)
                      for p in priors for w in args.id_weights.split(",")}
    if args.identity_frames:
        strategies = {f"{p}/{n}f": replace(strat, identity_frames=int(n),
                                           identity_wait=max(int(n), strat.identity_wait))
                      for p, strat in strategies.items() for n in args.identity_frames.split(",")}
    priors = list(strategies)
    out: dict = {"bench": "identity", "priors": priors, "identity_prior_loaded": models.identity_prior is not None,
                 "prior_path": str(args.prior) if args.prior else "shipped"}
    kit = load_ict(default_ict_path())
    topo = surface_topology(kit.triangles, kit.n_vertices)
    zero_ex = np.zeros(kit.n_expression, np.float32)
    mean_head, mean_region = ground_truth_surface(kit, topo, np.zeros(kit.n_identity, np.float32), zero_ex)
    if models.identity_prior is not None:
        z_c = models.landmarks.landmark_map.code_of(models.identity_prior.centre)[None]
        out["centre_vs_ict_mean_head_mm"] = round(chamfer(models, z_c, mean_head, mean_region, args.resolution,
                                                          args.samples), 3)
        z_0 = models.landmarks.landmark_map.z0[None]
        out["map_origin_vs_ict_mean_head_mm"] = round(chamfer(models, z_0, mean_head, mean_region,
                                                              args.resolution, args.samples), 3)
    per_video = []
    videos = sorted(args.videos.glob("video_*.mp4"))[:args.max_videos] if args.videos else []
    for v in videos:
        gt = np.load(v.with_name(v.stem + ".gt.npz"))
        truth, region = ground_truth_surface(kit, topo, gt["w_id"], zero_ex)
        ref = chamfer_mesh(mean_head, truth, region, args.samples)
        crops, K = detected_frames(v, args.frames)
        window = [c.index for c in crops if c.landmarks is not None][:LandmarkStrategy().identity_frames]
        yaw = float(np.abs(gt["pose_angles"][window, 0]).max()) if "pose_angles" in gt.files else float("nan")
        row = {"video": v.name, "mean_head_mm": round(ref, 3), "window_max_abs_yaw_deg": round(yaw, 1)}
        for p, strat in strategies.items():
            mm = chamfer(models, fitted_identity(models, crops, K, strat), truth, region, args.resolution,
                         args.samples)
            row[p] = {"neutral_chamfer_mm": round(mm, 3), "ratio": round(mm / ref, 3)}
        if args.oracle:
            z = models.landmarks.landmark_map.code_of(models.identity_prior.alpha_of(torch.as_tensor(gt["w_id"])))[None]
            mm = chamfer(models, z, truth, region, args.resolution, args.samples)
            row["oracle"] = {"neutral_chamfer_mm": round(mm, 3), "ratio": round(mm / ref, 3)}
        if args.registered:
            z = registered_identity(models, truth, region, args.registered_steps)
            mm = chamfer(models, z, truth, region, args.resolution, args.samples)
            row["registered"] = {"neutral_chamfer_mm": round(mm, 3), "ratio": round(mm / ref, 3)}
        per_video.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if per_video:
        summary = {}
        turning = [r for r in per_video if r["window_max_abs_yaw_deg"] >= args.turn]
        for p in priors + (["oracle"] if args.oracle else []) + (["registered"] if args.registered else []):
            ratios = np.array([r[p]["ratio"] for r in per_video])
            summary[p] = {"mean_ratio": round(float(ratios.mean()), 3), "worst_ratio": round(float(ratios.max()), 3),
                          "mean_mm": round(float(np.mean([r[p]["neutral_chamfer_mm"] for r in per_video])), 3)}
            if turning:
                summary[p]["turning_mean_ratio"] = round(float(np.mean([r[p]["ratio"] for r in turning])), 3)
        out["videos"] = len(per_video)
        out["turning_videos"] = len(turning)
        out["mean_head_mm"] = round(float(np.mean([r["mean_head_mm"] for r in per_video])), 3)
        out["summary"] = summary
        out["per_video"] = per_video
    if args.real:
        out["real"] = {}
        for clip in args.real:
            crops, K = detected_frames(clip, None)
            n = len(crops)
            row = {"frames": n}
            for p, strat in strategies.items():
                w = strat.identity_frames
                starts = [int(i * (n - w) / max(args.subsets - 1, 1)) for i in range(args.subsets)]
                row[f"{p}_window_starts"] = starts
                lms = []
                for s in starts:
                    z = fitted_identity(models, crops[s:], K, strat)
                    lms.append(models.landmarks.landmark_map(z)[0, :478].detach().numpy())
                lms = np.stack(lms)
                spread = np.linalg.norm(lms - lms.mean(0), axis=-1).mean() * MM_PER_UNIT
                row[p] = {"spread_mm": round(float(spread), 3)}
            out["real"][clip.name] = row
            print(json.dumps({clip.name: row}), file=sys.stderr, flush=True)
    out["threads"] = args.threads
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))


def registered_identity(models: Models, truth, region, steps: int, points: int = 50_000) -> torch.Tensor:
    """``[1, D_id]`` the identity code registered to points on the true head's evaluated triangles (the
    expression held at the neutral code), started from the prior's centre (else the landmark map's origin)."""
    pts, _, _ = sample_on_mesh(truth.vertices, truth.triangles, points, np.random.default_rng(0), face_mask=region)
    start = (models.landmarks.landmark_map.code_of(models.identity_prior.centre) if models.identity_prior is not None
             else models.landmarks.landmark_map.z0)
    reg = register_points(models.layer, torch.as_tensor(pts, dtype=torch.float32),
                          RegisterConfig(steps=steps, fit_expression=False), start.detach().float(),
                          models.neutral_expression()[0])
    return reg.z_id[None]


def chamfer_mesh(mesh, truth, region, samples: int) -> float:
    return evaluate_reconstruction(mesh.vertices, mesh.triangles, truth.vertices, truth.triangles, region,
                                   n_samples=samples).chamfer.chamfer_l1_mm


if __name__ == "__main__":
    main()
