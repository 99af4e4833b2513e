"""The landmark fit captures strong expressions: exact targets (no detector), and a blink over frames.

Targets: the shipped head's mean identity at its neutral expression, posed landmarks projected by a frontal
camera, plus ICT-FaceKit's displacement of one blendshape at weight 1 (so the motion is the truth's, not
the model's). Features are MediaPipe pair distances in eye distances (``train.expression_metrics``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import default_weights, load_checkpoint
from model.forward_deformation import forward_for_head
from model.landmarks import load_landmark_assets
from tracker.landmark_fit import Observation, Shared, fit, frame_stages, newton_refine, project, start_state
from tracker.landmark_tracker import LandmarkStrategy, build_rig
from train.frame import UNITS_PER_CM
from train.ict import default_ict_path, load_ict

K = torch.tensor([[1000.0, 0.0, 256.0], [0.0, 1000.0, 256.0], [0.0, 0.0, 1.0]])
R_FRONT, T_FRONT = torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.tensor([0.0, 0.0, 2.0])


@pytest.fixture(scope="module")
def world():
    path = default_ict_path()
    if not path.exists():
        pytest.skip(f"ICT-FaceKit not found at {path} (set NPHM_SHARED or NPHM_ICT)")
    kit = load_ict(path)
    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    for p in layer.parameters():
        p.requires_grad_(False)
    assets = load_landmark_assets(default_weights("landmarks_default", ".npz"))
    strategy = LandmarkStrategy()
    rig = build_rig(layer, codes, assets, strategy, forward_for_head(None))
    shared = Shared(torch.zeros(rig.landmark_map.rank), torch.tensor(0.0), K)
    can = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
    x0, _ = newton_refine(rig, can, rig.z_id(shared.alpha), rig.z_ex(rig.ex_start), None, steps=6)
    return kit, assets, strategy, rig, shared, x0


def targets(world, weights: dict[str, float]) -> torch.Tensor:
    """``[478, 2]`` pixels: the model's neutral landmarks moved by ICT's displacement for ``weights``."""
    kit, assets, _, _, _, x0 = world
    zero = np.zeros(kit.n_identity, np.float32)
    w = np.zeros(kit.n_expression, np.float32)
    for name, v in weights.items():
        w[kit.expression_index(name)] = v
    emb = assets.mediapipe
    d = (emb.points(kit.vertices(zero, w)) - emb.points(kit.vertices(zero, 0 * w))) * UNITS_PER_CM
    return project((x0 + torch.as_tensor(d, dtype=torch.float32)) @ R_FRONT.T + T_FRONT, K)


def motion(points: torch.Tensor, neutral: torch.Tensor, a: int, b: int) -> float:
    """Change of the ``a``-``b`` distance from the neutral face, in eye distances."""
    eye = float((neutral[33] - neutral[263]).norm())
    return float((points[a] - points[b]).norm() - (neutral[a] - neutral[b]).norm()) / eye


@pytest.mark.parametrize("weights, pair, low", [
    ({"jawOpen": 1.0}, (13, 14), 0.7),
    ({"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}, (159, 145), 0.6),
    ({"mouthPucker": 1.0}, (61, 291), 0.7),
    ({"browInnerUp_L": 1.0, "browInnerUp_R": 1.0}, (105, 33), 0.5),
])
def test_fit_recovers_strong_expressions_from_exact_landmarks(world, weights, pair, low):
    _, _, strategy, rig, shared, _ = world
    neutral = targets(world, {})
    uv = targets(world, weights)
    obs = Observation(uv)
    _, (st,), _ = fit(rig, [obs], shared, [start_state(rig, shared, obs)], strategy.start_stages)
    fitted = project(st.x @ st.R.T + st.t, K)
    true, got = motion(uv, neutral, *pair), motion(fitted, neutral, *pair)
    assert abs(true) > 0.015
    assert low <= got / true <= 1.5, f"{weights}: the fit moves {got / true:.2f} of the true motion"


def test_a_blink_over_frames_closes_the_fitted_lids(world):
    """Frames whose eyes close fully and open again, fitted frame by frame from the previous frame (the
    tracker's per-frame stages with its temporal terms)."""
    _, _, strategy, rig, shared, _ = world
    neutral = targets(world, {})
    closure = [0.0, 0.3, 0.7, 1.0, 1.0, 0.6, 0.2, 0.0]
    obs0 = Observation(neutral)
    _, (state,), _ = fit(rig, [obs0], shared, [start_state(rig, shared, obs0)], strategy.start_stages)
    openings = []
    for c in closure:
        obs = Observation(targets(world, {"eyeBlink_L": c, "eyeBlink_R": c}))
        _, (state,), _ = fit(rig, [obs], shared, [state], frame_stages(), previous=state)
        fitted = project(state.x @ state.R.T + state.t, K)
        openings.append(np.mean([motion(fitted, neutral, 159, 145), motion(fitted, neutral, 386, 374)]))
    true_closed = motion(targets(world, {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}), neutral, 159, 145)
    assert min(openings) < 0.6 * true_closed  # closes by more than 60 % of the true closure (negative motion)
    assert openings[-1] > 0.3 * true_closed  # and opens again
