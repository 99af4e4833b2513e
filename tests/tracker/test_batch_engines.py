"""track_folder's engine-independent core with a scripted engine (fast, no Ray): dispatch, the report as each
result arrives, worker deaths, cancelling on Ctrl-C, leftover temporaries; the folder command's engine options."""

import json
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import tracker.batch as batch
from exporters.base import temp_name
from tracker.batch import WORKER_DIED, Engine, Outcome, remove_temporaries, run_task, track_folder
from tracker.local_engine import LocalEngine
from tracker.cli import main
from tracker.ray_engine import RayEngine, _probe_folders, check_address
from tests.tracker.test_batch import fake_track, make_folder


class ScriptedEngine(Engine):
    """Runs the tasks in this process, last first (completion order differs from the folder's); a video named
    ``dies*`` loses its worker half-way through its output. Records what the core asked of it, and the report
    as it was on disk just before each result was handed over."""

    name = "scripted"

    def __init__(self):
        self.calls, self.cancelled, self.seen_reports = [], [], []

    def start(self, in_dir, out_dir, first_video):
        self.calls.append(("start", Path(in_dir).name, Path(out_dir).name, Path(first_video).name))
        self.report = Path(out_dir) / "report.json"

    def run(self, tasks, track_fn, kwargs):
        self.calls.append(("run", [t.video.name for t in tasks]))
        left = list(reversed(tasks))
        try:
            while left:
                task = left.pop(0)
                self.seen_reports.append(json.loads(self.report.read_text())["counts"])
                if task.video.name.startswith("dies"):
                    temp_name(task.out).write_bytes(b"half an output")  # what a killed writer leaves
                    temp_name(task.out.with_name(task.out.stem + ".track.npz")).write_bytes(b"half a track")
                    yield task.index, Outcome("failed", WORKER_DIED, worker_died=True)
                else:
                    yield task.index, run_task(track_fn, task.video, task.out, kwargs)
        except BaseException:
            self.cancelled = [t.video.name for t in left]
            raise

    def stop(self):
        self.calls.append(("stop",))


def statuses(out: Path) -> dict:
    return {Path(f["input"]).name: (f["status"], f["error"]) for f in json.loads((out / "report.json").read_text())["files"]}


def test_engine_runs_the_tasks_and_the_core_keeps_the_report(tmp_path):
    videos = make_folder(tmp_path, ["a.mp4", "bad.mkv", "c.webm", "dies.mov"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.npz").write_text("finished earlier")  # resume: not a task
    engine = ScriptedEngine()
    report = track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False, engine=engine, frames=4)
    assert engine.calls == [("start", "videos", "out", "a.mp4"), ("run", ["a.mp4", "bad.mkv", "dies.mov"]),
                            ("stop",)]
    # report.json was rewritten as each result arrived (the engine read it before handing over the next one)
    assert [c["pending"] for c in engine.seen_reports] == [3, 2, 1]
    assert [c["failed"] for c in engine.seen_reports] == [0, 1, 2]  # dies.mov first, then bad.mkv, a.mp4 last
    assert report.failed and report.counts == {"ok": 1, "skipped": 1, "failed": 2, "pending": 0}
    assert statuses(out) == {"a.mp4": ("ok", None), "bad.mkv": ("failed", f"{videos / 'bad.mkv'}: no face found in "
                                                                          "any of its 4 frames"),
                             "c.webm": ("skipped", None), "dies.mov": ("failed", WORKER_DIED)}
    # the dead worker's half-written temporaries are gone; nothing under an output name
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "c.npz", "report.json"]

    # again: only the failures are tasks; with nothing left to do the engine is not even started
    engine = ScriptedEngine()
    track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False, engine=engine)
    assert engine.calls[1] == ("run", ["bad.mkv", "dies.mov"])
    (videos / "bad.mkv").unlink()
    (videos / "dies.mov").unlink()
    engine = ScriptedEngine()
    again = track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False, engine=engine)
    assert engine.calls == [] and not again.failed and again.counts["skipped"] == 2


