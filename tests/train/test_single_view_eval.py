"""train.single_view_eval: similarity ICP, reconstruction metrics and the single-view benchmark end to end.

The end-to-end tests use the shipped trained head model with tiny *untrained* encoders and a tiny regressor
whose output layers are zeroed (it predicts the mean training codes), so they check plumbing, ground truth and
report layout, not accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from click.testing import CliRunner

from train.metrics import MM_PER_UNIT, sample_on_mesh
from train.single_view_eval import (IcpConfig, SingleViewConfig, evaluate_reconstruction, evaluate_single_view,
                                    format_table, ground_truth_surface, similarity_icp, umeyama)


def _rotation(deg_xyz) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", deg_xyz, degrees=True).as_matrix()


def _bumpy_ellipsoid() -> tuple[np.ndarray, np.ndarray]:
    """A closed mesh without rotational symmetry, head-sized (model units)."""
    m = trimesh.creation.icosphere(3)
    v = m.vertices * [0.3, 0.22, 0.16]
    v = v + np.stack([0.6 * v[:, 1] * v[:, 2], np.zeros(len(v)), 0.15 * v[:, 0] ** 2], 1)
    return v, np.asarray(m.faces, np.int64)


def test_umeyama_recovers_a_similarity_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    R, s, t = _rotation([30, -50, 120]), 1.7, np.array([0.3, -2.0, 0.5])
    s_hat, R_hat, t_hat = umeyama(src, s * src @ R.T + t)
    assert s_hat == pytest.approx(s, abs=1e-10)
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    np.testing.assert_allclose(t_hat, t, atol=1e-10)
    s_rigid, R_rigid, _ = umeyama(src, src @ R.T + t, with_scale=False)
    assert s_rigid == 1.0 and np.allclose(R_rigid, R, atol=1e-10)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        umeyama(src[:2], src[:2])


@pytest.mark.parametrize("method, tol", [("point_to_plane", 1e-6), ("point_to_point", 1e-2)])
def test_similarity_icp_recovers_a_known_transform(method, tol):
    v, f = _bumpy_ellipsoid()
    R, s, t = _rotation([4, -3, 5]), 1.06, np.array([0.02, -0.01, 0.015])
    rec = s * v @ R.T + t  # the "reconstruction": the ground truth moved, rotated and scaled
    pts, _, _ = sample_on_mesh(rec, f, 5000, np.random.default_rng(0))
    sim = similarity_icp(pts, v, f, iterations=100 if method == "point_to_point" else 30, method=method,
                         tolerance=0.0)
    assert sim.scale == pytest.approx(1.0 / s, abs=tol)
    assert np.abs(sim.apply(rec) - v).max() < (1e-3 if method == "point_to_plane" else 1e-2)
    assert sim.rms < tol


def test_similarity_icp_rejects_bad_input():
    v, f = _bumpy_ellipsoid()
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        similarity_icp(np.zeros((10, 2)), v, f)
    with pytest.raises(ValueError, match="target_region"):
        similarity_icp(v, v, f, target_region=np.ones(3, bool))
    with pytest.raises(ValueError, match="method"):
        similarity_icp(v, v, f, method="nearest")


def test_a_mesh_against_itself_scores_zero():
    v, f = _bumpy_ellipsoid()
    m = evaluate_reconstruction(v, f, v, f, n_samples=5000, icp=IcpConfig(samples=2000))
    assert m.chamfer.chamfer_l1_mm < 1e-6 and m.chamfer.chamfer_l2_mm2 < 1e-10
    assert m.chamfer.normal_consistency == pytest.approx(1.0, abs=1e-6)
    assert m.alignment.scale == pytest.approx(1.0, abs=1e-9)


def test_a_known_offset_is_measured_in_millimetres_without_alignment():
    """Concentric spheres of radii r and r + d: every distance is d (up to the tessellation), so L1 = d mm
    and L2 = d^2 mm^2. Alignment is OFF here: a uniform scale maps one sphere onto the other, so with the
    similarity alignment on, the offset is (rightly, by the protocol) removed; checked too."""
    m = trimesh.creation.icosphere(5)  # 10k faces: the flat triangles sit < 0.05 mm inside the sphere
    r, d = 0.4, 1.0 / MM_PER_UNIT  # 100 mm radius, 1 mm offset
    gt_v, rec_v, f = m.vertices * r, m.vertices * (r + d), np.asarray(m.faces)
    res = evaluate_reconstruction(rec_v, f, gt_v, f, align=False, n_samples=20000).chamfer
    assert res.chamfer_l1_mm == pytest.approx(1.0, rel=0.03)
    assert res.chamfer_l2_mm2 == pytest.approx(1.0, rel=0.06)
    assert res.normal_consistency > 0.999
    aligned = evaluate_reconstruction(rec_v, f, gt_v, f, n_samples=20000, icp=IcpConfig(samples=5000))
    assert aligned.chamfer.chamfer_l1_mm < 0.05
    assert aligned.alignment.scale == pytest.approx(r / (r + d), abs=1e-4)


def test_alignment_undoes_a_small_similarity_and_region_restricts_it():
    v, f = _bumpy_ellipsoid()
    R, s, t = _rotation([3, 2, -4]), 0.95, np.array([0.01, 0.02, -0.01])
    rec = s * v @ R.T + t
    raw = evaluate_reconstruction(rec, f, v, f, align=False, n_samples=5000)
    fixed = evaluate_reconstruction(rec, f, v, f, n_samples=5000, icp=IcpConfig(samples=3000))
    assert raw.chamfer.chamfer_l1_mm > 3.0 and fixed.chamfer.chamfer_l1_mm < 0.01
    front = v[f].mean(1)[:, 2] > 0  # evaluate the front half only
    part = evaluate_reconstruction(rec, f, v, f, front, n_samples=5000, icp=IcpConfig(samples=3000))
    assert part.chamfer.chamfer_l1_mm < 0.01
    assert set(part.as_dict()) >= {"chamfer_l1_mm", "icp_scale", "icp_rms_mm", "icp_rotation_deg"}


def test_ground_truth_surfaces_follow_the_ict_weights(kit):
    from train.frame import ict_to_model
    from train.geometry import surface_topology

    topo = surface_topology(kit.triangles, kit.n_vertices)
    rng = np.random.default_rng(0)
    w_id = rng.normal(size=kit.n_identity).astype(np.float32)
    w_ex = np.zeros(kit.n_expression, np.float32)
    w_ex[kit.expression_index("jawOpen")] = 1.0
    posed, region = ground_truth_surface(kit, topo, w_id, w_ex)
    neutral, _ = ground_truth_surface(kit, topo, w_id, np.zeros_like(w_ex))
    np.testing.assert_allclose(posed.vertices[:kit.n_vertices], ict_to_model(kit.vertices(w_id, w_ex)), atol=1e-6)
    assert region.shape == (len(posed.triangles),) and 0 < region.sum() < len(region)
    chin = kit.landmarks68[8]  # the jaw opens: the chin drops by centimetres
    assert posed.vertices[chin, 1] < neutral.vertices[chin, 1] - 0.02


# --- end to end ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models():
    from model.checkpoint import default_weights, load_checkpoint
    from model.regressor import Regressor, regressor_preset
    from model.vit import NormalEncoder, PointMapEncoder, encoder_preset
    from tracker.predict import Models

    torch.manual_seed(0)
    layer, codes, meta = load_checkpoint(default_weights("head_default"))
    en, ep = encoder_preset("tiny", "normals"), encoder_preset("tiny", "points")
    reg = Regressor(regressor_preset("tiny", layer.cfg, en, ep))
    reg.set_code_statistics(codes["z_id"], codes["z_ex"])
    with torch.no_grad():  # predict exactly the mean training codes, whatever the image
        for heads in (reg.expr_head, reg.global_head, reg.local_heads):
            heads.w2.zero_()
    return Models(layer=layer, codes=codes, head_meta=meta, normal_encoder=NormalEncoder(en),
                  point_encoder=PointMapEncoder(ep), regressor=reg).to("cpu")


@pytest.fixture(scope="module")
def renders(tmp_path_factory, ict_path):
    from train.renders_data import RendersConfig, generate_renders

    out = tmp_path_factory.mktemp("renders")
    generate_renders(out, 2, 32, seed=7, ict_path=ict_path, cfg=RendersConfig(heldout_fraction=1.0),
                     progress=False)
    return out


FAST = dict(fit_resolution=20, resolution=32, n_samples=3000, icp=IcpConfig(samples=2000, iterations=15))


def test_single_view_report_with_tto(renders, tiny_models, kit, tmp_path):
    cfg = SingleViewConfig(max_images=1, tto=True, steps=2, **FAST)
    out = tmp_path / "report.json"
    report = evaluate_single_view(renders, tiny_models, cfg, kit=kit, out_path=out, progress=False)
    assert report["n_images"] == 1 and not report["failed"]
    rec = report["records"][0]
    assert set(rec) >= {"mean-head", "feed-forward", "tto"}
    for variant in ("mean-head", "feed-forward", "tto"):
        figures = rec[variant]
        # the mean training head against a random ICT head: millimetres, not metres nor zero
        assert 0.2 < figures["posed_l1_mm"] < 30 and 0.2 < figures["neutral_l1_mm"] < 30
        assert figures["posed_l2_mm2"] >= figures["posed_l1_mm"] ** 2 * 0.5
        assert 0.5 < figures["posed_nc"] <= 1.0 and 0.8 < figures["posed_icp_scale"] < 1.25
    assert rec["tto"]["seconds"] >= rec["feed-forward"]["seconds"] > 0 and rec["mean-head"]["seconds"] == 0
    # the regressor predicts the mean training identity: the feed-forward neutral mesh is the mean head's
    for key in ("neutral_l1_mm", "neutral_l2_mm2", "neutral_nc"):
        assert rec["feed-forward"][key] == pytest.approx(rec["mean-head"][key], abs=1e-9)
    assert report["summary"]["tto"]["n"] == 1
    assert json.loads(out.read_text())["summary"] == report["summary"]
    table = format_table(report)
    assert "mean head" in table and "feed-forward" in table and "+ TTO" in table and "posed L1 mm" in table


def test_cli_eval_single_view(renders, tiny_models, tmp_path):
    from model.regressor import save_regressor
    from model.vit import save_encoder
    from train.cli import main

    paths = {k: str(tmp_path / f"{k}.pt") for k in ("normals", "points", "regressor")}
    save_encoder(paths["normals"], tiny_models.normal_encoder)
    save_encoder(paths["points"], tiny_models.point_encoder)
    save_regressor(paths["regressor"], tiny_models.regressor)
    out = tmp_path / "r.json"
    args = ["eval-single-view", "--data", str(renders), "--normal-encoder", paths["normals"], "--point-encoder",
            paths["points"], "--regressor", paths["regressor"], "--max-images", "1", "--no-tto",
            "--resolution", "32", "--samples", "3000", "--out", str(out), "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "feed-forward" in result.output and "+ TTO" not in result.output
    assert set(json.loads(out.read_text())["summary"]) == {"mean-head", "feed-forward"}
    bad = CliRunner().invoke(main, ["eval-single-view", "--data", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "manifest.json" in bad.output
