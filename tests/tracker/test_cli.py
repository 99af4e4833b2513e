import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracker import __version__
from tracker.cli import main


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "animated 3D head" in res.output


def test_console_scripts_installed():
    # The installed entry points run as real processes.
    for prog in ("nphm-track", "nphm-train"):
        out = subprocess.run([prog, "--version"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert __version__ in out.stdout


def test_a_file_argument_runs_the_track_command():
    res = CliRunner().invoke(main, ["video.mp4", "--out", "anim.usd"])
    assert res.exit_code == 2
    assert res.output.strip() == "nphm-track: error: video.mp4: no such file or folder"


def test_bad_landmark_assets_give_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "assets.npz"
    bad.write_text("not an npz")
    video = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"
    res = CliRunner().invoke(main, [str(video), "--out", str(tmp_path / "anim.usd"), "--landmarks", str(bad)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nphm-track: error:") and "assets.npz" in lines[0]
    assert not (tmp_path / "anim.usd").exists()


def test_a_video_preview_must_be_a_file_not_a_folder(tmp_path):
    video = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"
    res = CliRunner().invoke(main, [str(video), "--out", str(tmp_path / "anim.usd"), "--preview", str(tmp_path)])
    assert (res.exit_code, res.output) == (2, f"nphm-track: error: {tmp_path}: is a folder; give a file name ending "
                                              "in .mp4\n")


def test_folder_options_apply_to_every_file_or_are_refused(tmp_path, monkeypatch):
    import json

    import tracker.pipeline
    from tests.tracker.test_batch import dying_track, make_folder

    videos = make_folder(tmp_path, ["a.mp4", "b.mov"])
    out, previews = tmp_path / "out", tmp_path / "previews"
    monkeypatch.setattr(tracker.pipeline, "track_video_quietly", dying_track)  # what the folder command runs
    run = CliRunner().invoke
    res = run(main, [str(videos), "--out", str(out), "--format", "npz", "--max-frames", "5", "--preview",
                     str(previews), "-q"])
    assert res.exit_code == 0, res.output
    assert [json.loads((out / f"{s}.npz").read_text())["max_frames"] for s in "ab"] == [5, 5]
    assert sorted(p.name for p in previews.iterdir()) == ["a.preview.mp4", "b.preview.mp4"]
    res = run(main, [str(videos), "--out", str(out), "--format", "npz", "--preview", str(out), "-q"])
    assert res.exit_code == 0 and sorted(p.name for p in out.glob("*.mp4")) == ["a.preview.mp4", "b.preview.mp4"]

    fresh = ["--out", str(tmp_path / "o"), "-q"]
    for args, error in [
        (["--preview", str(tmp_path / "p.mp4")], f"--preview {tmp_path / 'p.mp4'}: a folder of videos gets one "
                                                 f"preview per video; give a folder (e.g. --preview {tmp_path / 'o'}),"
                                                 " not a file"),
        (["--steps", "10", "--no-tto"], "--tto, --steps: only for a photo, not a folder of videos"),
        (["--engine", "ray", "--workers", "3"], "--workers: only with --engine local (with ray: --cpus-per-task, "
                                                "--gpus-per-task)"),
        (["--preview", str(videos)], f"{videos}: the previews cannot go into the input folder (the next run would "
                                     "track them as videos)"),
    ]:
        res = run(main, [str(videos), *fresh, *args])
        assert (res.exit_code, res.output) == (2, f"nphm-track: error: {error}\n"), args
    (videos / "a.track.mp4").write_bytes(b"")
    res = run(main, [str(videos), *fresh, "--format", ".npz"])
    assert res.exit_code == 2
    assert res.output == f"nphm-track: error: {videos}: a.mp4 and a.track.mp4 would both write a.track.npz\n"
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.slow  # real tracking of two clips in a worker process: 40-80 s on the busy 2-core machine
def test_a_folder_with_max_frames_and_previews_end_to_end(tmp_path):
    import av

    from tests.tracker.test_decode import write_video
    from tracker.trackfile import load_track

    example = Path(__file__).resolve().parents[2] / "examples" / "synthetic_head" / "video_0000.mp4"
    with av.open(str(example)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), c.decode(video=0))]
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", frames)
    write_video(videos / "b.mp4", frames)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [str(videos), "--out", str(out), "--format", ".npz", "--max-frames", "5",
                                    "--preview", str(out), "--resolution", "32", "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    for stem in "ab":
        assert load_track(out / f"{stem}.track.npz").n_frames == 5
        with av.open(str(out / f"{stem}.preview.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 5
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "a.preview.mp4", "a.track.npz", "b.npz",
                                                     "b.preview.mp4", "b.track.npz", "report.json"]
