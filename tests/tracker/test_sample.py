"""End-to-end smoke test of `nphm-track sample`: shipped head model -> fixed topology -> exporter."""

import numpy as np
from click.testing import CliRunner
from pxr import Usd, UsdGeom

from exporters.npz import read_animation
from model.checkpoint import default_weights
from tracker.cli import main


def test_sample_writes_a_fixed_topology_animation(tmp_path):
    out = tmp_path / "anim.npz"
    res = CliRunner().invoke(main, ["sample", "--out", str(out), "--frames", "4", "--resolution", "48"])
    assert res.exit_code == 0, res.output
    anim = read_animation(out)
    v = np.asarray(anim.vertices)
    assert v.shape[0] == 4 and v.shape[2] == 3 and anim.faces.max() < v.shape[1]
    assert np.isfinite(v).all()
    # the expression changes the shape but not the size of the head (metres)
    assert 0 < np.abs(v[-1] - v[0]).max() < 0.05
    extent = v[0].max(0) - v[0].min(0)
    assert (extent > 0.1).all() and (extent < 0.5).all()


def test_sample_to_usd_and_bad_extension(tmp_path):
    out = tmp_path / "anim.usda"
    res = CliRunner().invoke(main, ["sample", "--out", str(out), "--frames", "2", "--resolution", "40"])
    assert res.exit_code == 0, res.output
    stage = Usd.Stage.Open(str(out))
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 1
    bad = CliRunner().invoke(main, ["sample", "--out", str(tmp_path / "anim.xyz"), "--frames", "2"])
    assert bad.exit_code == 2 and "unknown output extension" in bad.output
    assert not (tmp_path / "anim.xyz").exists()


def test_default_weights_are_shipped():
    assert default_weights("head_default").stat().st_size > 0
