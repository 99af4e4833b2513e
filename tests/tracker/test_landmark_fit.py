"""tracker/landmark_fit.py: PnP start, the analytic Jacobian, and the LM fit on exact landmarks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.checkpoint import default_weights, load_checkpoint
from model.errors import InputError
from model.landmarks import load_landmark_assets
from tracker.landmark_fit import (FrameState, LandmarkStage, Observation, Shared, _frame_residual, _frame_system,
                                  _Layout, _vector, fit, lid_targets, newton_refine, pnp_pose, pose_landmarks,
                                  projected, rotation_distance, select_keyframes, start_stages, start_state)
from tracker.landmark_tracker import LandmarkStrategy, build_rig
from tracker.tto import axis_angle_to_matrix

K0 = torch.tensor([[700.0, 0.0, 255.5], [0.0, 700.0, 255.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def rig():
    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    layer.eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    return build_rig(layer, codes, load_landmark_assets(default_weights("landmarks_default", ".npz")),
                     LandmarkStrategy())


def head_pose(yaw: float, pitch: float, roll: float, distance: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A model -> camera pose looking at the face (180 degrees about x is frontal), angles in radians."""
    R = axis_angle_to_matrix(torch.tensor([pitch, yaw, roll])) @ axis_angle_to_matrix(torch.tensor([math.pi, 0, 0]))
    return R.float(), torch.tensor([0.01, -0.02, distance])


def truth(rig, alpha, beta, R, t, phi=0.0):
    shared = Shared(alpha, torch.tensor(phi), K0)
    state = FrameState(R, t, beta)
    x = pose_landmarks(rig, shared, state)[:rig.n_fit]
    return shared, state, Observation(projected(shared, state, x))


def test_pnp_recovers_a_known_pose_from_exact_landmarks(rig):
    shared = Shared(torch.zeros(rig.landmark_map.rank), torch.tensor(0.0), K0)
    for angles in [(0.0, 0.0, 0.0), (0.6, -0.2, 0.15), (-0.5, 0.25, -0.1)]:
        R, t = head_pose(*angles)
        _, state, obs = truth(rig, shared.alpha, rig.ex_start, R, t)
        x, _ = newton_refine(rig, rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit], rig.z_id(shared.alpha),
                             rig.z_ex(rig.ex_start), None, steps=4)
        R_est, t_est = pnp_pose(x.numpy(), obs.points.numpy(), K0.numpy())
        assert rotation_distance(R_est, R.numpy()) < 0.5
        assert np.linalg.norm(t_est - t.numpy()) < 1e-3


