"""RayEngine on a real local Ray (num_cpus=2): a folder with a bad file, resume, a worker killed mid-file,
Ctrl-C, the start-up check. Slow (``pytest -m slow``); skipped without the extra (pip install -e ".[ray]").
The same core with a scripted engine is tested fast in test_batch_engines.py."""

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from exporters.base import temp_name
from model.errors import InputError
from tracker.batch import WORKER_DIED, track_folder
from tracker.ray_engine import RayEngine
from tests.tracker.test_batch import fake_track, make_folder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # each Ray start-up takes 4-10 s on the 2-core machine: about a minute in all
# Ray workers import functions by module name; send this module's by value so they need not find `tests`.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def dying_track(video: Path, out: Path, once: Path | None = None) -> None:
    """'dies*' writes half its output, as a writer does, then its process is killed; with ``once``, only the
    first attempt dies (the marker file says an attempt started)."""
    video, out = Path(video), Path(out)
    if video.name.startswith("dies") and not (once is not None and once.exists()):
        if once is not None:
            once.write_text("an attempt died here")
        temp_name(out).write_bytes(b"half an output")
        os.kill(os.getpid(), signal.SIGKILL)
    out.write_text(json.dumps({"pid": os.getpid()}))


def slow_track(video: Path, out: Path) -> None:
    """'slow*' takes SLOW_S seconds, half-written all along; the rest finish at once."""
    if Path(video).name.startswith("slow"):
        temp_name(Path(out)).write_bytes(b"half an output")
        time.sleep(SLOW_S)
    Path(out).write_text("done")


SLOW_S = 8.0


def rows(out: Path) -> dict:
    return {Path(f["input"]).name: f for f in json.loads((out / "report.json").read_text())["files"]}


def test_a_local_ray_tracks_a_folder_with_a_bad_file_then_resumes(tmp_path):
    videos = make_folder(tmp_path, ["a.mp4", "bad.mkv", "c.webm"])
    out = tmp_path / "out"
    report = track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False, frames=5,
                          engine=RayEngine(num_cpus=2))
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert report.failed and report.counts == {"ok": 2, "skipped": 0, "failed": 1, "pending": 0}
    got = rows(out)
    assert [(n, r["status"], r["error"], r["frames"]) for n, r in got.items()] == [
        ("a.mp4", "ok", None, 10), ("bad.mkv", "failed", f"{videos / 'bad.mkv'}: no face found in any of its 5 frames",
                                    None), ("c.webm", "ok", None, 11)]
    assert json.loads((out / "report.json").read_text())["counts"] == report.counts
    assert os.getpid() not in {json.loads((out / f"{s}.npz").read_text())["pid"] for s in "ac"}  # Ray workers
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "c.npz", "report.json"]

    before = (out / "a.npz").read_text()
    again = track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False, frames=5,
                         engine=RayEngine(num_cpus=2))
    assert [f.status for f in again.files] == ["skipped", "failed", "skipped"]
    assert again.files[0].frames == 10 and (out / "a.npz").read_text() == before


def test_start_refuses_a_task_bigger_than_the_local_ray(tmp_path):
    videos = make_folder(tmp_path, ["a.mp4"])
    with pytest.raises(InputError, match="^a task needs 4 CPUs and 0 GPUs; the local Ray has 2 CPUs and 0 GPUs"):
        RayEngine(num_cpus=2, cpus_per_task=4).start(videos, tmp_path, videos / "a.mp4")
    assert not ray.is_initialized() and sorted(tmp_path.iterdir()) == [videos]  # shut down, no probe left


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the rest of the module (RayEngine uses a Ray the caller started and leaves it)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_killed_worker_fails_its_file_or_is_retried_and_leaves_nothing_partial(tmp_path, local_ray):
    videos = make_folder(tmp_path, ["a.mp4", "dies.mp4"])
    out = tmp_path / "out"
    report = track_folder(videos, out, ext=".npz", track_fn=dying_track, progress=False, engine=RayEngine())
    assert ray.is_initialized()
    assert [(f.status, f.error) for f in report.files] == [("ok", None), ("failed", WORKER_DIED)]
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "report.json"]  # no half-written temporary

    once = tmp_path / "died-once"
    report = track_folder(videos, out, ext=".npz", track_fn=dying_track, progress=False, once=once,
                          engine=RayEngine(retries=1))
    assert once.exists()  # the first attempt was killed ...
    assert [f.status for f in report.files] == ["skipped", "ok"]  # ... and the retry succeeded
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "dies.npz", "report.json"]


def test_ctrl_c_cancels_the_outstanding_tasks(tmp_path, local_ray):
    videos = make_folder(tmp_path, ["a.mp4", "slow1.mp4", "slow2.mp4", "slow3.mp4"])
    out = tmp_path / "out"

    def interrupt_once_the_slow_ones_run():
        while not (out / "a.npz").exists() or len(list(out.glob(".slow*.partial.npz"))) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    threading.Thread(target=interrupt_once_the_slow_ones_run, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        track_folder(videos, out, ext=".npz", track_fn=slow_track, progress=False, engine=RayEngine())
    assert time.perf_counter() - t0 < SLOW_S  # did not wait for the slow ones
    assert [r["status"] for r in rows(out).values()] == ["ok", "pending", "pending", "pending"]
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "report.json"]  # nothing half-written
    time.sleep(SLOW_S + 2 - (time.perf_counter() - t0))
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "report.json"]  # they were stopped, not left running


def test_a_wrong_address_fails_within_30_seconds_naming_it(tmp_path):
    videos = make_folder(tmp_path, ["a.mp4"])
    with socket.socket() as s:  # a local port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t0 = time.perf_counter()
        with pytest.raises(InputError, match=f"^cannot connect to Ray at {re.escape(address)}: "):
            track_folder(videos, tmp_path / "out", ext=".npz", track_fn=fake_track, progress=False,
                         engine=RayEngine(address=address))
        assert time.perf_counter() - t0 < 30
        assert not ray.is_initialized()
