"""track_folder: parallel workers, resume by skipping finished outputs, failures recorded, the report."""

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from exporters.base import temp_name
from model.errors import InputError
from tracker.batch import track_folder
from tracker.cli import main
from tracker.local_engine import LocalEngine
from tracker.pipeline import track_path_for


def fake_track(video: Path, out: Path, frames: int = 3) -> SimpleNamespace:
    """Stands in for tracker.pipeline.track_video: 'bad*' has no face, 'crash*' hits a bug, the rest write
    their output (the worker's pid inside)."""
    name = Path(video).name
    if name.startswith("bad"):
        raise InputError(f"{video}: no face found in any of its {frames} frames")
    if name.startswith("crash"):
        raise RuntimeError("index out of range\nsecond line of a traceback-like message")
    Path(out).write_text(json.dumps({"pid": os.getpid(), "video": name}))
    return SimpleNamespace(n_frames=frames + len(name))


def dying_track(video: Path, out: Path, cfg=None, preview: Path | None = None) -> SimpleNamespace:
    """Stands in for tracker.pipeline.track_video_quietly in worker processes: 'dies*' writes half its output,
    as a writer does, then its process is killed with SIGKILL (once only where $DIES_ONCE names a marker file
    that does not exist yet); 'exits*' ends its process with exit code 3; the rest write their output (and
    preview) with the ``cfg.max_frames`` they were given."""
    video, out = Path(video), Path(out)
    once = os.environ.get("DIES_ONCE")
    if video.name.startswith("dies") and not (once and Path(once).exists()):
        if once:
            Path(once).write_text("an attempt died here")
        temp_name(out).write_bytes(b"half an output")
        temp_name(track_path_for(out)).write_bytes(b"half a track")
        if preview is not None:
            temp_name(Path(preview)).write_bytes(b"half a preview")
        os.kill(os.getpid(), signal.SIGKILL)
    if video.name.startswith("exits"):
        os._exit(3)
    if preview is not None:
        Path(preview).write_text(video.name)
    out.write_text(json.dumps({"pid": os.getpid(), "max_frames": getattr(cfg, "max_frames", None)}))
    return SimpleNamespace(n_frames=4)


def make_folder(root: Path, names) -> Path:
    folder = root / "videos"
    folder.mkdir()
    for n in names:
        (folder / n).write_bytes(b"not really a video")
    return folder


def test_parallel_run_then_resume(tmp_path):
    videos = make_folder(tmp_path, ["b.MOV", "a.mp4", "bad.mkv", "c.webm", "crash.avi", "notes.txt"])
    (videos / "sub.mp4").mkdir()  # a folder is not a video
    out = tmp_path / "out"  # created by track_folder
    report = track_folder(videos, out, ext=".npz", workers=2, track_fn=fake_track, progress=False, frames=5)
    assert report.failed
    rows = json.loads((out / "report.json").read_text())
    by_name = {Path(f["input"]).name: f for f in rows["files"]}
    assert list(by_name) == ["a.mp4", "b.MOV", "bad.mkv", "c.webm", "crash.avi"]  # sorted, videos only
    assert rows["counts"] == {"ok": 3, "skipped": 0, "failed": 2, "pending": 0}
    assert by_name["a.mp4"] == {"input": str(videos / "a.mp4"), "output": str(out / "a.npz"), "status": "ok",
                                "error": None, "seconds": by_name["a.mp4"]["seconds"], "frames": 10, "preview": None}
    assert by_name["bad.mkv"]["status"] == "failed" and by_name["bad.mkv"]["frames"] is None
    assert by_name["bad.mkv"]["error"] == f"{videos / 'bad.mkv'}: no face found in any of its 5 frames"
    assert by_name["crash.avi"]["error"] == "RuntimeError: index out of range"  # one line, type named
    pids = {json.loads((out / f"{s}.npz").read_text())["pid"] for s in "abc"}
    assert os.getpid() not in pids and len(pids) <= 2  # ran in worker processes
    assert not (out / "bad.npz").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "b.npz", "c.npz", "report.json"]  # no temporaries

    # rerun in-process: finished outputs are skipped (frames kept from the last report), failures retried
    (videos / "bad.mkv").unlink()
    (videos / "crash.avi").rename(videos / "d.avi")
    before = (out / "a.npz").read_text()
    again = track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False,
                         engine=LocalEngine(in_process=True))
    assert not again.failed
    assert [f.status for f in again.files] == ["skipped", "skipped", "skipped", "ok"]
    assert again.files[0].frames == 10 and again.files[3].frames == 8
    assert (out / "a.npz").read_text() == before
    assert json.loads((out / "d.npz").read_text())["pid"] == os.getpid()  # in_process: in this process
    rows = json.loads((out / "report.json").read_text())
    assert rows["counts"] == {"ok": 1, "skipped": 3, "failed": 0, "pending": 0}