def test_analytic_jacobian_matches_forward_mode_autodiff(rig):
    g = torch.Generator().manual_seed(0)
    shared = Shared(torch.randn(rig.landmark_map.rank, generator=g) * 0.5, torch.tensor(0.1), K0)
    R, t = head_pose(0.3, 0.1, 0.05)
    state = FrameState(R, t, torch.randn(rig.expression_dims, generator=g) * 0.5)
    prev = FrameState(head_pose(0.35, 0.1, 0.05)[0], t + 0.01, state.beta + 0.1)
    x = pose_landmarks(rig, shared, state)[:rig.n_fit]
    obs = Observation(projected(shared, state, x) + torch.randn(rig.n_fit, 2, generator=g))
    canonical = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
    state.x, state.inv_jac = newton_refine(rig, canonical, rig.z_id(shared.alpha), rig.z_ex(state.beta), None, 3)
    stage = LandmarkStage("all", 1, ("pose", "z_ex", "z_id", "focal"), w_temporal_ex=0.1, w_temporal_rot=0.1,
                          w_temporal_t=0.1)
    layout = _Layout(stage, rig.landmark_map.rank, rig.expression_dims)
    robust, lids = torch.ones(rig.n_fit), lid_targets(rig, obs.points)
    r, Js, Jo = _frame_system(rig, stage, obs, robust, lids, shared, state, prev, layout)
    p = _vector(layout, shared, [state])

    def residual(ps, po):
        return _frame_residual(rig, stage, obs, robust, lids, shared, state, prev, layout, ps, po)

    r2 = residual(p[:layout.n_shared], p[layout.n_shared:])
    Js2, Jo2 = torch.func.jacfwd(residual, argnums=(0, 1))(p[:layout.n_shared], p[layout.n_shared:])
    torch.testing.assert_close(r, r2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(Js, Js2, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(Jo, Jo2, atol=1e-4, rtol=1e-3)


def test_fit_recovers_pose_and_expression_from_the_models_own_landmarks(rig):
    """No detector: the head model's own projected landmarks, fitted from PnP and the neutral expression."""
    beta_true = rig.ex_start + torch.randn(rig.expression_dims, generator=torch.Generator().manual_seed(6))
    alpha = torch.randn(rig.landmark_map.rank, generator=torch.Generator().manual_seed(7)) * 0.5
    R, t = head_pose(0.4, -0.15, 0.1)
    shared, state_true, obs = truth(rig, alpha, beta_true, R, t)
    stages = [LandmarkStage(s.name, s.iterations * 2, s.params, w_ex_prior=1e-5, tolerance=s.tolerance)
              for s in start_stages()]
    _, (state,), report = fit(rig, [obs], shared, [start_state(rig, shared, obs)], stages)
    assert rotation_distance(state.R.numpy(), R.numpy()) < 0.5
    assert float((state.t - t).norm()) < 0.01 * float(t.norm())
    x_fit = pose_landmarks(rig, shared, state)[:rig.n_fit]
    x_true = pose_landmarks(rig, shared, state_true)[:rig.n_fit]
    start_err = (pose_landmarks(rig, shared, FrameState(R, t, rig.ex_start))[:rig.n_fit] - x_true).norm(dim=-1).mean()
    err = (x_fit - x_true).norm(dim=-1).mean()
    assert float(err) * 250 < 0.5 and float(err) < 0.3 * float(start_err)  # mm; the expression moved the landmarks
    assert report.cost < 1e-2  # what is left: the eyelid term's blink correction and the prior


def test_joint_fit_over_keyframes_recovers_identity_and_focal(rig):
    g = torch.Generator().manual_seed(11)
    alpha = torch.randn(rig.landmark_map.rank, generator=g) * 0.6
    shared_true = Shared(alpha, torch.tensor(math.log(1.3)), K0)
    obs, states = [], []
    start = Shared(torch.zeros_like(alpha), torch.tensor(0.0), K0)
    for yaw, pitch in [(-0.6, 0.0), (-0.3, 0.2), (0.0, -0.2), (0.3, 0.1), (0.6, 0.0)]:
        _, _, o = truth(rig, alpha, rig.ex_start + torch.randn(rig.expression_dims, generator=g) * 0.5,
                        *head_pose(yaw, pitch, 0.0, 2.0), phi=math.log(1.3))
        obs.append(o)
        states.append(start_state(rig, start, o))
    shared, _, _ = fit(rig, obs, start, states, LandmarkStrategy().identity_stages)
    assert abs(math.exp(float(shared.phi)) / 1.3 - 1) < 0.05
    truth_lm = rig.landmark_map.from_coordinates(shared_true.alpha)
    before = (rig.landmark_map.from_coordinates(start.alpha) - truth_lm).norm(dim=-1).mean()
    after = (rig.landmark_map.from_coordinates(shared.alpha) - truth_lm).norm(dim=-1).mean()
    assert float(after) < 0.5 * float(before)


def test_keyframes_are_spread_in_rotation():
    Rs = [axis_angle_to_matrix(torch.tensor([0.0, y, 0.0])).numpy() for y in np.linspace(-0.6, 0.6, 13)]
    keys = select_keyframes(Rs, 3)
    assert keys == [0, 6, 12]


def test_bad_stages_and_inputs_raise():
    with pytest.raises(InputError, match="params"):
        LandmarkStage("x", 3, ("pose", "shape"))
    with pytest.raises(InputError, match="iterations"):
        LandmarkStage("x", -1)
    with pytest.raises(InputError, match=r"\[L, 2\]"):
        Observation(torch.zeros(478, 3))


def test_forward_posing_tangents_match_autodiff():
    """With the head's forward deformation the posed landmarks are one network pass; their analytic
    Jacobian (forward-mode tangents) matches torch.func.jacfwd of that pass."""
    from model.forward_deformation import forward_for_head, forward_posed
    from tracker.landmark_fit import forward_tangents

    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    for p in layer.parameters():
        p.requires_grad_(False)
    rig = build_rig(layer, codes, load_landmark_assets(default_weights("landmarks_default", ".npz")),
                    LandmarkStrategy(), forward_for_head(None))
    assert rig.forward_posing
    g = torch.Generator().manual_seed(1)
    alpha = torch.randn(rig.landmark_map.rank, generator=g) * 0.5
    beta = rig.ex_start + torch.randn(rig.expression_dims, generator=g) * 0.5

    def posed(a, b):
        can = rig.landmark_map.from_coordinates(a)[:rig.n_fit]
        return forward_posed(rig.forward, layer, can[None], rig.z_id(a)[None], rig.z_ex(b)[None])[0]

    x, G = forward_tangents(rig, alpha, beta, True, True)
    assert torch.allclose(x, posed(alpha, beta), atol=1e-6)
    ref = torch.cat([torch.func.jacfwd(posed, argnums=0)(alpha, beta), torch.func.jacfwd(posed, argnums=1)(alpha, beta)], -1)
    assert G.shape == ref.shape
    assert torch.allclose(G, ref, atol=1e-5 * float(ref.abs().max()))
    # The canonical points and their encoding are kept for the last plain alpha (the same numbers), and not
    # served to torch.func, whose tangents they would drop.
    can, enc = rig.canonical(alpha)
    again, enc_again = rig.canonical(alpha.clone())
    assert again is can and enc_again is enc
    assert torch.equal(enc.features, rig.forward.point_features(can))
    other, _ = rig.canonical(alpha + 0.1)
    assert not torch.equal(other, can)
    assert torch.allclose(torch.func.jacfwd(lambda a: rig.canonical(a)[0], argnums=0)(alpha),
                          torch.func.jacfwd(lambda a: rig.landmark_map.from_coordinates(a)[:rig.n_fit])(alpha))


def test_inverse_posing_with_a_forward_model_starts_from_its_prediction():
    """posing="inverse" with a forward model: the inversion ignores a warm start (a previous solution can sit
    on a wrong root) and converges from the forward prediction to a root of the backward field."""
    from model.forward_deformation import forward_for_head

    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    for p in layer.parameters():
        p.requires_grad_(False)
    rig = build_rig(layer, codes, load_landmark_assets(default_weights("landmarks_default", ".npz")),
                    LandmarkStrategy(posing="inverse"), forward_for_head(None))
    assert not rig.forward_posing
    alpha = torch.zeros(rig.landmark_map.rank)
    can = rig.landmark_map.from_coordinates(alpha)[:rig.n_fit]
    z_id, z_ex = rig.z_id(alpha), codes["z_ex"][5]
    x_fresh, inv = newton_refine(rig, can, z_id, z_ex, None)
    x_warm, _ = newton_refine(rig, can, z_id, z_ex, can + 0.04)  # a warm start 1 cm off: ignored
    assert torch.equal(x_fresh, x_warm) and inv.shape == (rig.n_fit, 3, 3)
    with torch.no_grad():
        residual = (x_fresh + layer.deform(x_fresh[None], z_id[None], z_ex[None]).offsets[0] - can).norm(dim=-1)
    assert float(residual.median()) < 1e-4  # on a root (0.025 mm)


def test_relu_mlp_jacobian_matches_autodiff():
    from tracker.landmark_fit import relu_mlp_jacobian

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5), torch.nn.ReLU(),
                              torch.nn.Linear(5, 3)).double()
    x = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(relu_mlp_jacobian(mlp, x), torch.func.jacfwd(mlp)(x), atol=1e-12, rtol=0)
    ends_in_relu = torch.nn.Sequential(*mlp, torch.nn.ReLU())
    torch.testing.assert_close(relu_mlp_jacobian(ends_in_relu, x), torch.func.jacfwd(ends_in_relu)(x),
                               atol=1e-12, rtol=0)
    with pytest.raises(InputError, match="Linear and ReLU"):
        relu_mlp_jacobian(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()).double(), x)


