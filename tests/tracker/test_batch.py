"""track_folder: parallel workers, resume by skipping finished outputs, failures recorded, the report."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.errors import InputError
from tracker.batch import track_folder


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
                                "error": None, "seconds": by_name["a.mp4"]["seconds"], "frames": 10}
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
    again = track_folder(videos, out, ext=".npz", workers=1, track_fn=fake_track, progress=False)
    assert not again.failed
    assert [f.status for f in again.files] == ["skipped", "skipped", "skipped", "ok"]
    assert again.files[0].frames == 10 and again.files[3].frames == 8
    assert (out / "a.npz").read_text() == before
    assert json.loads((out / "d.npz").read_text())["pid"] == os.getpid()  # workers=1: in this process
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
    with pytest.raises(InputError, match="workers must be >= 1"):
        track_folder(videos, tmp_path / "o", ext=".npz", workers=0, track_fn=fake_track, progress=False)
    assert not (tmp_path / "o").exists()