def test_ctrl_c_in_the_core_cancels_what_is_left_and_stops_the_engine(tmp_path, monkeypatch):
    videos = make_folder(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    out = tmp_path / "out"
    real_write, writes = batch._write_report, []

    def interrupted_write(report, *args):  # Ctrl-C while the core records the second result
        writes.append(report.counts.get("ok"))
        if len(writes) == 3:
            raise KeyboardInterrupt
        real_write(report, *args)

    monkeypatch.setattr(batch, "_write_report", interrupted_write)
    engine = ScriptedEngine()
    with pytest.raises(KeyboardInterrupt):
        track_folder(videos, out, ext=".npz", track_fn=fake_track, progress=False, engine=engine)
    assert engine.cancelled == ["a.mp4"] and engine.calls[-1] == ("stop",)
    rows = json.loads((out / "report.json").read_text())
    assert rows["counts"] == {"ok": 1, "skipped": 0, "failed": 0, "pending": 2}  # the last report written


def test_remove_temporaries_takes_only_this_outputs(tmp_path):
    out = tmp_path / "a.usd"
    mine = [temp_name(out), temp_name(out, suffix=".data"), temp_name(out.with_suffix(".obj")),
            temp_name(tmp_path / "a.track.npz")]
    others = [temp_name(tmp_path / "ab.usd"), temp_name(tmp_path / "a.track.usd"),  # video a.track.mp4's output
              temp_name(tmp_path / "a.track.track.npz"), tmp_path / ".a.usd.123.partial", tmp_path / "a.usd.bak"]
    for p in mine + others:
        p.write_bytes(b"x")
    assert sorted(remove_temporaries(out)) == sorted(mine)
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_a_task_clears_what_a_killed_attempt_left(tmp_path):
    stale = temp_name(tmp_path / "a.npz")
    stale.write_bytes(b"half")
    outcome = run_task(fake_track, tmp_path / "a.mp4", tmp_path / "a.npz", {})
    assert outcome.status == "ok" and outcome.frames == 3 + len("a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_folder_command_builds_the_engine_from_its_options(tmp_path, monkeypatch):
    videos = make_folder(tmp_path, ["a.mp4"])
    got = {}

    def fake_track_folder(source, out, ext, engine, progress, track_fn, preview_dir, cfg):
        got["engine"], got["cfg"], got["preview_dir"] = engine, cfg, preview_dir
        return SimpleNamespace(counts={"ok": 0, "failed": 1}, report_path=Path(out) / "report.json", failed=True,
                               files=[SimpleNamespace(status="failed", input="a.mp4", error="no face")])

    monkeypatch.setattr(batch, "track_folder", fake_track_folder)
    run = CliRunner().invoke
    res = run(main, [str(videos), "--out", str(tmp_path / "o"), "--workers", "3", "-q"])
    assert res.exit_code == 1 and "nphm-track: error: a.mp4: no face" in res.output  # exit status as before
    assert got["engine"] == LocalEngine(workers=3)
    res = run(main, [str(videos), "--out", str(tmp_path / "o"), "--engine", "ray", "--address", "ray://head:10001",
                     "--cpus-per-task", "2", "--retries", "3", "--device", "cuda", "-q"])
    assert res.exit_code == 1
    assert got["engine"] == RayEngine(address="ray://head:10001", cpus_per_task=2.0, gpus_per_task=1.0, retries=3)
    assert got["cfg"].device == "cuda"
    run(main, [str(videos), "--out", str(tmp_path / "o"), "--engine", "ray", "-q"])
    assert got["engine"] == RayEngine(address=None, cpus_per_task=1.0, gpus_per_task=0.0, retries=0)

    res = run(main, [str(videos), "--out", str(tmp_path / "o"), "--retries", "2", "--address", "h:6379"])
    assert res.exit_code == 2 and res.output == "nphm-track: error: --address: only with --engine ray\n"
    res = run(main, [str(videos), "--out", str(tmp_path / "o"), "--engine", "ray", "--gpus-per-task", "1"])
    assert res.exit_code == 2 and res.output == "nphm-track: error: --gpus-per-task: only with --device cuda\n"


def test_engine_ray_without_ray_names_the_pip_command(tmp_path, monkeypatch):
    videos = make_folder(tmp_path, ["a.mp4"])
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(main, [str(videos), "--out", str(tmp_path / "o"), "--engine", "ray", "-q"])
    assert res.exit_code == 2
    assert res.output == 'nphm-track: error: --engine ray needs Ray, an optional extra: pip install -e ".[ray]"\n'
    assert not (tmp_path / "o" / "a.usd").exists()


def test_ray_engine_refuses_bad_resources():
    for kwargs, match in [({"cpus_per_task": 0}, "cpus_per_task must be > 0"),
                          ({"gpus_per_task": -1}, "gpus_per_task must be >= 0"),
                          ({"retries": -1}, "retries must be >= 0"), ({"num_cpus": 0}, "num_cpus must be >= 1")]:
        with pytest.raises(batch.InputError, match=match):
            RayEngine(**kwargs)


def test_the_ray_folder_probe_says_what_a_node_cannot_see(tmp_path):
    marker = tmp_path / ".probe"
    marker.write_text("token")
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    assert _probe_folders(str(tmp_path), marker.name, "token", str(video))[1] is None
    assert not marker.exists() and sorted(tmp_path.iterdir()) == [video]  # the probe cleans up after itself
    marker.write_text("another machine's token")  # a namesake folder on the node, not the shared one
    host, error = _probe_folders(str(tmp_path), marker.name, "token", str(video))
    assert error == f"{tmp_path}: not the output folder the command created (not shared with this node?)"
    marker.write_text("token")
    _, error = _probe_folders(str(tmp_path), marker.name, "token", str(tmp_path / "gone.mp4"))
    assert error.startswith(f"{tmp_path / 'gone.mp4'}: cannot read it: ")


def serve_once(answer: bytes | None) -> int:
    """A one-connection TCP server on a free local port that reads the client's first bytes and answers with
    ``answer`` (``None``: never answers); returns the port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.recv(64)
        if answer is not None:
            conn.sendall(answer)
        time.sleep(2)
        conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_wrong_ray_address_fails_fast_with_one_line_naming_it(tmp_path, monkeypatch):
    settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an HTTP/2 server's first frame, as gRPC servers send
    check_address(f"127.0.0.1:{serve_once(settings)}", timeout_s=5)
    check_address(f"ray://127.0.0.1:{serve_once(settings)}", timeout_s=5)
    port = free_port()
    for address, error in [
        (f"127.0.0.1:{port}", "Connection refused"),
        ("ray://no-such-host.invalid", "unknown host no-such-host.invalid"),
        (f"127.0.0.1:{serve_once(b'HTTP/1.1 400 Bad Request')}", "it does not answer as Ray does (a gRPC server; "
                                                                 "the GCS's is 6379, not the dashboard's 8265)"),
        (f"127.0.0.1:{serve_once(None)}", "no answer within 0.5 s"),
        ("head:port", "not host:port or ray://host:port"),
    ]:
        t0 = time.perf_counter()
        with pytest.raises(batch.InputError) as exc:
            check_address(address, timeout_s=0.5)
        message = str(exc.value)  # the resolver's own words may follow an unknown host
        assert message.startswith(f"cannot connect to Ray at {address}: {error}") and "\n" not in message
        assert time.perf_counter() - t0 < 2

    # the command: one line, before ray.init (which would retry for minutes) and before any work
    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            raise AssertionError("ray.init must not be reached")

    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    videos = make_folder(tmp_path, ["a.mp4"])
    res = CliRunner().invoke(main, [str(videos), "--out", str(tmp_path / "o"), "--engine", "ray", "--address",
                                    f"127.0.0.1:{port}", "-q"])
    assert (res.exit_code, res.output) == (2, f"nphm-track: error: cannot connect to Ray at 127.0.0.1:{port}: "
                                              "Connection refused\n")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []
