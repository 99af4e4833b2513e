import json

import numpy as np
import pytest
from click.testing import CliRunner

from model.errors import InputError
from train.camera import model_to_camera, project
from train.renders_data import (SAMPLE_KEYS, RendersConfig, camera_and_pose, generate_renders, is_heldout,
                                load_sample, sample_path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ict_path):
    out = tmp_path_factory.mktemp("renders")
    generate_renders(out, 3, 32, seed=11, ict_path=ict_path, progress=False)
    return out


def test_files_manifest_and_arrays(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["seed"] == 11 and len(manifest["samples"]) == 3
    assert set(manifest["keys"]) == set(SAMPLE_KEYS)
    s = load_sample(dataset / manifest["samples"][0]["file"])
    assert set(s) == set(SAMPLE_KEYS)
    assert s["rgb"].shape == (32, 32, 3) and s["rgb"].dtype == np.uint8
    assert s["normals"].dtype == np.float16 and s["canonical"].dtype == np.float16
    assert s["w_id"].shape == (100,) and s["w_ex"].shape == (53,) and s["landmarks2d"].shape == (68, 2)
    assert s["mask"].any() and (s["depth"][~s["mask"]] == 0).all() and (s["depth"][s["mask"]] > 0).all()
    assert (s["face_mask"] <= s["mask"]).all()
    assert not list((dataset / "renders").glob("*.tmp"))  # temporary files were renamed


def test_stored_camera_and_pose_reproduce_landmarks(dataset, ict_path):
    from train.frame import ict_to_model
    from train.ict import load_ict

    kit = load_ict(ict_path)
    s = load_sample(sample_path(dataset, 1))
    cam, pose = camera_and_pose(s)
    R, t = model_to_camera(cam, pose)
    np.testing.assert_allclose(R, s["model_to_camera_R"], atol=1e-12)
    lm = ict_to_model(kit.vertices(s["w_id"], s["w_ex"]).astype(np.float64))[kit.landmarks68]
    uv, _ = project(lm, cam.K, R, t)
    np.testing.assert_allclose(uv, s["landmarks2d"], atol=1e-3)


def test_same_seed_same_data_and_resume(dataset, tmp_path, ict_path):
    generate_renders(tmp_path, 3, 32, seed=11, ict_path=ict_path, progress=False)
    for i in range(3):
        a, b = load_sample(sample_path(dataset, i)), load_sample(sample_path(tmp_path, i))
        for k in SAMPLE_KEYS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # resume: a deleted sample is regenerated identically, the others are left alone
    sample_path(tmp_path, 1).unlink()
    before = sample_path(tmp_path, 0).stat().st_mtime_ns
    generate_renders(tmp_path, 3, 32, seed=11, ict_path=ict_path, progress=False)
    assert sample_path(tmp_path, 0).stat().st_mtime_ns == before
    np.testing.assert_array_equal(load_sample(sample_path(tmp_path, 1))["rgb"],
                                  load_sample(sample_path(dataset, 1))["rgb"])
    # another seed gives other data, and is refused in the same folder
    with pytest.raises(InputError, match="other settings"):
        generate_renders(tmp_path, 3, 32, seed=12, ict_path=ict_path, progress=False)


def test_heldout_split_is_recorded_and_stable():
    flags = [is_heldout(0, i, 0.2) for i in range(200)]
    assert 20 < sum(flags) < 60
    assert flags == [is_heldout(0, i, 0.2) for i in range(200)]


def test_config_rejects_bad_values():
    with pytest.raises(InputError, match="--res"):
        RendersConfig(resolution=4)
    with pytest.raises(InputError, match="-n"):
        RendersConfig(n=-1)


def test_cli_renders_smoke_and_missing_ict(tmp_path, ict_path):
    from train.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["data", "renders", "--out", str(tmp_path / "r"), "-n", "1", "--res", "16",
                               "--seed", "3", "--ict", str(ict_path)])
    assert res.exit_code == 0, res.output
    assert sample_path(tmp_path / "r", 0).exists()
    res = runner.invoke(main, ["data", "renders", "--out", str(tmp_path / "x"), "--ict",
                               str(tmp_path / "nope.npz")])
    assert res.exit_code == 2 and "nope.npz" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert runner.invoke(main, ["data", "renders", "--help"]).exit_code == 0
