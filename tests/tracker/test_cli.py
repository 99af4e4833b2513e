import subprocess

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