def test_refusals_before_any_work(tmp_path):
    videos = make_folder(tmp_path, ["a.mp4"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write the output folder"):
        track_folder(videos, blocker / "out", ext=".npz", workers=1, track_fn=fake_track, progress=False)
    with pytest.raises(InputError, match="unknown output extension"):
        track_folder(videos, tmp_path / "o", ext=".xyz", track_fn=fake_track, progress=False)
    with pytest.raises(InputError, match="not a folder"):
        track_folder(tmp_path / "nope", tmp_path / "o", ext=".npz", track_fn=fake_track, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no video files \(.mp4"):
        track_folder(empty, tmp_path / "o", ext=".npz", track_fn=fake_track, progress=False)
    (videos / "a.mov").write_bytes(b"")
    with pytest.raises(InputError, match="a.mov and a.mp4 would both write a.npz"):
        track_folder(videos, tmp_path / "o", ext="npz", track_fn=fake_track, progress=False)
    (videos / "a.mov").unlink()
    (videos / "a.track.mp4").write_bytes(b"")  # its output a.track.npz is a.mp4's track file
    with pytest.raises(InputError, match="a.mp4 and a.track.mp4 would both write a.track.npz"):
        track_folder(videos, tmp_path / "o", ext=".npz", track_fn=fake_track, progress=False)
    track_folder(videos, tmp_path / "o", ext=".usd", track_fn=fake_track, progress=False,  # no clash with .usd
                 engine=LocalEngine(in_process=True))
    shutil.rmtree(tmp_path / "o")
    (videos / "a.track.mp4").unlink()
    with pytest.raises(InputError, match="the previews cannot go into the input folder"):
        track_folder(videos, tmp_path / "o", preview_dir=videos / "sub" / "..", track_fn=fake_track, progress=False)
    with pytest.raises(InputError, match="give preview_dir"):
        track_folder(videos, tmp_path / "o", track_fn=fake_track, progress=False, preview=tmp_path / "p.mp4")
    with pytest.raises(InputError, match="workers must be >= 1"):
        track_folder(videos, tmp_path / "o", ext=".npz", workers=0, track_fn=fake_track, progress=False)
    assert not (tmp_path / "o").exists()


def test_a_killed_worker_fails_only_its_file_then_a_second_run_tracks_only_it(tmp_path, monkeypatch):
    import tracker.pipeline

    videos = make_folder(tmp_path, ["a.mp4", "dies.mp4", "e.mp4"])
    out = tmp_path / "out"
    monkeypatch.setattr(tracker.pipeline, "track_video_quietly", dying_track)  # what the folder command runs
    monkeypatch.setenv("DIES_ONCE", str(tmp_path / "died-once"))
    args = [str(videos), "--out", str(out), "--format", ".npz", "--workers", "1", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert (f"nphm-track: error: {videos / 'dies.mp4'}: the worker process was killed by SIGKILL (out of memory?)"
            in res.output)
    rows = json.loads((out / "report.json").read_text())
    assert [(Path(f["input"]).name, f["status"]) for f in rows["files"]] == [("a.mp4", "ok"), ("dies.mp4", "failed"),
                                                                            ("e.mp4", "ok")]
    pids = [json.loads((out / f"{s}.npz").read_text())["pid"] for s in "ae"]
    assert pids[0] != pids[1]  # one worker at a time: a new one took over e.mp4 after dies.mp4's was killed
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "e.npz", "report.json"]  # nothing partial

    res = CliRunner().invoke(main, args)  # the second run tracks only the failed one (it lives this time)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in rows["files"]] == ["skipped", "ok", "skipped"]
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "dies.npz", "e.npz", "report.json"]


def test_the_local_engine_retries_a_dead_worker_and_says_how_workers_died(tmp_path, monkeypatch):
    videos = make_folder(tmp_path, ["a.mp4", "dies.mp4", "exits.mp4", "e.mp4"])
    out, previews = tmp_path / "out", tmp_path / "previews"
    once = tmp_path / "died-once"
    monkeypatch.setenv("DIES_ONCE", str(once))
    report = track_folder(videos, out, ext=".npz", track_fn=dying_track, progress=False, preview_dir=previews,
                          engine=LocalEngine(workers=2, retries=1))
    assert once.exists()  # dies.mp4's first attempt was killed, its retry lived
    assert [(Path(f.input).name, f.status, f.error) for f in report.files] == [
        ("a.mp4", "ok", None), ("dies.mp4", "ok", None), ("e.mp4", "ok", None),
        ("exits.mp4", "failed", "the worker process died with exit code 3 (2 attempts)")]
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "dies.npz", "e.npz", "report.json"]
    assert sorted(p.name for p in previews.iterdir()) == ["a.preview.mp4", "dies.preview.mp4", "e.preview.mp4"]
    assert report.files[0].preview == str(previews / "a.preview.mp4")


def slow_track(video: Path, out: Path) -> None:
    """'slow*' stays half-written for 8 s; the rest finish at once."""
    if Path(video).name.startswith("slow"):
        temp_name(Path(out)).write_bytes(b"half an output")
        time.sleep(8)
    Path(out).write_text("done")


def test_ctrl_c_stops_the_local_workers_and_leaves_nothing_partial(tmp_path):
    videos = make_folder(tmp_path, ["a.mp4", "slow1.mp4", "slow2.mp4", "slow3.mp4"])
    out = tmp_path / "out"

    def interrupt_once_the_slow_ones_run():
        while not (out / "a.npz").exists() or len(list(out.glob(".slow*.partial.npz"))) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    threading.Thread(target=interrupt_once_the_slow_ones_run, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        track_folder(videos, out, ext=".npz", track_fn=slow_track, progress=False, engine=LocalEngine(workers=2))
    assert time.perf_counter() - t0 < 8  # did not wait for the slow ones
    rows = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in rows["files"]] == ["ok", "pending", "pending", "pending"]
    time.sleep(9 - (time.perf_counter() - t0))
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "report.json"]  # killed, not left running
