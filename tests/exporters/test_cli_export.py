"""``nphm-track export`` (tracker/cli.py), end to end on a tiny animation the test writes itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from click.testing import CliRunner
from pxr import Usd, UsdGeom

from exporters import export_animation
from tracker.cli import main


def test_export_npz_to_usd(tmp_path, anim):
    src = export_animation(tmp_path / "anim.npz", anim.faces, anim.frames, anim.fps).path
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "anim.usd"), "--fps", "50",
                                    "--units", "cm"])
    assert res.exit_code == 0, res.output
    assert "6 frames" in res.output
    stage = Usd.Stage.Open(str(tmp_path / "anim.usd"))
    assert stage.GetTimeCodesPerSecond() == 50 and UsdGeom.GetStageMetersPerUnit(stage) == 0.01
    pts = np.asarray(UsdGeom.Mesh(stage.GetPrimAtPath("/Head/Mesh")).GetPointsAttr().Get(3))
    np.testing.assert_allclose(pts, anim.metres[2] * 100, rtol=1e-6)


def test_unknown_extension_exit_code_and_one_line(tmp_path, anim):
    src = export_animation(tmp_path / "anim.npz", anim.faces, anim.frames, anim.fps).path
    proc = subprocess.run(["nphm-track", "export", str(src), "--out", str(tmp_path / "anim.fbx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nphm-track: error: ")
    assert "'.fbx'" in lines[0] and ".usd" in lines[0] and ".abc" in lines[0]
    assert not (tmp_path / "anim.fbx").exists()


def test_missing_input_and_bad_option(tmp_path):
    res = CliRunner().invoke(main, ["export", str(tmp_path / "none.npz"), "--out", str(tmp_path / "a.usd")])
    assert res.exit_code == 2 and "none.npz: no such file" in res.output
    src = export_animation(tmp_path / "anim.npz", [[0, 1, 2]], np.eye(3)[None].repeat(2, 0), 25).path
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "a.pc2"), "--blendshapes", "2"])
    assert res.exit_code == 2 and "not supported by the PC2" in res.output


def test_missing_alembic_extra_prints_install_command(tmp_path, anim, monkeypatch):
    src = export_animation(tmp_path / "anim.npz", anim.faces, anim.frames, anim.fps).path
    monkeypatch.setitem(sys.modules, "alembic3d", None)  # as if the extra were not installed
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "a.abc")])
    assert res.exit_code == 2
    assert 'pip install "nphm-track[alembic]"' in res.output and len(res.output.strip().splitlines()) == 1