def test_shared_jacobian_matches_autodiff():
    from tracker.landmark_fit import _shared_jacobian, _shared_residual

    for params in (("pose", "z_id", "focal"), ("pose", "focal"), ("pose", "z_id"), ("pose",)):
        stage = LandmarkStage("s", 1, params, w_id_prior=0.05)
        layout = _Layout(stage, 7, 4)
        ps = torch.randn(layout.n_shared)
        ref = torch.func.jacfwd(lambda q: _shared_residual(stage, layout, q))(ps) if layout.n_shared else None
        J = _shared_jacobian(stage, layout)
        assert J.shape == (layout.n_shared, layout.n_shared)
        if ref is not None:
            torch.testing.assert_close(J, ref)


def test_forward_posing_fit_keeps_the_landmarks_posed_at_its_result():
    """The accepted trial's posed landmarks are reused as the state's: they equal a fresh forward pass at the
    returned parameters."""
    from model.forward_deformation import forward_for_head, forward_posed

    layer, codes, _ = load_checkpoint(default_weights("head_default"))
    for p in layer.parameters():
        p.requires_grad_(False)
    rig = build_rig(layer, codes, load_landmark_assets(default_weights("landmarks_default", ".npz")),
                    LandmarkStrategy(), forward_for_head(None))
    g = torch.Generator().manual_seed(2)
    beta = rig.ex_start + torch.randn(rig.expression_dims, generator=g) * 0.5
    shared, state, obs = truth(rig, torch.zeros(rig.landmark_map.rank), beta, *head_pose(0.2, -0.1, 0.05))
    _, (fitted,), report = fit(rig, [obs], shared, [start_state(rig, shared, obs)], start_stages())
    assert report.iterations > 1
    can = rig.landmark_map.from_coordinates(shared.alpha)[:rig.n_fit]
    ref = forward_posed(rig.forward, layer, can[None], rig.z_id(shared.alpha)[None], rig.z_ex(fitted.beta)[None])[0]
    assert torch.equal(fitted.x, ref)
