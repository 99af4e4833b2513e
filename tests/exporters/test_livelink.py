"""Live Link Face CSV takes (exporters/livelink.py), read back by header names with the csv module."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from exporters.livelink import LIVE_LINK_HEADER, column_name, head_angles, timecode, write_live_link_csv
from model.arkit import ARKIT_NAMES
from model.errors import InputError

APP_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,EyeSquintLeft,"
    "EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,EyeSquintRight,"
    "EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,"
    "MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,MouthStretchLeft,"
    "MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,MouthPressLeft,MouthPressRight,"
    "MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,"
    "BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,"
    "TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll")


def test_header_is_the_apps_and_every_arkit_name_has_a_column():
    assert ",".join(LIVE_LINK_HEADER) == APP_HEADER
    assert sorted(column_name(n) for n in ARKIT_NAMES) == sorted(LIVE_LINK_HEADER[2:54])


@pytest.mark.parametrize("seconds,fps,expected", [(0.0, 30, "00:00:00:00.000"), (1.5, 30, "00:00:01:15.000"),
                                                    (3661.02, 25, "01:01:01:00.500"), (0.999999, 30, "00:00:01:00.000")])
def test_timecode(seconds, fps, expected):
    assert timecode(seconds, fps) == expected


def test_round_trip_by_header_names(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.uniform(size=(4, 52)).astype(np.float32)
    rot = rng.uniform(-0.3, 0.3, size=(4, 3))
    res = write_live_link_csv(tmp_path / "take.csv", ARKIT_NAMES, w, np.arange(4) / 30.0, 30.0, rot)
    with open(res.path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and list(rows[0]) == LIVE_LINK_HEADER
    for i, row in enumerate(rows):
        assert row["BlendShapeCount"] == "61"
        assert float(row["JawOpen"]) == pytest.approx(w[i, ARKIT_NAMES.index("jawOpen")], abs=1e-6)
        assert float(row["JawLeft"]) == pytest.approx(w[i, ARKIT_NAMES.index("jawLeft")], abs=1e-6)
        assert float(row["EyeBlinkRight"]) == pytest.approx(w[i, ARKIT_NAMES.index("eyeBlink_R")], abs=1e-6)
        assert float(row["HeadPitch"]) == pytest.approx(rot[i, 1], abs=1e-6)
        assert float(row["RightEyeRoll"]) == 0.0
    assert rows[1]["Timecode"] == "00:00:00:01.000"
    assert [p.name for p in tmp_path.iterdir()] == ["take.csv"]


def test_head_angles_signs():
    def about(axis, a):
        c, s = np.cos(a), np.sin(a)
        return {"y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]), "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
                "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]

    np.testing.assert_allclose(head_angles(np.stack([about("y", 0.2), about("x", 0.1), about("z", -0.3)])),
                               [[0.2, 0, 0], [0, 0.1, 0], [0, 0, -0.3]], atol=1e-9)
    nose = about("x", 0.1) @ np.array([0, 0, 1.0])  # the face looks along +z: positive pitch tips the nose down
    assert nose[1] < 0


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"take.txt: a Live Link Face take is a .csv"):
        write_live_link_csv(tmp_path / "take.txt", ARKIT_NAMES, np.zeros((1, 52)), [0.0], 30.0)
    with pytest.raises(InputError, match=r"need \[N, 52\]"):
        write_live_link_csv(tmp_path / "take.csv", ARKIT_NAMES[:51], np.zeros((1, 51)), [0.0], 30.0)
