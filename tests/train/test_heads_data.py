"""Tests for train/heads_data.py and the `nphm-train data heads` command."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from model.errors import InputError
from train.cli import main
from train.frame import ict_to_model
from train.geometry import outer_surface, signed_distance, surface_topology
from train.heads_data import HeadsDataConfig, dataset_files, generate_heads_dataset, load_head_sample, plan_items

TINY = HeadsDataConfig(n_surface=120, n_near=120, n_space=60)


@pytest.fixture(scope="module")
def dataset(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    result = generate_heads_dataset(out, 2, 3, seed=7, kit=kit, config=TINY, progress=False)
    return out, result


def _arrays(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_plan_holds_out_identities_and_expressions():
    items = plan_items(10, 4, HeadsDataConfig())
    splits = {(it.identity, it.expression): it.split for it in items}
    assert {it.identity for it in items if it.split == "test_identity"} == {9}
    assert all(splits[(i, 3)] == "test_expression" for i in range(9))
    assert all(it.kind == "neutral" for it in items if it.expression == 0)
    extremes = [it.kind for it in items if it.split == "test_extreme"]
    assert extremes == ["extreme:jawOpen", "extreme:mouthFunnel", "extreme:eyeBlink_L", "extreme:eyeBlink_R"]
    train_ids = {it.identity for it in items if it.split == "train"}
    assert 9 not in train_ids and len(train_ids) == 9
    with pytest.raises(InputError, match="held-out counts"):
        plan_items(2, 2, HeadsDataConfig(heldout_identities=2))


def test_files_hold_the_documented_arrays(kit, dataset):
    out, result = dataset
    assert result.n_written == len(result.items) == 2 * 3 + 4 and result.n_skipped == 0
    a = _arrays(out / "id0000_ex001.npz")
    assert a["surface_points"].shape == (120, 3) and a["surface_normals"].shape == (120, 3)
    assert a["near_points"].shape == (120, 3) and a["near_sdf"].shape == (120,)
    assert a["space_points"].shape == (60, 3) and a["landmarks"].shape == (68, 3)
    assert a["w_id"].shape == (100,) and a["w_ex"].shape == (53,)
    assert set(np.unique(a["near_sigma"])) == {np.float32(0.01), np.float32(0.002)}
    assert not _arrays(out / "id0000_ex000.npz")["w_ex"].any()          # slot 0 is neutral
    jaw = _arrays(out / "id0001_ex003.npz")["w_ex"]                      # first extreme of the held-out id
    assert jaw[kit.expression_index("jawOpen")] == 1.0 and jaw.sum() == 1.0


def test_stored_sdf_matches_the_head_rebuilt_from_its_weights(kit, dataset):
    out, _ = dataset
    a = _arrays(out / "id0000_ex002.npz")
    vertices = ict_to_model(kit.vertices(a["w_id"], a["w_ex"]).astype(np.float64))
    surface = outer_surface(vertices, surface_topology(kit.triangles, kit.n_vertices), TINY.surface)
    np.testing.assert_allclose(signed_distance(surface, a["space_points"].astype(np.float64)), a["space_sdf"],
                               atol=1e-5)
    np.testing.assert_allclose(a["landmarks"], vertices[kit.landmarks68], atol=1e-6)
    assert np.abs(signed_distance(surface, a["surface_points"].astype(np.float64))).max() < 1e-5


def test_typed_reader_and_split_listing(dataset, tmp_path):
    out, _ = dataset
    train = dataset_files(out, "train")
    assert [p.name for p in train] == ["id0000_ex000.npz", "id0000_ex001.npz"]
    assert {p.name for p in dataset_files(out, "test_identity")} == {f"id0001_ex00{j}.npz" for j in range(3)}
    sample = load_head_sample(train[1])
    assert sample.identity == 0 and sample.expression == 1 and sample.near_sdf.shape == (120,)
    bad = tmp_path / "x.npz"
    np.savez(bad, w_id=np.zeros(3))
    with pytest.raises(InputError, match="x.npz: not a head SDF sample, missing w_ex"):
        load_head_sample(bad)
    with pytest.raises(InputError, match="not a heads dataset manifest"):
        dataset_files(tmp_path)


def test_manifest_records_config_seed_and_splits(dataset):
    out, result = dataset
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["seed"] == 7 and m["config"]["n_surface"] == 120
    assert m["counts"] == {"files": 10, "train": 2, "test_expression": 1, "test_identity": 3, "test_extreme": 4}
    listed = {f["file"] for f in m["files"]}
    assert listed == {p.name for p in out.glob("*.npz")}
    assert m["last_run"]["written"] == 10


def test_same_seed_same_data_and_resume_skips(kit, dataset, tmp_path):
    out, first = dataset
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    again = generate_heads_dataset(out, 2, 3, seed=7, kit=kit, config=TINY, progress=False)
    assert again.n_written == 0 and again.n_skipped == len(first.items)
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    # delete one file, leave a half-written temp file and truncate another: only those two are redone,
    # to the same bytes as a fresh run (files depend on the seed and their indices only)
    reference = {name: _arrays(out / name) for name in ("id0000_ex001.npz", "id0001_ex004.npz")}
    (out / "id0000_ex001.npz").unlink()
    (out / ".id0000_ex001.npz.tmp").write_bytes(b"partial")
    (out / "id0001_ex004.npz").write_bytes(b"PK\x03\x04 truncated")
    redo = generate_heads_dataset(out, 2, 3, seed=7, kit=kit, config=TINY, progress=False)
    assert redo.n_written == 2
    for name, arrays in reference.items():
        new = _arrays(out / name)
        assert all(np.array_equal(arrays[k], new[k]) for k in arrays)


def test_other_seed_other_data_and_refused_in_the_same_folder(kit, dataset, tmp_path):
    out, _ = dataset
    with pytest.raises(InputError, match="different seed or configuration"):
        generate_heads_dataset(out, 2, 3, seed=8, kit=kit, config=TINY, progress=False)
    other = generate_heads_dataset(tmp_path, 1, 1, seed=8, kit=kit, config=TINY, progress=False)
    assert other.n_written == 1
    a, b = _arrays(out / "id0000_ex000.npz"), _arrays(tmp_path / "id0000_ex000.npz")
    assert not np.array_equal(a["w_id"], b["w_id"])


def test_cli_writes_a_dataset(tmp_path, ict_path):
    out = tmp_path / "heads"
    res = CliRunner().invoke(main, ["data", "heads", "--out", str(out), "--identities", "1", "--expressions", "1",
                                    "--surface-points", "30", "--near-points", "30", "--space-points", "30"])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.json").exists() and (out / "id0000_ex000.npz").exists()
    assert "1 written" in res.output


def test_cli_bad_ict_path_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    for path in (bad, tmp_path / "missing.npz"):
        res = CliRunner().invoke(main, ["data", "heads", "--out", str(tmp_path / "o"), "--ict", str(path)])
        assert res.exit_code == 2
        assert res.output.startswith("nphm-train: error: ") and str(path) in res.output
        assert len(res.output.strip().splitlines()) == 1


def test_cli_help():
    res = CliRunner().invoke(main, ["data", "heads", "--help"])
    assert res.exit_code == 0 and "--identities" in res.output and "--seed" in res.output
